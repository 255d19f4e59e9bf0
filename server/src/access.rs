//! Who may reach toctou's listeners: the access flags (tokens, TLS, the loopback rule), what
//! each listener enforces once they are resolved, and the serving of a listener over TLS or
//! plain TCP.
//!
//! The rule: a listener on a non-loopback address must authenticate its clients (tokens, or
//! client certificates for the receivers) unless `--allow-unauthenticated` says otherwise;
//! the check runs before anything is bound, and its error names each listener at fault and
//! the flags that fix it. `/healthz` stays open everywhere, for probes. Requests the API
//! tokens refuse are counted (`toctou_api_unauthenticated_total`, read by the collector
//! [`ApiAccess::collector`] hands to the node's registry).
//!
//! Tokens come from files (one per line) or from `TOCTOU_*_TOKENS` variables; the
//! matching flags exist (clap reads a variable through its flag) but a command line is
//! visible to every user of the host, so the help says to prefer the variable.

use crate::tls::{self, TlsListener};
use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
#[cfg(feature = "cli")]
use clap::Args;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::Registry;
use rustls::ServerConfig;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use toctou_collector::auth::{self, Refusal};
use toctou_collector::listen::{self, ConnLimits, ListenerKind};
use toctou_collector::{ReceiverAuth, Receivers, ServeError, Tokens};
use toctou_schema::metrics::Family;
use tokio::net::TcpListener;

/// What a 401 of the API answers: bearer for programs, basic (any user, the token as the
/// password) so that a browser asks for it and the page opens.
const API_CHALLENGES: [&str; 2] = ["Bearer realm=\"toctou\"", "Basic realm=\"toctou\""];

/// The flags of every command with an HTTP listener of its own (API, page, metrics).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct AccessArgs {
    /// File of tokens (one per line, `#` comments) the API, page and /metrics accept as
    /// `Authorization: Bearer` (or as a basic-auth password); /healthz stays open. Tokens may
    /// also be given in TOCTOU_API_TOKENS (comma-separated); both sets are accepted.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_API_TOKEN_FILE"))]
    pub api_token_file: Option<PathBuf>,
    /// API tokens themselves, comma-separated. Prefer the variable: a command line is
    /// visible to every user of the host.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_API_TOKENS", hide_env_values = true)
    )]
    pub api_tokens: Option<TokenList>,
    /// PEM certificate chain: every listener (receivers, API) speaks TLS. Needs --tls-key.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_TLS_CERT"))]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_TLS_KEY"))]
    pub tls_key: Option<PathBuf>,
    /// Listen on non-loopback addresses without tokens: anyone who can reach a port may send
    /// events or read findings.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_ALLOW_UNAUTHENTICATED"))]
    pub allow_unauthenticated: bool,
    /// Connection limits of every listener.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub connections: ConnArgs,
}

/// The connection limits every listener applies (toctou_collector::listen), one set for
/// all: each listener counts its own connections, so a flood of one port leaves the
/// others (the API, /healthz) reachable.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct ConnArgs {
    /// Connections open at once per listener; more are answered 503 and closed
    /// (counted in toctou_connections_refused_total).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_CONNECTIONS", default_value_t = listen::DEFAULT_MAX_CONNECTIONS))]
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration))]
    pub header_read_timeout: std::time::Duration,
    /// HTTP/2 streams one connection may have open at once (gRPC and HTTP/2 listeners).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_CONCURRENT_STREAMS", default_value_t = listen::DEFAULT_MAX_CONCURRENT_STREAMS))]
    pub max_concurrent_streams: u32,
    /// How long a gRPC call may take as a whole, its message included.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration))]
    pub request_timeout: std::time::Duration,
    /// Host names (comma-separated) the HTTP listeners answer to besides localhost,
    /// 127.0.0.1, ::1 and their own address; others get 403 (against DNS rebinding). A
    /// listener on a non-loopback address checks only when this is set.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_ALLOWED_HOSTS", value_delimiter = ',')
    )]
    pub allowed_hosts: Vec<String>,
}

/// The `Host` names an HTTP listener answers to. A web page the user visits can resolve
/// its own name to 127.0.0.1 (DNS rebinding) and then read the API or send events to a
/// listener open on loopback; its requests still carry its own name as `Host`, so
/// refusing names that are not ours stops it. `/healthz` is answered whatever the name.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    names: Arc<Vec<String>>,
    /// Whose refusals `toctou_host_refused_total` counts.
    listener: ListenerKind,
}

impl AllowedHosts {
    /// The names for a listener on `addr`: loopback names, the address, and `extra`;
    /// `None` (no check) for a non-loopback listener without `extra`, whose clients may
    /// use any name that reaches it.
    pub fn for_listener(
        addr: SocketAddr,
        extra: &[String],
        listener: ListenerKind,
    ) -> Option<AllowedHosts> {
        if extra.is_empty() && !addr.ip().to_canonical().is_loopback() {
            return None;
        }
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .chain([addr.ip().to_string()])
            .chain(extra.iter().map(|h| h.trim().to_ascii_lowercase()))
            .filter(|h| !h.is_empty())
            .collect();
        names.dedup();
        Some(AllowedHosts {
            names: Arc::new(names),
            listener,
        })
    }

    /// Whether `host` (a `Host` header or an authority, with or without a port) is ours.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => host
                .rsplit_once(':')
                .map_or(host.as_str(), |(name, _)| name),
        };
        let name = name.trim_end_matches('.');
        self.names.iter().any(|allowed| allowed == name)
    }

    /// `router` behind the check.
    pub fn guard(hosts: Option<AllowedHosts>, router: Router) -> Router {
        match hosts {
            None => router,
            Some(hosts) => {
                router.layer(middleware::from_fn_with_state(hosts, require_allowed_host))
            }
        }
    }
}

async fn require_allowed_host(
    State(hosts): State<AllowedHosts>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if request.uri().path() == "/healthz" || hosts.allows(host) {
        return next.run(request).await;
    }
    listen::count_host_refused(hosts.listener);
    tracing::debug!(host, "request refused: host not allowed");
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({
            "error": format!("host {host:?} is not one this listener answers to (--allowed-hosts)")
        })
        .to_string(),
    )
        .into_response()
}

impl ConnArgs {
    /// The limits, with the connection cap lowered if three listeners' worth would not fit
    /// in the process's file descriptors (raised to the hard limit first).
    pub fn limits(&self) -> Result<ConnLimits> {
        if self.max_connections == 0 || self.max_concurrent_streams == 0 {
            bail!("--max-connections and --max-concurrent-streams must be greater than zero");
        }
        if self.header_read_timeout.is_zero() || self.request_timeout.is_zero() {
            bail!("--header-read-timeout and --request-timeout must be greater than zero");
        }
        let mut max_connections = self.max_connections;
        if let Some(fds) = raise_fd_limit() {
            // Three listeners, and room for the rest (files, ClickHouse, Kafka).
            let fit = (fds.saturating_sub(FD_RESERVE) / 3).max(1) as usize;
            if fit < max_connections {
                tracing::warn!(
                    max_connections,
                    lowered_to = fit,
                    fd_limit = fds,
                    "--max-connections lowered to fit three listeners in the open-file limit"
                );
                max_connections = fit;
            }
        }
        Ok(ConnLimits {
            max_connections,
            header_read_timeout: self.header_read_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
            request_timeout: self.request_timeout,
        })
    }
}

/// File descriptors kept for everything but the listeners' connections.
const FD_RESERVE: u64 = 256;

/// Raises the soft limit of open files to the hard one, so the connection caps (not the
/// fd table) refuse a flood; returns the soft limit in force, `None` if it is unknown.
fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// The receivers' access flags, part of `ReceiverArgs` (server/src/cli.rs).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct ReceiverAccessArgs {
    /// File of tokens (one per line, `#` comments) the OTLP receivers accept as
    /// `Authorization: Bearer`, and the audit webhook unless --audit-token-file is given.
    /// Tokens may also be given in TOCTOU_INGEST_TOKENS (comma-separated).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_INGEST_TOKEN_FILE"))]
    pub ingest_token_file: Option<PathBuf>,
    /// Ingest tokens themselves, comma-separated. Prefer the variable: a command line is
    /// visible to every user of the host.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_INGEST_TOKENS", hide_env_values = true)
    )]
    pub ingest_tokens: Option<TokenList>,
    /// File of tokens for the Kubernetes audit webhook (/v1/k8s-audit) alone, put in the API
    /// server's webhook kubeconfig; also TOCTOU_AUDIT_TOKENS.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_AUDIT_TOKEN_FILE"))]
    pub audit_token_file: Option<PathBuf>,
    /// Audit webhook tokens themselves, comma-separated (prefer the variable).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_AUDIT_TOKENS", hide_env_values = true)
    )]
    pub audit_tokens: Option<TokenList>,
    /// PEM CA certificates: the receivers require a client certificate issued by one of them
    /// (mutual TLS). Needs --tls-cert.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_TLS_CLIENT_CA"))]
    pub tls_client_ca: Option<PathBuf>,
}

/// Tokens as given to a `--*-tokens` flag or its variable: parsed after clap, so that a
/// malformed one is reported by position, never echoed as clap echoes a bad value.
#[derive(Clone)]
pub struct TokenList(String);

impl std::fmt::Debug for TokenList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenList(redacted)")
    }
}

impl std::str::FromStr for TokenList {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<TokenList, Self::Err> {
        Ok(TokenList(s.to_string()))
    }
}

/// A token set from a file and/or a list (`origin` names the list in errors); `None` when
/// neither is given or the list is blank.
pub fn read_tokens(
    file: Option<&Path>,
    list: Option<&TokenList>,
    origin: &str,
) -> Result<Option<Tokens>> {
    let from_file = file.map(Tokens::from_file).transpose()?;
    let from_env = match list {
        Some(TokenList(text)) if !text.trim().is_empty() => Some(Tokens::parse_list(text, origin)?),
        _ => None,
    };
    Ok(match (from_file, from_env) {
        (Some(a), Some(b)) => Some(a.union(&b)),
        (a, b) => a.or(b),
    })
}

/// The server's TLS configuration for the API, and for the receivers with their client CA.
fn tls_config(args: &AccessArgs, client_ca: Option<&Path>) -> Result<Option<Arc<ServerConfig>>> {
    match (&args.tls_cert, &args.tls_key) {
        (None, None) if client_ca.is_some() => {
            bail!("--tls-client-ca needs --tls-cert and --tls-key")
        }
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(tls::server_config(cert, key, client_ca)?)),
        (Some(_), None) => bail!("--tls-cert needs --tls-key"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert"),
    }
}

/// One listener as the loopback rule sees it.
pub struct Exposure {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Whether it authenticates every client.
    pub authenticated: bool,
    /// The flags that would make it authenticate.
    pub fix: &'static str,
}

/// Refuses to start when a listener on a non-loopback address would accept anyone, unless
/// `allow` (`--allow-unauthenticated`).
pub fn refuse_open_listeners(listeners: &[Exposure], allow: bool) -> Result<()> {
    let open: Vec<&Exposure> = listeners
        .iter()
        .filter(|l| !l.authenticated && !l.addr.ip().to_canonical().is_loopback())
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    if allow {
        for l in open {
            tracing::warn!(listener = l.name, addr = %l.addr, "listening without authentication (--allow-unauthenticated)");
        }
        return Ok(());
    }
    let mut message =
        String::from("refusing to listen without authentication on a non-loopback address:");
    for l in open {
        message.push_str(&format!("\n  {} on {}: set {}", l.name, l.addr, l.fix));
    }
    message.push_str(
        "\nor bind to 127.0.0.1, or pass --allow-unauthenticated \
         (TOCTOU_ALLOW_UNAUTHENTICATED=true) to accept anyone who can reach the port",
    );
    bail!(message)
}

static UNAUTHENTICATED: LazyLock<Family> = LazyLock::new(|| {
    Family::counter(
        "toctou_api_unauthenticated_total",
        "API, page and metrics requests refused for a missing or wrong token.",
        &[],
    )
});

/// Reads the API guard's count of refused requests.
struct UnauthenticatedCollector(Arc<AtomicU64>);

impl Collector for UnauthenticatedCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![UNAUTHENTICATED.desc()]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        vec![UNAUTHENTICATED.value(self.0.load(Ordering::Relaxed) as f64)]
    }
}

/// How to fix an API listener that accepts anyone.
pub const API_FIX: &str = "--api-token-file or TOCTOU_API_TOKENS";

/// The API listener's access: its tokens, TLS, and the count of refused requests.
#[derive(Clone, Default)]
pub struct ApiAccess {
    pub tokens: Option<Tokens>,
    pub tls: Option<Arc<ServerConfig>>,
    pub limits: ConnLimits,
    /// `--allowed-hosts`.
    pub allowed_hosts: Vec<String>,
    refused: Arc<AtomicU64>,
}

impl std::fmt::Debug for ApiAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAccess")
            .field("tokens", &self.tokens)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ApiAccess {
    /// Reads the API's tokens and TLS files.
    pub fn from_args(args: &AccessArgs) -> Result<ApiAccess> {
        let access = ApiAccess {
            tokens: read_tokens(
                args.api_token_file.as_deref(),
                args.api_tokens.as_ref(),
                "--api-tokens/TOCTOU_API_TOKENS",
            )?,
            tls: tls_config(args, None)?,
            limits: args.connections.limits()?,
            allowed_hosts: args.connections.allowed_hosts.clone(),
            refused: Arc::default(),
        };
        Ok(access)
    }

    /// The API's line for [`refuse_open_listeners`].
    pub fn exposure(&self, name: &'static str, addr: SocketAddr) -> Exposure {
        Exposure {
            name,
            addr,
            authenticated: self.tokens.is_some(),
            fix: API_FIX,
        }
    }

    /// `router` behind the tokens (every route it has so far: add `/healthz` after).
    pub fn protect(&self, router: Router) -> Router {
        match &self.tokens {
            None => router,
            Some(_) => router.route_layer(middleware::from_fn_with_state(
                self.clone(),
                require_api_token,
            )),
        }
    }

    /// The HTTP listener of a command without the API (collector, correlator): /metrics
    /// (the node's `registry`) behind the API tokens, /healthz open for probes.
    pub fn metrics_router(self, registry: Registry) -> Router {
        let metrics = Router::new().route(
            "/metrics",
            crate::metrics::get(registry, prometheus::TEXT_FORMAT),
        );
        // /healthz after the guard: probes carry no token.
        self.protect(metrics)
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
    }

    /// The collector of `toctou_api_unauthenticated_total`, for the node's registry.
    pub fn collector(&self) -> impl Collector {
        UnauthenticatedCollector(self.refused.clone())
    }

    /// Serves `router` on `listener` (with TLS when configured) until `shutdown`.
    pub async fn serve(
        &self,
        listener: TcpListener,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (kind, limits) = (ListenerKind::Api, self.limits);
        let hosts = AllowedHosts::for_listener(listener.local_addr()?, &self.allowed_hosts, kind);
        let router = AllowedHosts::guard(hosts, router);
        match &self.tls {
            None => listen::serve_router(listener, router, kind, limits, shutdown).await,
            Some(config) => {
                let listener = TlsListener::new(listener, config.clone())?;
                listen::serve_router(listener, router, kind, limits, shutdown).await
            }
        }
    }
}

async fn require_api_token(
    State(access): State<ApiAccess>,
    request: Request,
    next: Next,
) -> Response {
    let Some(tokens) = &access.tokens else {
        return next.run(request).await;
    };
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match auth::check(tokens, value, true) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            access.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(reason = %refusal, path = request.uri().path(), "api request refused");
            api_unauthorized(refusal)
        }
    }
}

fn api_unauthorized(refusal: Refusal) -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        serde_json::json!({ "error": refusal.to_string() }).to_string(),
    )
        .into_response();
    for challenge in API_CHALLENGES {
        response.headers_mut().append(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(challenge),
        );
    }
    response
}

/// The receivers' access: tokens per route group and TLS (with client certificates when
/// `--tls-client-ca` is set).
#[derive(Clone, Debug, Default)]
pub struct ReceiverAccess {
    pub auth: ReceiverAuth,
    pub tls: Option<Arc<ServerConfig>>,
    pub client_certificates: bool,
    pub limits: ConnLimits,
    /// `--allowed-hosts`.
    pub allowed_hosts: Vec<String>,
}

/// The access of a command with the receivers and one HTTP listener of its own (`run`'s
/// API, the collector's metrics), once the loopback rule has passed for all three.
pub fn receivers_and_api(
    receivers: &crate::cli::ReceiverArgs,
    access: &AccessArgs,
    api_name: &'static str,
    api_addr: SocketAddr,
) -> Result<(ReceiverAccess, ApiAccess)> {
    let receiver_access = ReceiverAccess::from_args(&receivers.access, access)?;
    let api_access = ApiAccess::from_args(access)?;
    let [grpc, http] =
        receiver_access.exposures(receivers.otlp_grpc_addr, receivers.otlp_http_addr);
    refuse_open_listeners(
        &[grpc, http, api_access.exposure(api_name, api_addr)],
        access.allow_unauthenticated,
    )?;
    Ok((receiver_access, api_access))
}

impl ReceiverAccess {
    pub fn from_args(receiver: &ReceiverAccessArgs, api: &AccessArgs) -> Result<ReceiverAccess> {
        let otlp = read_tokens(
            receiver.ingest_token_file.as_deref(),
            receiver.ingest_tokens.as_ref(),
            "--ingest-tokens/TOCTOU_INGEST_TOKENS",
        )?;
        let audit = read_tokens(
            receiver.audit_token_file.as_deref(),
            receiver.audit_tokens.as_ref(),
            "--audit-tokens/TOCTOU_AUDIT_TOKENS",
        )?;
        Ok(ReceiverAccess {
            auth: ReceiverAuth {
                // Without tokens of its own the webhook takes the ingest tokens.
                audit: audit.or_else(|| otlp.clone()),
                otlp,
            },
            tls: tls_config(api, receiver.tls_client_ca.as_deref())
                .context("the receivers' TLS")?,
            client_certificates: receiver.tls_client_ca.is_some(),
            limits: api.connections.limits()?,
            allowed_hosts: api.connections.allowed_hosts.clone(),
        })
    }

    /// The receivers' lines for [`refuse_open_listeners`]: client certificates count as
    /// authentication; the HTTP listener needs both its route groups covered.
    pub fn exposures(&self, grpc: SocketAddr, http: SocketAddr) -> [Exposure; 2] {
        let certs = self.client_certificates;
        [
            Exposure {
                name: "OTLP/gRPC",
                addr: grpc,
                authenticated: certs || self.auth.otlp.is_some(),
                fix: "--ingest-token-file or TOCTOU_INGEST_TOKENS (or --tls-client-ca)",
            },
            Exposure {
                name: "OTLP/HTTP and audit webhook",
                addr: http,
                authenticated: certs || (self.auth.otlp.is_some() && self.auth.audit.is_some()),
                fix: "--ingest-token-file or TOCTOU_INGEST_TOKENS (the audit webhook takes them \
                      too unless --audit-token-file is set) (or --tls-client-ca)",
            },
        ]
    }

    /// Serves the HTTP receivers (OTLP/HTTP, audit webhook) on `listener` until `shutdown`.
    pub async fn serve_http(
        self,
        listener: TcpListener,
        receivers: Receivers,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let (kind, limits) = (ListenerKind::OtlpHttp, self.limits);
        let addr = listener.local_addr().map_err(ServeError::Http)?;
        let hosts = AllowedHosts::for_listener(addr, &self.allowed_hosts, kind);
        let router = toctou_collector::secured_http_router(receivers, &self.auth);
        let router = AllowedHosts::guard(hosts, router);
        let served = match self.tls {
            None => listen::serve_router(listener, router, kind, limits, shutdown).await,
            Some(config) => {
                let listener = TlsListener::new(listener, config).map_err(ServeError::Http)?;
                listen::serve_router(listener, router, kind, limits, shutdown).await
            }
        };
        served.map_err(ServeError::Http)
    }

    /// Serves the gRPC receivers on `listener` until `shutdown`.
    pub async fn serve_grpc(
        self,
        listener: TcpListener,
        receivers: Receivers,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let (auth, limits) = (self.auth, self.limits);
        match self.tls {
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                toctou_collector::serve_grpc_on(incoming, receivers, auth, limits, shutdown).await
            }
            Some(config) => {
                let listener = TlsListener::new(listener, config).map_err(ServeError::Http)?;
                let incoming = listener.into_incoming();
                toctou_collector::serve_grpc_on(incoming, receivers, auth, limits, shutdown).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposure(addr: &str, authenticated: bool) -> Exposure {
        Exposure {
            name: "API",
            addr: addr.parse().unwrap(),
            authenticated,
            fix: API_FIX,
        }
    }

    #[test]
    fn only_our_names_reach_a_loopback_listener() {
        let hosts =
            AllowedHosts::for_listener("127.0.0.1:8686".parse().unwrap(), &[], ListenerKind::Api)
                .unwrap();
        for ok in [
            "localhost:8686",
            "127.0.0.1:8686",
            "[::1]:8686",
            "LOCALHOST",
            "localhost.",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:8686",
            "evil.example",
            "",
            "127.0.0.1.evil.example",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
        let extra = AllowedHosts::for_listener(
            "0.0.0.0:4318".parse().unwrap(),
            &["Toctou.internal".to_string()],
            ListenerKind::OtlpHttp,
        )
        .unwrap();
        assert!(extra.allows("toctou.internal:4318"));
        assert!(!extra.allows("evil.example"));
        assert!(AllowedHosts::for_listener(
            "0.0.0.0:4318".parse().unwrap(),
            &[],
            ListenerKind::OtlpHttp
        )
        .is_none());
    }

    #[test]
    fn loopback_needs_no_tokens_anything_else_does() {
        for addr in [
            "127.0.0.1:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
            "127.3.4.5:1",
        ] {
            refuse_open_listeners(&[exposure(addr, false)], false).unwrap();
        }
        for addr in [
            "0.0.0.0:1",
            "[::]:1",
            "192.168.1.10:1",
            "[::ffff:10.0.0.1]:1",
        ] {
            let err = refuse_open_listeners(&[exposure(addr, false)], false).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&format!("API on {addr}")), "{text}");
            assert!(text.contains("--api-token-file"), "{text}");
            assert!(text.contains("--allow-unauthenticated"), "{text}");
            refuse_open_listeners(&[exposure(addr, true)], false).unwrap();
            refuse_open_listeners(&[exposure(addr, false)], true).unwrap();
        }
    }

    #[test]
    fn every_open_listener_is_named() {
        let access = ReceiverAccess::default();
        let [grpc, http] = access.exposures(
            "0.0.0.0:4317".parse().unwrap(),
            "0.0.0.0:4318".parse().unwrap(),
        );
        let err = refuse_open_listeners(&[grpc, http, exposure("127.0.0.1:8686", false)], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("OTLP/gRPC on 0.0.0.0:4317"), "{err}");
        assert!(
            err.contains("OTLP/HTTP and audit webhook on 0.0.0.0:4318"),
            "{err}"
        );
        assert!(!err.contains("8686"), "{err}");
    }

    #[test]
    fn audit_tokens_alone_leave_otlp_open() {
        let tokens = Tokens::parse("an-audit-token-1234", "t").unwrap();
        let access = ReceiverAccess {
            auth: ReceiverAuth {
                otlp: None,
                audit: Some(tokens),
            },
            ..Default::default()
        };
        let [_, http] = access.exposures(
            "0.0.0.0:4317".parse().unwrap(),
            "0.0.0.0:4318".parse().unwrap(),
        );
        assert!(!http.authenticated);
    }
}
