//! Pending checks and tombstones: supersession, expiry, late and slow uses, orphans, and
//! the bounds on both.

use super::CheckRecord;
use crate::testkit::*;
use crate::{Config, EvictedState};
use toctou_schema::FindingKind::*;

fn cfg() -> Config {
    config(1_000, 2_000)
}

#[test]
fn a_check_record_stays_near_a_hundred_bytes() {
    let size = std::mem::size_of::<CheckRecord>();
    assert!(size <= 104, "CheckRecord is {size} bytes");
}

#[test]
fn a_retry_supersedes_the_earlier_check_which_is_never_an_orphan() {
    // The first check saw version 1, the retry version 2; the use acted on 2. Pairing with
    // the first check would make it stale.
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            check("inv/1", "q1", 50).version("2").ev(),
            use_("inv/1", "q1", 60).version("2").ev(),
        ],
    );
    assert!(f.is_empty(), "{f:?}");
    // Unused: one orphan, for the latest check only.
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            check("inv/1", "q1", 50).version("2").ev(),
        ],
    );
    assert_eq!(kinds(&f), [OrphanCheck]);
    assert_eq!(f[0].checked_version.as_deref(), Some("2"));
    assert_eq!(f[0].event_time_ns, ms(50 + 2_000));
}

#[test]
fn a_check_may_pair_with_several_uses_of_its_request() {
    let (f, stats) = run(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            use_("inv/1", "q1", 10).version("1").ev(),
            use_("inv/1", "q1", 20).version("1").ev(),
        ],
    );
    assert!(f.is_empty());
    assert_eq!(stats.pairs, 2);
    assert_eq!(stats.race_window.count(), 2);
}

#[test]
fn an_unused_allow_is_an_orphan_after_pending_and_tombstone() {
    let (f, stats) = run(&cfg(), vec![check("inv/1", "q1", 0).version("4").ev()]);
    assert_eq!(kinds(&f), [OrphanCheck]);
    let o = &f[0];
    assert_eq!(o.severity, toctou_schema::Severity::Info);
    assert_eq!(o.check_time_ns, Some(ms(0)));
    assert_eq!(o.use_time_ns, None);
    assert_eq!(o.event_time_ns, ms(2_000));
    assert_eq!(o.checked_version.as_deref(), Some("4"));
    assert_eq!(stats.pending_checks, 0);
    assert_eq!(stats.tombstones, 0);
}

#[test]
fn a_slow_use_after_the_pair_ttl_still_matches_the_tombstone() {
    let f = assert_order_independent(
        &config(1_000, 2_000),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            use_("inv/1", "q1", 1_500).version("1").ev(),
        ],
    );
    assert!(f.is_empty(), "{f:?}");
    // Once the tombstone is gone too, the use is unchecked and the check an orphan.
    let (f, _) = run(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            use_("inv/1", "q1", 2_500).version("1").ev(),
        ],
    );
    assert_eq!(kinds(&f), [OrphanCheck, UncheckedUse]);
}

#[test]
fn a_late_use_matches_its_expired_check_with_no_false_unchecked_or_orphan() {
    // Lateness 100 ms: the check expires (1 s) while its use is still in transit.
    let (f, stats) = run(
        &config(1_000, 100),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            check("inv/2", "q2", 1_500).version("1").ev(),
            use_("inv/1", "q1", 500).version("1").ev(),
            use_("inv/2", "q2", 1_510).version("1").ev(),
        ],
    );
    assert_eq!(stats.late_events, 1);
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(stats.pairs, 2);
}

#[test]
fn a_late_older_check_does_not_replace_the_newer_one() {
    let (f, stats) = run(
        &config(1_000, 100),
        vec![
            check("inv/1", "q1", 500).version("2").ev(),
            check("inv/9", "x", 900).version("1").ev(),
            use_("inv/9", "x", 901).version("1").ev(),
            // Arrives late, older than the pending check of the same request.
            check("inv/1", "q1", 100).version("1").ev(),
            use_("inv/1", "q1", 950).version("2").ev(),
        ],
    );
    assert_eq!(stats.late_events, 1);
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn a_late_use_from_before_a_retry_is_indeterminate() {
    let (f, stats) = run(
        &config(1_000, 100),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            check("inv/1", "q1", 500).version("2").ev(),
            use_("inv/1", "q1", 501).version("2").ev(),
            check("inv/9", "x", 900).version("1").ev(),
            use_("inv/9", "x", 901).version("1").ev(),
            // Between the two checks, arriving after both were processed.
            use_("inv/1", "q1", 200).version("1").ev(),
        ],
    );
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(stats.late_events, 1);
    assert_eq!(stats.indeterminate, 1);
    assert_eq!(stats.pairs, 3);
}

#[test]
fn a_full_pending_set_expires_the_oldest_early_and_counts_it() {
    let cfg = Config {
        max_pending: 2,
        ..cfg()
    };
    let (f, stats) = run(
        &cfg,
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            check("inv/2", "q2", 1).version("1").ev(),
            check("inv/3", "q3", 2).version("1").ev(),
            use_("inv/1", "q1", 10).version("1").ev(),
            use_("inv/2", "q2", 11).version("1").ev(),
            use_("inv/3", "q3", 12).version("1").ev(),
        ],
    );
    // The evicted check became a tombstone early and still matched its use.
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(stats.evicted_of(EvictedState::Pending), 1);
    assert_eq!(stats.pairs, 3);
}

#[test]
fn a_full_tombstone_set_drops_the_oldest_early_and_still_reports_its_orphan() {
    let cfg = Config {
        max_pending: 1,
        max_tombstones: 1,
        ..cfg()
    };
    let (f, stats) = run(
        &cfg,
        vec![
            check("inv/1", "q1", 0).ev(),
            check("inv/2", "q2", 1).ev(),
            check("inv/3", "q3", 2).ev(),
        ],
    );
    assert_eq!(kinds(&f), [OrphanCheck, OrphanCheck, OrphanCheck]);
    assert_eq!(stats.evicted_of(EvictedState::Pending), 2);
    assert_eq!(stats.evicted_of(EvictedState::Tombstone), 1);
    assert!(f[0].reason.contains("evicted"), "{}", f[0].reason);
    assert_eq!(f[0].request_id, "q1");
}

#[test]
fn a_retry_after_expiry_revives_the_record_as_pending() {
    let f = assert_order_independent(
        &config(500, 2_000),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            check("inv/1", "q1", 700).version("2").ev(),
            use_("inv/1", "q1", 1_600).version("2").ev(),
        ],
    );
    assert!(f.is_empty(), "{f:?}");
}
