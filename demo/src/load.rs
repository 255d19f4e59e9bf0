//! What every workload shares: its pace (requests per second, shared by its workers), its
//! stopping time and race window, the run's tag in resource names, and the counts of what
//! happened, by finding kind.

use super::delivery::Delivery;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The finding kinds, in the order the comparison prints them.
pub const KINDS: [&str; 6] = [
    "stale_check",
    "duplicate_use",
    "unchecked_use",
    "authz_drift",
    "partial_create",
    "orphan_check",
];

/// The settings of one workload's run.
#[derive(Clone)]
pub struct Load {
    /// Concurrent workers (threads).
    pub workers: usize,
    /// Longest wait between a check and its use: wider windows race more often.
    pub race_window: Duration,
    /// When the workload stops starting requests.
    pub until: Instant,
    /// Tag of this run, in every resource name (`inventory/<run>/sku-3`), so that findings
    /// of an earlier run against the same `toctou run` are never counted as this run's.
    pub run: String,
    pub pacer: Arc<Pacer>,
    /// Requests started, for the rate the demo reached.
    pub requests: Arc<AtomicU64>,
    /// Telemetry in flight: a new request waits while too much is.
    pub delivery: Arc<Delivery>,
}

/// Spans and records in the SDK's queues beyond which a new request waits: all services
/// together stay under half of one service's queue, whatever one request emits.
const MAX_IN_FLIGHT: u64 = (super::telemetry::QUEUE / 2) as u64;

impl Load {
    /// Waits for the workload's next request slot; false once the run is over.
    pub fn next_request(&self) -> bool {
        self.delivery.wait_below(MAX_IN_FLIGHT);
        if !self.pacer.wait(self.until) {
            return false;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// A resource name of this run: `<kind>/<run>/<name>`.
    pub fn resource(&self, kind: &str, name: impl std::fmt::Display) -> String {
        format!("{kind}/{}/{name}", self.run)
    }

    pub fn running(&self) -> bool {
        Instant::now() < self.until
    }
}

/// Hands out request start times `1/rate` apart to all the workers of a workload, so the
/// rate holds whatever the concurrency; rate 0 means as fast as the workers go.
pub struct Pacer {
    interval: Option<Duration>,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(rate: f64) -> Pacer {
        let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
        Pacer {
            interval,
            next: Mutex::new(None),
        }
    }

    /// Sleeps until the next slot; false when that slot is at or after `until`.
    pub fn wait(&self, until: Instant) -> bool {
        let now = Instant::now();
        let Some(interval) = self.interval else {
            return now < until;
        };
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            // A worker that fell behind does not earn a burst: slots never lie in the past.
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + interval);
            slot
        };
        if slot >= until {
            return false;
        }
        std::thread::sleep(slot.saturating_duration_since(Instant::now()));
        true
    }
}

/// What happened, by finding kind (the kinds of [`KINDS`]), plus the races prevented by
/// a compare-and-swap, the units sold out of stock, and the stale uses without a version
/// whose intervening writes all committed while they waited for the write lock (after
/// their use span had started).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub kinds: BTreeMap<&'static str, u64>,
    pub prevented: u64,
    pub oversold: u64,
    pub raced_in_lock_wait: u64,
}

impl Counts {
    pub fn kind(mut self, kind: &'static str, n: u64) -> Counts {
        debug_assert!(KINDS.contains(&kind), "{kind}");
        *self.kinds.entry(kind).or_default() += n;
        self
    }

    pub fn get(&self, kind: &str) -> u64 {
        self.kinds.get(kind).copied().unwrap_or(0)
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        for (k, n) in other.kinds {
            *self.kinds.entry(k).or_default() += n;
        }
        self.prevented += other.prevented;
        self.oversold += other.oversold;
        self.raced_in_lock_wait += other.raced_in_lock_wait;
    }
}

pub fn rng() -> StdRng {
    StdRng::from_entropy()
}

/// Sleeps a random time up to `max` (the race window of one request).
pub fn sleep_upto(rng: &mut StdRng, max: Duration) {
    let us = max.as_micros().max(1) as u64;
    std::thread::sleep(Duration::from_micros(rng.gen_range(0..=us)));
}

/// Runs `n` copies of `worker` on threads and waits for them; the first error wins.
pub fn workers(
    n: usize,
    worker: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n.max(1))
            .map(|i| {
                let worker = &worker;
                s.spawn(move || worker(i))
            })
            .collect();
        let mut result = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a demo worker panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// Reads one count with a ground-truth query.
pub fn count(conn: &rusqlite::Connection, sql: &str) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let n: i64 = conn
        .query_row(sql, [], |r| r.get(0))
        .with_context(|| format!("ground truth: {sql}"))?;
    Ok(n.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_requests_and_stops_at_the_deadline() {
        let pacer = Pacer::new(200.0);
        let start = Instant::now();
        let until = start + Duration::from_millis(100);
        let mut n = 0;
        while pacer.wait(until) {
            n += 1;
        }
        // At most 20 slots of 5 ms fit in 100 ms (the first at once); a loaded machine that
        // oversleeps gets fewer (slots never lie in the past), never a burst of more, and
        // whatever it got was spaced by the interval.
        assert!((1..=20).contains(&n), "{n} slots");
        assert!(start.elapsed() >= Duration::from_millis(5 * (n - 1)));
    }

    #[test]
    fn rate_zero_does_not_wait() {
        let pacer = Pacer::new(0.0);
        let until = Instant::now() + Duration::from_secs(3600);
        for _ in 0..10_000 {
            assert!(pacer.wait(until));
        }
        assert!(!pacer.wait(Instant::now()));
    }

    #[test]
    fn counts_add_up_by_kind() {
        let mut a = Counts::default().kind("stale_check", 2);
        a += Counts {
            prevented: 3,
            ..Counts::default()
        }
        .kind("stale_check", 1)
        .kind("orphan_check", 4);
        assert_eq!(a.get("stale_check"), 3);
        assert_eq!(a.get("orphan_check"), 4);
        assert_eq!(a.get("authz_drift"), 0);
        assert_eq!(a.prevented, 3);
    }
}
