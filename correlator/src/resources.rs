//! Per-resource state: the recent audit writes (to find writes between a check and its use)
//! and the pending create.
//!
//! The history keeps writes for `2 * pair_ttl + allowed_lateness` after their commit time:
//! long enough for any use that can still pair (a tombstone lives until `2 * pair_ttl` after
//! its check) to see every write since its check. One global timer queue, one timer per
//! write, prunes the histories in commit-time order and bounds them all together by
//! `max_audit_history`. Every write holds a reference on its resource, so a resource's
//! state lives exactly as long as something refers to it.

use crate::compact::{Compact, LongStrings, RenderBuf};
use crate::creates::PendingCreate;
use crate::engine::Engine;
use crate::item::AuditItem;
use crate::metrics::EvictedState;
use crate::timer::TimerQueue;
use std::collections::VecDeque;
use toctou_schema::{AuditAction, AuditRef, Version};

/// Evidence lists stop here; a finding's reason says how many there were in all.
pub(crate) const MAX_EVIDENCE: usize = 100;

#[derive(Default)]
pub(crate) struct ResourceState {
    /// Writes sorted by commit time.
    pub history: VecDeque<AuditWrite>,
    pub create: Option<Box<PendingCreate>>,
}

pub(crate) struct AuditWrite {
    pub time: u64,
    pub action: AuditAction,
    pub version: Compact,
    pub request: Compact,
    pub actor: Compact,
}

impl AuditWrite {
    pub fn to_ref(&self, resource: &str, long: &LongStrings) -> AuditRef {
        AuditRef {
            action: self.action,
            resource: resource.to_owned(),
            version: self.version.to_string_opt(long),
            request_id: self.request.to_string_opt(long),
            actor: self.actor.to_string_opt(long),
            time_ns: self.time,
        }
    }

    /// Written by another request than `request` (a write with no request id always is).
    fn by_other(&self, request: &Compact) -> bool {
        self.request.is_none() || self.request != *request
    }
}

/// Pruning timers for the histories: (resource slot, resource generation).
pub(crate) struct AuditLog {
    pub prune: TimerQueue<(u32, u32)>,
    pub len: usize,
}

impl AuditLog {
    pub fn new() -> AuditLog {
        AuditLog {
            prune: TimerQueue::new(),
            len: 0,
        }
    }
}

/// What the check and use said, for the stale-check rule.
pub(crate) struct Pair<'a> {
    pub check_time: u64,
    pub use_time: u64,
    pub checked: &'a Compact,
    pub used: &'a Compact,
    pub request: &'a Compact,
}

/// The stale-check verdict and its evidence (indices into the resource's history).
pub(crate) enum Staleness {
    Fresh,
    Stale {
        intervening: Vec<usize>,
    },
    /// A version missing and no audit stream: nothing to decide on.
    Indeterminate,
}

fn int_of(c: &Compact, long: &LongStrings) -> Option<i128> {
    let mut buf: RenderBuf = [0; 36];
    c.as_str(long, &mut buf).and_then(|s| Version(s).as_int())
}

/// Versions equal as the conventions define it (integers by value, else byte for byte).
pub(crate) fn same_version(a: &Compact, b: &Compact, long: &LongStrings) -> bool {
    if a == b {
        // The same string (the encoding is canonical).
        return !a.is_none();
    }
    let (mut ba, mut bb): (RenderBuf, RenderBuf) = ([0; 36], [0; 36]);
    match (a.as_str(long, &mut ba), b.as_str(long, &mut bb)) {
        (Some(x), Some(y)) => Version(x).same(&Version(y)),
        _ => false,
    }
}

/// Applies the stale-check rule of `docs/CORRELATOR.md` to a pair on one resource.
pub(crate) fn staleness(
    history: &VecDeque<AuditWrite>,
    p: &Pair<'_>,
    long: &LongStrings,
) -> Staleness {
    let checked_int = int_of(p.checked, long);
    if !p.checked.is_none() && !p.used.is_none() {
        if same_version(p.checked, p.used, long) {
            return Staleness::Fresh;
        }
        let used_int = int_of(p.used, long);
        let intervening = history
            .iter()
            .enumerate()
            .filter(|(_, w)| w.by_other(p.request))
            .filter(|(_, w)| {
                let in_time = p.check_time < w.time && w.time < p.use_time;
                let in_versions = match (checked_int, int_of(&w.version, long), used_int) {
                    (Some(c), Some(v), Some(u)) => c < v && v <= u,
                    _ => false,
                };
                in_time || in_versions
            })
            .map(|(i, _)| i)
            .collect();
        return Staleness::Stale { intervening };
    }
    if history.is_empty() {
        return Staleness::Indeterminate;
    }
    // Committed before the use (by time: there is no used version to order by) and after
    // the check: by version where both are integers (clocks of the application and the
    // system of record need not agree), else by time.
    let before_use = history.partition_point(|w| w.time < p.use_time);
    let intervening: Vec<usize> = history
        .range(..before_use)
        .enumerate()
        .filter(|(_, w)| w.by_other(p.request))
        .filter(|(_, w)| match (checked_int, int_of(&w.version, long)) {
            (Some(c), Some(v)) => v > c,
            _ => p.check_time < w.time,
        })
        .map(|(i, _)| i)
        .collect();
    if intervening.is_empty() {
        Staleness::Fresh
    } else {
        Staleness::Stale { intervening }
    }
}

impl Engine {
    /// Adds an audit write to its resource's history (in commit-time order).
    pub(crate) fn record_write(&mut self, a: &AuditItem) {
        let write = AuditWrite {
            time: a.time,
            action: a.action,
            version: a.version.share(&mut self.sym.long),
            request: a.request.share(&mut self.sym.long),
            actor: a.actor.share(&mut self.sym.long),
        };
        let slot = self.sym.resources.retain(a.resource);
        let gen = self.sym.resources.gen(slot);
        let history = &mut self.sym.resources.value_mut(slot).history;
        let at = history.partition_point(|w| w.time <= write.time);
        history.insert(at, write);
        self.audits
            .prune
            .push(a.time.saturating_add(self.history_window_ns), (slot, gen));
        self.audits.len += 1;
        while self.audits.len > self.config.max_audit_history {
            let Some((_, (slot, gen))) = self.audits.prune.pop() else {
                break;
            };
            if self.drop_oldest_write(slot, gen, u64::MAX) {
                self.stats.count_evicted(EvictedState::Audit);
            }
        }
    }

    /// Pruning timer: the resource's oldest write has left the history window.
    pub(crate) fn fire_history_prune(&mut self, deadline: u64, slot: u32, gen: u32) {
        self.drop_oldest_write(slot, gen, deadline);
    }

    /// Drops the resource's oldest write if its window ended by `deadline`.
    fn drop_oldest_write(&mut self, slot: u32, gen: u32, deadline: u64) -> bool {
        let window = self.history_window_ns;
        let Some(state) = self.sym.resources.live_mut(slot, gen) else {
            return false;
        };
        match state.history.front() {
            Some(w) if w.time.saturating_add(window) <= deadline => {}
            _ => return false,
        }
        let w = state.history.pop_front().expect("front exists");
        if state.history.is_empty() && state.history.capacity() > 64 {
            state.history = VecDeque::new();
        }
        for c in [w.version, w.request, w.actor] {
            c.release(&mut self.sym.long);
        }
        self.audits.len -= 1;
        self.sym.resources.release(slot);
        true
    }
}
