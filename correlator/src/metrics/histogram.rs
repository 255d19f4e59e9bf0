//! The engine's fixed-bucket histograms (race window, detection latency): plain counts on
//! the hot path, observed in nanoseconds and served in seconds with the buckets below.

use prometheus::proto::MetricFamily;
use toctou_schema::metrics::Family;

pub(super) const MS: u64 = 1_000_000;
pub(super) const S: u64 = 1_000_000_000;

/// Race windows (check end to use start): sub-millisecond in-process races up to uses that
/// trail their check by the default pair TTL.
pub const RACE_WINDOW_BUCKETS_NS: &[u64] = &[
    MS / 10,
    MS,
    5 * MS,
    10 * MS,
    50 * MS,
    100 * MS,
    500 * MS,
    S,
    5 * S,
    10 * S,
    30 * S,
    60 * S,
];

/// Detection latency (deciding event time to emission): bounded below by the allowed
/// lateness (2 s by default) and, for orphans, by twice the pair TTL.
pub const DETECTION_LATENCY_BUCKETS_NS: &[u64] = &[
    100 * MS,
    250 * MS,
    500 * MS,
    S,
    2 * S,
    3 * S,
    5 * S,
    10 * S,
    30 * S,
    60 * S,
    120 * S,
    300 * S,
];

const MAX_BUCKETS: usize = 12;

/// A fixed-bucket histogram of durations, observed in nanoseconds, rendered in seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    bounds_ns: &'static [u64],
    /// Per bucket, not cumulative; the last slot counts observations above every bound.
    counts: [u64; MAX_BUCKETS + 1],
    sum_seconds: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds_ns: &'static [u64]) -> Histogram {
        assert!(bounds_ns.len() <= MAX_BUCKETS, "too many histogram buckets");
        Histogram {
            bounds_ns,
            counts: [0; MAX_BUCKETS + 1],
            sum_seconds: 0.0,
            count: 0,
        }
    }

    pub fn observe_ns(&mut self, ns: u64) {
        let slot = self.bounds_ns.partition_point(|b| *b < ns);
        self.counts[slot] += 1;
        self.sum_seconds += ns as f64 / 1e9;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_seconds
    }

    /// Observations at or below `bound_ns` (which must be one of the bucket bounds).
    pub fn cumulative(&self, bound_ns: u64) -> u64 {
        let slot = self.bounds_ns.partition_point(|b| *b < bound_ns);
        self.counts[..=slot.min(self.bounds_ns.len())].iter().sum()
    }

    pub(super) fn add(&mut self, other: &Histogram) {
        debug_assert_eq!(self.bounds_ns, other.bounds_ns);
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
        self.count += other.count;
    }

    /// The histogram's sample in seconds: cumulative buckets, sum and count.
    pub(super) fn family(&self, family: &Family) -> MetricFamily {
        let buckets = self
            .bounds_ns
            .iter()
            .zip(&self.counts)
            .scan(0, |cumulative, (bound, n)| {
                *cumulative += n;
                Some((*bound as f64 / 1e9, *cumulative))
            });
        family.histogram_value(buckets, self.sum_seconds, self.count)
    }
}
