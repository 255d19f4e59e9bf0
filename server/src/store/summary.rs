//! The aggregates the built-in page draws: findings by kind, findings per second by kind over
//! the last [`RATE_SECONDS`], and the race-window histogram. Each stored finding updates them
//! once; they never grow (~19 KiB), so a summary costs the same with 0 findings or 100k, and
//! they count findings the store has since dropped.

use serde::Serialize;
use std::collections::BTreeMap;
use toctou_schema::{Finding, FindingKind};

pub(super) const KINDS: usize = FindingKind::ALL.len();

/// Seconds of per-second rate history kept per kind: the most a summary can ask for.
pub const RATE_SECONDS: usize = 600;

/// Inclusive upper bounds (ns) of the race-window histogram buckets, a 1-2-5 series from
/// 100 µs to a minute (the default pair TTL is 30 s, so wider windows are rare); one more
/// bucket counts everything above the last bound.
pub const RACE_WINDOW_BOUNDS_NS: [u64; 18] = [
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
];
const BUCKETS: usize = RACE_WINDOW_BOUNDS_NS.len() + 1;

/// Everything a summary is computed from.
pub struct Aggregates {
    /// Findings ever stored, by kind.
    totals: [u64; KINDS],
    rate: RateRing,
    /// Findings ever stored with a race window, by kind and bucket of RACE_WINDOW_BOUNDS_NS.
    race_window: [[u64; BUCKETS]; KINDS],
    /// Findings ever stored without a race window (no check, or no use), by kind.
    no_race_window: [u64; KINDS],
}

impl Aggregates {
    pub fn new() -> Aggregates {
        Aggregates {
            totals: [0; KINDS],
            rate: RateRing::new(),
            race_window: [[0; BUCKETS]; KINDS],
            no_race_window: [0; KINDS],
        }
    }

    pub fn add(&mut self, f: &Finding) {
        let kind = kind_index(f.kind);
        self.totals[kind] += 1;
        self.rate.add(f.detected_at_ns / 1_000_000_000, kind);
        match f.race_window_ns {
            Some(ns) => self.race_window[kind][race_window_bucket(ns)] += 1,
            None => self.no_race_window[kind] += 1,
        }
    }

    /// The summary at `now_ns`, with a rate series of the `seconds` whole seconds before it
    /// (at most [`RATE_SECONDS`]; more are cut to it); `stored` and `dropped` are the store's.
    pub fn summary(&self, now_ns: u64, seconds: usize, stored: usize, dropped: u64) -> Summary {
        let seconds = seconds.min(RATE_SECONDS) as u64;
        // The current second is still filling: ending the series before it keeps the last
        // point from always dipping.
        let end_s = now_ns / 1_000_000_000;
        let start_s = end_s.saturating_sub(seconds);
        let by_kind = |f: &dyn Fn(usize) -> u64| -> BTreeMap<&'static str, u64> {
            FindingKind::ALL
                .iter()
                .enumerate()
                .map(|(i, k)| (k.as_str(), f(i)))
                .collect()
        };
        Summary {
            total: self.totals.iter().sum(),
            stored,
            dropped,
            counts: by_kind(&|i| self.totals[i]),
            rate: RateSeries {
                start_s,
                step_s: 1,
                counts: FindingKind::ALL
                    .iter()
                    .enumerate()
                    .map(|(i, k)| {
                        let series = (start_s..end_s).map(|s| self.rate.get(s, i)).collect();
                        (k.as_str(), series)
                    })
                    .collect(),
            },
            race_window: RaceWindowHistogram {
                bounds_ns: &RACE_WINDOW_BOUNDS_NS,
                counts: FindingKind::ALL
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (k.as_str(), self.race_window[i].to_vec()))
                    .collect(),
                none: by_kind(&|i| self.no_race_window[i]),
            },
        }
    }
}

/// Findings per second of detection time, by kind, for the last RATE_SECONDS seconds: a ring
/// indexed by the second modulo its length. Each slot remembers which second it holds, so a
/// slot left over from an earlier lap reads as zero instead of needing a sweep.
struct RateRing {
    second: Vec<u64>,
    counts: Vec<[u32; KINDS]>,
}

impl RateRing {
    fn new() -> RateRing {
        RateRing {
            // u64::MAX is no real second, so a fresh slot never matches a query.
            second: vec![u64::MAX; RATE_SECONDS],
            counts: vec![[0; KINDS]; RATE_SECONDS],
        }
    }

    fn add(&mut self, second: u64, kind: usize) {
        let slot = (second % RATE_SECONDS as u64) as usize;
        if self.second[slot] != second {
            // An older lap's second: this finding starts the slot anew. A finding older than
            // the slot's second belongs to a lap no summary can show any more.
            if self.second[slot] != u64::MAX && self.second[slot] > second {
                return;
            }
            self.second[slot] = second;
            self.counts[slot] = [0; KINDS];
        }
        self.counts[slot][kind] = self.counts[slot][kind].saturating_add(1);
    }

    fn get(&self, second: u64, kind: usize) -> u32 {
        let slot = (second % RATE_SECONDS as u64) as usize;
        if self.second[slot] == second {
            self.counts[slot][kind]
        } else {
            0
        }
    }
}

/// What the page polls: counts by kind, the rate series and the race-window histogram.
/// Kinds are keyed by their names; every kind is present, with zeroes.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Findings ever stored (including those since dropped).
    pub total: u64,
    /// Findings held now, what `/api/v1/findings` can return.
    pub stored: usize,
    /// Findings pushed out by newer ones.
    pub dropped: u64,
    /// Findings ever stored, by kind.
    pub counts: BTreeMap<&'static str, u64>,
    pub rate: RateSeries,
    pub race_window: RaceWindowHistogram,
}

/// Findings per second by kind: `counts[kind][i]` were detected in the second
/// `start_s + i` (Unix seconds); the last one is the last whole second before the summary.
#[derive(Debug, Serialize)]
pub struct RateSeries {
    pub start_s: u64,
    pub step_s: u64,
    pub counts: BTreeMap<&'static str, Vec<u32>>,
}

/// Race windows (check end to use start) of every finding that has one: `counts[kind][i]`
/// fell at or below `bounds_ns[i]` and above the bound before it; the last bucket is above
/// every bound. `none` counts the findings without a window (no check, or no use).
#[derive(Debug, Serialize)]
pub struct RaceWindowHistogram {
    pub bounds_ns: &'static [u64],
    pub counts: BTreeMap<&'static str, Vec<u64>>,
    pub none: BTreeMap<&'static str, u64>,
}

/// The bucket of RACE_WINDOW_BOUNDS_NS a race window falls in.
fn race_window_bucket(ns: u64) -> usize {
    RACE_WINDOW_BOUNDS_NS.partition_point(|bound| *bound < ns)
}

pub(super) fn kind_index(kind: FindingKind) -> usize {
    FindingKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is in ALL")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::finding;
    use crate::store::FindingStore;

    const S: u64 = 1_000_000_000;

    #[test]
    fn an_empty_summary_names_every_kind_with_zeroes() {
        let s = FindingStore::new(10);
        let sum = s.summary(1_000 * S + 500, 300);
        assert_eq!((sum.total, sum.stored, sum.dropped), (0, 0, 0));
        assert_eq!(sum.counts.len(), FindingKind::ALL.len());
        assert!(sum.counts.values().all(|n| *n == 0));
        assert_eq!(sum.rate.start_s, 700);
        for series in sum.rate.counts.values() {
            assert_eq!(series.len(), 300);
            assert!(series.iter().all(|n| *n == 0));
        }
        for buckets in sum.race_window.counts.values() {
            assert_eq!(buckets.len(), RACE_WINDOW_BOUNDS_NS.len() + 1);
        }
    }

    #[test]
    fn the_rate_series_counts_whole_seconds_before_now_by_kind() {
        let mut s = FindingStore::new(100);
        let at = |sec: u64, kind| finding(sec * S + 123, kind);
        s.push(at(997, FindingKind::StaleCheck));
        s.push(at(997, FindingKind::StaleCheck));
        s.push(at(999, FindingKind::DuplicateUse));
        // The current second (1000) is still filling; 989 is before a 10 s window.
        s.push(at(1000, FindingKind::StaleCheck));
        s.push(at(989, FindingKind::StaleCheck));
        let sum = s.summary(1000 * S + 10, 10);
        assert_eq!(sum.rate.start_s, 990);
        let stale = &sum.rate.counts["stale_check"];
        let dup = &sum.rate.counts["duplicate_use"];
        assert_eq!(stale.len(), 10);
        assert_eq!(stale[7], 2, "{stale:?}");
        assert_eq!(stale.iter().sum::<u32>(), 2);
        assert_eq!(dup[9], 1);
        assert_eq!(dup.iter().sum::<u32>(), 1);
        // Counts include everything stored, in or out of the window.
        assert_eq!(sum.counts["stale_check"], 4);
        assert_eq!(sum.total, 5);
    }

    #[test]
    fn the_rate_ring_forgets_a_lap_ago_and_ignores_findings_older_than_a_lap() {
        let mut s = FindingStore::new(100);
        let lap = RATE_SECONDS as u64;
        s.push(finding(5_000 * S, FindingKind::OrphanCheck));
        // Same slot, one lap later: the slot starts over.
        s.push(finding((5_000 + lap) * S, FindingKind::OrphanCheck));
        // Same slot, a lap before what it holds: too old for any summary.
        s.push(finding((5_000 - lap) * S, FindingKind::OrphanCheck));
        let now = (5_000 + lap + 1) * S;
        let series = &s.summary(now, RATE_SECONDS).rate.counts["orphan_check"];
        assert_eq!(series.iter().sum::<u32>(), 1);
        assert_eq!(series[RATE_SECONDS - 1], 1);
        // Asking for the older lap's window reads zero, not the slot's current count.
        let old = &s.summary(5_001 * S, 10).rate.counts["orphan_check"];
        assert_eq!(old.iter().sum::<u32>(), 0);
        assert_eq!(
            s.summary(now, 10 * RATE_SECONDS).rate.counts["orphan_check"].len(),
            RATE_SECONDS
        );
    }

    #[test]
    fn race_windows_fall_in_inclusive_buckets_and_findings_without_one_are_counted_apart() {
        assert_eq!(race_window_bucket(0), 0);
        assert_eq!(race_window_bucket(100_000), 0);
        assert_eq!(race_window_bucket(100_001), 1);
        assert_eq!(race_window_bucket(20_000_000), 7);
        assert_eq!(
            race_window_bucket(60_000_000_000),
            RACE_WINDOW_BOUNDS_NS.len() - 1
        );
        assert_eq!(race_window_bucket(u64::MAX), RACE_WINDOW_BOUNDS_NS.len());

        let mut s = FindingStore::new(100);
        for window in [Some(3_000_000), Some(4_000_000), Some(90_000_000_000), None] {
            let mut f = finding(1, FindingKind::StaleCheck);
            f.race_window_ns = window;
            s.push(f);
        }
        let h = s.summary(10 * S, 1).race_window;
        let stale = &h.counts["stale_check"];
        assert_eq!(stale[5], 2, "3 ms and 4 ms are in (2 ms, 5 ms]");
        assert_eq!(stale[RACE_WINDOW_BOUNDS_NS.len()], 1);
        assert_eq!(stale.iter().sum::<u64>(), 3);
        assert_eq!(h.none["stale_check"], 1);
        assert_eq!(h.bounds_ns.len(), RACE_WINDOW_BOUNDS_NS.len());
    }
}
