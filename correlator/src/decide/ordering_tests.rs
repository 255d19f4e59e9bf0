//! Precedence among the kinds, ordering at one instant, redeliveries and finding ids.

use crate::testkit::*;
use crate::Config;
use toctou_schema::AuditAction::{PolicyChange, Update};
use toctou_schema::FindingKind::*;
use toctou_schema::{finding_id, hex_id};

fn cfg() -> Config {
    config(1_000, 2_000)
}

#[test]
fn precedence_is_unchecked_then_authz_then_duplicate_then_stale() {
    // q1 uses key k first; q2's use then qualifies for duplicate (k), stale (versions) and,
    // depending on the variant, authz drift (policy change) and unchecked (deny).
    let scenario = |deny: bool, policy: bool, key: bool| {
        let mut c = check("acct/1", "q2", 20).version("1");
        if deny {
            c = c.deny();
        }
        if policy {
            c = c.policy("acl", "1");
        }
        let mut u = use_("acct/1", "q2", 30).version("2");
        if key {
            u = u.key("k");
        }
        let events = vec![
            check("acct/1", "q1", 0).version("1").ev(),
            use_("acct/1", "q1", 10).version("1").key("k").ev(),
            c.ev(),
            audit(PolicyChange, "acl", 25).version("2").ev(),
            u.ev(),
        ];
        let f = assert_order_independent(&cfg(), events);
        assert_eq!(f.len(), 1, "one finding per use: {f:?}");
        f[0].kind
    };
    assert_eq!(scenario(true, true, true), UncheckedUse);
    assert_eq!(scenario(false, true, true), AuthzDrift);
    assert_eq!(scenario(false, false, true), DuplicateUse);
    assert_eq!(scenario(false, false, false), StaleCheck);
}

#[test]
fn redelivered_spans_and_audit_records_count_once() {
    let events = vec![
        check("inv/1", "q1", 0).version("5").ev(),
        check("inv/1", "q1", 0).version("5").ev(),
        audit(Update, "inv/1", 5)
            .version("6")
            .source("audit-1")
            .ev(),
        audit(Update, "inv/1", 5)
            .version("6")
            .source("audit-1")
            .ev(),
        use_("inv/1", "q1", 10).version("6").ev(),
        use_("inv/1", "q1", 10).version("6").ev(),
    ];
    let (f, stats) = run(&cfg(), events.clone());
    assert_eq!(kinds(&f), [StaleCheck]);
    assert_eq!(f[0].intervening.len(), 1);
    assert_eq!(stats.duplicate_events, 3);
    assert_eq!(stats.pairs, 1);
    // A redelivery arriving late (after the original was processed) is still dropped.
    let late = vec![
        events[0].clone(),
        events[2].clone(),
        events[4].clone(),
        check("other", "q9", 3_000).ev(),
        events[5].clone(),
        events[3].clone(),
    ];
    let (f2, stats) = run(&cfg(), late);
    assert_eq!(kinds(&f2), [StaleCheck, OrphanCheck]);
    assert_eq!(f2[0], f[0]);
    assert_eq!(stats.late_events, 2);
    assert_eq!(stats.duplicate_events, 2);
}

#[test]
fn finding_ids_are_derived_from_the_events_alone() {
    let events = vec![
        check("inv/1", "q1", 0).version("5").ev(),
        use_("inv/1", "q1", 10).version("6").ev(),
    ];
    let f = assert_order_independent(&cfg(), events);
    let trace = hex_id(&trace_of("q1"));
    let span = f[0].use_span_id.clone();
    assert_eq!(f[0].trace_id, trace);
    assert_eq!(
        f[0].id,
        finding_id(StaleCheck, &["inv/1", "q1", &trace, &span])
    );
    // Spans without ids are told apart by time.
    let (f, _) = run(
        &cfg(),
        vec![
            use_("r", "q", 10).no_ids().ev(),
            use_("r", "q", 20).no_ids().ev(),
        ],
    );
    assert_eq!(kinds(&f), [UncheckedUse, UncheckedUse]);
    assert_ne!(f[0].id, f[1].id);
}

#[test]
fn request_ids_that_are_trace_ids_join_like_any_other() {
    let f = assert_order_independent(
        &cfg(),
        vec![
            check("inv/1", "t1", 0).version("1").request_is_trace().ev(),
            use_("inv/1", "t1", 10).version("2").request_is_trace().ev(),
        ],
    );
    assert_eq!(kinds(&f), [StaleCheck]);
    assert_eq!(f[0].request_id, hex_id(&trace_of("t1")));
    assert_eq!(f[0].request_id.len(), 32);
}

#[test]
fn events_at_the_same_instant_order_audit_then_check_then_use() {
    // A check ending at the instant its use starts pairs with it.
    let (f, stats) = run(
        &cfg(),
        vec![
            use_("inv/1", "q1", 10).version("1").ev(),
            check("inv/1", "q1", 10).version("1").ev(),
        ],
    );
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(stats.pairs, 1);
    // A write at the instant an instantaneous use took effect is known (the resource has an
    // audit stream) but was not committed before it: decided fresh, not indeterminate.
    let (f, stats) = run(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).ev(),
            use_("inv/1", "q1", 10).lasting(0).ev(),
            audit(Update, "inv/1", 10).request("q2").ev(),
        ],
    );
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(stats.indeterminate, 0);
    // The same write inside a use that lasts (and has no audit record of its own) committed
    // before the use's end: it counts.
    let (f, _) = run(
        &cfg(),
        vec![
            check("inv/1", "q1", 0).ev(),
            use_("inv/1", "q1", 10).lasting(1).ev(),
            audit(Update, "inv/1", 10).request("q2").ev(),
        ],
    );
    assert_eq!(kinds(&f), [StaleCheck]);
}
