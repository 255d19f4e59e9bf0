//! `max_interned_bytes`: state whose strings pass the cap leaves early, oldest first, and
//! what it would have reported is still reported.

use crate::testkit::*;
use crate::{Config, Engine, EvictedState};
use toctou_schema::{AuditAction, FindingKind};

/// A value at the receivers' 4 KiB limit, distinct per `tag`.
fn fat(tag: &str, n: usize) -> String {
    format!("{tag}-{n}-{}", "x".repeat(4000))
}

fn capped(bytes: usize) -> Config {
    Config {
        max_interned_bytes: bytes,
        ..config(1_000, 100)
    }
}

#[test]
fn fat_checks_never_hold_more_than_the_cap_and_the_evicted_still_report_their_orphans() {
    const CAP: usize = 200 * 1024;
    let mut engine = Engine::new(capped(CAP)).unwrap();
    let mut out = Vec::new();
    // 500 checks with a long resource name, request id and version (~12 KB each, 6 MB in
    // all): thirty times the cap.
    for i in 0..500u64 {
        let e = check(&fat("res", i as usize), &fat("req", i as usize), i)
            .version(&fat("v", i as usize))
            .ev();
        engine.ingest(e, ms(i), &mut out);
        let held = engine.stats().interned_bytes as usize;
        assert!(held <= CAP, "{held} bytes of strings held after check {i}");
    }
    let stats = engine.stats().clone();
    assert!(stats.byte_evictions > 0);
    assert!(stats.evicted_of(EvictedState::Tombstone) > 0);
    assert!(stats.evicted_of(EvictedState::Pending) > 0);
    assert_eq!(stats.interned_bytes_limit, CAP as u64);
    // The newest check is still pending and pairs with its use without a finding.
    let last = 499;
    let e = use_(&fat("res", last), &fat("req", last), 600)
        .version(&fat("v", last))
        .ev();
    let before = out.len();
    engine.ingest(e, ms(600), &mut out);
    engine.flush(ms(600), &mut out);
    assert!(engine.is_drained());
    assert_eq!(engine.stats().pairs, 1);
    // Every other check was allowed and never used: each is an orphan, evicted or not,
    // and none is lost to the cap.
    let orphans: Vec<_> = out
        .iter()
        .filter(|f| f.kind == FindingKind::OrphanCheck)
        .collect();
    assert_eq!(orphans.len(), 499, "{} findings before the use", before);
    assert!(orphans.iter().any(|f| f.reason.contains("evicted")));
}

#[test]
fn fat_audit_writes_are_forgotten_oldest_first() {
    const CAP: usize = 100 * 1024;
    let mut engine = Engine::new(capped(CAP)).unwrap();
    let mut out = Vec::new();
    for i in 0..200u64 {
        let e = audit(AuditAction::Update, "inv/1", i)
            .version(&i.to_string())
            .request(&fat("req", i as usize))
            .actor(&fat("actor", i as usize))
            .ev();
        engine.ingest(e, ms(i), &mut out);
        assert!(engine.stats().interned_bytes as usize <= CAP);
    }
    assert!(engine.stats().evicted_of(EvictedState::Audit) > 100);
    // The newest writes are still there: a check on version 198 and a use on 199 is stale.
    engine.ingest(
        check("inv/1", "q1", 200).version("198").ev(),
        ms(200),
        &mut out,
    );
    engine.ingest(
        use_("inv/1", "q1", 201).version("199").ev(),
        ms(201),
        &mut out,
    );
    engine.flush(ms(201), &mut out);
    let stale: Vec<_> = out
        .iter()
        .filter(|f| f.kind == FindingKind::StaleCheck)
        .collect();
    assert_eq!(stale.len(), 1, "{out:?}");
}

#[test]
fn state_under_the_cap_is_never_evicted() {
    let (f, stats) = run(
        &capped(1 << 20),
        (0..50)
            .flat_map(|i| {
                [
                    check(&fat("res", i), &format!("q{i}"), i as u64)
                        .version("1")
                        .ev(),
                    use_(&fat("res", i), &format!("q{i}"), i as u64 + 1)
                        .version("1")
                        .ev(),
                ]
            })
            .collect(),
    );
    assert!(f.is_empty(), "{f:?}");
    assert_eq!(stats.byte_evictions, 0);
    assert_eq!(stats.pairs, 50);
}

#[test]
fn a_zero_cap_is_refused() {
    assert!(Engine::new(capped(0)).is_err());
}
