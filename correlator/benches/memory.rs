//! Bytes of memory per pending check at 1M pending checks, measured with a counting global
//! allocator: live heap bytes held by the engine after 1M checks were ingested and released
//! from the reorder buffer (none expired), divided by 1M. Also prints the cost of a buffered
//! event (the same checks while still in the reorder buffer).
//!
//! `cargo bench -p toctou-correlator --bench memory`

mod common;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use toctou_correlator::{Config, Engine};
use toctou_schema::testing::span_at;
use toctou_schema::{Event, Phase};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Relaxed);
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CHECKS: u64 = 1_000_000;
const SERVICES: [&str; 4] = ["checkout", "inventory", "billing", "provisioner"];

fn check(i: u64, rng: &mut StdRng) -> Event {
    let trace: [u8; 16] = rng.gen();
    let service = SERVICES[(i % 4) as usize];
    // 1M checks over 10 s of event time: all still pending (default pair TTL 30 s).
    let end = common::BASE_NS + i * 10_000;
    // The random draws in the order the recorded figures were measured with.
    let resource = format!("inventory/sku-{}", rng.gen_range(0..common::RESOURCES));
    let version = rng.gen_range(1..1_000_000u64).to_string();
    let request: String = trace.iter().map(|b| format!("{b:02x}")).collect();
    span_at(Phase::Check, &resource, &request, end)
        .version(&version)
        .ids(trace, rng.gen())
        .service(service, "reserve")
        .lasting_ns(500_000)
        .ev()
}

/// Live bytes the engine holds after ingesting `CHECKS` checks under `config` and then
/// letting the input go idle for `idle_ns`.
fn measure(config: Config, idle_ns: u64) -> (usize, usize, Engine) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut out = Vec::new();
    let before = LIVE.load(Relaxed);
    let mut engine = Engine::new(config).expect("valid config");
    let mut now = 0;
    for i in 0..CHECKS {
        let event = check(i, &mut rng);
        now = event.event_time_ns();
        engine.ingest(event, now, &mut out);
    }
    engine.tick(now + idle_ns, &mut out);
    assert!(out.is_empty());
    (LIVE.load(Relaxed) - before, before, engine)
}

/// Resident set size of this process, from /proc (Linux); 0 elsewhere.
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    // Input goes idle past the lateness: the watermark passes every check, none has
    // expired yet (pair TTL 30 s, checks span 10 s).
    let config = Config::default();
    let idle = config.allowed_lateness.as_nanos() as u64 + 1_000_000;
    let rss_before = rss_bytes();
    let (live, baseline, mut engine) = measure(config, idle);
    // What the allocator really took from the system, fragmentation and headers included:
    // an upper bound on the engine's share, as the events were freed along the way.
    let rss_growth = rss_bytes().saturating_sub(rss_before);
    let stats = engine.stats();
    assert_eq!(stats.pending_checks, CHECKS, "every check must be pending");
    assert_eq!(stats.buffered_events, 0);
    println!(
        "memory: {CHECKS} pending checks over {} resources: {live} bytes live, {:.1} bytes per pending check (target <= 200)",
        common::RESOURCES,
        live as f64 / CHECKS as f64
    );
    println!(
        "memory: resident set grew by {rss_growth} bytes, {:.1} bytes per pending check",
        rss_growth as f64 / CHECKS as f64
    );
    // The gauge a running process exports (`toctou_check_state_bytes`), computed from the
    // capacities of the check table and its timers: it should agree with the allocator's
    // count above, which is what makes it a fair way to read the cost per check under load.
    println!(
        "memory: toctou_check_state_bytes {} bytes, {:.1} bytes per pending check",
        stats.check_state_bytes,
        stats.check_state_bytes as f64 / CHECKS as f64
    );
    let mut out = Vec::new();
    engine.flush(0, &mut out);
    assert_eq!(out.len() as u64, CHECKS, "every check ends an orphan");
    drop(out);
    println!(
        "memory: after a flush the engine still holds {} bytes",
        LIVE.load(Relaxed) - baseline
    );
    drop(engine);

    // The same checks still waiting in the reorder buffer (an hour of lateness).
    let config = Config {
        allowed_lateness: std::time::Duration::from_secs(3600),
        ..Config::default()
    };
    let (live, _, engine) = measure(config, 0);
    assert_eq!(engine.stats().buffered_events, CHECKS);
    println!(
        "memory: {CHECKS} events in the reorder buffer: {live} bytes live, {:.1} bytes per buffered event",
        live as f64 / CHECKS as f64
    );
}
