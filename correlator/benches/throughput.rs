//! Events per second on a realistic mix (see `common`): one engine, one core, default
//! config. Each iteration feeds 1M events through a fresh engine and flushes it.
//!
//! Two ways of feeding it:
//! - `batched`: as `toctou run` does, in batches of 1024 just decoded (here: just cloned,
//!   untimed) events, so an event's strings are in cache when the engine reads and frees
//!   them. Only the engine's work is timed: ingesting, deciding, freeing, flushing.
//! - `cold`: all 1M events cloned up front, then fed: every event's strings come from main
//!   memory. A pessimistic bound.
//!
//! `cargo bench -p toctou-correlator --bench throughput`

mod common;

/// The allocator the `toctou` binary uses: an engine's speed is partly its allocator's, and
/// measuring with another would measure something that never runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use toctou_correlator::{Config, Engine};
use toctou_schema::Event;

const EVENTS: usize = 1_000_000;
/// 10 000 requests per second of event time: 1M events span ~50 s, so checks expire,
/// tombstones leave and orphans are reported while the run is still ingesting.
const REQUESTS_PER_S: u64 = 10_000;
const BATCH: usize = 1024;

/// Feeds every event, then flushes; returns the number of findings and the engine.
fn feed(events: impl IntoIterator<Item = (u64, Event)>, engine: &mut Engine) -> usize {
    let mut out = Vec::with_capacity(64 * 1024);
    let mut findings = 0;
    let mut last = 0;
    for (arrival, event) in events {
        last = arrival;
        engine.ingest(event, arrival, &mut out);
        findings += out.len();
        out.clear();
    }
    engine.flush(last, &mut out);
    findings + out.len()
}

/// The engine's time for one run fed in batches, leaving out the cloning of each batch.
fn batched_run(events: &[(u64, Event)]) -> Duration {
    let mut engine = Engine::new(Config::default()).expect("default config");
    let mut out = Vec::with_capacity(64 * 1024);
    let mut spent = Duration::ZERO;
    let mut last = 0;
    for chunk in events.chunks(BATCH) {
        let batch = chunk.to_vec();
        let start = Instant::now();
        for (arrival, event) in batch {
            last = arrival;
            engine.ingest(event, arrival, &mut out);
            out.clear();
        }
        spent += start.elapsed();
    }
    let start = Instant::now();
    engine.flush(last, &mut out);
    drop(engine);
    spent + start.elapsed()
}

fn describe(events: &[(u64, Event)]) {
    let mut engine = Engine::new(Config::default()).expect("default config");
    let findings = feed(events.iter().cloned(), &mut engine);
    let s = engine.stats();
    let kinds: BTreeMap<_, _> = toctou_schema::FindingKind::ALL
        .iter()
        .map(|k| (k.as_str(), s.findings_of(*k)))
        .collect();
    let audits = events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Audit(_)))
        .count();
    println!(
        "mix: {} events ({:.1}% audit), {findings} findings {kinds:?}, pairs {}, indeterminate {}, redeliveries dropped {}, late {}",
        events.len(),
        100.0 * audits as f64 / events.len() as f64,
        s.pairs,
        s.indeterminate,
        s.duplicate_events,
        s.late_events
    );
}

fn throughput(c: &mut Criterion) {
    let events = common::mix(EVENTS, REQUESTS_PER_S, 42);
    describe(&events);
    let mut group = c.benchmark_group("correlator");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("realistic_mix_1m_events/batched", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| batched_run(&events)).sum())
    });
    group.bench_function("realistic_mix_1m_events/cold", |b| {
        b.iter_batched(
            || events.clone(),
            |events| {
                let mut engine = Engine::new(Config::default()).expect("default config");
                feed(events, &mut engine)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
