//! The embedded findings store: the latest `--max-findings` findings, oldest dropped first,
//! with the counts /metrics shows and the aggregates the built-in page draws ([`summary`]).
//!
//! One writer (the correlator loop) and many readers (API requests) share it behind a
//! `RwLock`; writes happen once per correlated batch, so contention stays negligible.

mod summary;

pub use summary::{Summary, RATE_SECONDS};

use std::collections::{BTreeMap, VecDeque};
use summary::{kind_index, Aggregates, KINDS};
use toctou_schema::{Finding, FindingKind};

/// Most (service, operation) label pairs on `toctou_service_findings_total`; findings of
/// further pairs count under `_other`, so a flood of names cannot blow up /metrics.
pub const MAX_SERVICE_SERIES: usize = 1000;
/// The label value findings beyond [`MAX_SERVICE_SERIES`] are counted under.
pub const OVERFLOW_LABEL: &str = "_other";
/// The longest service or operation name given its own series; longer names count under
/// [`OVERFLOW_LABEL`] too. The collector already refuses values over 4 KiB, but a thousand
/// pairs of 4 KiB names would still make /metrics megabytes long; real names are short.
pub const MAX_LABEL_VALUE_BYTES: usize = 128;

/// What a findings query asks for.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub kind: Option<FindingKind>,
    /// Only findings detected at or after this time (Unix ns).
    pub since_ns: Option<u64>,
    /// At most this many: the latest ones.
    pub limit: usize,
}

pub struct FindingStore {
    capacity: usize,
    findings: VecDeque<Finding>,
    /// Findings pushed out by newer ones; reported on /metrics so that a full store is visible.
    dropped: u64,
    /// Findings ever stored, by (service, operation) and kind; bounded by MAX_SERVICE_SERIES.
    by_service: BTreeMap<(String, String), [u64; KINDS]>,
    /// Findings counted under the overflow pair instead of their own: the names they lost.
    by_service_overflow: u64,
    /// What the page draws; counts survive the store dropping old findings.
    aggregates: Aggregates,
}

impl FindingStore {
    pub fn new(capacity: usize) -> FindingStore {
        FindingStore {
            capacity,
            findings: VecDeque::with_capacity(capacity.min(1024)),
            dropped: 0,
            by_service: BTreeMap::new(),
            by_service_overflow: 0,
            aggregates: Aggregates::new(),
        }
    }

    pub fn push(&mut self, finding: Finding) {
        self.count_by_service(&finding);
        self.aggregates.add(&finding);
        if self.capacity == 0 {
            self.dropped += 1;
            return;
        }
        if self.findings.len() == self.capacity {
            self.findings.pop_front();
            self.dropped += 1;
        }
        self.findings.push_back(finding);
    }

    /// Matching findings in detection order (oldest first), the latest `limit` of them.
    pub fn query(&self, q: &Query) -> Vec<&Finding> {
        let mut out: Vec<&Finding> = self
            .findings
            .iter()
            .rev()
            .filter(|f| q.kind.is_none_or(|k| f.kind == k))
            .filter(|f| q.since_ns.is_none_or(|s| f.detected_at_ns >= s))
            .take(q.limit)
            .collect();
        out.reverse();
        out
    }

    fn count_by_service(&mut self, f: &Finding) {
        let kind = kind_index(f.kind);
        // A name spelled like the overflow label would hide in it: it counts as overflow.
        let fits = f.service.len() <= MAX_LABEL_VALUE_BYTES
            && f.operation.len() <= MAX_LABEL_VALUE_BYTES
            && f.service != OVERFLOW_LABEL;
        let key = (f.service.clone(), f.operation.clone());
        if fits
            && (self.by_service.contains_key(&key) || self.by_service.len() < MAX_SERVICE_SERIES)
        {
            self.by_service.entry(key).or_default()[kind] += 1;
            return;
        }
        self.by_service_overflow += 1;
        self.by_service
            .entry((OVERFLOW_LABEL.to_string(), OVERFLOW_LABEL.to_string()))
            .or_default()[kind] += 1;
    }

    /// Findings counted under [`OVERFLOW_LABEL`] because their pair found no place (the cap
    /// was reached, or a name was over [`MAX_LABEL_VALUE_BYTES`]).
    pub fn by_service_overflow(&self) -> u64 {
        self.by_service_overflow
    }

    /// What the page draws at `now_ns`, with `seconds` of rate series (see [`Summary`]).
    pub fn summary(&self, now_ns: u64, seconds: usize) -> Summary {
        self.aggregates
            .summary(now_ns, seconds, self.findings.len(), self.dropped)
    }

    /// Findings ever stored by (service, operation, kind), in label order; zero counts left out.
    pub fn by_service(&self) -> impl Iterator<Item = (&str, &str, FindingKind, u64)> {
        self.by_service
            .iter()
            .flat_map(|((service, operation), counts)| {
                FindingKind::ALL
                    .iter()
                    .zip(counts)
                    .filter(|(_, n)| **n > 0)
                    .map(move |(k, n)| (service.as_str(), operation.as_str(), *k, *n))
            })
    }

    pub fn len(&self) -> usize {
        self.findings.len()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toctou_schema::Severity;

    pub(super) fn finding(n: u64, kind: FindingKind) -> Finding {
        Finding {
            id: format!("{n:032x}"),
            kind,
            severity: Severity::High,
            service: "svc".into(),
            operation: "op".into(),
            resource: "r".into(),
            request_id: "q".into(),
            trace_id: String::new(),
            check_span_id: String::new(),
            check_time_ns: None,
            use_span_id: String::new(),
            use_time_ns: None,
            race_window_ns: None,
            checked_version: None,
            used_version: None,
            check_source: None,
            idempotency_key: None,
            policy: None,
            policy_version: None,
            intervening: vec![],
            prior_use: None,
            reason: String::new(),
            event_time_ns: n,
            detected_at_ns: n,
        }
    }

    #[test]
    fn keeps_the_latest_and_counts_what_it_drops() {
        let mut s = FindingStore::new(3);
        for n in 0..5 {
            s.push(finding(n, FindingKind::StaleCheck));
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.dropped(), 2);
        let all = s.query(&Query {
            limit: usize::MAX,
            ..Query::default()
        });
        let times: Vec<u64> = all.iter().map(|f| f.detected_at_ns).collect();
        assert_eq!(times, vec![2, 3, 4]);
    }

    #[test]
    fn counts_by_service_with_a_bounded_number_of_series() {
        let mut s = FindingStore::new(10);
        for n in 0..(MAX_SERVICE_SERIES as u64 + 5) {
            let mut f = finding(n, FindingKind::StaleCheck);
            f.service = format!("svc-{n}");
            s.push(f);
        }
        let mut again = finding(0, FindingKind::OrphanCheck);
        again.service = "svc-0".into();
        s.push(again);
        let series: Vec<_> = s.by_service().collect();
        // 1000 named pairs (svc-0 with two kinds) plus the overflow series.
        assert_eq!(series.len(), MAX_SERVICE_SERIES + 2);
        assert!(series.contains(&("svc-0", "op", FindingKind::OrphanCheck, 1)));
        assert!(series.contains(&(OVERFLOW_LABEL, OVERFLOW_LABEL, FindingKind::StaleCheck, 5)));
        assert_eq!(s.by_service_overflow(), 5);
    }

    #[test]
    fn names_too_long_for_a_label_count_as_overflow() {
        let mut s = FindingStore::new(10);
        let mut f = finding(1, FindingKind::StaleCheck);
        f.operation = "o".repeat(MAX_LABEL_VALUE_BYTES + 1);
        s.push(f.clone());
        f.operation = "o".repeat(MAX_LABEL_VALUE_BYTES);
        s.push(f.clone());
        f.service = OVERFLOW_LABEL.into();
        s.push(f);
        let series: Vec<_> = s.by_service().collect();
        assert_eq!(series.len(), 2);
        assert!(series.contains(&(OVERFLOW_LABEL, OVERFLOW_LABEL, FindingKind::StaleCheck, 2)));
        assert_eq!(s.by_service_overflow(), 2);
    }

    #[test]
    fn filters_by_kind_and_since_and_takes_the_latest() {
        let mut s = FindingStore::new(100);
        for n in 0..10 {
            let kind = if n % 2 == 0 {
                FindingKind::StaleCheck
            } else {
                FindingKind::OrphanCheck
            };
            s.push(finding(n, kind));
        }
        let q = Query {
            kind: Some(FindingKind::StaleCheck),
            since_ns: Some(3),
            limit: 2,
        };
        let times: Vec<u64> = s.query(&q).iter().map(|f| f.detected_at_ns).collect();
        assert_eq!(times, vec![6, 8]);
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_summary_keeps_counting_what_the_store_dropped_and_stays_the_same_size() {
        let mut s = FindingStore::new(1_000);
        for n in 0..100_000u64 {
            let kind = FindingKind::ALL[(n % 6) as usize];
            let mut f = finding(1_000 * S + n * 10_000, kind);
            f.race_window_ns = Some(n * 1_000);
            s.push(f);
        }
        let sum = s.summary(1_002 * S, 60);
        assert_eq!(
            (sum.total, sum.stored, sum.dropped),
            (100_000, 1_000, 99_000)
        );
        assert!(sum
            .counts
            .values()
            .all(|n| *n == 100_000 / 6 || *n == 100_000 / 6 + 1));
        // All 100k were detected within second 1000 and 1001.
        let per_second: u32 = sum
            .rate
            .counts
            .values()
            .map(|s| s.iter().sum::<u32>())
            .sum();
        assert_eq!(per_second, 100_000);
        let in_buckets: u64 = sum
            .race_window
            .counts
            .values()
            .map(|b| b.iter().sum::<u64>())
            .sum();
        assert_eq!(in_buckets, 100_000);
        let json = serde_json::to_string(&sum).unwrap();
        assert!(json.len() < 10_000, "{} bytes", json.len());
    }
}
