//! The HTTP API of `toctou run` (default 127.0.0.1:8686): the built-in page, findings,
//! metrics and health.
//!
//! - `GET /` → the page (see [`page`]), with its files under `/assets/`.
//! - `GET /api/v1/findings?kind=&since=&limit=&before=` → `{"findings":[...],"next":N}`,
//!   oldest first, the latest `limit` (default 100; capped at 1000 and 4 MiB of findings)
//!   matching findings older than `before` if given; `since` is Unix nanoseconds or RFC
//!   3339 (before year 2554, where nanoseconds leave `u64`). `next` is null when no older
//!   finding matches; when the page filled up it is the `before` that asks for the rest.
//! - `GET /api/v1/summary?seconds=` → what the page draws: counts by kind, findings per
//!   second by kind over the last `seconds` (default 300, at most 600), the race-window
//!   histogram, and a few pipeline gauges. Same cost with 0 findings or 100k.
//! - `GET /api/v1/risks` → `{"risks":[...],"dropped":N,"published_ns":T}`: endpoints whose
//!   requests read a table and then write it unprotected, most requests first (inference,
//!   issue 26; never findings). Refreshed every second; empty with `--infer false`.
//! - `GET /metrics` → Prometheus text: the node's registry (server/src/metrics.rs): the
//!   receivers', the correlator's, the store's and, with `--clickhouse-url`, the sink's.
//! - `GET /healthz` → `ok`.
//!
//! With API tokens (`--api-token-file`, server/src/access.rs) everything but `/healthz` answers
//! 401 without one. Everything a response echoes is JSON with `<`, `>` and `&` escaped, so
//! no request can make the API answer markup, whatever the browser guesses.

use crate::access::ApiAccess;
use crate::page;
use crate::store::{FindingStore, Query, Summary, RATE_SECONDS};
use axum::extract::{Query as QueryParams, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use toctou_clickhouse::sink::SinkMetrics;
use toctou_collector::{EventPhase, Receivers, Signal};
use toctou_correlator::Stats;
use toctou_schema::FindingKind;
use tokio::net::TcpListener;

/// Findings returned when a request names no limit.
pub const DEFAULT_LIMIT: usize = 100;
/// Seconds of rate series a summary request gets when it names none: what the page shows.
pub const DEFAULT_SUMMARY_SECONDS: usize = 300;

/// State shared between the correlator thread (writer) and API requests (readers).
pub struct Shared {
    pub store: RwLock<FindingStore>,
    /// A snapshot of the engine's stats, refreshed every correlator tick.
    pub stats: Mutex<Stats>,
    pub receivers: Receivers,
    pub started_ns: u64,
    /// The ClickHouse sink's counters, with `--clickhouse-url`.
    pub sink: Option<Arc<SinkMetrics>>,
    /// The change-stream reader's counters, with `--cdc-postgres`.
    pub cdc: Option<Arc<crate::cdc::CdcMetrics>>,
    /// Who may read (tokens), over what (TLS), and how many were refused.
    pub access: ApiAccess,
    /// The receivers' queue to the correlator, to report its depth; weak, so that it never
    /// keeps the queue open at shutdown.
    pub queue: tokio::sync::mpsc::WeakSender<Vec<toctou_schema::Event>>,
    /// The same queue's bound in bytes; the correlator gives back what it takes.
    pub queue_bytes: toctou_collector::QueueBytes,
    /// Inference's counts and risks, with `--infer` (the default).
    pub inference: Option<Arc<crate::infer::InferShared>>,
}

/// The API's routes; `/metrics` encodes `registry`, the node's (see [`crate::metrics`]).
pub fn router(shared: Arc<Shared>, registry: Registry) -> Router {
    let protected = Router::new()
        .route("/api/v1/findings", get(findings))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/risks", get(risks))
        .route(
            "/metrics",
            crate::metrics::get(registry, crate::metrics::RUN_CONTENT_TYPE),
        )
        .route("/", get(page::index))
        .route("/assets/{name}", get(page::asset))
        .with_state(shared.clone());
    // /healthz after the guard: probes carry no token.
    shared
        .access
        .protect(protected)
        .route("/healthz", get(|| async { "ok\n" }))
}

pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let access = shared.access.clone();
    access
        .serve(listener, router(shared, registry), shutdown)
        .await
}

#[derive(Deserialize)]
struct FindingsParams {
    kind: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
    before: Option<u64>,
}

/// 400 with the message (which may quote the request) as escaped JSON.
fn bad_request(message: String) -> Response {
    let mut response = json_response(&serde_json::json!({ "error": message }), "the error");
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}

/// JSON with `<`, `>` and `&` written as `\u003c`, `\u003e`, `\u0026`: the same document to
/// a JSON parser, and no markup to anything that sniffs it as HTML. Outside strings JSON
/// has none of these characters, so replacing them bytewise only touches strings.
fn escaped_json(value: &impl Serialize) -> serde_json::Result<Vec<u8>> {
    let raw = serde_json::to_vec(value)?;
    let mut out = Vec::with_capacity(raw.len());
    for b in raw {
        match b {
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            _ => out.push(b),
        }
    }
    Ok(out)
}

async fn findings(
    State(shared): State<Arc<Shared>>,
    params: Result<QueryParams<FindingsParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let QueryParams(params) = match params {
        Ok(p) => p,
        Err(err) => return bad_request(format!("invalid query: {}", err.body_text())),
    };
    let kind = match params.kind.as_deref().filter(|k| !k.is_empty()) {
        None => None,
        Some(k) => match FindingKind::parse(k) {
            Some(kind) => Some(kind),
            None => {
                let known: Vec<&str> = FindingKind::ALL.iter().map(|k| k.as_str()).collect();
                return bad_request(format!(
                    "unknown kind {k:?}; expected one of {}",
                    known.join(", ")
                ));
            }
        },
    };
    let since_ns = match params.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match parse_since(s) {
            Some(ns) => Some(ns),
            None => {
                return bad_request(format!(
                    "invalid since {s:?}: expected Unix nanoseconds or an RFC 3339 time"
                ))
            }
        },
    };
    // A larger limit is capped, not refused: the answer's `next` says that more remain.
    let query = Query {
        kind,
        since_ns,
        before: params.before,
        limit: params.limit.unwrap_or(DEFAULT_LIMIT),
    };
    // One bounded page copied under the read lock, serialized after it is released.
    let page = shared
        .store
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .query(&query);
    json_response(
        &serde_json::json!({ "findings": page.findings, "next": page.next }),
        "findings",
    )
}

/// A JSON body that is never cached (it is live) nor sniffed as anything but JSON.
fn json_response(value: &impl Serialize, what: &str) -> Response {
    match escaped_json(value) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body,
        )
            .into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("serializing {what}: {err}"),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct SummaryParams {
    seconds: Option<usize>,
}

/// The answer of `/api/v1/summary`: the store's aggregates and the pipeline's gauges.
#[derive(Serialize)]
struct SummaryResponse {
    now_ns: u64,
    started_ns: u64,
    #[serde(flatten)]
    summary: Summary,
    pipeline: Pipeline,
}

/// What the page's header shows about the pipeline itself.
#[derive(Serialize)]
struct Pipeline {
    /// Check, use and audit events accepted by the receivers.
    events: u64,
    /// Uses joined with their check.
    pairs: u64,
    pending_checks: u64,
    prevented_races: u64,
    late_events: u64,
    watermark_lag_seconds: f64,
}

async fn summary(
    State(shared): State<Arc<Shared>>,
    params: Result<QueryParams<SummaryParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let QueryParams(params) = match params {
        Ok(p) => p,
        Err(err) => return bad_request(format!("invalid query: {}", err.body_text())),
    };
    let seconds = params.seconds.unwrap_or(DEFAULT_SUMMARY_SECONDS);
    if !(1..=RATE_SECONDS).contains(&seconds) {
        return bad_request(format!(
            "invalid seconds {seconds}: expected 1 to {RATE_SECONDS}"
        ));
    }
    let now_ns = toctou_schema::now_ns();
    let summary = shared
        .store
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .summary(now_ns, seconds);
    let pipeline = {
        let stats = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
        let metrics = shared.receivers.metrics();
        Pipeline {
            events: Signal::ALL
                .iter()
                .flat_map(|s| EventPhase::ALL.iter().map(move |p| metrics.events(*s, *p)))
                .sum(),
            pairs: stats.pairs,
            pending_checks: stats.pending_checks,
            prevented_races: stats.prevented_races,
            late_events: stats.late_events,
            watermark_lag_seconds: stats.watermark_lag_seconds,
        }
    };
    json_response(
        &SummaryResponse {
            now_ns,
            started_ns: shared.started_ns,
            summary,
            pipeline,
        },
        "the summary",
    )
}

/// `GET /api/v1/risks`: inference's last published risks.
async fn risks(State(shared): State<Arc<Shared>>) -> Response {
    let report = match &shared.inference {
        Some(i) => i.risks.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        None => toctou_infer::RiskReport::default(),
    };
    json_response(&report, "the risks")
}

fn parse_since(s: &str) -> Option<u64> {
    if let Ok(ns) = s.parse::<u64>() {
        return Some(ns);
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    // Past u64 nanoseconds (year 2554) a cast would wrap to a time in the past.
    u64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_markup_is_escaped_and_parses_back() {
        let value = serde_json::json!({ "error": "unknown kind \"<script>&\"" });
        let body = escaped_json(&value).unwrap();
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(
            !text.contains('<') && !text.contains('>') && !text.contains('&'),
            "{text}"
        );
        assert!(text.contains("\\u003cscript\\u003e\\u0026"), "{text}");
        let back: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn since_accepts_nanoseconds_and_rfc3339() {
        assert_eq!(
            parse_since("1700000000000000000"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(parse_since("yesterday"), None);
        assert_eq!(parse_since("2600-01-01T00:00:00Z"), None, "would wrap");
        assert_eq!(parse_since("1969-01-01T00:00:00Z"), None);
    }
}
