//! The benchmarks' workload: a realistic mix of checks, uses and audit records.
//!
//! Requests arrive at a steady event-time rate. Most check a resource (100 000 ids, a few
//! hot ones) and use it 1-50 ms later; 8% are provisioning requests that create a
//! fresh resource (check, create use, audit create, and a finalize seconds later, 3% never).
//! Audit records are ~10% of events: the requests' own writes, and writes by a job without
//! a request id that make 4% of checks stale. Checkout checks name a policy that changes
//! now and then; payments carry idempotency keys, 2% reused; 3% of checks go unused; 1% of
//! spans are redelivered. Request ids are trace ids. Arrival order is event time plus up to
//! 200 ms of jitter, inside the default lateness.

#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
pub use toctou_schema::testing::BASE_NS;
use toctou_schema::testing::{audit_at, span_at};
use toctou_schema::{AuditAction, Event, Phase, SpanEvent, UseOutcome};
pub const RESOURCES: u64 = 100_000;

const SERVICES: [&str; 4] = ["checkout", "payments", "inventory", "provisioner"];
const OPERATIONS: [&str; 4] = ["reserve", "charge", "release", "create"];

fn audit(
    action: AuditAction,
    resource: &str,
    time: u64,
    version: u64,
    request: Option<String>,
) -> Event {
    let mut a = audit_at(action, resource, time)
        .version(&version.to_string())
        .actor("db");
    a.0.request_id = request;
    a.ev()
}

fn policy_change(time: u64, version: u64) -> Event {
    audit(
        AuditAction::PolicyChange,
        "checkout-acl",
        time,
        version,
        None,
    )
}

/// A provisioning request: check the name is free, create, the database's create record,
/// and (almost always) a finalize when the resource is ready.
fn provision(events: &mut Vec<(u64, Event)>, rng: &mut StdRng, t: u64, n: u64) {
    let resource = format!("vm/{n}");
    let trace: [u8; 16] = rng.gen();
    let check = span(Phase::Check, &resource, trace, rng, t, 0, 3);
    events.push((t, Event::Span(check)));
    let use_t = t + rng.gen_range(1_000_000..20_000_000);
    let create = span(Phase::Use, &resource, trace, rng, use_t, 0, 3);
    events.push((use_t, Event::Span(create)));
    let commit = use_t + 1_000_000;
    events.push((
        commit,
        audit(AuditAction::Create, &resource, commit, 1, Some(hex(&trace))),
    ));
    if rng.gen_bool(0.97) {
        let ready = commit + rng.gen_range(100_000_000..5_000_000_000);
        events.push((
            ready,
            audit(AuditAction::Finalize, &resource, ready, 2, None),
        ));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn span(
    phase: Phase,
    resource: &str,
    trace: [u8; 16],
    rng: &mut StdRng,
    time: u64,
    version: u64,
    service: usize,
) -> SpanEvent {
    // Checks last 0.3 ms, uses 2 ms.
    let lasting = if phase == Phase::Check {
        300_000
    } else {
        2_000_000
    };
    span_at(phase, resource, &hex(&trace), time)
        .version(&version.to_string())
        .ids(trace, rng.gen())
        .service(SERVICES[service], OPERATIONS[service])
        .lasting_ns(lasting)
        .0
}

/// `n` events (approximately) at `requests_per_s` requests per second of event time, in
/// arrival order, each with the wall time it arrives at.
pub fn mix(n: usize, requests_per_s: u64, seed: u64) -> Vec<(u64, Event)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut versions = vec![1u64; RESOURCES as usize];
    let mut events: Vec<(u64, Event)> = Vec::with_capacity(n + n / 8);
    let step = 1_000_000_000 / requests_per_s;
    let mut t = BASE_NS;
    let mut last_key = String::new();
    let mut created = 0u64;
    let mut policy_version = 1u64;
    while events.len() < n {
        t += step;
        let service = match rng.gen_range(0..100) {
            0..35 => 0,
            35..60 => 1,
            60..92 => 2,
            _ => 3,
        };
        if service == 3 {
            created += 1;
            provision(&mut events, &mut rng, t, created);
            continue;
        }
        // A few hot resources, the rest spread evenly.
        let r = if rng.gen_bool(0.05) {
            rng.gen_range(0..10)
        } else {
            rng.gen_range(0..RESOURCES)
        };
        let resource = format!("inventory/sku-{r}");
        let trace: [u8; 16] = rng.gen();
        let v = versions[r as usize];
        let mut check = span(Phase::Check, &resource, trace, &mut rng, t, v, service);
        if service == 0 {
            // Checkout checks are authorization checks too; the policy changes now and then.
            check.policy = Some("checkout-acl".into());
            check.policy_version = Some(policy_version.to_string());
            if rng.gen_bool(0.0005) {
                policy_version += 1;
                events.push((t + 1, policy_change(t + 1, policy_version)));
            }
        }
        events.push((t, Event::Span(check.clone())));
        if rng.gen_bool(0.01) {
            events.push((t, Event::Span(check)));
        }
        if rng.gen_bool(0.03) {
            continue; // an orphan check
        }
        let use_t = t + rng.gen_range(1_000_000..50_000_000);
        // Another writer got in between (stale) in some requests.
        let stale = rng.gen_bool(0.04);
        if stale {
            versions[r as usize] += 1;
            events.push((
                use_t - 500_000,
                audit_at(AuditAction::Update, &resource, use_t - 500_000)
                    .version(&versions[r as usize].to_string())
                    .actor("nightly-job")
                    .ev(),
            ));
        }
        let mut u = span(
            Phase::Use,
            &resource,
            trace,
            &mut rng,
            use_t,
            versions[r as usize],
            service,
        );
        if service == 1 {
            // Payments carry an idempotency key; a few are retried under a new request.
            let key = if rng.gen_bool(0.02) && !last_key.is_empty() {
                last_key.clone()
            } else {
                format!("pay-{}", hex(&rng.gen::<[u8; 8]>()))
            };
            last_key = key.clone();
            u.idempotency_key = Some(key);
        }
        if rng.gen_bool(0.01) {
            u.outcome = UseOutcome::Conflict;
        }
        events.push((use_t, Event::Span(u.clone())));
        if rng.gen_bool(0.01) {
            events.push((use_t, Event::Span(u)));
        }
        if rng.gen_bool(0.06) {
            versions[r as usize] += 1;
            let commit = use_t + 1_000_000;
            // The random draws in the order the recorded figures were measured with.
            let source = hex(&rng.gen::<[u8; 16]>());
            let mut a = audit_at(AuditAction::Update, &resource, commit)
                .version(&versions[r as usize].to_string())
                .request(&hex(&trace))
                .actor(SERVICES[service])
                .source(&source);
            a.0.trace_id = trace;
            a.0.span_id = rng.gen();
            events.push((commit, a.ev()));
        }
    }
    for (arrival, _) in events.iter_mut() {
        *arrival += rng.gen_range(0..200_000_000);
    }
    events.sort_by_key(|(arrival, _)| *arrival);
    events
}
