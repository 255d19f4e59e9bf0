//! The rules for uses and audit records, kind by kind. Every scenario with more than one
//! event is also replayed in every arrival order within the lateness.

use crate::testkit::*;
use crate::Config;
use toctou_schema::AuditAction::{PolicyChange, Update};
use toctou_schema::FindingKind::*;
use toctou_schema::{hex_id, CheckSource, UseOutcome};

fn cfg() -> Config {
    config(1_000, 2_000)
}

#[test]
fn a_use_with_no_check_is_unchecked() {
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("inv/1", "other", 0).version("1").ev(),
            use_("inv/1", "q1", 10).version("1").ev(),
        ],
    );
    assert_eq!(kinds(&f), [UncheckedUse, OrphanCheck]);
    assert_eq!(f[0].request_id, "q1");
    assert_eq!(f[0].check_span_id, "");
    assert_eq!(f[0].check_time_ns, None);
    assert_eq!(f[0].race_window_ns, None);
    assert_eq!(f[1].request_id, "other");
}

#[test]
fn a_check_after_the_use_does_not_match_it() {
    let f = assert_order_independent(
        &cfg(),
        vec![use_("inv/1", "q1", 10).ev(), check("inv/1", "q1", 20).ev()],
    );
    assert_eq!(kinds(&f), [UncheckedUse, OrphanCheck]);
}

#[test]
fn a_use_after_a_denying_check_is_unchecked_and_the_deny_is_no_orphan() {
    let (f, stats) = run(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).deny().ev(),
            use_("inv/1", "q1", 10).ev(),
        ],
    );
    assert_eq!(kinds(&f), [UncheckedUse]);
    assert!(f[0].reason.contains("denied"), "{}", f[0].reason);
    assert_eq!(stats.pairs, 1);
    let (f, _) = run(&cfg(), vec![check("inv/1", "q1", 0).deny().ev()]);
    assert!(f.is_empty());
}

#[test]
fn a_policy_change_between_check_and_use_is_authz_drift() {
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("doc/1", "q1", 0).policy("docs-acl", "3").ev(),
            audit(PolicyChange, "docs-acl", 5)
                .version("4")
                .actor("alice")
                .ev(),
            use_("doc/1", "q1", 10).ev(),
        ],
    );
    assert_eq!(kinds(&f), [AuthzDrift]);
    assert_eq!(f[0].policy.as_deref(), Some("docs-acl"));
    assert_eq!(f[0].policy_version.as_deref(), Some("3"));
    assert_eq!(f[0].intervening.len(), 1);
    assert_eq!(f[0].intervening[0].version.as_deref(), Some("4"));
    assert_eq!(f[0].intervening[0].actor.as_deref(), Some("alice"));
    assert_eq!(f[0].intervening[0].resource, "docs-acl");
}

#[test]
fn a_check_under_an_outdated_policy_version_is_authz_drift_only_if_newer() {
    // The policy was at version 4 before the check, which still evaluated version 3.
    let newer = vec![
        audit(PolicyChange, "acl", 0).version("4").ev(),
        check("doc/1", "q1", 100)
            .policy("acl", "3")
            .version("1")
            .ev(),
        use_("doc/1", "q1", 110).version("1").ev(),
    ];
    assert_eq!(
        kinds(&assert_order_independent(&cfg(), newer)),
        [AuthzDrift]
    );
    // Changed to an older integer version: the check saw something newer than we did.
    let older = vec![
        audit(PolicyChange, "acl", 0).version("2").ev(),
        check("doc/1", "q1", 100)
            .policy("acl", "3")
            .version("1")
            .ev(),
        use_("doc/1", "q1", 110).version("1").ev(),
    ];
    assert!(assert_order_independent(&cfg(), older).is_empty());
    // Non-integer versions: any other version counts.
    let etags = vec![
        audit(PolicyChange, "acl", 0).version("etag-b").ev(),
        check("doc/1", "q1", 100)
            .policy("acl", "etag-a")
            .version("1")
            .ev(),
        use_("doc/1", "q1", 110).version("1").ev(),
    ];
    assert_eq!(
        kinds(&assert_order_independent(&cfg(), etags)),
        [AuthzDrift]
    );
    // The same version (by integer value) is no drift.
    let same = vec![
        audit(PolicyChange, "acl", 0).version("03").ev(),
        check("doc/1", "q1", 100)
            .policy("acl", "3")
            .version("1")
            .ev(),
        use_("doc/1", "q1", 110).version("1").ev(),
    ];
    assert!(assert_order_independent(&cfg(), same).is_empty());
}

#[test]
fn a_use_denied_by_permission_after_an_allow_is_authz_drift() {
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("doc/1", "q1", 0).ev(),
            use_("doc/1", "q1", 10).denied().ev(),
        ],
    );
    assert_eq!(kinds(&f), [AuthzDrift]);
    assert!(
        f[0].reason.contains("denied by permission"),
        "{}",
        f[0].reason
    );
    // A 403 wins over an outcome that says ok: the use did not act.
    let (f, _) = run(
        &cfg(),
        vec![
            check("doc/1", "q1", 0).version("1").ev(),
            use_("doc/1", "q1", 10)
                .version("2")
                .denied()
                .outcome(UseOutcome::Ok)
                .ev(),
        ],
    );
    assert_eq!(kinds(&f), [AuthzDrift]);
    // Without an allowing check, or failing otherwise: a failed use did not act.
    let (f, stats) = run(&cfg(), vec![use_("doc/1", "q1", 10).denied().ev()]);
    assert!(f.is_empty());
    assert_eq!(stats.pairs, 0);
    let (f, stats) = run(
        &cfg(),
        vec![
            check("doc/1", "q1", 0).ev(),
            use_("doc/1", "q1", 10).outcome(UseOutcome::Error).ev(),
        ],
    );
    assert!(f.is_empty());
    assert_eq!(stats.pairs, 1);
}

#[test]
fn a_conflict_is_a_prevented_race_never_a_finding() {
    let (f, stats) = run(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).version("5").ev(),
            audit(Update, "inv/1", 5).version("6").request("q2").ev(),
            use_("inv/1", "q1", 10)
                .version("5")
                .outcome(UseOutcome::Conflict)
                .ev(),
        ],
    );
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(stats.prevented_races, 1);
    assert_eq!(stats.pairs, 1);
}

#[test]
fn a_reused_idempotency_key_is_a_duplicate_use() {
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("acct/1", "q1", 0).version("1").ev(),
            use_("acct/1", "q1", 10)
                .version("1")
                .op("charge")
                .key("k-1")
                .ev(),
            check("acct/1", "q2", 15).version("1").ev(),
            use_("acct/1", "q2", 20)
                .version("1")
                .op("charge")
                .key("k-1")
                .ev(),
        ],
    );
    assert_eq!(kinds(&f), [DuplicateUse]);
    assert_eq!(f[0].request_id, "q2");
    assert_eq!(f[0].idempotency_key.as_deref(), Some("k-1"));
    let prior = f[0].prior_use.as_ref().unwrap();
    assert_eq!(prior.request_id, "q1");
    assert_eq!(prior.time_ns, ms(10));
    assert_eq!(prior.trace_id, hex_id(&trace_of("q1")));
    // The same key under another operation is another key.
    let (f, _) = run(
        &cfg(),
        vec![
            check("acct/1", "q1", 0).version("1").ev(),
            use_("acct/1", "q1", 10)
                .version("1")
                .op("charge")
                .key("k-1")
                .ev(),
            check("acct/1", "q2", 15).version("1").ev(),
            use_("acct/1", "q2", 20)
                .version("1")
                .op("refund")
                .key("k-1")
                .ev(),
        ],
    );
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn every_extra_use_of_a_key_is_one_finding_naming_the_first() {
    let mut events = Vec::new();
    for (i, q) in ["q1", "q2", "q3"].iter().enumerate() {
        let t = 10 * i as u64;
        events.push(check("acct/1", q, t).version("1").ev());
        events.push(
            use_("acct/1", q, t + 5)
                .version("1")
                .op("charge")
                .key("k")
                .ev(),
        );
    }
    let (f, _) = run(&cfg(), events);
    assert_eq!(kinds(&f), [DuplicateUse, DuplicateUse]);
    assert!(f
        .iter()
        .all(|f| f.prior_use.as_ref().unwrap().request_id == "q1"));
}

#[test]
fn differing_versions_are_a_stale_check_with_the_intervening_writes() {
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("inv/1", "q1", 0)
                .version("5")
                .source(CheckSource::Replica)
                .ev(),
            audit(Update, "inv/1", 5).version("6").request("q2").ev(),
            // The use's own write is not evidence against it.
            audit(Update, "inv/1", 6).version("6").request("q1").ev(),
            use_("inv/1", "q1", 10).version("6").ev(),
        ],
    );
    assert_eq!(kinds(&f), [StaleCheck]);
    let s = &f[0];
    assert_eq!(s.checked_version.as_deref(), Some("5"));
    assert_eq!(s.used_version.as_deref(), Some("6"));
    assert_eq!(s.check_source, Some(CheckSource::Replica));
    assert_eq!(s.race_window_ns, Some(10_000_000));
    assert_eq!(s.intervening.len(), 1);
    assert_eq!(s.intervening[0].request_id.as_deref(), Some("q2"));
}

#[test]
fn versions_compare_as_integers_where_both_are() {
    let pair = |checked: &str, used: &str| {
        run(
            &cfg(),
            vec![
                check("inv/1", "q1", 0).version(checked).ev(),
                use_("inv/1", "q1", 10).version(used).ev(),
            ],
        )
    };
    let (f, stats) = pair("07", "7");
    assert!(f.is_empty());
    assert_eq!(stats.indeterminate, 0);
    assert_eq!(kinds(&pair("a9", "a10").0), [StaleCheck]);
    assert_eq!(kinds(&pair("etag-1", "etag-2").0), [StaleCheck]);
    assert!(pair("etag-1", "etag-1").0.is_empty());
    // A write committed (by its clock) before the check but with a version the check had
    // not seen: included by integer version order, 9 < 10 <= 10, not by string order.
    let (f, _) = run(
        &cfg(),
        vec![
            audit(Update, "inv/1", 95).version("10").request("q2").ev(),
            check("inv/1", "q1", 100).version("9").ev(),
            use_("inv/1", "q1", 110).version("10").ev(),
        ],
    );
    assert_eq!(kinds(&f), [StaleCheck]);
    assert_eq!(f[0].intervening.len(), 1);
}

#[test]
fn without_a_used_version_the_audit_stream_decides() {
    // By time: a write by another request between check and use.
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).ev(),
            audit(Update, "inv/1", 5).ev(),
            use_("inv/1", "q1", 10).ev(),
        ],
    );
    assert_eq!(kinds(&f), [StaleCheck]);
    assert_eq!(f[0].intervening[0].request_id, None);
    // A write after the use (or by the same request) leaves the check fresh: decided, not
    // indeterminate, because the resource has an audit stream.
    let (f, stats) = run(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).ev(),
            audit(Update, "inv/1", 5).request("q1").ev(),
            use_("inv/1", "q1", 10).ev(),
            audit(Update, "inv/1", 15).ev(),
        ],
    );
    assert!(f.is_empty());
    assert_eq!(stats.indeterminate, 0);
    // By version order where the checked version and the write's are integers: a write
    // stamped before the check (clock skew) with a newer version is after it.
    let (f, _) = run(
        &cfg(),
        vec![
            audit(Update, "inv/1", 90).version("6").request("q2").ev(),
            check("inv/1", "q1", 100).version("5").ev(),
            use_("inv/1", "q1", 110).ev(),
        ],
    );
    assert_eq!(kinds(&f), [StaleCheck]);
    // ... and the write that produced the version the check saw is not.
    let (f, stats) = run(
        &cfg(),
        vec![
            audit(Update, "inv/1", 90).version("5").request("q2").ev(),
            check("inv/1", "q1", 100).version("5").ev(),
            use_("inv/1", "q1", 110).ev(),
        ],
    );
    assert!(f.is_empty());
    assert_eq!(stats.indeterminate, 0);
}

#[test]
fn incomplete_evidence_is_indeterminate_never_a_finding() {
    let (f, stats) = run(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).ev(),
            use_("inv/1", "q1", 10).ev(),
            check("inv/2", "q2", 0).version("3").ev(),
            use_("inv/2", "q2", 10).ev(),
        ],
    );
    assert!(f.is_empty());
    assert_eq!(stats.indeterminate, 2);
    assert_eq!(stats.pairs, 2);
}

#[test]
fn evidence_is_capped_in_bytes_and_the_reason_counts_what_was_left_out() {
    // 50 writes whose values are at the receivers' 4 KiB limit: listing them all would make
    // one finding about 800 KB.
    let big = |c: char| c.to_string().repeat(4096);
    let mut events = vec![check("inv/1", "q1", 0).version("1").ev()];
    for i in 0..50u64 {
        events.push(
            audit(Update, "inv/1", 1 + i)
                .version(&(2 + i).to_string())
                .request(&format!("{}{i}", big('r')))
                .actor(&big('a'))
                .ev(),
        );
    }
    events.push(use_("inv/1", "q1", 100).version("51").ev());
    let (f, _) = run(&cfg(), events);
    assert_eq!(kinds(&f), [StaleCheck]);
    let listed = f[0].intervening.len();
    let bytes: usize = f[0].intervening.iter().map(|r| r.approx_bytes()).sum();
    assert!((1..50).contains(&listed), "{listed}");
    assert!(bytes <= crate::resources::MAX_EVIDENCE_BYTES, "{bytes}");
    let tail = format!("(first {listed} listed, {} left out)", 50 - listed);
    assert!(f[0].reason.contains(&tail), "{}", f[0].reason);
    assert!(f[0].approx_bytes() < 64 * 1024, "{}", f[0].approx_bytes());
}

#[test]
fn long_strings_of_pending_checks_are_counted_once_and_released() {
    let mut engine = crate::Engine::new(cfg()).unwrap();
    let mut out = Vec::new();
    let value = |c: char, i: u64| format!("{i}-{}", c.to_string().repeat(4000));
    for i in 0..10u64 {
        let mut e = check(&value('r', i), &value('q', i), i).version(&value('v', i));
        e = e.key(&value('k', i));
        engine.ingest(e.ev(), ms(i), &mut out);
    }
    // Ten resource names, request ids, versions and keys of ~4 KB each.
    let counted = engine.stats().interned_bytes;
    let held: u64 = (0..10u64).map(|i| 4 * value('x', i).len() as u64).sum();
    assert!(
        counted >= held && counted < held + 1_000,
        "{counted} vs {held}"
    );
    assert!(engine.stats().check_state_bytes < held / 10, "records only");
    engine.flush(ms(100_000), &mut out);
    assert_eq!(engine.stats().interned_bytes, 0);
}
