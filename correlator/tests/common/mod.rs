//! Shared by the black-box tests: a small scenario language, a runner that feeds an
//! [`Engine`] as `toctou replay` does, and arrival orders shuffled within the lateness.
//!
//! A scenario line is one event (times in milliseconds after a fixed base):
//! ```text
//! check <resource> <request> <t> [version=V] [deny] [policy=P@V] [key=K] [op=O] [source=S]
//! use   <resource> <request> <t> [version=V] [key=K] [op=O] [outcome=ok|conflict|error] [denied]
//! audit <action> <resource> <t> [version=V] [request=R] [actor=A] [source=ID]
//! ```
//! A request's check and use share a trace id derived from the request id. `#` starts a
//! comment; `# expect: kind kind ...` and `# config: {json}` are read by the golden test.

#![allow(dead_code)]

use rand::seq::SliceRandom;
use rand::Rng;
use toctou_correlator::{Config, Engine, Stats};
use toctou_schema::testing::{audit_at, ms, span_at};
use toctou_schema::{AuditAction, CheckSource, Decision, Event, Finding, Phase, UseOutcome};
use xxhash_rust::xxh3::xxh3_128;

fn parse_t(s: &str, line: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| panic!("bad time {s:?} in {line:?}"))
}

/// Parses one scenario line into an event.
pub fn parse_line(line: &str) -> Event {
    let words: Vec<&str> = line.split_whitespace().collect();
    let opts: Vec<(&str, &str)> = words
        .iter()
        .skip(4)
        .map(|w| w.split_once('=').unwrap_or((w, "")))
        .collect();
    let opt = |name: &str| {
        opts.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let flag = |name: &str| opts.iter().any(|(k, _)| *k == name);
    match words[0] {
        "check" | "use" => {
            let phase = if words[0] == "check" {
                Phase::Check
            } else {
                Phase::Use
            };
            let (resource, request) = (words[1], words[2]);
            let t = ms(parse_t(words[3], line));
            let (policy, policy_version) = match opt("policy") {
                Some(p) => {
                    let (p, v) = p.split_once('@').expect("policy=NAME@VERSION");
                    (Some(p.to_string()), Some(v.to_string()))
                }
                None => (None, None),
            };
            let outcome = opt("outcome").map_or(UseOutcome::Ok, |o| {
                UseOutcome::parse(&o).unwrap_or_else(|| panic!("bad outcome in {line:?}"))
            });
            let denied = flag("denied");
            let mut span = span_at(phase, resource, request, t).0;
            // The golden findings' span ids are the hash of the scenario line.
            span.span_id = (xxh3_128(line.trim().as_bytes()) as u64).to_be_bytes();
            span.version = opt("version");
            span.operation = opt("op").unwrap_or_else(|| "reserve".into());
            if flag("deny") {
                span.decision = Decision::Deny;
            }
            span.source = opt("source").map(|s| CheckSource::parse(&s).expect("check source"));
            span.policy = policy;
            span.policy_version = policy_version;
            span.idempotency_key = opt("key");
            span.outcome = if denied { UseOutcome::Error } else { outcome };
            span.permission_denied = denied;
            Event::Span(span)
        }
        "audit" => {
            let action =
                AuditAction::parse(words[1]).unwrap_or_else(|| panic!("bad action in {line:?}"));
            let mut audit = audit_at(action, words[2], ms(parse_t(words[3], line))).0;
            audit.version = opt("version");
            audit.request_id = opt("request");
            audit.actor = opt("actor");
            audit.source_id = opt("source");
            Event::Audit(audit)
        }
        other => panic!("unknown event {other:?} in {line:?}"),
    }
}

pub struct Scenario {
    pub events: Vec<Event>,
    pub expect: Vec<String>,
    pub config: Config,
}

pub fn parse_scenario(text: &str) -> Scenario {
    let mut s = Scenario {
        events: Vec::new(),
        expect: Vec::new(),
        config: Config::default(),
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# expect:") {
            s.expect = rest.split_whitespace().map(str::to_string).collect();
        } else if let Some(rest) = line.strip_prefix("# config:") {
            s.config = serde_json::from_str(rest).expect("scenario config");
        } else if !line.starts_with('#') {
            s.events.push(parse_line(line));
        }
    }
    s
}

/// Feeds events in arrival order, each arriving at the newest event time seen so far (as
/// `toctou replay` does), then flushes; and checks that the engine let go of every piece
/// of state and every interned string (a missed release anywhere fails every scenario
/// that reaches it).
pub fn run(cfg: &Config, events: Vec<Event>) -> (Vec<Finding>, Stats) {
    let mut engine = Engine::new(cfg.clone()).expect("valid config");
    let mut out = Vec::new();
    let mut clock = 0;
    for e in events {
        clock = clock.max(e.event_time_ns());
        engine.ingest(e, clock, &mut out);
    }
    engine.flush(clock, &mut out);
    assert!(engine.is_drained(), "state or references left after flush");
    (out, engine.stats().clone())
}

/// Findings without their one arrival-dependent field.
pub fn normalized(mut findings: Vec<Finding>) -> Vec<Finding> {
    for f in &mut findings {
        f.detected_at_ns = 0;
    }
    findings
}

/// An arrival order in which no event is late: each event arrives at its time plus a
/// random delay below the lateness.
pub fn shuffled_within(events: &[Event], lateness_ns: u64, rng: &mut impl Rng) -> Vec<Event> {
    let mut keyed: Vec<(u64, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let delay = if lateness_ns == 0 {
                0
            } else {
                rng.gen_range(0..lateness_ns)
            };
            (e.event_time_ns() + delay, i)
        })
        .collect();
    // Ties in arrival time go in random order too.
    keyed.shuffle(rng);
    keyed.sort_by_key(|(arrival, _)| *arrival);
    keyed.into_iter().map(|(_, i)| events[i].clone()).collect()
}

/// Whether no event of this arrival order would be late.
pub fn within_lateness(events: &[Event], lateness_ns: u64) -> bool {
    let mut max = None::<u64>;
    events.iter().all(|e| {
        let t = e.event_time_ns();
        let ok = max.is_none_or(|m| t >= m.saturating_sub(lateness_ns));
        max = Some(max.map_or(t, |m| m.max(t)));
        ok
    })
}

/// The counters that must not depend on arrival order within the lateness.
pub fn order_free_counters(s: &Stats) -> [u64; 11] {
    [
        s.pairs,
        s.prevented_races,
        s.indeterminate,
        s.late_events,
        s.duplicate_events,
        s.findings.iter().sum(),
        s.findings[0],
        s.findings[2],
        s.findings[3],
        s.evicted.iter().sum(),
        s.race_window.count(),
    ]
}
