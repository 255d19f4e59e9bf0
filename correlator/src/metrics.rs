//! Every metric the correlator exposes, declared in this one place, and [`StatsCollector`],
//! which reads them into a node's `prometheus` registry.
//!
//! The engine has a single owner, so [`Stats`] is plain counters: no atomics on the hot path.
//! The binary clones it periodically (a few hundred bytes) and the collector reads the clone
//! when `/metrics` is asked for; the two histograms and their buckets are in `histogram`.
//! Metric names and label values are a public interface: dashboards and alerts use them.
//! Labels are bounded enums only, never a resource or request id.

mod histogram;

pub use histogram::{Histogram, DETECTION_LATENCY_BUCKETS_NS, RACE_WINDOW_BUCKETS_NS};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use toctou_schema::FindingKind;

/// Which piece of bounded state an eviction came from (`toctou_evicted_total{state}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvictedState {
    /// A pending check became a tombstone early.
    Pending,
    /// A tombstone was dropped early (its orphan, if any, still reported).
    Tombstone,
    /// A buffered event was processed before the watermark reached it.
    Buffered,
    /// An idempotency key was forgotten early.
    Key,
    /// A remembered span or audit identity was forgotten early.
    Dedupe,
    /// An audit write left the resource history early.
    Audit,
    /// A pending create was decided early.
    Create,
    /// A policy's change history was forgotten.
    Policy,
    /// A use waiting for its write was decided early.
    Use,
}

impl EvictedState {
    pub const ALL: [EvictedState; 9] = [
        EvictedState::Pending,
        EvictedState::Tombstone,
        EvictedState::Buffered,
        EvictedState::Key,
        EvictedState::Dedupe,
        EvictedState::Audit,
        EvictedState::Create,
        EvictedState::Policy,
        EvictedState::Use,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvictedState::Pending => "pending",
            EvictedState::Tombstone => "tombstone",
            EvictedState::Buffered => "buffered",
            EvictedState::Key => "key",
            EvictedState::Dedupe => "dedupe",
            EvictedState::Audit => "audit",
            EvictedState::Create => "create",
            EvictedState::Policy => "policy",
            EvictedState::Use => "use",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The engine's counters and gauges. Counters only grow; gauges are current values.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Uses joined with a check (any outcome).
    pub pairs: u64,
    /// Findings emitted, by kind, indexed in [`FindingKind::ALL`] order.
    pub findings: [u64; 6],
    /// Uses whose own precondition failed (`conflict`): races caught by the application.
    pub prevented_races: u64,
    /// Pairs that could not be decided (a version missing and no audit stream).
    pub indeterminate: u64,
    /// Events older than the watermark when they arrived.
    pub late_events: u64,
    /// Redelivered spans and audit records dropped.
    pub duplicate_events: u64,
    /// Events more than `max_clock_skew` ahead of the wall clock on arrival (ordered by
    /// arrival instead of by their own time).
    pub clock_skew_future: u64,
    /// Events older than the watermark by more than the history the engine keeps (a
    /// producer's clock running that far behind, or a delivery that late).
    pub clock_skew_past: u64,
    /// Early expiries, by [`EvictedState`] (declaration order).
    pub evicted: [u64; EvictedState::ALL.len()],
    /// Gauge: checks waiting for their use.
    pub pending_checks: u64,
    /// Gauge: the most checks held (`max_pending`), so that alerts can compare the two
    /// without repeating the configuration.
    pub pending_checks_limit: u64,
    /// Gauge: expired checks still matchable by a late use.
    pub tombstones: u64,
    /// Gauge: heap bytes of pending checks and tombstones (records, index, timers), so
    /// that the cost per check can be read off a running process.
    pub check_state_bytes: u64,
    /// Gauge: bytes of the strings all state holds outside its fixed-size records (request
    /// ids, versions, keys and actors over 16 bytes, long resource names, service/operation
    /// profiles), shared by every holder and counted once.
    pub interned_bytes: u64,
    /// Gauge: the most bytes of such strings held (`max_interned_bytes`).
    pub interned_bytes_limit: u64,
    /// Entries evicted because the strings passed `max_interned_bytes` (each also counted
    /// in `evicted` under its state).
    pub byte_evictions: u64,
    /// Gauge: events waiting in the reorder buffer.
    pub buffered_events: u64,
    /// Gauge: wall clock minus watermark, in seconds (0 before any event or after a flush).
    pub watermark_lag_seconds: f64,
    /// Check end to use start of every pair.
    pub race_window: Histogram,
    /// Deciding event time to emission of every finding.
    pub detection_latency: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            pairs: 0,
            findings: [0; 6],
            prevented_races: 0,
            indeterminate: 0,
            late_events: 0,
            duplicate_events: 0,
            clock_skew_future: 0,
            clock_skew_past: 0,
            evicted: [0; EvictedState::ALL.len()],
            pending_checks: 0,
            pending_checks_limit: 0,
            tombstones: 0,
            check_state_bytes: 0,
            interned_bytes: 0,
            interned_bytes_limit: 0,
            byte_evictions: 0,
            buffered_events: 0,
            watermark_lag_seconds: 0.0,
            race_window: Histogram::new(RACE_WINDOW_BUCKETS_NS),
            detection_latency: Histogram::new(DETECTION_LATENCY_BUCKETS_NS),
        }
    }
}

impl Stats {
    pub fn findings_of(&self, kind: FindingKind) -> u64 {
        self.findings[kind as usize]
    }

    pub fn evicted_of(&self, state: EvictedState) -> u64 {
        self.evicted[state.index()]
    }

    pub fn findings_total(&self) -> u64 {
        self.findings.iter().sum()
    }

    pub(crate) fn count_finding(&mut self, kind: FindingKind) {
        self.findings[kind as usize] += 1;
    }

    pub(crate) fn count_evicted(&mut self, state: EvictedState) {
        self.evicted[state.index()] += 1;
    }

    /// Adds another shard's stats into this one: counters and gauges sum, the lag is the
    /// worst of the two.
    pub fn add(&mut self, other: &Stats) {
        self.pairs += other.pairs;
        for (a, b) in self.findings.iter_mut().zip(other.findings.iter()) {
            *a += b;
        }
        self.prevented_races += other.prevented_races;
        self.indeterminate += other.indeterminate;
        self.late_events += other.late_events;
        self.duplicate_events += other.duplicate_events;
        self.clock_skew_future += other.clock_skew_future;
        self.clock_skew_past += other.clock_skew_past;
        for (a, b) in self.evicted.iter_mut().zip(other.evicted.iter()) {
            *a += b;
        }
        self.pending_checks += other.pending_checks;
        self.pending_checks_limit += other.pending_checks_limit;
        self.tombstones += other.tombstones;
        self.check_state_bytes += other.check_state_bytes;
        self.interned_bytes += other.interned_bytes;
        self.interned_bytes_limit += other.interned_bytes_limit;
        self.byte_evictions += other.byte_evictions;
        self.buffered_events += other.buffered_events;
        self.watermark_lag_seconds = self.watermark_lag_seconds.max(other.watermark_lag_seconds);
        self.race_window.add(&other.race_window);
        self.detection_latency.add(&other.detection_latency);
    }
}

toctou_schema::families! {
    /// Every correlator family, declared once.
    static FAMILIES: Families {
        pairs = counter("toctou_pairs_total", "Uses joined with a check, any outcome.", &[]);
        findings = counter("toctou_findings_total", "Races reported, by kind.", &["kind"]);
        prevented_races = counter("toctou_prevented_races_total", "Uses whose own precondition caught the race (outcome conflict).", &[]);
        indeterminate = counter("toctou_indeterminate_total", "Pairs left undecided: a version missing and no audit stream for the resource.", &[]);
        pending_checks = gauge("toctou_pending_checks", "Checks waiting for their use.", &[]);
        pending_checks_limit = gauge("toctou_pending_checks_limit", "Most checks held before the oldest expire early (--max-pending).", &[]);
        tombstones = gauge("toctou_tombstones", "Expired checks still matchable by a late use.", &[]);
        check_state_bytes = gauge("toctou_check_state_bytes", "Heap bytes held by pending checks, tombstones and waiting uses: records, index and timers (their long strings are in toctou_interned_bytes).", &[]);
        interned_bytes = gauge("toctou_interned_bytes", "Bytes of long strings (ids, versions, keys, actors over 16 bytes), long resource names and service/operation profiles held by all engine state, each counted once.", &[]);
        interned_bytes_limit = gauge("toctou_interned_bytes_limit", "Most bytes of such strings held before the oldest state is evicted (--max-interned-bytes).", &[]);
        evicted_for_bytes = counter("toctou_evicted_for_bytes_total", "Entries evicted because the state's strings passed --max-interned-bytes (each also counted in toctou_evicted_total by state).", &[]);
        buffered_events = gauge("toctou_buffered_events", "Events waiting in the reorder buffer for the watermark.", &[]);
        late_events = counter("toctou_late_events_total", "Events older than the watermark on arrival, processed out of order.", &[]);
        clock_skew_events = counter("toctou_clock_skew_events_total", "Events whose time lies outside what the wall clock and the watermark allow: direction future (ahead of the wall clock by more than --max-clock-skew, ordered by arrival instead) or past (older than the watermark by more than the history kept, processed late).", &["direction"]);
        evicted = counter("toctou_evicted_total", "Entries expired early because their state was full.", &["state"]);
        duplicate_events = counter("toctou_duplicate_events_total", "Redelivered spans and audit records dropped.", &[]);
        watermark_lag = gauge("toctou_watermark_lag_seconds", "Wall clock minus the event-time watermark.", &[]);
        race_window = histogram("toctou_race_window_seconds", "Time from a check's end to its use's start, for every pair.");
        detection_latency = histogram("toctou_detection_latency_seconds", "Time from the deciding event to the finding's emission.");
    }
}

impl Stats {
    /// Every correlator family with its values now.
    fn families(&self) -> Vec<MetricFamily> {
        let f = &*FAMILIES;
        let findings = FindingKind::ALL.map(|k| ([k.as_str()], self.findings_of(k) as f64));
        let evicted = EvictedState::ALL.map(|s| ([s.as_str()], self.evicted_of(s) as f64));
        let skew = [
            (["future"], self.clock_skew_future as f64),
            (["past"], self.clock_skew_past as f64),
        ];
        vec![
            f.pairs.value(self.pairs as f64),
            f.findings.values(findings),
            f.prevented_races.value(self.prevented_races as f64),
            f.indeterminate.value(self.indeterminate as f64),
            f.pending_checks.value(self.pending_checks as f64),
            f.pending_checks_limit
                .value(self.pending_checks_limit as f64),
            f.tombstones.value(self.tombstones as f64),
            f.check_state_bytes.value(self.check_state_bytes as f64),
            f.interned_bytes.value(self.interned_bytes as f64),
            f.interned_bytes_limit
                .value(self.interned_bytes_limit as f64),
            f.evicted_for_bytes.value(self.byte_evictions as f64),
            f.buffered_events.value(self.buffered_events as f64),
            f.late_events.value(self.late_events as f64),
            f.clock_skew_events.values(skew),
            f.evicted.values(evicted),
            f.duplicate_events.value(self.duplicate_events as f64),
            f.watermark_lag.value(self.watermark_lag_seconds),
            self.race_window.family(&f.race_window),
            self.detection_latency.family(&f.detection_latency),
        ]
    }
}

/// Reads a snapshot of [`Stats`] when /metrics is asked for. The engine's owner keeps the
/// snapshot (refreshed every tick) wherever it likes; `snapshot` copies it out, so the
/// lock it may sit behind is held for a copy, not for the encoding.
pub struct StatsCollector {
    snapshot: Box<dyn Fn() -> Stats + Send + Sync>,
}

impl StatsCollector {
    pub fn new(snapshot: impl Fn() -> Stats + Send + Sync + 'static) -> StatsCollector {
        StatsCollector {
            snapshot: Box::new(snapshot),
        }
    }
}

impl Collector for StatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        FAMILIES.descs()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        (self.snapshot)().families()
    }
}

/// The text of `stats` alone, as a node's /metrics shows it.
#[cfg(test)]
pub(crate) fn encode(stats: &Stats) -> String {
    let stats = stats.clone();
    toctou_schema::metrics::encode_one(StatsCollector::new(move || stats.clone()))
}

#[cfg(test)]
mod tests {
    use super::histogram::{MS, S};
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_metric_and_label_is_present_even_at_zero() {
        let text = encode(&Stats::default());
        for name in [
            "toctou_pairs_total",
            "toctou_prevented_races_total",
            "toctou_indeterminate_total",
            "toctou_pending_checks",
            "toctou_tombstones",
            "toctou_check_state_bytes",
            "toctou_interned_bytes",
            "toctou_interned_bytes_limit",
            "toctou_evicted_for_bytes_total",
            "toctou_buffered_events",
            "toctou_late_events_total",
            "toctou_duplicate_events_total",
            "toctou_watermark_lag_seconds",
            "toctou_race_window_seconds_count",
            "toctou_detection_latency_seconds_count",
        ] {
            assert_eq!(sample(&text, name), Some(0.0), "{name}");
        }
        for kind in FindingKind::ALL {
            let series = format!("toctou_findings_total{{kind=\"{}\"}}", kind.as_str());
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        for state in EvictedState::ALL {
            let series = format!("toctou_evicted_total{{state=\"{}\"}}", state.as_str());
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        for direction in ["future", "past"] {
            let series = format!("toctou_clock_skew_events_total{{direction=\"{direction}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        // Every sample belongs to a family announced with HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split(['{', ' ']).next().unwrap();
            let base = family
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            let base = if text.contains(&format!("# TYPE {family} ")) {
                family
            } else {
                base
            };
            assert!(text.contains(&format!("# HELP {base} ")), "{line}");
            assert!(text.contains(&format!("# TYPE {base} ")), "{line}");
        }
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let mut s = Stats::default();
        s.race_window.observe_ns(MS / 20); // first bucket
        s.race_window.observe_ns(MS); // on a bound: counted in that bucket (le)
        s.race_window.observe_ns(2 * S);
        s.race_window.observe_ns(3600 * S); // above every bound
        let text = encode(&s);
        let b = |le: &str| {
            sample(
                &text,
                &format!("toctou_race_window_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("0.0001"), Some(1.0));
        assert_eq!(b("0.001"), Some(2.0));
        assert_eq!(b("1"), Some(2.0));
        assert_eq!(b("5"), Some(3.0));
        assert_eq!(b("60"), Some(3.0));
        assert_eq!(b("+Inf"), Some(4.0));
        assert_eq!(sample(&text, "toctou_race_window_seconds_count"), Some(4.0));
        let sum = sample(&text, "toctou_race_window_seconds_sum").unwrap();
        assert!((sum - 3602.00105).abs() < 1e-6, "{sum}");
        assert_eq!(s.race_window.cumulative(S), 2);
    }

    #[test]
    fn shards_add_up() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.pairs = 2;
        b.pairs = 3;
        a.count_finding(FindingKind::OrphanCheck);
        b.count_finding(FindingKind::OrphanCheck);
        b.count_evicted(EvictedState::Key);
        a.watermark_lag_seconds = 1.5;
        b.watermark_lag_seconds = 4.0;
        b.detection_latency.observe_ns(S);
        a.add(&b);
        assert_eq!(a.pairs, 5);
        assert_eq!(a.findings_of(FindingKind::OrphanCheck), 2);
        assert_eq!(a.evicted_of(EvictedState::Key), 1);
        assert_eq!(a.watermark_lag_seconds, 4.0);
        assert_eq!(a.detection_latency.count(), 1);
    }
}
