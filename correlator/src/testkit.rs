//! A runner that feeds events to an engine, and the event builders of `toctou_schema`'s
//! `testing` (re-exported), for the unit tests beside each module.

use crate::{Config, Engine, Stats};
use std::time::Duration;
use toctou_schema::{Event, Finding, FindingKind};

pub use toctou_schema::testing::*;

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
