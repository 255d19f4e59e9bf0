//! Uses waiting for their write: a successful use is judged on its whole write, not on the
//! instant its span started (docs/CORRELATOR.md, "A use's write").
//!
//! A use whose verdict cannot change while it runs (no policy to judge, and a duplicate or
//! versions that agree) is decided at once and never waits.
//!
//! A use's write may wait on a lock for as long as its span lasts, and that wait is exactly
//! when other requests' writes commit. So a use that has passed the checks that need only its
//! start (a matching, allowing check) waits here until event time has passed its span's end:
//! by then every audit record committed before its end has been processed, in order. Where
//! the resource has an audit stream and the use's own audit record (same request) has not
//! been seen by then, it waits once more, for `allowed_lateness`, since an application's span
//! can end before the database's commit time on another clock. Then the rules that depend on
//! what happened during the use (`authz_drift`, `duplicate_use`, `stale_check`, in that
//! precedence) are applied with the use's own write, or its end, as its time of effect.
//!
//! A waiting use holds its span and a copy of its matched check, each with its own
//! references, so a check superseded or removed meanwhile does not change the verdict. The
//! store is bounded by `max_pending`: past it, the use that would be decided first is
//! decided early (counted in `toctou_evicted_total{state="use"}`).

use crate::checks::CheckRecord;
use crate::item::SpanItem;
use crate::timer::TimerQueue;
use toctou_schema::UseRef;

/// An earlier use this one duplicates.
#[derive(Clone)]
pub(crate) enum Prior {
    Key(UseRef),
    Create(UseRef),
}

pub(crate) struct WaitingUse {
    pub span: SpanItem,
    /// The check it matched when it was processed, with its own references.
    pub check: CheckRecord,
    pub prior: Option<Prior>,
    /// Its place in the processing order (its start, or its arrival for a clock that runs
    /// ahead): the event time of the event it was made from, for a hand-over.
    pub placed_at: u64,
    /// It has already been put off once to wait for its own audit record.
    pub waited: bool,
}

impl WaitingUse {
    /// The end of the use's span, never before its start.
    pub fn end_ns(&self) -> u64 {
        self.span.end_ns.max(self.span.start_ns)
    }
}

/// The waiting uses: a slab of them and one decision timer each.
pub(crate) struct Waiting {
    slots: Vec<Option<WaitingUse>>,
    free: Vec<u32>,
    pub timers: TimerQueue<u32>,
    pub len: usize,
}

impl Waiting {
    pub fn new() -> Waiting {
        Waiting {
            slots: Vec::new(),
            free: Vec::new(),
            timers: TimerQueue::new(),
            len: 0,
        }
    }

    /// Parks `w` until `deadline` (event time).
    pub fn park(&mut self, w: WaitingUse, deadline: u64) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(w);
                slot
            }
            None => {
                self.slots.push(Some(w));
                (self.slots.len() - 1) as u32
            }
        };
        self.len += 1;
        self.timers.push(deadline, slot);
    }

    /// Takes the use of a timer that fired (each use has exactly one timer).
    pub fn take(&mut self, slot: u32) -> WaitingUse {
        let w = self.slots[slot as usize]
            .take()
            .expect("a waiting use has one timer");
        self.free.push(slot);
        self.len -= 1;
        w
    }

    /// The event time of the oldest waiting use: what a Kafka hand-over must re-read from
    /// (their deadlines say nothing of it: a span can be long). Read by scanning, since it
    /// is asked once per offset commit while uses come and go hundreds of thousands of
    /// times a second: an ordered index cost ~150 instructions per use (callgrind).
    pub fn oldest(&self) -> Option<u64> {
        self.slots.iter().flatten().map(|w| w.placed_at).min()
    }

    /// Heap bytes held by the slab and the timers (the uses' long strings are interned).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<WaitingUse>>()
            + self.free.capacity() * 4
            + self.timers.heap_bytes()
    }
}
