//! The collector's metrics, all declared here: counters in fixed arrays of atomics indexed
//! by closed label sets, and [`ReceiversCollector`], which reads them into the node's
//! `prometheus` registry when /metrics is asked for.
//!
//! Metric names and label values are an interface (dashboards and alerts use them), so the
//! labels come only from the enums in [`crate::decoded`]; nothing request-derived ever
//! becomes a label.

use crate::decoded::{
    IgnoreReason, IgnoredCounts, RejectReason, RejectedCounts, Rejection, Signal,
};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use toctou_schema::{Event, Phase};

/// How a request reached us; a label value of `toctou_received_bytes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Http,
    Grpc,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Http, Transport::Grpc];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Grpc => "grpc",
        }
    }
}

/// The `phase` label of `toctou_events_total`: a span's phase, `audit`, or `db` (a
/// database call or root span taken for inference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventPhase {
    Check,
    Use,
    Audit,
    Db,
}

impl EventPhase {
    pub const ALL: [EventPhase; 4] = [
        EventPhase::Check,
        EventPhase::Use,
        EventPhase::Audit,
        EventPhase::Db,
    ];

    pub fn of(event: &Event) -> EventPhase {
        match event {
            Event::Span(s) if s.phase == Phase::Check => EventPhase::Check,
            Event::Span(_) => EventPhase::Use,
            Event::Audit(_) => EventPhase::Audit,
            Event::Db(_) => EventPhase::Db,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventPhase::Check => "check",
            EventPhase::Use => "use",
            EventPhase::Audit => "audit",
            EventPhase::Db => "db",
        }
    }
}

/// Which (signal, phase) pairs can occur; only these are rendered.
const EVENT_SERIES: [(Signal, EventPhase); 6] = [
    (Signal::Traces, EventPhase::Check),
    (Signal::Traces, EventPhase::Use),
    (Signal::Traces, EventPhase::Db),
    (Signal::Logs, EventPhase::Audit),
    (Signal::K8sAudit, EventPhase::Audit),
    (Signal::Cdc, EventPhase::Audit),
];

#[derive(Default)]
pub struct Metrics {
    events: [AtomicU64; EVENT_SERIES.len()],
    ignored: [AtomicU64; IgnoreReason::ALL.len()],
    rejected: [AtomicU64; RejectReason::ALL.len()],
    received_bytes: [AtomicU64; Transport::ALL.len()],
}

fn event_index(signal: Signal, phase: EventPhase) -> Option<usize> {
    EVENT_SERIES.iter().position(|s| *s == (signal, phase))
}

impl Metrics {
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Counts what an accepted request carried besides its events: ignored items by
    /// reason and refused items (listed or only counted) by reason.
    pub fn record_items(
        &self,
        ignored: &IgnoredCounts,
        rejected: &[Rejection],
        unlisted: &RejectedCounts,
    ) {
        for (reason, n) in ignored.iter() {
            self.ignored[reason as usize].fetch_add(n, Ordering::Relaxed);
        }
        for r in rejected {
            self.add_rejected(r.reason, 1);
        }
        for reason in RejectReason::ALL {
            match unlisted.get(reason) {
                0 => {}
                n => self.add_rejected(reason, n),
            }
        }
    }

    pub fn add_events(&self, signal: Signal, phase: EventPhase, n: u64) {
        if let Some(i) = event_index(signal, phase) {
            self.events[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_rejected(&self, reason: RejectReason, n: u64) {
        self.rejected[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_received_bytes(&self, transport: Transport, n: u64) {
        self.received_bytes[transport as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn events(&self, signal: Signal, phase: EventPhase) -> u64 {
        event_index(signal, phase).map_or(0, |i| self.events[i].load(Ordering::Relaxed))
    }

    pub fn ignored(&self, reason: IgnoreReason) -> u64 {
        self.ignored[reason as usize].load(Ordering::Relaxed)
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason as usize].load(Ordering::Relaxed)
    }

    pub fn received_bytes(&self, transport: Transport) -> u64 {
        self.received_bytes[transport as usize].load(Ordering::Relaxed)
    }
}

toctou_schema::families! {
    /// The receivers' families, each declared once.
    static FAMILIES: Families {
        events = counter("toctou_events_total", "Check, use and audit events accepted, by signal and phase.", &["signal", "phase"]);
        ignored = counter("toctou_ignored_total", "Items received that are not toctou data (no phase, no audit action, read verb, non-final stage...), by signal and reason.", &["signal", "reason"]);
        rejected = counter("toctou_rejected_total", "Requests, or spans and records within accepted requests, refused, by reason.", &["reason"]);
        received_bytes = counter("toctou_received_bytes_total", "Request body bytes received (gRPC: decoded message size), by transport.", &["transport"]);
    }
}

/// Reads [`Metrics`] when /metrics is asked for: every series, zeroes included, so that
/// rates work from the first scrape.
pub struct ReceiversCollector(pub Arc<Metrics>);

impl Collector for ReceiversCollector {
    fn desc(&self) -> Vec<&Desc> {
        FAMILIES.descs()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (f, m) = (&*FAMILIES, &self.0);
        let events = EVENT_SERIES.iter().enumerate().map(|(i, (signal, phase))| {
            let n = m.events[i].load(Ordering::Relaxed);
            ([signal.as_str(), phase.as_str()], n as f64)
        });
        let ignored =
            IgnoreReason::ALL.map(|r| ([r.signal().as_str(), r.as_str()], m.ignored(r) as f64));
        let rejected = RejectReason::ALL.map(|r| ([r.as_str()], m.rejected(r) as f64));
        let received = Transport::ALL.map(|t| ([t.as_str()], m.received_bytes(t) as f64));
        vec![
            f.events.values(events),
            f.ignored.values(ignored),
            f.rejected.values(rejected),
            f.received_bytes.values(received),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_discriminants_index_their_arrays() {
        for (i, r) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i);
        }
        for (i, r) in IgnoreReason::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i);
        }
        for (i, t) in Transport::ALL.into_iter().enumerate() {
            assert_eq!(t as usize, i);
        }
    }

    #[test]
    fn records_and_renders() {
        let m = Metrics::new();
        let mut ignored = IgnoredCounts::default();
        ignored.add(IgnoreReason::ReadVerb);
        let mut unlisted = RejectedCounts::default();
        unlisted.add(RejectReason::MalformedJson);
        m.record_items(
            &ignored,
            &[Rejection::new(RejectReason::MissingResource, "x")],
            &unlisted,
        );
        m.add_events(Signal::K8sAudit, EventPhase::Audit, 1);
        // A pair that cannot occur is not a series.
        m.add_events(Signal::Traces, EventPhase::Audit, 1);
        m.add_rejected(RejectReason::TooLarge, 2);
        m.add_received_bytes(Transport::Grpc, 10);

        assert_eq!(m.events(Signal::K8sAudit, EventPhase::Audit), 1);
        assert_eq!(m.events(Signal::Traces, EventPhase::Audit), 0);
        let out = toctou_schema::metrics::encode_one(ReceiversCollector(Arc::new(m)));
        for line in [
            "# TYPE toctou_events_total counter",
            "toctou_events_total{signal=\"k8s_audit\",phase=\"audit\"} 1",
            "toctou_events_total{signal=\"traces\",phase=\"check\"} 0",
            "toctou_ignored_total{signal=\"k8s_audit\",reason=\"read_verb\"} 1",
            "toctou_ignored_total{signal=\"traces\",reason=\"no_phase\"} 0",
            "toctou_rejected_total{reason=\"missing_resource\"} 1",
            "toctou_rejected_total{reason=\"too_large\"} 2",
            "toctou_rejected_total{reason=\"malformed_json\"} 1",
            "toctou_received_bytes_total{transport=\"grpc\"} 10",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        // Every sample line is `name{labels} value` with a declared name.
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = l.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
            let name = series.split('{').next().unwrap();
            assert!(out.contains(&format!("# TYPE {name} counter")), "{l}");
        }
    }
}
