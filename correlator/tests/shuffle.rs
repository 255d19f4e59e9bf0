//! Property: any arrival order within the allowed lateness gives the same findings (and the
//! same counters) as in-order input. Random scenarios mix every rule: retries, denies,
//! policies, idempotency keys, creates, audit writes, redeliveries, conflicts and errors.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use toctou_correlator::Config;
use toctou_schema::Event;

fn random_scenario(rng: &mut StdRng) -> Vec<String> {
    let resources = ["inv/a", "inv/b", "vm/c"];
    let requests = ["q1", "q2", "q3", "q4", "q5", "q6"];
    let version = |rng: &mut StdRng| -> String {
        match rng.gen_range(0..10) {
            0 => "etag-x".into(),
            1 => format!("0{}", rng.gen_range(1..4)),
            _ => rng.gen_range(1..5).to_string(),
        }
    };
    let mut lines = Vec::new();
    for (i, q) in requests.iter().enumerate() {
        let r = resources.choose(rng).unwrap();
        let mut t = rng.gen_range(0..2_500u64);
        let op = if rng.gen_bool(0.3) {
            "create"
        } else {
            "reserve"
        };
        let key = match rng.gen_range(0..4) {
            0 => " key=k1".to_string(),
            1 => " key=k2".to_string(),
            _ => String::new(),
        };
        for attempt in 0..rng.gen_range(0..3) {
            let mut l = format!("check {r} {q} {t}");
            if rng.gen_bool(0.7) {
                l += &format!(" version={}", version(rng));
            }
            if rng.gen_bool(0.15) {
                l += " deny";
            }
            if rng.gen_bool(0.3) {
                l += &format!(" policy=acl@{}", rng.gen_range(1..4));
            }
            if attempt == 0 && rng.gen_bool(0.2) {
                l += " source=replica";
            }
            lines.push(l);
            t += rng.gen_range(0..400);
        }
        for _ in 0..rng.gen_range(0..3) {
            let mut l = format!("use {r} {q} {t} op={op}{key}");
            if rng.gen_bool(0.6) {
                l += &format!(" version={}", version(rng));
            }
            match rng.gen_range(0..10) {
                0 => l += " outcome=conflict",
                1 => l += " outcome=error",
                2 => l += " denied",
                _ => {}
            }
            lines.push(l);
            t += rng.gen_range(1..300);
        }
        if rng.gen_bool(0.5) {
            let action = ["update", "create", "finalize", "delete", "update"]
                .choose(rng)
                .unwrap();
            let mut l = format!(
                "audit {action} {r} {} version={}",
                t + rng.gen_range(0..200),
                version(rng)
            );
            if rng.gen_bool(0.7) {
                l += &format!(" request={q}");
            }
            if rng.gen_bool(0.3) {
                l += &format!(" source=audit-{i}");
            }
            lines.push(l);
        }
    }
    for _ in 0..rng.gen_range(0..3) {
        lines.push(format!(
            "audit policy_change acl {} version={}",
            rng.gen_range(0..2_500),
            rng.gen_range(1..4)
        ));
    }
    // Redeliveries: exact copies of some events.
    for _ in 0..rng.gen_range(0..3) {
        let copy = lines.choose(rng).unwrap().clone();
        lines.push(copy);
    }
    lines
}

#[test]
fn random_scenarios_shuffled_within_the_lateness_give_identical_findings() {
    let mut rng = StdRng::seed_from_u64(0x070c_70c7_u64);
    let mut total_findings = 0;
    let mut kinds_seen = std::collections::BTreeSet::new();
    for round in 0..300 {
        let config = Config {
            pair_ttl: Duration::from_millis(rng.gen_range(200..1_500)),
            allowed_lateness: Duration::from_millis(rng.gen_range(0..2_500)),
            ..Config::default()
        };
        let lateness_ns = config.allowed_lateness.as_nanos() as u64;
        let lines = random_scenario(&mut rng);
        let mut events: Vec<Event> = lines.iter().map(|l| parse_line(l)).collect();
        events.sort_by_key(|e| e.event_time_ns());
        let (expected, stats) = run(&config, events.clone());
        let expected = normalized(expected);
        total_findings += expected.len();
        kinds_seen.extend(expected.iter().map(|f| f.kind));
        for shuffle in 0..20 {
            let order = shuffled_within(&events, lateness_ns, &mut rng);
            assert!(within_lateness(&order, lateness_ns));
            let (got, got_stats) = run(&config, order);
            assert_eq!(
                normalized(got),
                expected,
                "round {round}, shuffle {shuffle}: scenario\n{}",
                lines.join("\n")
            );
            assert_eq!(order_free_counters(&got_stats), order_free_counters(&stats));
        }
    }
    // The generator must exercise every rule, or the property says little.
    assert!(total_findings > 300, "{total_findings}");
    assert_eq!(kinds_seen.len(), 6, "{kinds_seen:?}");
}

#[test]
fn events_later_than_the_lateness_are_counted_not_silently_reordered() {
    let config = Config {
        allowed_lateness: Duration::from_millis(100),
        ..Config::default()
    };
    let events: Vec<Event> = [
        "check r q 0 version=1",
        "check s p 1000",
        "use r q 10 version=1",
    ]
    .iter()
    .map(|l| parse_line(l))
    .collect();
    assert!(!within_lateness(&events, 100_000_000));
    let (findings, stats) = run(&config, events);
    assert_eq!(stats.late_events, 1);
    // The late use still matched its check.
    assert_eq!(stats.pairs, 1);
    assert_eq!(
        findings.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>(),
        ["orphan_check"]
    );
}
