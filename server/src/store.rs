//! The embedded findings store: the latest `--max-findings` findings within
//! `--max-findings-bytes` (their strings and evidence counted), oldest dropped first, with
//! the counts /metrics shows and the aggregates the built-in page draws ([`summary`]).
//!
//! One writer (the correlator loop) and many readers (API requests) share it behind a
//! `RwLock`; writes happen once per correlated batch, so contention stays negligible.
//! Readers copy out one page (at most [`MAX_LIMIT`] findings and [`MAX_PAGE_BYTES`]) and
//! serialize it after letting go of the lock, so a large answer never holds the writer up
//! for its whole body; every finding has a sequence number, the cursor for the next page.

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

/// Default `--max-findings`.
pub const DEFAULT_MAX_FINDINGS: usize = 100_000;
/// Default `--max-findings-bytes`: 256 MiB of findings (as [`Finding::approx_bytes`] counts
/// them). 100,000 typical findings (~1.5 KB) fit; findings with values at the receivers'
/// 4 KiB limit (up to ~100 KB each, evidence included) are dropped oldest first to stay in it.
pub const DEFAULT_MAX_FINDINGS_BYTES: usize = 256 << 20;
/// Most findings one API answer holds; the answer's `next` cursor asks for the older ones.
pub const MAX_LIMIT: usize = 1_000;
/// Most bytes of findings one API answer copies out of the store (at least one finding):
/// with a thousand findings of ~100 KB each the copy would be 100 MB per request.
pub const MAX_PAGE_BYTES: usize = 4 << 20;

/// What a findings query asks for.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub kind: Option<FindingKind>,
    /// Only findings detected at or after this time (Unix ns).
    pub since_ns: Option<u64>,
    /// Only findings older than this sequence number (the `next` of a previous page).
    pub before: Option<u64>,
    /// At most this many (and at most [`MAX_LIMIT`]): the latest ones.
    pub limit: usize,
}

/// One page of a query's answer.
#[derive(Debug)]
pub struct Page {
    /// In detection order (oldest first).
    pub findings: Vec<Finding>,
    /// When older matching findings may remain: the `before` that asks for them.
    pub next: Option<u64>,
}

pub struct FindingStore {
    capacity: usize,
    max_bytes: usize,
    findings: VecDeque<Finding>,
    /// What the held findings take ([`Finding::approx_bytes`] summed), at most `max_bytes`.
    bytes: usize,
    /// Findings ever pushed: the sequence number of the next one. The held findings are
    /// numbered `pushed - len .. pushed`, oldest first.
    pushed: u64,
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
    /// A store bounded by count only; `toctou run` uses [`FindingStore::bounded`].
    #[cfg(test)]
    pub fn new(capacity: usize) -> FindingStore {
        FindingStore::bounded(capacity, usize::MAX)
    }

    pub fn bounded(capacity: usize, max_bytes: usize) -> FindingStore {
        FindingStore {
            capacity,
            max_bytes,
            findings: VecDeque::with_capacity(capacity.min(1024)),
            bytes: 0,
            pushed: 0,
            dropped: 0,
            by_service: BTreeMap::new(),
            by_service_overflow: 0,
            aggregates: Aggregates::new(),
        }
    }

    pub fn push(&mut self, finding: Finding) {
        self.count_by_service(&finding);
        self.aggregates.add(&finding);
        self.pushed += 1;
        let size = finding.approx_bytes();
        if self.capacity == 0 || size > self.max_bytes {
            self.dropped += 1;
            return;
        }
        while self.findings.len() == self.capacity || self.bytes + size > self.max_bytes {
            let Some(old) = self.findings.pop_front() else {
                break;
            };
            self.bytes -= old.approx_bytes();
            self.dropped += 1;
        }
        self.bytes += size;
        self.findings.push_back(finding);
    }

    /// The latest matching findings (at most `limit`, [`MAX_LIMIT`] and [`MAX_PAGE_BYTES`]),
    /// copied out so that the caller serializes them without the lock.
    pub fn query(&self, q: &Query) -> Page {
        let first = self.pushed - self.findings.len() as u64;
        // Findings at positions below `end` are older than the cursor.
        let end = match q.before {
            Some(b) => b.saturating_sub(first).min(self.findings.len() as u64) as usize,
            None => self.findings.len(),
        };
        let limit = q.limit.min(MAX_LIMIT);
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut next = None;
        for (i, f) in self.findings.range(..end).enumerate().rev() {
            // Not a `break` on `since`: the wall clock that stamps detection may step back.
            if q.since_ns.is_some_and(|s| f.detected_at_ns < s)
                || q.kind.is_some_and(|k| f.kind != k)
            {
                continue;
            }
            let size = f.approx_bytes();
            if out.len() == limit || (!out.is_empty() && bytes + size > MAX_PAGE_BYTES) {
                next = Some(first + i as u64 + 1);
                break;
            }
            bytes += size;
            out.push(f.clone());
        }
        out.reverse();
        Page {
            findings: out,
            next,
        }
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

    pub fn is_empty(&self) -> bool {
        self.findings.is_empty()
    }

    /// What the held findings take, as [`Finding::approx_bytes`] counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use toctou_schema::testing::finding;

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
        assert_eq!(all.next, None);
        let times: Vec<u64> = all.findings.iter().map(|f| f.detected_at_ns).collect();
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
            before: None,
        };
        let page = s.query(&q);
        let times: Vec<u64> = page.findings.iter().map(|f| f.detected_at_ns).collect();
        assert_eq!(times, vec![6, 8]);
        // The cursor asks for the older ones: only 4 is left after `since`.
        let older = s.query(&Query {
            before: page.next,
            ..q.clone()
        });
        let times: Vec<u64> = older.findings.iter().map(|f| f.detected_at_ns).collect();
        assert_eq!(times, vec![4]);
        assert_eq!(older.next, None);
    }

    #[test]
    fn bounded_in_bytes_with_long_strings_counted() {
        let mut big = finding(0, FindingKind::StaleCheck);
        big.resource = "r".repeat(4096);
        let size = big.approx_bytes();
        let mut s = FindingStore::bounded(1_000, 10 * size);
        for n in 0..100 {
            let mut f = big.clone();
            f.detected_at_ns = n;
            s.push(f);
        }
        assert_eq!(s.len(), 10);
        assert_eq!(s.bytes(), 10 * size);
        assert_eq!(s.dropped(), 90);
        // One finding larger than the whole store is dropped, not stored.
        let mut huge = big.clone();
        huge.reason = "x".repeat(11 * size);
        s.push(huge);
        assert_eq!((s.len(), s.dropped()), (10, 91));
    }

    #[test]
    fn pages_are_capped_and_the_cursor_walks_every_finding_once() {
        let mut s = FindingStore::new(10_000);
        for n in 0..2_500 {
            s.push(finding(n, FindingKind::StaleCheck));
        }
        let mut seen = Vec::new();
        let mut before = None;
        for _ in 0..10 {
            let page = s.query(&Query {
                limit: usize::MAX,
                before,
                ..Query::default()
            });
            assert!(page.findings.len() <= MAX_LIMIT);
            let mut times: Vec<u64> = page.findings.iter().map(|f| f.detected_at_ns).collect();
            times.append(&mut seen);
            seen = times;
            before = page.next;
            if before.is_none() {
                break;
            }
        }
        assert_eq!(seen, (0..2_500).collect::<Vec<u64>>());
        // Pages also stop at MAX_PAGE_BYTES.
        let mut s = FindingStore::new(10_000);
        for n in 0..1_000 {
            let mut f = finding(n, FindingKind::StaleCheck);
            f.reason = "x".repeat(64 * 1024);
            s.push(f);
        }
        let page = s.query(&Query {
            limit: 1_000,
            ..Query::default()
        });
        let bytes: usize = page.findings.iter().map(Finding::approx_bytes).sum();
        assert!(
            bytes <= MAX_PAGE_BYTES && page.findings.len() > 10,
            "{bytes}"
        );
        assert!(page.next.is_some());
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
