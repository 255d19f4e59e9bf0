//! The clock-skew bound: a producer whose clock runs minutes fast cannot drag the watermark
//! ahead of everyone else (their events are not made late, their pending checks not
//! expired), its own pairs still join, and outliers in both directions are counted.

use crate::testkit::*;
use crate::{Config, Engine};
use std::time::Duration;
use toctou_schema::AuditAction::Update;
use toctou_schema::FindingKind::*;
use toctou_schema::{Event, Finding};

const MIN: u64 = 60_000;

/// Default windows (30 s TTL, 2 s lateness), with the skew bound at `skew`.
fn cfg(skew: Duration) -> Config {
    Config {
        max_clock_skew: skew,
        ..config(30_000, 2_000)
    }
}

/// Feeds `(event, wall clock)` arrivals as `toctou run` does, ticks every 100 ms of wall
/// clock in between, then flushes.
fn feed(engine: &mut Engine, arrivals: Vec<(Event, u64)>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut wall = arrivals.first().map_or(0, |a| a.1);
    for (event, at) in arrivals {
        while wall + 100_000_000 <= at {
            wall += 100_000_000;
            engine.tick(wall, &mut out);
        }
        engine.ingest(event, at, &mut out);
    }
    out
}

/// A correct producer's check and use 5 s apart, and in between a producer 10 minutes fast
/// with a check-and-use pair of its own; everything arrives 50 ms after it happened.
fn traffic() -> Vec<(Event, u64)> {
    let lag = 50;
    vec![
        (
            check("inv/1", "q1", 1_000).version("1").ev(),
            ms(1_000 + lag),
        ),
        (
            check("inv/9", "q9", 10 * MIN + 2_000).version("7").ev(),
            ms(2_000 + lag),
        ),
        (
            use_("inv/9", "q9", 10 * MIN + 2_010).version("7").ev(),
            ms(2_010 + lag),
        ),
        (
            check("inv/2", "q2", 3_000).version("1").ev(),
            ms(3_000 + lag),
        ),
        (
            use_("inv/1", "q1", 6_000).version("1").ev(),
            ms(6_000 + lag),
        ),
        (
            use_("inv/2", "q2", 7_000).version("1").ev(),
            ms(7_000 + lag),
        ),
    ]
}

#[test]
fn a_fast_clock_does_not_make_other_producers_late_nor_expire_their_checks() {
    let mut engine = Engine::new(cfg(Duration::from_secs(10))).unwrap();
    let mut out = feed(&mut engine, traffic());
    // The watermark stayed with the wall clock, not ten minutes ahead of it.
    assert!(
        engine.watermark_ns() <= ms(7_050),
        "watermark {} ms ahead of the base",
        (engine.watermark_ns() - ms(0)) / 1_000_000
    );
    let stats = engine.stats().clone();
    assert_eq!(stats.late_events, 0);
    assert_eq!(stats.clock_skew_future, 2);
    assert_eq!(stats.clock_skew_past, 0);
    engine.flush(ms(60_000), &mut out);
    // Every pair joined (same versions: no race), the fast producer's too.
    assert_eq!(kinds(&out), [], "{out:#?}");
    assert_eq!(engine.stats().pairs, 3);
    assert!(engine.is_drained());
}

#[test]
fn without_the_bound_the_fast_clock_expires_everyone_elses_state() {
    // The same traffic with the bound off: what the bound prevents.
    let mut engine = Engine::new(cfg(Duration::ZERO)).unwrap();
    let mut out = feed(&mut engine, traffic());
    assert!(engine.watermark_ns() > ms(9 * MIN));
    assert_eq!(engine.stats().late_events, 3);
    assert_eq!(engine.stats().clock_skew_future, 0);
    engine.flush(ms(60_000), &mut out);
    let mut k = kinds(&out);
    k.sort();
    assert_eq!(
        k,
        [UncheckedUse, UncheckedUse, OrphanCheck, OrphanCheck],
        "{out:#?}"
    );
}

#[test]
fn a_fast_producers_use_arriving_with_its_check_still_follows_it() {
    // One batch, use first: both are ordered at their arrival, where the check's rank puts
    // it before the use.
    let mut engine = Engine::new(cfg(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let now = ms(1_000);
    engine.ingest(
        use_("inv/9", "q9", 5 * MIN + 10).version("2").ev(),
        now,
        &mut out,
    );
    engine.ingest(
        check("inv/9", "q9", 5 * MIN).version("1").ev(),
        now,
        &mut out,
    );
    engine.flush(now, &mut out);
    assert_eq!(kinds(&out), [StaleCheck], "{out:#?}");
    // The finding keeps the producer's own times as evidence.
    assert_eq!(out[0].use_time_ns, Some(ms(5 * MIN + 10)));
    assert_eq!(engine.stats().clock_skew_future, 2);
}

#[test]
fn a_fast_event_in_a_backlog_does_not_drag_the_watermark_to_the_wall_clock() {
    // A correlator catching up on an hour-old backlog (re-reading Kafka after an outage):
    // a fast producer's event in it is placed at the backlog's frontier, not at the wall
    // clock, which would make the rest of the backlog late.
    let mut engine = Engine::new(cfg(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let wall = ms(60 * MIN + 5_000);
    engine.ingest(
        check("inv/1", "q1", 1_000).version("1").ev(),
        wall,
        &mut out,
    );
    engine.ingest(
        check("inv/9", "q9", 2 * 60 * MIN).version("1").ev(),
        wall,
        &mut out,
    );
    engine.ingest(
        use_("inv/9", "q9", 2 * 60 * MIN + 5).version("1").ev(),
        wall,
        &mut out,
    );
    engine.ingest(use_("inv/1", "q1", 1_500).version("1").ev(), wall, &mut out);
    assert_eq!(engine.stats().clock_skew_future, 2);
    assert_eq!(engine.stats().late_events, 0);
    assert!(engine.watermark_ns() < ms(2_000));
    engine.flush(wall, &mut out);
    assert_eq!(kinds(&out), [], "{out:#?}");
    assert_eq!(engine.stats().pairs, 2);
}

#[test]
fn within_the_bound_event_time_rules_as_before() {
    let mut engine = Engine::new(cfg(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    // 9 s ahead of the wall clock: not an outlier, and the watermark follows it.
    engine.ingest(check("inv/1", "q1", 9_000).ev(), ms(0), &mut out);
    assert_eq!(engine.watermark_ns(), ms(7_000));
    assert_eq!(engine.stats().clock_skew_future, 0);
}

#[test]
fn events_older_than_the_history_kept_are_counted_as_past_outliers() {
    let mut engine = Engine::new(cfg(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    engine.ingest(
        check("inv/1", "q1", 1_000_000).ev(),
        ms(1_000_000),
        &mut out,
    );
    // Late, but within the history kept (2 TTLs + lateness = 62 s): only late.
    engine.ingest(
        audit(Update, "inv/1", 950_000).ev(),
        ms(1_000_000),
        &mut out,
    );
    assert_eq!(engine.stats().late_events, 1);
    assert_eq!(engine.stats().clock_skew_past, 0);
    // Ten minutes behind: late and a past outlier; processed all the same.
    engine.ingest(
        use_("inv/2", "q2", 1_000_000 - 10 * MIN).ev(),
        ms(1_000_000),
        &mut out,
    );
    assert_eq!(engine.stats().late_events, 2);
    assert_eq!(engine.stats().clock_skew_past, 1);
    assert_eq!(kinds(&out), [UncheckedUse]);
    // The watermark did not move back.
    assert_eq!(engine.watermark_ns(), ms(998_000));
}

#[test]
fn replay_has_no_wall_clock_so_the_bound_never_applies() {
    // `toctou replay` (and `run` in the testkit) pass the event-time high-water mark as
    // the wall clock: no event is ever ahead of it.
    let events = traffic().into_iter().map(|(e, _)| e).collect();
    let (_, stats) = run(&cfg(Duration::from_secs(10)), events);
    assert_eq!(stats.clock_skew_future, 0);
}
