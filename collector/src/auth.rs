//! Bearer-token authentication: the token sets a listener accepts ([`Tokens`], read from
//! files or an environment variable), how a request's credential is read from its
//! `Authorization` header, and the receivers' refusal of a request without a good one (HTTP
//! 401 with `WWW-Authenticate: Bearer`, gRPC UNAUTHENTICATED), counted as
//! `toctou_rejected_total{reason="unauthenticated"}`.
//!
//! Tokens are kept only as SHA-256 digests and a presented token is compared with every one
//! of them without an early exit ([`subtle`]): the time a refusal takes says nothing about
//! how much of a token was right, nor which of several (rotation) came close. Nothing here
//! can print a token: [`Tokens`]' `Debug` shows a count, errors name the file and line.

use crate::json;
use crate::receivers::Receivers;
use crate::RejectReason;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::{Choice, ConstantTimeEq};

/// Shortest token accepted: 16 characters of a random base64 token carry 96 bits, out of
/// reach of guessing over the network.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a 401 answers in `WWW-Authenticate` on the receivers (RFC 6750).
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"toctou\"";

/// A set of accepted tokens (several, so that one can be rotated in before the old one is
/// removed). Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    digests: Arc<[[u8; 32]]>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} redacted)", self.digests.len())
    }
}

/// Why a token set could not be read. Messages name the source and line, never a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: no token in it (only blank lines and comments)")]
    Empty { origin: String },
    #[error("{origin}, token {line}: shorter than {MIN_TOKEN_LEN} characters")]
    TooShort { origin: String, line: usize },
    #[error(
        "{origin}, token {line}: only visible ASCII is allowed (a token travels in an HTTP header)"
    )]
    BadCharacter { origin: String, line: usize },
}

impl Tokens {
    /// Reads a token file: one token per line; blank lines and lines starting with `#` are
    /// ignored, surrounding whitespace trimmed.
    pub fn from_file(path: &Path) -> Result<Tokens, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a token file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Tokens, TokenError> {
        let mut digests = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            digests.push(checked_digest(token, origin, i + 1)?);
        }
        Tokens::from_digests(digests, origin)
    }

    /// Parses tokens given in an environment variable: separated by commas, whitespace or
    /// newlines (a container's secret may be mounted into the variable as a file's text).
    pub fn parse_list(text: &str, origin: &str) -> Result<Tokens, TokenError> {
        let mut digests = Vec::new();
        let items = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty());
        for (i, token) in items.enumerate() {
            digests.push(checked_digest(token, origin, i + 1)?);
        }
        Tokens::from_digests(digests, origin)
    }

    fn from_digests(digests: Vec<[u8; 32]>, origin: &str) -> Result<Tokens, TokenError> {
        if digests.is_empty() {
            return Err(TokenError::Empty {
                origin: origin.to_string(),
            });
        }
        Ok(Tokens {
            digests: digests.into(),
        })
    }

    /// Both sets, for a listener given tokens from a file and from the environment.
    pub fn union(&self, other: &Tokens) -> Tokens {
        let digests: Vec<[u8; 32]> = self
            .digests
            .iter()
            .chain(other.digests.iter())
            .copied()
            .collect();
        Tokens {
            digests: digests.into(),
        }
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the tokens. Every digest is compared whatever the
    /// outcome, so the time taken depends only on how many tokens there are.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = Choice::from(0);
        for d in self.digests.iter() {
            found |= d.ct_eq(&digest);
        }
        found.into()
    }
}

fn checked_digest(token: &str, origin: &str, line: usize) -> Result<[u8; 32], TokenError> {
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::BadCharacter {
            origin: origin.to_string(),
            line,
        });
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort {
            origin: origin.to_string(),
            line,
        });
    }
    Ok(Sha256::digest(token.as_bytes()).into())
}

/// Why a request was refused; the `Display` goes back to the client and into debug logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header, or one of another scheme.
    Missing,
    /// A credential that is not one of the listener's tokens.
    Invalid,
    /// A Standard Webhooks signature that no token's digest made, or too old or too new.
    BadSignature,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Missing => "missing bearer token",
            Refusal::Invalid => "invalid bearer token",
            Refusal::BadSignature => {
                "invalid webhook signature, or its timestamp is more than 5 minutes away"
            }
        })
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = split_scheme(value)?;
    scheme.eq_ignore_ascii_case(b"bearer").then_some(rest)
}

/// The password of an `Authorization: Basic <base64(user:password)>` value: what a browser
/// sends after its login prompt, so the page can be opened with a token as the password.
pub fn basic_password(value: &[u8]) -> Option<Vec<u8>> {
    let (scheme, rest) = split_scheme(value)?;
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|b| *b == b' ')?;
    let rest = value[space + 1..].trim_ascii();
    (!rest.is_empty()).then_some((&value[..space], rest))
}

/// Checks a request's `Authorization` header against `tokens`: bearer always, basic (the
/// password) when `basic` is set.
pub fn check(tokens: &Tokens, authorization: Option<&[u8]>, basic: bool) -> Result<(), Refusal> {
    let Some(value) = authorization else {
        return Err(Refusal::Missing);
    };
    if let Some(token) = bearer(value) {
        return if tokens.accepts(token) {
            Ok(())
        } else {
            Err(Refusal::Invalid)
        };
    }
    if basic {
        if let Some(password) = basic_password(value) {
            return if tokens.accepts(&password) {
                Ok(())
            } else {
                Err(Refusal::Invalid)
            };
        }
    }
    Err(Refusal::Missing)
}

/// How far a Standard Webhooks timestamp may be from now: the specification's replay window.
pub const WEBHOOK_TOLERANCE_S: u64 = 300;

impl Tokens {
    /// Whether `signatures` (the `webhook-signature` header: `v1,<base64>` entries separated
    /// by spaces) holds a Standard Webhooks signature of `id.timestamp.body` keyed by one of
    /// the tokens' SHA-256 digests: how Debezium Server's HTTP sink authenticates, given
    /// `whsec_<base64 of the digest>` as its secret (the token itself never leaves toctou's
    /// side, and toctou keeps only digests). Every pair is compared, in constant time.
    pub fn accepts_webhook(
        &self,
        id: &[u8],
        timestamp: &[u8],
        body: &[u8],
        signatures: &[u8],
    ) -> bool {
        use hmac::{Hmac, Mac};
        let presented: Vec<Vec<u8>> = signatures
            .split(|b| *b == b' ')
            .filter_map(|s| s.strip_prefix(b"v1,"))
            .filter_map(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .collect();
        let mut found = Choice::from(0);
        for d in self.digests.iter() {
            let mut mac = Hmac::<Sha256>::new_from_slice(d).expect("HMAC takes any key length");
            mac.update(id);
            mac.update(b".");
            mac.update(timestamp);
            mac.update(b".");
            mac.update(body);
            let expected = mac.finalize().into_bytes();
            for p in &presented {
                found |= expected.as_slice().ct_eq(p.as_slice());
            }
        }
        found.into()
    }
}

/// A Standard Webhooks signature to verify once the body is read (see
/// [`Tokens::accepts_webhook`]); the route's guard leaves it on a request that came with one
/// instead of a bearer token.
#[derive(Clone)]
pub(crate) struct PendingSignature {
    pub tokens: Tokens,
    pub id: HeaderValue,
    pub timestamp: HeaderValue,
    pub signatures: HeaderValue,
}

impl PendingSignature {
    /// Refusal unless the signature is good and its timestamp within the tolerance of `now`
    /// (seconds since the epoch).
    pub fn verify(&self, body: &[u8], now: u64) -> Result<(), Refusal> {
        let fresh = std::str::from_utf8(self.timestamp.as_bytes())
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| t.abs_diff(now) <= WEBHOOK_TOLERANCE_S);
        if fresh
            && self.tokens.accepts_webhook(
                self.id.as_bytes(),
                self.timestamp.as_bytes(),
                body,
                self.signatures.as_bytes(),
            )
        {
            Ok(())
        } else {
            Err(Refusal::BadSignature)
        }
    }
}

/// axum middleware of `POST /v1/cdc/debezium`: a bearer token as on every route, or a
/// Standard Webhooks signature, checked with the body in the handler.
pub(crate) async fn require_token_or_signature(
    State(guard): State<HttpGuard>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let signed =
        ["webhook-id", "webhook-timestamp", "webhook-signature"].map(|h| headers.get(h).cloned());
    if authorization(headers).is_none() {
        if let [Some(id), Some(timestamp), Some(signatures)] = signed {
            request.extensions_mut().insert(PendingSignature {
                tokens: guard.tokens.clone(),
                id,
                timestamp,
                signatures,
            });
            return next.run(request).await;
        }
    }
    require_token(State(guard), request, next).await
}

/// Who may send to the receivers: `None` leaves a route group open.
#[derive(Clone, Debug, Default)]
pub struct ReceiverAuth {
    /// OTLP over gRPC and HTTP (`/v1/traces`, `/v1/logs`).
    pub otlp: Option<Tokens>,
    /// The Kubernetes audit webhook (`/v1/k8s-audit`).
    pub audit: Option<Tokens>,
}

/// The state of the HTTP receivers' token check, one per route group.
#[derive(Clone)]
pub(crate) struct HttpGuard {
    pub tokens: Tokens,
    pub receivers: Receivers,
}

/// axum middleware: refuses a receiver request without a good bearer token before its body
/// is read, so nothing of it is decoded or ingested.
pub(crate) async fn require_token(
    State(guard): State<HttpGuard>,
    request: Request,
    next: Next,
) -> Response {
    match check(&guard.tokens, authorization(request.headers()), false) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            guard
                .receivers
                .metrics()
                .add_rejected(RejectReason::Unauthenticated, 1);
            tracing::debug!(reason = %refusal, path = request.uri().path(), "http request refused");
            unauthorized(refusal)
        }
    }
}

fn authorization(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
}

/// 401 with the challenge and a `google.rpc.Status` (UNAUTHENTICATED) in JSON: the request's
/// format is not looked at, as its headers come from someone not yet trusted.
fn unauthorized(refusal: Refusal) -> Response {
    let body = json::rpc_status(tonic::Code::Unauthenticated as i32, &refusal.to_string());
    let response = (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, BEARER_CHALLENGE),
            (header::CONTENT_TYPE, "application/json"),
        ],
        body,
    )
        .into_response();
    // Refused before the body was read: the connection cannot carry another request.
    crate::http::closing(response)
}

/// The gRPC receivers' check, a tonic interceptor: runs on the headers, before the message
/// is read.
#[derive(Clone)]
pub(crate) struct GrpcGuard {
    pub tokens: Option<Tokens>,
    pub receivers: Receivers,
}

impl tonic::service::Interceptor for GrpcGuard {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(request);
        };
        let value = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        match check(tokens, value, false) {
            Ok(()) => Ok(request),
            Err(refusal) => {
                self.receivers
                    .metrics()
                    .add_rejected(RejectReason::Unauthenticated, 1);
                tracing::debug!(reason = %refusal, "grpc request refused");
                Err(tonic::Status::unauthenticated(refusal.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "alpha-token-0123456789";
    const B: &str = "bravo-token-0123456789";

    #[test]
    fn file_text_skips_comments_and_blank_lines() {
        let tokens = Tokens::parse(&format!("# ingest\n\n  {A}  \n#{B}\n{B}\n"), "f").unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.accepts(A.as_bytes()));
        assert!(tokens.accepts(B.as_bytes()));
        assert!(!tokens.accepts(b"alpha-token-012345678"));
        assert!(!tokens.accepts(b""));
    }

    #[test]
    fn list_splits_on_commas_and_whitespace() {
        let tokens = Tokens::parse_list(&format!(" {A},{B}\n"), "env").unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.accepts(B.as_bytes()));
    }

    #[test]
    fn bad_files_are_refused_without_echoing_the_token() {
        let err = Tokens::parse("# nothing\n\n", "tokens.txt").unwrap_err();
        assert!(matches!(err, TokenError::Empty { .. }), "{err}");
        let err = Tokens::parse(&format!("{A}\nshort-secret\n"), "tokens.txt").unwrap_err();
        assert!(matches!(err, TokenError::TooShort { line: 2, .. }), "{err}");
        assert!(!err.to_string().contains("short-secret"));
        let err = Tokens::parse("töken-with-umlaut-000", "t").unwrap_err();
        assert!(matches!(err, TokenError::BadCharacter { line: 1, .. }));
        let err = Tokens::parse_list("a-token with-space-in-it", "env").unwrap_err();
        assert!(matches!(err, TokenError::TooShort { line: 1, .. }), "{err}");
        let missing = Path::new("/nonexistent/toctou-tokens");
        assert!(matches!(
            Tokens::from_file(missing),
            Err(TokenError::Read { .. })
        ));
    }

    #[test]
    fn debug_never_shows_a_token() {
        let tokens = Tokens::parse(A, "f").unwrap();
        let shown = format!(
            "{tokens:?} {:?}",
            ReceiverAuth {
                otlp: Some(tokens.clone()),
                audit: None
            }
        );
        assert!(!shown.contains(A), "{shown}");
        assert!(shown.contains("Tokens(1 redacted)"), "{shown}");
    }

    #[test]
    fn union_accepts_both() {
        let a = Tokens::parse(A, "a").unwrap();
        let b = Tokens::parse(B, "b").unwrap();
        let both = a.union(&b);
        assert!(both.accepts(A.as_bytes()) && both.accepts(B.as_bytes()));
        assert!(!a.accepts(B.as_bytes()));
    }

    #[test]
    fn authorization_schemes() {
        let tokens = Tokens::parse(A, "f").unwrap();
        let bearer = format!("Bearer {A}");
        assert_eq!(check(&tokens, Some(bearer.as_bytes()), false), Ok(()));
        let lower = format!("bearer  {A} ");
        assert_eq!(check(&tokens, Some(lower.as_bytes()), false), Ok(()));
        assert_eq!(check(&tokens, None, false), Err(Refusal::Missing));
        assert_eq!(
            check(&tokens, Some(b"Bearer wrong-token-0123456789"), false),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            check(&tokens, Some(b"Bearer "), false),
            Err(Refusal::Missing)
        );
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("anyone:{A}"))
        );
        assert_eq!(
            check(&tokens, Some(basic.as_bytes()), false),
            Err(Refusal::Missing)
        );
        assert_eq!(check(&tokens, Some(basic.as_bytes()), true), Ok(()));
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("anyone:nope")
        );
        assert_eq!(
            check(&tokens, Some(wrong.as_bytes()), true),
            Err(Refusal::Invalid)
        );
    }

    /// The compare walks every digest: a token equal to the last of many is found, and
    /// tokens differing only in their last byte are told apart.
    #[test]
    fn compare_covers_every_token() {
        let text: String = (0..50)
            .map(|i| format!("token-number-{i:04}-xyz\n"))
            .collect();
        let tokens = Tokens::parse(&text, "f").unwrap();
        assert!(tokens.accepts(b"token-number-0049-xyz"));
        assert!(tokens.accepts(b"token-number-0000-xyz"));
        assert!(!tokens.accepts(b"token-number-0049-xyZ"));
        assert!(!tokens.accepts(b"token-number-0050-xyz"));
    }
}
