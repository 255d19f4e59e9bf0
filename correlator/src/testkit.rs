//! Test builders for events and a runner that feeds them to an engine, for the unit tests
//! beside each module. Times are milliseconds after a fixed base, ids are derived from the
//! request and span so that scenarios read like the stories they tell.

use crate::{Config, Engine, Stats};
use std::time::Duration;
use toctou_schema::{
    AuditAction, AuditEvent, CheckSource, Decision, Event, Finding, FindingKind, Phase, SpanEvent,
    UseOutcome,
};
use xxhash_rust::xxh3::xxh3_128;

pub const BASE_NS: u64 = 1_700_000_000_000_000_000;

pub fn ms(t: u64) -> u64 {
    BASE_NS + t * 1_000_000
}

/// A trace id derived from the request, so a request's check and use share a trace.
pub fn trace_of(request: &str) -> [u8; 16] {
    xxh3_128(request.as_bytes()).to_be_bytes()
}

pub struct Span(pub SpanEvent);

fn span(phase: Phase, resource: &str, request: &str, at_ms: u64) -> Span {
    let id = xxh3_128(format!("{phase:?}/{resource}/{request}/{at_ms}").as_bytes()) as u64;
    Span(SpanEvent {
        phase,
        resource: resource.into(),
        version: None,
        request_id: request.into(),
        trace_id: trace_of(request),
        span_id: id.to_be_bytes(),
        // A check's time is its end, a use's its start; both spans last 1 ms.
        start_ns: if phase == Phase::Check {
            ms(at_ms) - 1_000_000
        } else {
            ms(at_ms)
        },
        end_ns: if phase == Phase::Check {
            ms(at_ms)
        } else {
            ms(at_ms) + 1_000_000
        },
        service: "shop".into(),
        operation: "reserve".into(),
        actor: "shop".into(),
        decision: Decision::Allow,
        source: None,
        policy: None,
        policy_version: None,
        idempotency_key: None,
        outcome: UseOutcome::Ok,
        permission_denied: false,
    })
}

/// A check by `request` on `resource`, ending at `at_ms`.
pub fn check(resource: &str, request: &str, at_ms: u64) -> Span {
    span(Phase::Check, resource, request, at_ms)
}

/// A use by `request` on `resource`, starting at `at_ms`.
pub fn use_(resource: &str, request: &str, at_ms: u64) -> Span {
    span(Phase::Use, resource, request, at_ms)
}

impl Span {
    /// A use whose span lasts `ms` from its start (a write that waited on a lock).
    pub fn lasting(mut self, ms: u64) -> Self {
        self.0.end_ns = self.0.start_ns + ms * 1_000_000;
        self
    }
    pub fn version(mut self, v: &str) -> Self {
        self.0.version = Some(v.into());
        self
    }
    pub fn deny(mut self) -> Self {
        self.0.decision = Decision::Deny;
        self
    }
    pub fn source(mut self, s: CheckSource) -> Self {
        self.0.source = Some(s);
        self
    }
    pub fn policy(mut self, p: &str, v: &str) -> Self {
        self.0.policy = Some(p.into());
        self.0.policy_version = Some(v.into());
        self
    }
    pub fn key(mut self, k: &str) -> Self {
        self.0.idempotency_key = Some(k.into());
        self
    }
    pub fn op(mut self, o: &str) -> Self {
        self.0.operation = o.into();
        self
    }
    pub fn outcome(mut self, o: UseOutcome) -> Self {
        self.0.outcome = o;
        self
    }
    /// Failed with HTTP 403 / `PERMISSION_DENIED`.
    pub fn denied(mut self) -> Self {
        self.0.outcome = UseOutcome::Error;
        self.0.permission_denied = true;
        self
    }
    pub fn no_ids(mut self) -> Self {
        self.0.trace_id = [0; 16];
        self.0.span_id = [0; 8];
        self
    }
    /// The request id is the trace id (no `toctou.request_id`), as the collector renders it.
    pub fn request_is_trace(mut self) -> Self {
        self.0.request_id = toctou_schema::hex_id(&self.0.trace_id);
        self
    }
    pub fn ev(self) -> Event {
        Event::Span(self.0)
    }
}

pub struct Audit(pub AuditEvent);

/// An audit record of `action` on `resource`, committed at `at_ms`.
pub fn audit(action: AuditAction, resource: &str, at_ms: u64) -> Audit {
    Audit(AuditEvent {
        action,
        resource: resource.into(),
        version: None,
        request_id: None,
        actor: None,
        time_ns: ms(at_ms),
        service: "db".into(),
        source_id: None,
        trace_id: [0; 16],
        span_id: [0; 8],
    })
}

impl Audit {
    pub fn version(mut self, v: &str) -> Self {
        self.0.version = Some(v.into());
        self
    }
    pub fn request(mut self, r: &str) -> Self {
        self.0.request_id = Some(r.into());
        self
    }
    pub fn actor(mut self, a: &str) -> Self {
        self.0.actor = Some(a.into());
        self
    }
    pub fn source(mut self, id: &str) -> Self {
        self.0.source_id = Some(id.into());
        self
    }
    pub fn ev(self) -> Event {
        Event::Audit(self.0)
    }
}

/// A config with short windows, so scenarios fit in a few seconds of event time.
pub fn config(pair_ttl_ms: u64, lateness_ms: u64) -> Config {
    Config {
        pair_ttl: Duration::from_millis(pair_ttl_ms),
        allowed_lateness: Duration::from_millis(lateness_ms),
        ..Config::default()
    }
}

/// Feeds events in the given arrival order, each arriving at the newest event time seen so
/// far (as `toctou replay` does), then flushes. Checks that the engine let go of every
/// piece of state. `detected_at_ns` is zeroed: it is the one arrival-dependent field.
pub fn run(cfg: &Config, events: Vec<Event>) -> (Vec<Finding>, Stats) {
    let mut engine = Engine::new(cfg.clone()).expect("valid test config");
    let mut out = Vec::new();
    let mut clock = 0;
    for e in events {
        clock = e.event_time_ns().max(clock);
        engine.ingest(e, clock, &mut out);
    }
    engine.flush(clock, &mut out);
    assert!(engine.is_drained(), "state left behind after flush");
    for f in &mut out {
        f.detected_at_ns = 0;
    }
    (out, engine.stats().clone())
}

pub fn kinds(findings: &[Finding]) -> Vec<FindingKind> {
    findings.iter().map(|f| f.kind).collect()
}

/// Whether feeding `events` in this order makes none of them late under `lateness_ms`.
pub fn within_lateness(events: &[Event], lateness_ms: u64) -> bool {
    let mut max = 0;
    events.iter().all(|e| {
        let t = e.event_time_ns();
        let ok = t >= max.max(lateness_ms * 1_000_000) - lateness_ms * 1_000_000;
        max = max.max(t);
        ok
    })
}

/// Every permutation of `items` (Heap's algorithm); for the small scenarios of the tests.
pub fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    fn go<T: Clone>(k: usize, a: &mut Vec<T>, out: &mut Vec<Vec<T>>) {
        if k <= 1 {
            out.push(a.clone());
            return;
        }
        go(k - 1, a, out);
        for i in 0..k - 1 {
            if k % 2 == 0 {
                a.swap(i, k - 1);
            } else {
                a.swap(0, k - 1);
            }
            go(k - 1, a, out);
        }
    }
    let mut a = items.to_vec();
    let mut out = Vec::new();
    go(a.len(), &mut a, &mut out);
    out
}

/// Runs every arrival order of `events` that stays within the lateness and asserts they
/// all give the same findings as the given order. Returns those findings.
pub fn assert_order_independent(cfg: &Config, events: Vec<Event>) -> Vec<Finding> {
    let lateness_ms = cfg.allowed_lateness.as_millis() as u64;
    assert!(
        within_lateness(&events, lateness_ms),
        "the reference order must not be late"
    );
    let (expected, _) = run(cfg, events.clone());
    let mut tried = 0;
    for order in permutations(&events) {
        if !within_lateness(&order, lateness_ms) {
            continue;
        }
        tried += 1;
        let (got, stats) = run(cfg, order);
        assert_eq!(stats.late_events, 0);
        assert_eq!(
            got, expected,
            "an arrival order within the lateness changed the findings"
        );
    }
    assert!(tried > 1, "no other arrival order was within the lateness");
    expected
}
