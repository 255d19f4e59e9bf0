//! The metrics of a node: one `prometheus` [`Registry`] per node (`toctou run`, `toctou
//! collector`, `toctou correlator`) holding the collectors of what it runs, the /metrics
//! handler that encodes it, and the families of `toctou run`'s own state (findings store,
//! queue, start time).
//!
//! Every family is declared once, by the collector of whoever owns its counters: the
//! receivers' and the listeners' in toctou-collector (`metrics`, `listen`), the engine's in
//! toctou-correlator, the ClickHouse sink's in toctou-clickhouse, the API guard's in
//! [`crate::access`], the TLS handshakes' in [`crate::tls`], Kafka's in
//! [`crate::kafka::metrics`], and the ones below. A family declared twice is refused when
//! a node builds its registry, at start-up ([`register`] panics). The counters stay where
//! they were (atomics, the engine's stats snapshot); collectors read them at scrape time.

use crate::access::ApiAccess;
use crate::api::Shared;
use crate::store::{FindingStore, MAX_LABEL_VALUE_BYTES, MAX_SERVICE_SERIES, OVERFLOW_LABEL};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::Registry;
use std::sync::Arc;
use toctou_clickhouse::sink::SinkCollector;
use toctou_collector::listen::ConnectionsCollector;
use toctou_collector::ReceiversCollector;
use toctou_correlator::StatsCollector;

/// What `toctou run`'s /metrics has always answered with; the Kafka nodes' answer
/// [`prometheus::TEXT_FORMAT`], the same without the charset.
pub const RUN_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A registry with what every node that listens serves: its connections per listener,
/// its failed TLS handshakes and the requests its API tokens refused.
pub fn registry(access: &ApiAccess) -> Registry {
    let registry = Registry::new();
    register(&registry, ConnectionsCollector);
    register(&registry, crate::tls::HandshakeCollector);
    register(&registry, access.collector());
    registry
}

/// Adds `collector`'s families to `registry`. Panics if one is already there: families are
/// constants, so that is a bug, and building the node's registry finds it.
pub fn register(registry: &Registry, collector: impl Collector + 'static) {
    if let Err(err) = registry.register(Box::new(collector)) {
        panic!("a metric family registered twice: {err}");
    }
}

/// The registry of `toctou run`: receivers, correlator, findings store, queue and, with
/// `--clickhouse-url`, the sink.
pub fn run_registry(shared: &Arc<Shared>) -> Registry {
    let registry = registry(&shared.access);
    register(
        &registry,
        ReceiversCollector(shared.receivers.metrics().clone()),
    );
    let stats = shared.clone();
    register(
        &registry,
        StatsCollector::new(move || {
            stats
                .stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }),
    );
    if let Some(sink) = &shared.sink {
        register(&registry, SinkCollector(sink.clone()));
    }
    if let Some(cdc) = &shared.cdc {
        register(&registry, crate::cdc::CdcCollector(cdc.clone()));
    }
    if let Some(inference) = &shared.inference {
        register(&registry, crate::infer::InferCollector(inference.clone()));
    }
    register(&registry, RunCollector(shared.clone()));
    registry
}

/// `GET /metrics`: every family of `registry` in the text format 0.0.4.
pub fn get<S>(registry: Registry, content_type: &'static str) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    axum::routing::get(move || std::future::ready(respond(&registry, content_type)))
}

fn respond(registry: &Registry, content_type: &'static str) -> Response {
    match toctou_schema::metrics::encode(registry) {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics: {err}"),
        )
            .into_response(),
    }
}

toctou_schema::families! {
    /// The families of `toctou run`'s own state, each declared once.
    static FAMILIES: Families {
        stored = gauge("toctou_findings_stored", "Findings held in the embedded store.", &[]);
        stored_bytes = gauge("toctou_findings_stored_bytes", "Bytes the findings in the embedded store take, strings and evidence counted (--max-findings-bytes).", &[]);
        dropped = counter("toctou_findings_dropped_total", "Findings pushed out of the embedded store by newer ones (--max-findings, --max-findings-bytes).", &[]);
        by_service = counter("toctou_service_findings_total", &format!( "Findings by service, operation and kind (at most {MAX_SERVICE_SERIES} service/operation pairs, then {OVERFLOW_LABEL})." ), &["service", "operation", "kind"]);
        // One series per capped metric: what its overflow bucket took in, so that a flood of
        // names is visible (and alertable) rather than only folded away.
        series_overflow = counter("toctou_metric_series_overflow_total", &format!( "Samples counted under {OVERFLOW_LABEL} because their label values found no series of their own (cap reached, or a value over {MAX_LABEL_VALUE_BYTES} bytes)." ), &["metric"]);
        queue_batches = gauge("toctou_queue_batches", "Decoded request batches waiting for the correlator; at the capacity, receivers push back.", &[]);
        queue_capacity = gauge("toctou_queue_capacity", "Most batches the queue holds (--queue-capacity).", &[]);
        queue_bytes = gauge("toctou_queue_bytes", "Bytes of decoded events waiting for the correlator (strings counted); at the limit, receivers push back.", &[]);
        queue_bytes_limit = gauge("toctou_queue_bytes_limit", "Most bytes of decoded events the queue holds (--max-queued-bytes).", &[]);
        start_time = gauge("toctou_start_time_seconds", "Unix time the process started.", &[]);
    }
}

/// The findings store's families: the store's own counts and its findings per service,
/// whose label values the store has already capped (see [`crate::store`]).
fn store_families(store: &FindingStore) -> Vec<MetricFamily> {
    let f = &*FAMILIES;
    let by_service = store
        .by_service()
        .map(|(service, operation, kind, n)| ([service, operation, kind.as_str()], n as f64));
    vec![
        f.stored.value(store.len() as f64),
        f.stored_bytes.value(store.bytes() as f64),
        f.dropped.value(store.dropped() as f64),
        f.by_service.values(by_service),
        f.series_overflow
            .values([([f.by_service.name()], store.by_service_overflow() as f64)]),
    ]
}

/// Reads `toctou run`'s store, queue and start time.
struct RunCollector(Arc<Shared>);

impl Collector for RunCollector {
    fn desc(&self) -> Vec<&Desc> {
        FAMILIES.descs()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (f, shared) = (&*FAMILIES, &self.0);
        let mut families = {
            let store = shared.store.read().unwrap_or_else(|e| e.into_inner());
            store_families(&store)
        };
        let (queued, capacity) = shared.queue.upgrade().map_or((0, 0), |q| {
            (q.max_capacity() - q.capacity(), q.max_capacity())
        });
        families.extend([
            f.queue_batches.value(queued as f64),
            f.queue_capacity.value(capacity as f64),
            f.queue_bytes.value(shared.queue_bytes.held() as f64),
            f.queue_bytes_limit.value(shared.queue_bytes.max() as f64),
            f.start_time
                .value((shared.started_ns / 1_000_000_000) as f64),
        ]);
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::finding;
    use toctou_schema::FindingKind;

    #[test]
    fn service_labels_are_escaped_and_their_overflow_counted() {
        let mut store = FindingStore::new(10);
        let mut f = finding(1, FindingKind::StaleCheck);
        f.service = "a\"b\\c\nd".into();
        store.push(f.clone());
        f.operation = "o".repeat(MAX_LABEL_VALUE_BYTES + 1);
        store.push(f);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&store_families(&store))
            .unwrap();
        for line in [
            "toctou_service_findings_total{service=\"a\\\"b\\\\c\\nd\",operation=\"op\",kind=\"stale_check\"} 1",
            "toctou_service_findings_total{service=\"_other\",operation=\"_other\",kind=\"stale_check\"} 1",
            "toctou_metric_series_overflow_total{metric=\"toctou_service_findings_total\"} 1",
            "toctou_findings_stored 2",
            "# TYPE toctou_findings_dropped_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }
}
