//! The offset-commit rule of one partition: which offset a correlator may commit, and what a
//! new owner needs to know to rebuild from it.
//!
//! A committed offset `O` says "a new owner re-reads from `O`". That is safe when every
//! event the engine's open state was built from sits at `O` or later: the [`Ledger`] keeps,
//! for the messages read since the last commit, the newest event time of each run of
//! messages, and `O` is the first run holding an event at or after the oldest state's time
//! (or the next offset, when no state is left). Runs, not single messages, keep it bounded
//! when state reaches minutes back (idempotency keys); a run is at most [`RUN_MESSAGES`]
//! messages, so `O` may be up to that many messages earlier than needed, never later.
//!
//! The commit carries, as offset metadata, the watermark the engine had reached and the
//! last offset it had read. Everything the engine decided before that watermark was durably
//! stored before the commit was made (the caller commits a [`CommitPoint`] only after the
//! sink wrote every finding emitted up to it), so the new owner re-reads from `O` up to that
//! offset silently, moves its watermark to the committed one, and only then reports: it
//! neither repeats what was reported (harmless, ids collapse, but noisy) nor reports what a
//! re-read that starts mid-interaction would wrongly conclude (a use whose check lies before
//! `O` looking unchecked, a check whose use lies before `O` looking orphaned).

use std::collections::VecDeque;

/// Messages per run of the ledger.
pub const RUN_MESSAGES: u64 = 256;
/// Prefix of the offset metadata; another prefix (or none) means no rebuild information.
const METADATA_PREFIX: &str = "toctou1";

/// One run of consecutive messages read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    first: i64,
    count: u64,
    /// The newest event time in the run.
    max_time: u64,
}

/// The messages of one partition read since they were last committable.
#[derive(Debug, Default)]
pub struct Ledger {
    runs: VecDeque<Run>,
    /// The offset after the last message read.
    next: Option<i64>,
}

/// What a correlator commits for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPoint {
    /// Where the next owner starts reading.
    pub offset: i64,
    /// The engine's watermark when the point was taken.
    pub watermark_ns: u64,
    /// The last offset the engine had read then.
    pub last_read: i64,
}

impl CommitPoint {
    /// The offset metadata string.
    pub fn metadata(&self) -> String {
        format!(
            "{METADATA_PREFIX} watermark={} last_read={}",
            self.watermark_ns, self.last_read
        )
    }

    /// The rebuild information of a committed offset: `None` for metadata this build did not
    /// write (another tool's commit, or none), in which case the owner starts reporting at
    /// once.
    pub fn parse(offset: i64, metadata: &str) -> Option<CommitPoint> {
        let mut parts = metadata.split_whitespace();
        if parts.next()? != METADATA_PREFIX {
            return None;
        }
        let mut watermark_ns = None;
        let mut last_read = None;
        for part in parts {
            match part.split_once('=')? {
                ("watermark", v) => watermark_ns = v.parse().ok(),
                ("last_read", v) => last_read = v.parse().ok(),
                _ => {}
            }
        }
        Some(CommitPoint {
            offset,
            watermark_ns: watermark_ns?,
            last_read: last_read?,
        })
    }
}

impl Ledger {
    pub fn new() -> Self {
        Ledger::default()
    }

    /// Records that the message at `offset`, whose newest event time is `max_time`, was
    /// read (offsets arrive in increasing order).
    pub fn record(&mut self, offset: i64, max_time: u64) {
        self.next = Some(offset + 1);
        if let Some(last) = self.runs.back_mut() {
            if last.count < RUN_MESSAGES && last.first + last.count as i64 == offset {
                last.count += 1;
                last.max_time = last.max_time.max(max_time);
                return;
            }
        }
        self.runs.push_back(Run {
            first: offset,
            count: 1,
            max_time,
        });
    }

    /// The point to commit given the engine's oldest state time (`None`: no state) and its
    /// watermark; `None` before any message was read. Runs wholly older than the oldest
    /// state are forgotten: no later point can need them.
    pub fn commit_point(
        &mut self,
        oldest_state: Option<u64>,
        watermark_ns: u64,
    ) -> Option<CommitPoint> {
        let next = self.next?;
        match oldest_state {
            Some(oldest) => {
                while self.runs.front().is_some_and(|r| r.max_time < oldest) {
                    self.runs.pop_front();
                }
            }
            None => self.runs.clear(),
        }
        Some(CommitPoint {
            offset: self.runs.front().map_or(next, |r| r.first),
            watermark_ns,
            last_read: next - 1,
        })
    }

    #[cfg(test)]
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

/// Where a rebuilding owner stands relative to its predecessor's commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Re-reading what the predecessor had read: findings are held back.
    Until(CommitPoint),
    /// Reporting normally.
    Live,
}

impl Replay {
    pub fn from_commit(point: Option<CommitPoint>) -> Replay {
        // With nothing to re-read (offset past last_read) the mode still carries the
        // watermark the caller moves the engine to at once.
        match point {
            Some(p) => Replay::Until(p),
            None => Replay::Live,
        }
    }

    /// Whether a finding decided at `event_time_ns` while in this mode is reported:
    /// during a replay, only what the predecessor could not have decided yet.
    pub fn reports(&self, event_time_ns: u64) -> bool {
        match self {
            Replay::Live => true,
            Replay::Until(p) => event_time_ns >= p.watermark_ns,
        }
    }

    /// Whether the replay is over once the message at `offset` has been read.
    pub fn done_after(&self, offset: i64) -> bool {
        match self {
            Replay::Live => false,
            Replay::Until(p) => offset >= p.last_read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_read_nothing_to_commit() {
        assert_eq!(Ledger::new().commit_point(None, 0), None);
    }

    #[test]
    fn no_state_commits_past_everything_read() {
        let mut l = Ledger::new();
        for o in 10..20 {
            l.record(o, 100 + o as u64);
        }
        let p = l.commit_point(None, 500).unwrap();
        assert_eq!(
            p,
            CommitPoint {
                offset: 20,
                watermark_ns: 500,
                last_read: 19
            }
        );
        assert_eq!(l.runs(), 0);
    }

    #[test]
    fn commits_up_to_the_run_holding_the_oldest_state() {
        let mut l = Ledger::new();
        // Three runs: offsets 0..256 (times < 1000), 256..512 (times up to 2000), 512..600.
        for o in 0..600i64 {
            let t = if o < 256 {
                500
            } else if o < 512 {
                1000 + o as u64
            } else {
                3000
            };
            l.record(o, t);
        }
        assert_eq!(l.runs(), 3);
        // State from time 900: the first run (newest time 500) is not needed.
        assert_eq!(l.commit_point(Some(900), 2500).unwrap().offset, 256);
        // State from time 2000: the second run's newest is 1511, not needed either.
        assert_eq!(l.commit_point(Some(2000), 2500).unwrap().offset, 512);
        // The oldest state never moves the commit back past forgotten runs.
        assert_eq!(l.commit_point(Some(100), 2500).unwrap().offset, 512);
    }

    #[test]
    fn a_late_event_in_a_run_keeps_the_run() {
        let mut l = Ledger::new();
        l.record(0, 10);
        l.record(1, 5_000);
        l.record(2, 20);
        // State at 4_000 was built from offset 1's event: its run must be re-read.
        assert_eq!(l.commit_point(Some(4_000), 4_500).unwrap().offset, 0);
    }

    #[test]
    fn a_gap_in_offsets_starts_a_new_run() {
        let mut l = Ledger::new();
        l.record(0, 10);
        l.record(5, 20);
        assert_eq!(l.runs(), 2);
        assert_eq!(l.commit_point(Some(15), 30).unwrap().offset, 5);
    }

    #[test]
    fn metadata_round_trip_and_foreign_metadata() {
        let p = CommitPoint {
            offset: 42,
            watermark_ns: 1_700_000_000_123_456_789,
            last_read: 99,
        };
        assert_eq!(CommitPoint::parse(42, &p.metadata()), Some(p));
        assert_eq!(CommitPoint::parse(42, ""), None);
        assert_eq!(CommitPoint::parse(42, "someone else's"), None);
        assert_eq!(
            CommitPoint::parse(42, "toctou1 watermark=x last_read=1"),
            None
        );
    }

    #[test]
    fn replay_holds_back_what_the_predecessor_decided() {
        let p = CommitPoint {
            offset: 10,
            watermark_ns: 1_000,
            last_read: 20,
        };
        let r = Replay::from_commit(Some(p));
        assert!(!r.reports(999));
        assert!(r.reports(1_000));
        assert!(!r.done_after(19));
        assert!(r.done_after(20));
        assert!(Replay::from_commit(None).reports(0));
    }
}
