//! Creates: one create from its two halves, partial creates, finalize and delete, duplicate
//! creates from spans and from audit records.

use crate::testkit::*;
use crate::{Config, EvictedState};
use toctou_schema::AuditAction::{Create, Delete, Finalize, Update};
use toctou_schema::FindingKind::*;
use toctou_schema::{finding_id, Event};

fn cfg() -> Config {
    config(1_000, 2_000)
}

/// A finalize of another `vm/` resource: `vm` becomes a type that finalizes, so its
/// unfinished creates are reported.
fn vm_finalizes() -> Event {
    audit(Finalize, "vm/other", 1).ev()
}

/// A checked create use by `request` at `at_ms`.
fn create_use(resource: &str, request: &str, at_ms: u64) -> [Event; 2] {
    [
        check(resource, request, at_ms - 5).version("0").ev(),
        use_(resource, request, at_ms)
            .version("0")
            .op("create")
            .ev(),
    ]
}

#[test]
fn the_audit_create_and_the_create_use_of_one_request_are_one_create() {
    let mut events = create_use("vm/1", "q1", 10).to_vec();
    events.push(audit(Create, "vm/1", 12).request("q1").version("1").ev());
    events.push(vm_finalizes());
    let mut finalized = events.clone();
    finalized.push(audit(Finalize, "vm/1", 500).version("2").ev());
    assert!(assert_order_independent(&cfg(), finalized).is_empty());

    let f = assert_order_independent(&cfg(), events);
    assert_eq!(kinds(&f), [PartialCreate]);
    let p = &f[0];
    assert_eq!(p.request_id, "q1");
    assert_eq!(p.use_time_ns, Some(ms(10)));
    assert!(!p.use_span_id.is_empty());
    assert_eq!(p.intervening.len(), 1);
    assert_eq!(p.intervening[0].action, Create);
    assert_eq!(p.event_time_ns, ms(1_010));
    assert_eq!(p.operation, "create");
    assert_eq!(
        p.id,
        finding_id(PartialCreate, &["vm/1", "q1", &ms(10).to_string()])
    );
}

#[test]
fn an_audit_create_without_a_request_joins_the_pending_create() {
    let mut events = create_use("vm/1", "q1", 10).to_vec();
    events.push(audit(Create, "vm/1", 12).ev());
    events.push(vm_finalizes());
    let f = assert_order_independent(&cfg(), events);
    assert_eq!(kinds(&f), [PartialCreate]);
    assert_eq!(f[0].request_id, "q1");
    // Audit first: the use claims the create for its request.
    let mut events = vec![audit(Create, "vm/2", 3).ev(), vm_finalizes()];
    events.extend(create_use("vm/2", "q1", 10));
    let f = assert_order_independent(&cfg(), events);
    assert_eq!(kinds(&f), [PartialCreate]);
    assert_eq!(f[0].request_id, "q1");
    assert_eq!(f[0].use_time_ns, Some(ms(10)));
    assert_eq!(f[0].event_time_ns, ms(1_003));
}

#[test]
fn a_second_create_use_by_another_request_is_a_duplicate() {
    let mut events = create_use("vm/1", "q1", 10).to_vec();
    events.extend(create_use("vm/1", "q2", 20));
    events.push(audit(Finalize, "vm/1", 500).ev());
    let f = assert_order_independent(&cfg(), events);
    assert_eq!(kinds(&f), [DuplicateUse]);
    assert_eq!(f[0].request_id, "q2");
    assert_eq!(f[0].prior_use.as_ref().unwrap().request_id, "q1");
    assert_eq!(f[0].prior_use.as_ref().unwrap().time_ns, ms(10));
}

#[test]
fn a_duplicate_create_seen_in_audit_and_span_is_reported_once() {
    // The audit record of q2's create comes first: the duplicate is reported from it.
    let mut events = create_use("vm/1", "q1", 10).to_vec();
    events.push(audit(Create, "vm/1", 12).request("q1").ev());
    events.push(audit(Create, "vm/1", 20).request("q2").source("a-2").ev());
    events.extend(create_use("vm/1", "q2", 25));
    events.push(audit(Finalize, "vm/1", 500).ev());
    let (f, _) = run(&cfg(), events);
    assert_eq!(kinds(&f), [DuplicateUse]);
    let d = &f[0];
    assert_eq!(d.request_id, "q2");
    assert_eq!(d.use_span_id, "");
    assert_eq!(d.prior_use.as_ref().unwrap().request_id, "q1");
    assert_eq!(d.id, finding_id(DuplicateUse, &["vm/1", "q2", "a-2"]));
    // The span comes first: reported from the span, the audit record joins it.
    let mut events = create_use("vm/1", "q1", 10).to_vec();
    events.extend(create_use("vm/1", "q2", 15));
    events.push(audit(Create, "vm/1", 20).request("q2").ev());
    events.push(audit(Finalize, "vm/1", 500).ev());
    let (f, _) = run(&cfg(), events);
    assert_eq!(kinds(&f), [DuplicateUse]);
    assert!(!f[0].use_span_id.is_empty());
}

#[test]
fn finalize_and_delete_clear_a_pending_create_and_update_does_not() {
    for (action, partial) in [(Finalize, false), (Delete, false), (Update, true)] {
        let mut events = create_use("vm/1", "q1", 10).to_vec();
        events.push(audit(action, "vm/1", 500).ev());
        events.push(vm_finalizes());
        let f = assert_order_independent(&cfg(), events);
        let expected: &[_] = if partial { &[PartialCreate] } else { &[] };
        assert_eq!(kinds(&f), expected, "{action:?}");
    }
    // After a delete, another request's create is a new create, not a duplicate.
    let mut events = create_use("vm/1", "q1", 10).to_vec();
    events.push(audit(Delete, "vm/1", 100).ev());
    events.extend(create_use("vm/1", "q2", 200));
    events.push(audit(Finalize, "vm/1", 300).ev());
    assert!(assert_order_independent(&cfg(), events).is_empty());
    // So it is once the first create's pair TTL is over.
    let mut events = create_use("vm/1", "q1", 10).to_vec();
    events.push(audit(Finalize, "vm/1", 100).ev());
    events.extend(create_use("vm/1", "q2", 1_200));
    events.push(audit(Finalize, "vm/1", 1_300).ev());
    assert!(assert_order_independent(&cfg(), events).is_empty());
}

#[test]
fn a_create_by_another_request_after_a_finalize_is_a_duplicate_and_reopens_the_create() {
    // Within the pair TTL of the first create, the resource was made twice.
    let mut events = create_use("vm/1", "q1", 10).to_vec();
    events.push(audit(Finalize, "vm/1", 100).ev());
    events.extend(create_use("vm/1", "q2", 200));
    let f = assert_order_independent(&cfg(), events.clone());
    // The second create was never finalized: it is partial, with a deadline of its own.
    assert_eq!(kinds(&f), [DuplicateUse, PartialCreate]);
    assert_eq!(f[0].request_id, "q2");
    assert_eq!(f[0].prior_use.as_ref().unwrap().request_id, "q1");
    assert_eq!(f[1].event_time_ns, ms(1_200));
    events.push(audit(Finalize, "vm/1", 300).ev());
    let f = assert_order_independent(&cfg(), events);
    assert_eq!(kinds(&f), [DuplicateUse]);
}

#[test]
fn types_never_seen_finalizing_report_no_partial_create() {
    // Kubernetes objects, or a service that creates in one step: no finalize ever comes.
    let events = vec![
        audit(Create, "k8s/pods/default/web-1", 10)
            .request("q1")
            .ev(),
        audit(Create, "vm/7", 20).request("q2").ev(),
        audit(Finalize, "k8s/configmaps/default/c", 30).ev(),
    ];
    let f = assert_order_independent(&cfg(), events);
    assert!(f.is_empty(), "{f:#?}");
}

#[test]
fn an_audit_only_create_can_be_partial() {
    let (f, _) = run(
        &cfg(),
        vec![audit(Create, "vm/9", 10).request("q9").ev(), vm_finalizes()],
    );
    assert_eq!(kinds(&f), [PartialCreate]);
    assert_eq!(f[0].request_id, "q9");
    assert_eq!(f[0].use_span_id, "");
    assert_eq!(f[0].use_time_ns, None);
    assert_eq!(f[0].service, "db");
    assert_eq!(f[0].operation, "create");
    assert_eq!(f[0].intervening.len(), 1);
}

#[test]
fn a_full_create_set_decides_the_oldest_early_and_counts_it() {
    let cfg = Config {
        max_creates: 1,
        ..cfg()
    };
    let (f, stats) = run(
        &cfg,
        vec![
            vm_finalizes(),
            audit(Create, "vm/1", 2).request("q1").ev(),
            audit(Create, "vm/2", 3).request("q2").ev(),
        ],
    );
    assert_eq!(kinds(&f), [PartialCreate, PartialCreate]);
    assert!(f[0].reason.contains("evicted"), "{}", f[0].reason);
    assert_eq!(f[0].resource, "vm/1");
    assert_eq!(stats.evicted_of(EvictedState::Create), 1);
}
