//! Where the reading of one partition stands against the partition's end: whether records
//! still wait to be read (then its engine's watermark moves with arrivals only, never by the
//! wall clock: idle is not lag), and how long a new owner took to catch up with the backlog
//! it was handed.
//!
//! The end is librdkafka's partition EOF (`enable.partition.eof`). A fetch response carries
//! the partition's high watermark (the offset after its last record); when that equals the
//! fetch position, librdkafka queues an EOF for the partition behind the records it fetched
//! before, once per end offset. So when the poll loop takes an EOF, every record the
//! partition held at that fetch has been read: the partition is caught up. Reading a record
//! makes it behind again until the next EOF, which comes as soon as a fetch finds nothing
//! more. A pause (the sink's push-back) makes it behind too: nothing is fetched while paused,
//! so records written meanwhile wait unseen, and the first ticks after the resume come
//! before they flow again. librdkafka resets its EOF state, and emits an EOF again, whenever
//! the partition's fetch restarts (assignment, pause and resume), so the flag never sticks
//! at "behind" for a partition that is at its end.
//!
//! What an EOF cannot know: records written after that fetch (at most a fetch long-poll,
//! `fetch.wait.max.ms`, 500 ms, while the broker answers), which are in flight like any
//! network delay, and which the idle rule's wait of the allowed lateness covers. While the
//! broker is down the last EOF stands: no record can be written to the partition then.

use std::time::{Duration, Instant};
use toctou_correlator::Input;

/// The reading of one assigned partition.
#[derive(Debug)]
pub struct Reading {
    at_end: bool,
    assigned_at: Instant,
    /// Read since the assignment, until the first end (then `None`).
    backlog: Option<Backlog>,
}

/// What a new owner read between its assignment and the partition's end.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub messages: u64,
    pub events: u64,
}

/// A new owner's catch-up, reported once, at the first end after the assignment.
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
    /// A partition just assigned: behind until its first end, since where it ends is not
    /// known yet.
    pub fn assigned(now: Instant) -> Reading {
        Reading {
            at_end: false,
            assigned_at: now,
            backlog: Some(Backlog::default()),
        }
    }

    /// A record was read (`events` in it): whether more follow is not known until the next
    /// end.
    pub fn read(&mut self, events: usize) {
        self.at_end = false;
        if let Some(b) = self.backlog.as_mut() {
            b.messages += 1;
            b.events += events as u64;
        }
    }

    /// Consumption was paused: where the partition ends is not known until its fetch, which
    /// restarts at the resume, reaches the end again.
    pub fn paused(&mut self) {
        self.at_end = false;
    }

    /// The partition's end was reached; the catch-up the first time since the assignment.
    pub fn reached_end(&mut self, now: Instant) -> Option<CaughtUp> {
        self.at_end = true;
        self.backlog.take().map(|backlog| CaughtUp {
            backlog,
            elapsed: now.saturating_duration_since(self.assigned_at),
        })
    }

    /// What the engine's tick is told.
    pub fn input(&self) -> Input {
        if self.at_end {
            Input::CaughtUp
        } else {
            Input::Behind
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_from_the_assignment_until_the_end_and_after_every_record() {
        let t0 = Instant::now();
        let mut r = Reading::assigned(t0);
        assert_eq!(r.input(), Input::Behind);
        r.read(3);
        r.read(2);
        assert_eq!(r.input(), Input::Behind);
        let caught = r
            .reached_end(t0 + Duration::from_secs(2))
            .expect("first end");
        assert_eq!(
            caught.backlog,
            Backlog {
                messages: 2,
                events: 5
            }
        );
        assert_eq!(caught.elapsed, Duration::from_secs(2));
        assert!((caught.events_per_second() - 2.5).abs() < 1e-9);
        assert_eq!(r.input(), Input::CaughtUp);
        // Live: a record makes it behind until the next end, which is no new catch-up.
        r.read(1);
        assert_eq!(r.input(), Input::Behind);
        assert_eq!(r.reached_end(t0 + Duration::from_secs(3)), None);
        assert_eq!(r.input(), Input::CaughtUp);
        // Paused at its end: records may be written meanwhile, unseen until the resume.
        r.paused();
        assert_eq!(r.input(), Input::Behind);
        assert_eq!(r.reached_end(t0 + Duration::from_secs(9)), None);
        assert_eq!(r.input(), Input::CaughtUp);
    }

    #[test]
    fn an_empty_partition_catches_up_at_once() {
        let t0 = Instant::now();
        let mut r = Reading::assigned(t0);
        let caught = r.reached_end(t0).unwrap();
        assert_eq!(caught.backlog, Backlog::default());
        assert_eq!(caught.events_per_second(), 0.0);
        assert_eq!(r.input(), Input::CaughtUp);
    }
}
