//! Where the reading of one partition stands against the partition's end: up to which
//! instant everything written to it has been read (the engine's idle rule counts silence
//! only up to there: idle is not lag), and how long a new owner took to catch up with the
//! backlog it was handed.
//!
//! A partition's end is its high watermark (the offset after its last record), which `ends`
//! asks the broker for every few hundred milliseconds, noting the instant it asked. When an
//! answer is at or before the read position (the offset after the last record read), every
//! record written before that instant has been read: the partition is read until then
//! (`Input::ReadUntil`). Records written later arrive like any live record, within the
//! allowed lateness the idle rule waits for anyway. While the answer is beyond the position,
//! records wait to be read, and the instant stays where it was: the watermark moves with
//! arrivals only. An unanswered question proves nothing, so while the broker is down or
//! stalled the instant does not move either.
//!
//! Why not librdkafka's partition EOF (`enable.partition.eof`, the first version of this
//! rule): it comes once per end offset, so a partition that stays at its end gets no fresh
//! proof, and while the broker stalls (a loaded test machine starved its JVM for a minute)
//! the last EOF would stand while the collectors' records may still be written.

use std::time::{Duration, Instant};

/// The reading of one assigned partition.
#[derive(Debug)]
pub struct Reading {
    /// The offset after the last record read; at the assignment, the committed offset;
    /// `None` while neither is known (nothing read, nothing committed). Then the partition
    /// counts as behind, which costs nothing: its engine holds no event the idle rule could
    /// move past.
    position: Option<i64>,
    /// The newest end the broker gave.
    end: Option<i64>,
    /// Everything written before this instant has been read.
    read_until: Option<Instant>,
    assigned_at: Instant,
    /// Until the catch-up is reported: what was read since the assignment.
    backlog: Option<Backlog>,
}

/// What a new owner read between its assignment and the partition's end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub messages: u64,
    pub events: u64,
}

/// A new owner's catch-up: from the assignment until the read position first reached an
/// end the broker gave after the assignment. Reported once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaughtUp {
    pub backlog: Backlog,
    pub elapsed: Duration,
}

impl CaughtUp {
    /// Events read per second of the catch-up (0 for an instant one).
    pub fn events_per_second(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.backlog.events as f64 / s
        } else {
            0.0
        }
    }
}

impl Reading {
    /// A partition just assigned, to be read from `position` (its committed offset).
    pub fn assigned(now: Instant, position: Option<i64>) -> Reading {
        Reading {
            position,
            end: None,
            read_until: None,
            assigned_at: now,
            backlog: Some(Backlog::default()),
        }
    }

    /// The record at `offset` was read (`events` in it).
    pub fn read(&mut self, offset: i64, events: usize, now: Instant) -> Option<CaughtUp> {
        self.position = Some(offset + 1);
        if let Some(b) = self.backlog.as_mut() {
            b.messages += 1;
            b.events += events as u64;
        }
        self.caught_up(now)
    }

    /// The broker said, when asked at `asked_at`, that the partition ends at `end`.
    pub fn probed(&mut self, asked_at: Instant, end: i64, now: Instant) -> Option<CaughtUp> {
        if self.position.is_some_and(|p| p >= end) && self.read_until < Some(asked_at) {
            self.read_until = Some(asked_at);
        }
        // Only an end given after the assignment measures the backlog handed over.
        if asked_at >= self.assigned_at {
            self.end = Some(self.end.map_or(end, |e| e.max(end)));
        }
        self.caught_up(now)
    }

    fn caught_up(&mut self, now: Instant) -> Option<CaughtUp> {
        let (Some(position), Some(end)) = (self.position, self.end) else {
            return None;
        };
        if position < end {
            return None;
        }
        self.backlog.take().map(|backlog| CaughtUp {
            backlog,
            elapsed: now.saturating_duration_since(self.assigned_at),
        })
    }

    /// Everything written before this instant has been read; `None`: not known.
    pub fn read_until(&self) -> Option<Instant> {
        self.read_until
    }

    /// Whether records are known or feared to wait: no end known yet, or the last end
    /// beyond the read position.
    pub fn behind(&self) -> bool {
        match (self.position, self.end) {
            (Some(position), Some(end)) => position < end,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn read_until_moves_only_when_an_end_is_at_or_before_the_position() {
        let t0 = Instant::now();
        // Committed offset 10; the broker says 14 records exist: 4 wait.
        let mut r = Reading::assigned(t0, Some(10));
        assert_eq!(r.read_until(), None);
        assert_eq!(r.probed(t0 + 100 * MS, 14, t0 + 110 * MS), None);
        assert_eq!(r.read_until(), None);
        assert!(r.behind());
        // Reading the backlog: caught up at the record that reaches the end.
        assert_eq!(r.read(10, 3, t0 + 200 * MS), None);
        assert_eq!(r.read(11, 2, t0 + 210 * MS), None);
        assert_eq!(r.read(12, 1, t0 + 220 * MS), None);
        let caught = r.read(13, 4, t0 + 500 * MS).expect("the backlog is read");
        assert_eq!(
            caught.backlog,
            Backlog {
                messages: 4,
                events: 10
            }
        );
        assert_eq!(caught.elapsed, 500 * MS);
        assert!((caught.events_per_second() - 20.0).abs() < 1e-9);
        assert!(!r.behind());
        // Still no proof: the only answer was asked before the records were read.
        assert_eq!(r.read_until(), None);
        // The next answer proves everything before its question read.
        assert_eq!(r.probed(t0 + 600 * MS, 14, t0 + 610 * MS), None);
        assert_eq!(r.read_until(), Some(t0 + 600 * MS));
        // More written meanwhile: the proof stays where it was, however long it lasts.
        r.probed(t0 + 800 * MS, 20, t0 + 810 * MS);
        r.probed(t0 + 5_000 * MS, 20, t0 + 5_010 * MS);
        assert_eq!(r.read_until(), Some(t0 + 600 * MS));
        assert!(r.behind());
        // An answer that arrives late, for a question asked earlier, never moves it back.
        r.read(19, 1, t0 + 5_100 * MS);
        r.probed(t0 + 5_050 * MS, 20, t0 + 5_200 * MS);
        r.probed(t0 + 900 * MS, 20, t0 + 5_300 * MS);
        assert_eq!(r.read_until(), Some(t0 + 5_050 * MS));
    }

    #[test]
    fn an_empty_partition_is_caught_up_at_the_first_answer() {
        let t0 = Instant::now();
        let mut r = Reading::assigned(t0, Some(0));
        let caught = r.probed(t0 + 50 * MS, 0, t0 + 60 * MS).unwrap();
        assert_eq!(caught.backlog, Backlog::default());
        assert_eq!(caught.elapsed, 60 * MS);
        assert_eq!(r.read_until(), Some(t0 + 50 * MS));
    }

    #[test]
    fn an_answer_to_a_question_asked_before_the_assignment_measures_no_backlog() {
        let t0 = Instant::now();
        let mut r = Reading::assigned(t0, Some(5));
        assert_eq!(r.probed(t0 - 10 * MS, 5, t0 + MS), None);
        // It is a proof all the same: what was written before it had been read.
        assert_eq!(r.read_until(), Some(t0 - 10 * MS));
        assert!(r.behind(), "no end known since the assignment");
        assert!(r.probed(t0 + 10 * MS, 5, t0 + 20 * MS).is_some());
    }

    #[test]
    fn without_a_position_nothing_is_proven() {
        let t0 = Instant::now();
        let mut r = Reading::assigned(t0, None);
        r.probed(t0 + MS, 0, t0 + 2 * MS);
        assert_eq!(r.read_until(), None);
        assert!(r.behind());
    }
}
