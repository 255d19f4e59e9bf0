//! A use judged on its whole write (`waiting`): writes that commit while a use waits on a
//! lock, its own audit record as the bound, policy changes during the wait. Every scenario
//! is also replayed in every arrival order within the lateness.

use crate::testkit::*;
use crate::Config;
use toctou_schema::AuditAction::{PolicyChange, Update};
use toctou_schema::FindingKind::*;

fn cfg() -> Config {
    config(1_000, 200)
}

#[test]
fn a_write_that_commits_while_the_use_waits_on_its_lock_is_intervening() {
    // q1 read version 1 and started its update at 10; q2's update committed at 30 while q1
    // waited for the row; q1's own write landed at 55 on the version q2 produced.
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            use_("inv/1", "q1", 10).lasting(50).ev(),
            audit(Update, "inv/1", 30).version("2").request("q2").ev(),
            audit(Update, "inv/1", 55).version("3").request("q1").ev(),
        ],
    );
    assert_eq!(kinds(&f), [StaleCheck]);
    assert_eq!(f[0].intervening.len(), 1);
    assert_eq!(f[0].intervening[0].request_id.as_deref(), Some("q2"));
    // The use keeps its own times as evidence.
    assert_eq!(f[0].use_time_ns, Some(ms(10)));
}

#[test]
fn the_own_write_bounds_the_intervening_writes() {
    // q1's write took effect at 20 on the version it checked; q2 wrote after it, still
    // inside q1's span: not between q1's check and q1's write.
    let (f, stats) = run(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            use_("inv/1", "q1", 10).lasting(50).ev(),
            audit(Update, "inv/1", 20).version("2").request("q1").ev(),
            audit(Update, "inv/1", 30).version("3").request("q2").ev(),
        ],
    );
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(stats.indeterminate, 0);
    assert_eq!(stats.pairs, 1);
}

#[test]
fn the_own_write_bounds_by_time_when_versions_are_not_integers() {
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).ev(),
            use_("inv/1", "q1", 10).lasting(50).ev(),
            audit(Update, "inv/1", 30)
                .version("etag-b")
                .request("q2")
                .ev(),
            audit(Update, "inv/1", 40)
                .version("etag-c")
                .request("q1")
                .ev(),
            audit(Update, "inv/1", 45)
                .version("etag-d")
                .request("q3")
                .ev(),
        ],
    );
    assert_eq!(kinds(&f), [StaleCheck]);
    let writers: Vec<_> = f[0]
        .intervening
        .iter()
        .map(|w| w.request_id.as_deref())
        .collect();
    assert_eq!(writers, [Some("q2")]);
}

#[test]
fn an_own_write_committed_after_the_span_on_another_clock_is_waited_for() {
    // The database's clock is behind the application's: q1's own record carries a commit
    // time after q1's span ended. Its version still says it landed on q2's write.
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            use_("inv/1", "q1", 10).lasting(10).ev(),
            audit(Update, "inv/1", 25).version("2").request("q2").ev(),
            audit(Update, "inv/1", 100).version("3").request("q1").ev(),
        ],
    );
    assert_eq!(kinds(&f), [StaleCheck]);
    assert_eq!(f[0].intervening[0].version.as_deref(), Some("2"));
}

#[test]
fn without_an_own_write_writes_before_the_span_end_count() {
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            use_("inv/1", "q1", 10).lasting(50).ev(),
            audit(Update, "inv/1", 30).version("2").request("q2").ev(),
            audit(Update, "inv/1", 70).version("3").request("q3").ev(),
        ],
    );
    assert_eq!(kinds(&f), [StaleCheck]);
    assert_eq!(
        f[0].intervening.len(),
        1,
        "a write after the span's end is not"
    );
}

#[test]
fn a_versioned_use_is_judged_by_its_versions_whatever_its_length() {
    let (f, _) = run(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            use_("inv/1", "q1", 10).lasting(50).version("1").ev(),
            audit(Update, "inv/1", 30).version("2").request("q2").ev(),
        ],
    );
    assert!(f.is_empty(), "equal versions are fresh: {f:?}");
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).version("1").ev(),
            use_("inv/1", "q1", 10).lasting(50).version("2").ev(),
            audit(Update, "inv/1", 30).version("2").request("q2").ev(),
        ],
    );
    assert_eq!(kinds(&f), [StaleCheck]);
}

#[test]
fn a_policy_change_committed_while_the_use_waited_is_drift() {
    // The grant was revoked at 30, before q1's write took effect at 50: the action ran under
    // the new policy.
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("doc/1", "q1", 0).policy("docs", "1").ev(),
            use_("doc/1", "q1", 10).lasting(50).ev(),
            audit(PolicyChange, "docs", 30).version("2").ev(),
            audit(Update, "doc/1", 50).version("7").request("q1").ev(),
        ],
    );
    assert_eq!(kinds(&f), [AuthzDrift]);
    // Revoked after the write took effect: the action ran under the policy it checked.
    let (f, _) = run(
        &cfg(),
        vec![
            check("doc/1", "q1", 0).policy("docs", "1").ev(),
            use_("doc/1", "q1", 10).lasting(50).ev(),
            audit(Update, "doc/1", 20).version("7").request("q1").ev(),
            audit(PolicyChange, "docs", 30).version("2").ev(),
        ],
    );
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn waiting_uses_beyond_the_cap_are_decided_early_and_counted() {
    let mut cfg = cfg();
    cfg.max_pending = 2;
    let mut events = Vec::new();
    for i in 0..5 {
        let q = format!("q{i}");
        events.push(check(&format!("inv/{i}"), &q, i).version("1").ev());
        // No version on the use: it waits for its write.
        events.push(use_(&format!("inv/{i}"), &q, 10 + i).lasting(500).ev());
    }
    let (f, stats) = run(&cfg, events);
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(stats.pairs, 5);
    // No audit stream: each is indeterminate, decided early or not.
    assert_eq!(stats.indeterminate, 5);
    assert!(stats.evicted_of(crate::EvictedState::Use) >= 3, "{stats:?}");
}

#[test]
fn a_waiting_use_holds_back_what_a_hand_over_re_reads() {
    let mut engine = crate::Engine::new(cfg()).unwrap();
    let mut out = Vec::new();
    for e in [
        check("inv/1", "q1", 0).ev(),
        use_("inv/1", "q1", 10).lasting(5_000).ev(),
        audit(Update, "inv/1", 3_000)
            .version("2")
            .request("q2")
            .ev(),
    ] {
        let t = e.event_time_ns();
        engine.ingest(e, t, &mut out);
    }
    // The check is long gone from the state's point of view only if the use is forgotten:
    // the use (placed at 10 ms) is still waiting for its end at 5,010 ms.
    assert!(out.is_empty(), "{out:?}");
    assert!(engine.oldest_state_ns().unwrap() <= ms(10));
}
