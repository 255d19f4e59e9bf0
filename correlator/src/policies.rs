//! Policy histories: per policy name, the `policy_change` records of the last
//! `2 * pair_ttl + allowed_lateness`, plus the latest change before that window (the policy's
//! version in force at the window's start), for the `authz_drift` rule.
//!
//! Bounded by `max_policies`: beyond it, the policy whose latest change is oldest is
//! forgotten (counted). An ordered set of (latest change time, slot) finds it.

use crate::compact::{Compact, LongStrings, RenderBuf};
use crate::engine::Engine;
use crate::item::AuditItem;
use crate::metrics::EvictedState;
use crate::table::Table;
use hashbrown::DefaultHashBuilder;
use std::collections::{BTreeSet, VecDeque};
use std::hash::BuildHasher;
use toctou_schema::{AuditAction, AuditRef, Version};

pub(crate) struct PolicyChange {
    pub time: u64,
    pub version: Compact,
    pub request: Compact,
    pub actor: Compact,
}

impl PolicyChange {
    pub fn to_ref(&self, policy: &str, long: &LongStrings) -> AuditRef {
        AuditRef {
            action: AuditAction::PolicyChange,
            resource: policy.to_owned(),
            version: self.version.to_string_opt(long),
            request_id: self.request.to_string_opt(long),
            actor: self.actor.to_string_opt(long),
            time_ns: self.time,
        }
    }
}

pub(crate) struct PolicyState {
    pub name: Box<str>,
    /// Sorted by commit time.
    pub changes: VecDeque<PolicyChange>,
}

fn rehash(b: &DefaultHashBuilder, p: &PolicyState) -> u64 {
    b.hash_one(&*p.name)
}

pub(crate) struct Policies {
    pub table: Table<PolicyState>,
    by_latest: BTreeSet<(u64, u32)>,
}

impl Policies {
    pub fn new() -> Policies {
        Policies {
            table: Table::new(rehash),
            by_latest: BTreeSet::new(),
        }
    }

    pub fn find(&self, name: &str) -> Option<u32> {
        self.table.find(self.table.hash(name), |p| &*p.name == name)
    }

    /// Drops changes that left the window, keeping the latest one before it.
    fn prune(&mut self, slot: u32, clock: u64, window: u64, long: &mut LongStrings) {
        let changes = &mut self.table.get_mut(slot).changes;
        while changes.len() >= 2 && changes[1].time.saturating_add(window) < clock {
            let c = changes.pop_front().expect("two or more");
            for s in [c.version, c.request, c.actor] {
                s.release(long);
            }
        }
    }

    fn latest(&self, slot: u32) -> Option<u64> {
        self.table.get(slot).changes.back().map(|c| c.time)
    }

    /// Indices of the changes that make a check of policy version `checked` at
    /// `check_time` drifted by `use_time` (see the `authz_drift` rule).
    pub fn drift(
        &self,
        slot: u32,
        checked: &str,
        check_time: u64,
        use_time: u64,
        long: &LongStrings,
    ) -> Vec<usize> {
        let changes = &self.table.get(slot).changes;
        let checked = Version(checked);
        // A change with no version is not guessed at.
        let other_version = |c: &PolicyChange| -> Option<bool> {
            let mut buf: RenderBuf = [0; 36];
            let v = c.version.as_str(long, &mut buf)?;
            if v == checked.0 {
                return Some(false);
            }
            let v = Version(v);
            let differs = !v.same(&checked);
            // Where both are integers, only a newer version counts as the one in force.
            let newer = match (v.as_int(), checked.as_int()) {
                (Some(a), Some(b)) => a > b,
                _ => true,
            };
            Some(differs && newer)
        };
        let before_use = changes.partition_point(|c| c.time < use_time);
        let after_check = changes.partition_point(|c| c.time <= check_time);
        let mut found: Vec<usize> = (after_check..before_use)
            .filter(|&i| {
                let c = &changes[i];
                let mut buf: RenderBuf = [0; 36];
                c.version
                    .as_str(long, &mut buf)
                    .is_some_and(|v| !Version(v).same(&checked))
            })
            .collect();
        // The version in force before the use: drift if it is another, newer one (an older
        // one means the check saw changes that never reached us).
        if let Some(i) = before_use.checked_sub(1) {
            if other_version(&changes[i]) == Some(true) && !found.contains(&i) {
                found.push(i);
            }
        }
        found
    }
}

impl Engine {
    /// A `policy_change` audit record.
    pub(crate) fn record_policy_change(&mut self, a: &AuditItem) {
        let mut buf: RenderBuf = [0; 36];
        let Some(name) = a.policy.as_str(&self.sym.long, &mut buf) else {
            return;
        };
        let slot = match self.policies.find(name) {
            Some(slot) => slot,
            None => {
                let state = PolicyState {
                    name: name.into(),
                    changes: VecDeque::new(),
                };
                let hash = self.policies.table.hash(&*state.name);
                self.policies.table.insert(hash, state).slot
            }
        };
        if let Some(latest) = self.policies.latest(slot) {
            self.policies.by_latest.remove(&(latest, slot));
        }
        let change = PolicyChange {
            time: a.time,
            version: a.version.share(&mut self.sym.long),
            request: a.request.share(&mut self.sym.long),
            actor: a.actor.share(&mut self.sym.long),
        };
        let changes = &mut self.policies.table.get_mut(slot).changes;
        let at = changes.partition_point(|c| c.time <= change.time);
        changes.insert(at, change);
        let clock = self.clock.max(a.time);
        self.policies
            .prune(slot, clock, self.history_window_ns, &mut self.sym.long);
        let latest = self.policies.latest(slot).expect("just added");
        self.policies.by_latest.insert((latest, slot));
        while self.policies.table.len() > self.config.max_policies {
            let Some((_, oldest)) = self.policies.by_latest.pop_first() else {
                break;
            };
            let state = self.policies.table.remove(oldest);
            for c in state.changes {
                for s in [c.version, c.request, c.actor] {
                    s.release(&mut self.sym.long);
                }
            }
            self.stats.count_evicted(EvictedState::Policy);
        }
    }

    /// Prunes a policy's history to the window before it is consulted.
    pub(crate) fn prune_policy(&mut self, slot: u32) {
        let clock = self.clock;
        self.policies
            .prune(slot, clock, self.history_window_ns, &mut self.sym.long);
    }
}
