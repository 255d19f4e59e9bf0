//! Checks waiting for their use: the latest check per (resource, request), pending for
//! `pair_ttl` after its time, then a tombstone for another `pair_ttl`.
//!
//! A pending check and its tombstone are one record that changes state in place, so a late
//! use finds either with the same lookup. The record is ~104 bytes: names are interned
//! slots, ids raw bytes, strings [`Compact`]. Expiry timers are not cancelled on
//! supersession: the record's `deadline` moves on and the old timer, when it fires, re-arms
//! itself at the new deadline (one live timer per record, however many retries).

use crate::compact::Compact;
use crate::engine::Engine;
use crate::metrics::EvictedState;
use crate::symbols::Symbols;
use crate::table::{Handle, Table};
use crate::timer::TimerQueue;
use hashbrown::DefaultHashBuilder;
use std::hash::BuildHasher;
use toctou_schema::{CheckSource, Decision, Finding, SpanId, TraceId};

use crate::item::SpanItem;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckState {
    Pending,
    Tombstone,
}

pub(crate) struct CheckRecord {
    /// Event time: the check span's end.
    pub time: u64,
    /// Pending: when it becomes a tombstone. Tombstone: when it leaves.
    pub deadline: u64,
    pub trace: TraceId,
    pub span: SpanId,
    pub resource: u32,
    pub profile: u32,
    pub request: Compact,
    pub version: Compact,
    pub idem: Compact,
    pub decision: Decision,
    pub source: Option<CheckSource>,
    pub state: CheckState,
    /// A use paired with it: it will not be an orphan.
    pub used: bool,
    /// It replaced an earlier check of the same request (a late use from before it cannot
    /// be told which check it followed).
    pub superseded_earlier: bool,
}

impl CheckRecord {
    /// A copy that holds references of its own, for a use that outlives its lookup.
    pub fn share(&self, sym: &mut Symbols) -> CheckRecord {
        CheckRecord {
            time: self.time,
            deadline: self.deadline,
            trace: self.trace,
            span: self.span,
            resource: sym.resources.retain(self.resource),
            profile: sym.profiles.retain(self.profile),
            request: self.request.share(&mut sym.long),
            version: self.version.share(&mut sym.long),
            idem: self.idem.share(&mut sym.long),
            decision: self.decision,
            source: self.source,
            state: self.state,
            used: self.used,
            superseded_earlier: self.superseded_earlier,
        }
    }
}

fn rehash(b: &DefaultHashBuilder, r: &CheckRecord) -> u64 {
    b.hash_one((r.resource, &r.request))
}

pub(crate) struct Checks {
    pub table: Table<CheckRecord>,
    pub pending: usize,
    pub tombstones: usize,
    /// Pending → tombstone.
    pub expiry: TimerQueue<Handle>,
    /// Tombstone → gone (and an orphan reported if it was an unused allow).
    pub removal: TimerQueue<Handle>,
}

impl Checks {
    pub fn new() -> Checks {
        Checks {
            table: Table::new(rehash),
            pending: 0,
            tombstones: 0,
            expiry: TimerQueue::new(),
            removal: TimerQueue::new(),
        }
    }

    /// Heap bytes of check state: records, index and both timer queues. Long strings
    /// (over 16 bytes and not hex or a UUID) live in the shared interner, not counted here.
    pub fn heap_bytes(&self) -> usize {
        self.table.heap_bytes() + self.expiry.heap_bytes() + self.removal.heap_bytes()
    }

    pub fn find(&self, resource: u32, request: &Compact) -> Option<u32> {
        let hash = self.table.hash(&(resource, request));
        self.table
            .find(hash, |r| r.resource == resource && r.request == *request)
    }
}

impl Engine {
    /// A check: becomes (or replaces) the latest check of its request on its resource.
    pub(crate) fn on_check(&mut self, mut s: SpanItem, out: &mut Vec<Finding>) {
        let time = s.end_ns;
        let ttl = self.ttl_ns;
        let Some(slot) = self.checks.find(s.resource, &s.request) else {
            let rec = CheckRecord {
                time,
                deadline: time.saturating_add(ttl),
                trace: s.trace,
                span: s.span,
                resource: std::mem::replace(&mut s.resource, crate::intern::NO_REF),
                profile: std::mem::replace(&mut s.profile, crate::intern::NO_REF),
                request: std::mem::take(&mut s.request),
                version: std::mem::take(&mut s.version),
                idem: std::mem::take(&mut s.idem),
                decision: s.decision,
                source: s.source,
                state: CheckState::Pending,
                used: false,
                superseded_earlier: false,
            };
            let deadline = rec.deadline;
            let hash = self.checks.table.hash(&(rec.resource, &rec.request));
            let handle = self.checks.table.insert(hash, rec);
            self.checks.expiry.push(deadline, handle);
            self.checks.pending += 1;
            s.release(&mut self.sym);
            self.enforce_max_pending(out);
            return;
        };
        let rec = self.checks.table.get_mut(slot);
        if rec.trace == s.trace && rec.span == s.span && rec.time == time {
            self.stats.duplicate_events += 1;
            s.release(&mut self.sym);
            return;
        }
        if time < rec.time {
            // An older check arriving late: the newer one already superseded it.
            s.release(&mut self.sym);
            return;
        }
        // A retry: the newer check replaces the older, which is never an orphan.
        rec.time = time;
        rec.trace = s.trace;
        rec.span = s.span;
        rec.decision = s.decision;
        rec.source = s.source;
        rec.used = false;
        rec.superseded_earlier = true;
        std::mem::swap(&mut rec.profile, &mut s.profile);
        std::mem::swap(&mut rec.version, &mut s.version);
        std::mem::swap(&mut rec.idem, &mut s.idem);
        rec.deadline = time.saturating_add(ttl);
        let revived = rec.state == CheckState::Tombstone;
        if revived {
            rec.state = CheckState::Pending;
        }
        let deadline = rec.deadline;
        // `s` now holds the old check's names plus its own resource and request refs.
        s.release(&mut self.sym);
        if revived {
            // Its removal timer goes stale (state mismatch); it needs an expiry timer again.
            self.checks.tombstones -= 1;
            self.checks.pending += 1;
            let handle = self.checks.table.handle(slot);
            self.checks.expiry.push(deadline, handle);
            self.enforce_max_pending(out);
        }
    }

    /// Expiry timer: a pending check becomes a tombstone (or the timer re-arms after a retry
    /// moved the deadline on).
    pub(crate) fn fire_check_expiry(&mut self, deadline: u64, h: Handle, out: &mut Vec<Finding>) {
        let Some(rec) = self.checks.table.live(h) else {
            return;
        };
        if rec.state != CheckState::Pending {
            return;
        }
        if rec.deadline > deadline {
            self.checks.expiry.push(rec.deadline, h);
            return;
        }
        self.entomb(h.slot, deadline, out);
    }

    /// Moves a pending check to the tombstones, matchable for another `pair_ttl` from `at`.
    fn entomb(&mut self, slot: u32, at: u64, out: &mut Vec<Finding>) {
        let removal = at.saturating_add(self.ttl_ns);
        let rec = self.checks.table.get_mut(slot);
        rec.state = CheckState::Tombstone;
        rec.deadline = removal;
        let handle = self.checks.table.handle(slot);
        self.checks.removal.push(removal, handle);
        self.checks.pending -= 1;
        self.checks.tombstones += 1;
        while self.checks.tombstones > self.config.max_tombstones {
            if !self.evict_oldest_tombstone(out) {
                break;
            }
        }
    }

    fn enforce_max_pending(&mut self, out: &mut Vec<Finding>) {
        while self.checks.pending > self.config.max_pending {
            if !self.evict_oldest_pending(out) {
                break;
            }
        }
    }

    /// The pending check due to expire first becomes a tombstone now; false if none is
    /// pending.
    pub(crate) fn evict_oldest_pending(&mut self, out: &mut Vec<Finding>) -> bool {
        while let Some((deadline, h)) = self.checks.expiry.pop() {
            let Some(rec) = self.checks.table.live(h) else {
                continue;
            };
            if rec.state != CheckState::Pending {
                continue;
            }
            if rec.deadline > deadline {
                self.checks.expiry.push(rec.deadline, h);
                continue;
            }
            self.stats.count_evicted(EvictedState::Pending);
            self.entomb(h.slot, self.clock, out);
            return true;
        }
        false
    }

    /// Removal timer: the tombstone leaves; an allowing check never used is an orphan.
    pub(crate) fn fire_tombstone_removal(
        &mut self,
        deadline: u64,
        h: Handle,
        out: &mut Vec<Finding>,
    ) {
        let Some(rec) = self.checks.table.live(h) else {
            return;
        };
        if rec.state != CheckState::Tombstone || rec.deadline != deadline {
            return;
        }
        self.bury(h.slot, deadline, false, out);
    }

    pub(crate) fn evict_oldest_tombstone(&mut self, out: &mut Vec<Finding>) -> bool {
        while let Some((deadline, h)) = self.checks.removal.pop() {
            let Some(rec) = self.checks.table.live(h) else {
                continue;
            };
            if rec.state != CheckState::Tombstone || rec.deadline != deadline {
                continue;
            }
            self.stats.count_evicted(EvictedState::Tombstone);
            let at = self.clock;
            self.bury(h.slot, at, true, out);
            return true;
        }
        false
    }

    /// Removes a tombstone for good, reporting its orphan (decided at event time `at`).
    fn bury(&mut self, slot: u32, at: u64, evicted: bool, out: &mut Vec<Finding>) {
        let rec = self.checks.table.remove(slot);
        self.checks.tombstones -= 1;
        if rec.decision == Decision::Allow && !rec.used {
            let finding = self.orphan_finding(&rec, at, evicted);
            self.emit(finding, at, out);
        }
        self.release_check(rec);
    }

    pub(crate) fn release_check(&mut self, rec: CheckRecord) {
        self.sym.resources.release(rec.resource);
        self.sym.profiles.release(rec.profile);
        rec.request.release(&mut self.sym.long);
        rec.version.release(&mut self.sym.long);
        rec.idem.release(&mut self.sym.long);
    }
}

#[cfg(test)]
mod tests;
