//! The HTTP receivers on axum: OTLP/HTTP (`POST /v1/traces`, `POST /v1/logs`, protobuf or
//! JSON, optionally gzip or zstd), Debezium Server's HTTP sink (`POST /v1/cdc/debezium`,
//! behind the ingest tokens) and the Kubernetes audit webhook (`POST /v1/k8s-audit`).
//!
//! Status codes follow the OTLP/HTTP spec: 200 with a partial success for a request whose
//! good items were taken, 400 for an undecodable body, 413 over the size limit, 415 for a
//! content type or encoding we do not take, 405 for a method other than POST, and 503 with
//! `Retry-After` when the sink pushes back. Error bodies are a `google.rpc.Status` in the
//! request's format. This file holds the one mapping from [`IngestError`] to HTTP status.
//! A route group given tokens answers 401 before reading the body (see [`crate::auth`]).

use crate::auth::{
    require_token, require_token_or_signature, HttpGuard, PendingSignature, ReceiverAuth, Tokens,
};
use crate::body::{self, Encoding, Format};
use crate::budget;
use crate::decoded::{Decoded, Signal};
use crate::error::{DecodeError, IngestError, ServeError};
use crate::grpc::grpc_code;
use crate::json;
use crate::k8s::decode_k8s_audit;
use crate::listen::{self, ConnLimits, ListenerKind};
use crate::metrics::Transport;
use crate::receivers::{ConnShare, Receipt, Receivers, BLOCKING_THRESHOLD};
use crate::transform::{decode_logs, decode_traces};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::Listener;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use std::future::Future;
use tokio::net::TcpListener;

/// The receiver routes, ready to merge into a larger router or to serve alone; open to
/// anyone (see [`secured_http_router`]).
pub fn http_router(state: Receivers) -> Router {
    secured_http_router(state, &ReceiverAuth::default())
}

/// The receiver routes, each group behind its own tokens when it has any: OTLP
/// (`/v1/traces`, `/v1/logs`) and the audit webhook (`/v1/k8s-audit`), so a cluster's API
/// server can be given a token that cannot send spans.
pub fn secured_http_router(state: Receivers, auth: &ReceiverAuth) -> Router {
    let guard = |router: Router<Receivers>, tokens: &Option<Tokens>| match tokens {
        None => router,
        Some(tokens) => router.route_layer(middleware::from_fn_with_state(
            HttpGuard {
                tokens: tokens.clone(),
                receivers: state.clone(),
            },
            require_token,
        )),
    };
    let otlp = Router::new()
        .route("/v1/traces", post(traces).fallback(wrong_method))
        .route("/v1/logs", post(logs).fallback(wrong_method));
    // Debezium Server's HTTP sink sends no bearer token; it can sign its requests (Standard
    // Webhooks), which is checked once the body is read (`crate::auth::PendingSignature`).
    let debezium = Router::new().route("/v1/cdc/debezium", post(debezium).fallback(wrong_method));
    let debezium = match &auth.otlp {
        None => debezium,
        Some(tokens) => debezium.route_layer(middleware::from_fn_with_state(
            HttpGuard {
                tokens: tokens.clone(),
                receivers: state.clone(),
            },
            require_token_or_signature,
        )),
    };
    let audit = Router::new().route("/v1/k8s-audit", post(k8s_audit).fallback(wrong_method));
    guard(otlp, &auth.otlp)
        .merge(debezium)
        .merge(guard(audit, &auth.audit))
        .with_state(state)
}

/// Serves [`http_router`] on `listener` until `shutdown` resolves, then finishes the
/// requests in flight.
pub async fn serve_http(
    listener: TcpListener,
    state: Receivers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_http_on(listener, state, ReceiverAuth::default(), shutdown).await
}

/// [`serve_http`] on any listener (a TLS one, say) with the routes behind `auth`, and the
/// default connection limits (see [`crate::listen`]).
pub async fn serve_http_on<L>(
    listener: L,
    state: Receivers,
    auth: ReceiverAuth,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    L: Listener,
{
    let router = secured_http_router(state, &auth);
    let (kind, limits) = (ListenerKind::OtlpHttp, ConnLimits::default());
    listen::serve_router(listener, router, kind, limits, shutdown)
        .await
        .map_err(ServeError::Http)
}

async fn traces(State(r): State<Receivers>, req: Request) -> Response {
    otlp(r, Signal::Traces, req).await
}

async fn logs(State(r): State<Receivers>, req: Request) -> Response {
    otlp(r, Signal::Logs, req).await
}

async fn otlp(r: Receivers, signal: Signal, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let format = match body::otlp_format(&parts.headers) {
        Ok(f) => f,
        Err(e) => return closing(failure(&r, None, e)),
    };
    match ingest(&r, signal, format, &parts, body).await {
        Ok(receipt) => export_response(signal, format, &receipt),
        Err(failed) => failed.respond(&r, Some(format)),
    }
}

/// An ingest failure, and whether it came after the request body was read to its end.
struct Failed {
    error: IngestError,
    body_read: bool,
}

impl Failed {
    /// The error's answer, marked `Connection: close` when the body was not read.
    fn respond(self, r: &Receivers, format: Option<Format>) -> Response {
        let response = failure(r, format, self.error);
        if self.body_read {
            response
        } else {
            closing(response)
        }
    }
}

/// Marks an answer given before the request body was read with `Connection: close`. hyper
/// cannot reuse such a connection and closes it after the answer; without the header a
/// keep-alive client (an SDK exporter under push-back, say) puts it back in its pool and its
/// next request dies on the close as a transport error instead of being answered.
pub(crate) fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn k8s_audit(State(r): State<Receivers>, req: Request) -> Response {
    json_records(r, Signal::K8sAudit, req).await
}

/// Debezium Server's HTTP sink (`crate::debezium`).
async fn debezium(State(r): State<Receivers>, req: Request) -> Response {
    json_records(r, Signal::Cdc, req).await
}

/// The audit routes' JSON bodies of records: the answer counts what the body held.
async fn json_records(r: Receivers, signal: Signal, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Err(e) = body::json_only(&parts.headers) {
        return closing(failure(&r, None, e));
    }
    match ingest(&r, signal, Format::Json, &parts, body).await {
        Ok(receipt) => {
            let body = serde_json::json!({
                "accepted": receipt.accepted,
                "ignored": receipt.ignored,
                "rejected": receipt.rejected,
                "errors": receipt.errors,
            });
            respond(StatusCode::OK, Format::Json, body.to_string().into_bytes())
        }
        Err(failed) => failed.respond(&r, Some(Format::Json)),
    }
}

async fn wrong_method(State(r): State<Receivers>, method: Method) -> Response {
    failure(&r, None, IngestError::MethodNotAllowed(method.to_string()))
}

/// Read (under the limit), decompress, decode, deliver: the request's whole life.
async fn ingest(
    r: &Receivers,
    signal: Signal,
    format: Format,
    parts: &http::request::Parts,
    body: Body,
) -> Result<Receipt, Failed> {
    let headers = &parts.headers;
    let unread = |error| Failed {
        error,
        body_read: false,
    };
    let read = |error| Failed {
        error,
        body_read: true,
    };
    let encoding = body::encoding(headers).map_err(unread)?;
    // The body is read before a slot is taken, so a slow sender holds no slot, only the
    // bytes it sent, counted against the receive budget (which bounds bodies in memory).
    let limit = r.config().max_request_bytes;
    let mut held = r.budget(parts.extensions.get::<ConnShare>());
    let wire = body::read_limited(
        headers,
        body,
        limit,
        &mut held,
        r.config().body_read_timeout,
    )
    .await
    .map_err(unread)?;
    if let Some(pending) = parts.extensions.get::<PendingSignature>() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        pending
            .verify(&wire, now)
            .map_err(|refusal| read(IngestError::Unauthenticated(refusal)))?;
    }
    // The slot is held until the sink took the events: it bounds the decoding at once.
    let _slot = r.slot().await.map_err(read)?;
    r.metrics()
        .add_received_bytes(Transport::Http, wire.len() as u64);
    // Any compressed body can inflate past the threshold, so those always go off the reactor.
    let heavy = encoding != Encoding::Identity || wire.len() > BLOCKING_THRESHOLD;
    let debezium = r.debezium().clone();
    let decoded = r
        .decode(heavy, move || {
            let raw = body::decompress(encoding, wire, limit)?;
            match signal {
                Signal::Cdc => debezium.decode(&raw),
                _ => decode(signal, format, &raw),
            }
        })
        .await
        .map_err(read)?;
    r.deliver(signal, decoded).await.map_err(read)
}

pub(crate) fn decode(signal: Signal, format: Format, raw: &[u8]) -> Result<Decoded, IngestError> {
    let decoded = match (signal, format) {
        // The wire reader first (most of the cost of a request was allocating attributes
        // nobody reads); prost for anything it does not take, with prost's error.
        (Signal::Traces, Format::Protobuf) => match crate::wire::traces(raw) {
            Some(decoded) => decoded,
            None => {
                budget::check_traces(raw)?;
                decode_traces(&ExportTraceServiceRequest::decode(raw).map_err(DecodeError::from)?)
            }
        },
        (Signal::Traces, Format::Json) => decode_traces(&json::traces_from_json(raw)?),
        (Signal::Logs, Format::Protobuf) => match crate::wire::logs(raw) {
            Some(decoded) => decoded,
            None => {
                budget::check_logs(raw)?;
                decode_logs(&ExportLogsServiceRequest::decode(raw).map_err(DecodeError::from)?)
            }
        },
        (Signal::Logs, Format::Json) => decode_logs(&json::logs_from_json(raw)?),
        (Signal::K8sAudit, _) => decode_k8s_audit(raw)?,
        // Change-stream records need their route's state (`crate::debezium`).
        (Signal::Cdc, _) => {
            return Err(DecodeError::UnknownDocument(
                "Debezium records are taken at /v1/cdc/debezium".into(),
            )
            .into())
        }
    };
    Ok(decoded)
}

/// The OTLP export response in the request's format, with a partial success when any item
/// was rejected.
fn export_response(signal: Signal, format: Format, receipt: &Receipt) -> Response {
    let rejected = receipt.rejected as i64;
    let partial = receipt.rejected > 0;
    let body = match (signal, format) {
        (Signal::Logs, Format::Protobuf) => ExportLogsServiceResponse {
            partial_success: partial.then(|| ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: receipt.message.clone(),
            }),
        }
        .encode_to_vec(),
        (Signal::Logs, Format::Json) => {
            json::export_response("rejectedLogRecords", receipt.rejected, &receipt.message)
        }
        (_, Format::Protobuf) => ExportTraceServiceResponse {
            partial_success: partial.then(|| ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: receipt.message.clone(),
            }),
        }
        .encode_to_vec(),
        (_, Format::Json) => {
            json::export_response("rejectedSpans", receipt.rejected, &receipt.message)
        }
    };
    respond(StatusCode::OK, format, body)
}

/// The one mapping from a refused request to its HTTP status.
fn http_status(e: &IngestError) -> StatusCode {
    match e {
        IngestError::TooLarge { .. }
        | IngestError::TooLargeDecompressed { .. }
        | IngestError::Decode(DecodeError::OverBudget { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        IngestError::UnsupportedContentType(_) | IngestError::UnsupportedEncoding(_) => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        IngestError::BadCompression { .. } | IngestError::Read(_) | IngestError::Decode(_) => {
            StatusCode::BAD_REQUEST
        }
        IngestError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        IngestError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        IngestError::Sink(_) | IngestError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        IngestError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
    }
}

/// Counts the failure and answers it. `format` is the request's, when known; the body is
/// JSON otherwise, the more readable guess.
fn failure(r: &Receivers, format: Option<Format>, e: IngestError) -> Response {
    r.count_failure(&e);
    let status = http_status(&e);
    tracing::debug!(reason = e.reason().as_str(), status = status.as_u16(), error = %e, "http request refused");
    let message = e.to_string();
    let code = grpc_code(&e) as i32;
    let format = format.unwrap_or(Format::Json);
    let body = match format {
        Format::Protobuf => tonic_types::pb::Status {
            code,
            message,
            details: Vec::new(),
        }
        .encode_to_vec(),
        Format::Json => json::rpc_status(code, &message),
    };
    let mut response = respond(status, format, body);
    if let Some(retry_after) = e.retry_after() {
        // Whole seconds, rounded up: Retry-After has no finer unit, and 0 would invite
        // an immediate retry into the same full sink.
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    if let IngestError::MethodNotAllowed(_) = &e {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    response
}

fn respond(status: StatusCode, format: Format, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response()
}
