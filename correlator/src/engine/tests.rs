//! The event-time loop: lateness, the watermark (arrival-driven and idle), the bounded
//! reorder buffer, flush, and the gauges.

use crate::testkit::*;
use crate::{Config, Engine, EvictedState};
use toctou_schema::AuditAction::{Create, Finalize, Update};
use toctou_schema::FindingKind::*;

const S: u64 = 1_000_000_000;

#[test]
fn a_scenario_of_every_kind_gives_the_same_findings_in_every_order_within_the_lateness() {
    let cfg = config(300, 2_000);
    let events = vec![
        check("inv/1", "q1", 0).version("5").ev(),
        audit(Update, "inv/1", 5).version("6").request("q2").ev(),
        use_("inv/1", "q1", 10).version("6").key("k").ev(),
        check("inv/1", "q3", 12).version("6").ev(),
        use_("inv/1", "q3", 20).version("6").key("k").ev(),
        use_("inv/2", "q4", 15).ev(),
        audit(Create, "vm/1", 30).request("q5").ev(),
        audit(Finalize, "vm/0", 1).ev(),
    ];
    let f = assert_order_independent(&cfg, events);
    let mut k = kinds(&f);
    k.sort();
    assert_eq!(k, [UncheckedUse, DuplicateUse, StaleCheck, PartialCreate]);
}

/// The drained check is what catches a missed release: one reference too many on a long
/// string, or one long string nobody holds, and it fails.
#[test]
fn a_leaked_reference_is_caught_after_flush() {
    let long_version = "v".repeat(40);
    let events = || {
        vec![
            audit(toctou_schema::AuditAction::PolicyChange, "pol", 0)
                .version(&long_version)
                .ev(),
            check("inv/1", &"q".repeat(40), 10)
                .version(&long_version)
                .ev(),
            use_("inv/1", &"q".repeat(40), 20)
                .version(&long_version)
                .ev(),
        ]
    };
    let mut engine = Engine::new(config(1_000, 100)).unwrap();
    let mut out = Vec::new();
    for e in events() {
        let t = e.event_time_ns();
        engine.ingest(e, t, &mut out);
    }
    engine.flush(ms(20), &mut out);
    // The policy keeps its version, a long string: that alone is drained.
    assert_eq!(engine.sym.long.len(), 1);
    assert!(engine.is_drained());
    // One reference more on the policy's string.
    let slot = engine.sym.long.find_str(&long_version).unwrap();
    engine.sym.long.retain(slot);
    assert!(!engine.is_drained());
    engine.sym.long.release(slot);
    assert!(engine.is_drained());
    // A long string nobody holds.
    let leaked = crate::compact::Compact::encode(&"x".repeat(40), &mut engine.sym.long);
    assert!(!engine.is_drained());
    leaked.release(&mut engine.sym.long);
    assert!(engine.is_drained());
}

#[test]
fn late_events_are_counted_and_still_processed() {
    let cfg = config(1_000, 100);
    let mut engine = Engine::new(cfg).unwrap();
    let mut out = Vec::new();
    engine.ingest(check("inv/1", "q1", 1_000).ev(), ms(1_000), &mut out);
    assert_eq!(engine.watermark_ns(), ms(900));
    // Exactly at the watermark: on time.
    engine.ingest(use_("inv/9", "q9", 900).ev(), ms(1_000), &mut out);
    assert_eq!(engine.stats().late_events, 0);
    // Older than the watermark: late, processed at once (here: an unchecked use).
    engine.ingest(use_("inv/8", "q8", 899).ev(), ms(1_000), &mut out);
    assert_eq!(engine.stats().late_events, 1);
    assert_eq!(kinds(&out), [UncheckedUse]);
    engine.flush(ms(1_000), &mut out);
    assert!(engine.is_drained());
}

#[test]
fn the_watermark_follows_the_newest_event_and_never_moves_back() {
    let mut engine = Engine::new(config(1_000, 2_000)).unwrap();
    let mut out = Vec::new();
    assert_eq!(engine.watermark_ns(), 0);
    engine.ingest(check("a", "q", 5_000).ev(), ms(5_000), &mut out);
    assert_eq!(engine.watermark_ns(), ms(3_000));
    engine.ingest(check("b", "q", 4_000).ev(), ms(5_000), &mut out);
    assert_eq!(engine.watermark_ns(), ms(3_000));
    engine.ingest(check("c", "q", 9_000).ev(), ms(9_000), &mut out);
    assert_eq!(engine.watermark_ns(), ms(7_000));
    // Both earlier checks were processed and expired: b (4 s) pending until 5 s, then a
    // tombstone until 6 s, then an orphan; a (5 s) is a tombstone until 7 s. c waits.
    assert_eq!(kinds(&out), [OrphanCheck]);
    assert_eq!(out[0].resource, "b");
    assert_eq!(engine.stats().pending_checks, 0);
    assert_eq!(engine.stats().tombstones, 1);
    assert_eq!(engine.stats().buffered_events, 1);
    assert!((engine.stats().watermark_lag_seconds - 2.0).abs() < 1e-9);
    engine.flush(ms(9_000), &mut out);
    assert_eq!(engine.watermark_ns(), u64::MAX);
    assert_eq!(kinds(&out), [OrphanCheck, OrphanCheck, OrphanCheck]);
    assert!(engine.is_drained());
}

#[test]
fn an_idle_input_lets_the_wall_clock_advance_the_watermark() {
    let mut engine = Engine::new(config(1_000, 2_000)).unwrap();
    let mut out = Vec::new();
    let wall = ms(7_000);
    engine.ingest(check("inv/1", "q1", 0).ev(), wall, &mut out);
    assert_eq!(engine.stats().buffered_events, 1);
    // Not idle for the allowed lateness yet: nothing moves.
    engine.tick(wall + S, &mut out);
    assert_eq!(engine.watermark_ns(), ms(0) - 2 * S);
    // Idle for the allowed lateness: the watermark reaches the newest event...
    engine.tick(wall + 2 * S, &mut out);
    assert_eq!(engine.watermark_ns(), ms(0));
    assert_eq!(engine.stats().buffered_events, 1);
    engine.tick(wall + 2 * S + 1, &mut out);
    assert_eq!(engine.stats().buffered_events, 0);
    assert_eq!(engine.stats().pending_checks, 1);
    // ... and then moves on with the wall clock: pending 1 s, tombstone 1 s, then orphan.
    engine.tick(wall + 4 * S, &mut out);
    assert!(out.is_empty());
    engine.tick(wall + 4 * S + 2, &mut out);
    assert_eq!(kinds(&out), [OrphanCheck]);
    assert_eq!(out[0].detected_at_ns, wall + 4 * S + 2);
    assert_eq!(engine.stats().detection_latency.count(), 1);
    assert!(engine.is_drained());
}

#[test]
fn a_full_reorder_buffer_releases_its_oldest_event_early_and_counts_it() {
    let cfg = Config {
        max_buffered: 2,
        ..config(1_000, 2_000)
    };
    let mut engine = Engine::new(cfg).unwrap();
    let mut out = Vec::new();
    for (i, t) in [10, 20, 30].into_iter().enumerate() {
        engine.ingest(use_("inv/1", &format!("q{i}"), t).ev(), ms(30), &mut out);
    }
    assert_eq!(engine.stats().evicted_of(EvictedState::Buffered), 1);
    assert_eq!(engine.stats().buffered_events, 2);
    assert_eq!(kinds(&out), [UncheckedUse]);
    // The released event's time is now the watermark: anything older is late.
    assert_eq!(engine.watermark_ns(), ms(10));
    engine.ingest(use_("inv/1", "q9", 5).ev(), ms(30), &mut out);
    assert_eq!(engine.stats().late_events, 1);
    engine.flush(ms(30), &mut out);
    assert_eq!(out.len(), 4);
    assert!(engine.is_drained());
}

#[test]
fn flush_fires_every_timer_and_lets_go_of_all_state() {
    let cfg = config(30_000, 2_000);
    let mut events = vec![audit(Finalize, "vm/0", 0).ev()];
    for i in 0..200u64 {
        let r = format!("inv/{}", i % 7);
        let q = format!("q{i}");
        events.push(check(&r, &q, i).version(&i.to_string()).key("k").ev());
        if i % 3 != 0 {
            events.push(
                use_(&r, &q, i + 5)
                    .version(&(i + i % 2).to_string())
                    .key(&format!("k{}", i % 5))
                    .ev(),
            );
        }
        if i % 10 == 0 {
            events.push(
                audit(Update, &r, i + 2)
                    .version(&(i + 1).to_string())
                    .source(&format!("src-{i}-with-a-long-identity"))
                    .ev(),
            );
            events.push(audit(Create, &format!("vm/{i}"), i + 1).request(&q).ev());
        }
    }
    // `run` asserts the engine is drained after the flush.
    let (f, stats) = run(&cfg, events);
    assert_eq!(stats.pending_checks, 0);
    assert_eq!(stats.tombstones, 0);
    assert_eq!(stats.buffered_events, 0);
    assert_eq!(stats.findings_total(), f.len() as u64);
    assert_eq!(stats.findings_of(OrphanCheck), 67);
    assert_eq!(stats.findings_of(PartialCreate), 20);
}

#[test]
fn prometheus_text_reflects_the_engine() {
    let (_, stats) = run(
        &config(1_000, 2_000),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            use_("inv/1", "q1", 10).version("2").ev(),
        ],
    );
    let text = crate::metrics::encode(&stats);
    assert!(text.contains("toctou_pairs_total 1\n"), "{text}");
    assert!(text.contains("toctou_findings_total{kind=\"stale_check\"} 1\n"));
    assert!(text.contains("toctou_findings_total{kind=\"orphan_check\"} 0\n"));
    assert!(text.contains("toctou_race_window_seconds_bucket{le=\"0.01\"} 1\n"));
    assert!(text.contains("toctou_race_window_seconds_count 1\n"));
}

#[test]
fn a_timer_due_at_the_watermark_waits_for_events_at_that_instant() {
    // The tombstone of q1's check leaves at 2 s. An event at exactly 2 s is on time while
    // the watermark is 2 s, and in event-time order it comes before the timer: the use
    // pairs with the tombstone whatever the arrival order.
    let cfg = config(1_000, 100);
    let events = vec![
        check("inv/1", "q1", 0).version("1").ev(),
        check("inv/9", "x", 2_100).version("1").ev(),
        use_("inv/9", "x", 2_100).version("1").ev(),
        use_("inv/1", "q1", 2_000).version("1").ev(),
    ];
    let f = assert_order_independent(&cfg, events);
    assert!(f.is_empty(), "{f:?}");
}
