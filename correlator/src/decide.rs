//! The per-event decisions of `docs/CORRELATOR.md`: what a use is (at most one finding, by
//! precedence), what an audit record changes.
//!
//! Precedence is the order the rules are tried in [`Engine::judge`]: `unchecked_use`,
//! `authz_drift`, `duplicate_use`, `stale_check`; the first that applies is the finding.
//! Registrations (idempotency key, pending create) happen for every successful use, whatever
//! finding it gets, because the use took effect either way.

use crate::checks::CheckRecord;
use crate::dedupe::Seen;
use crate::engine::Engine;
use crate::item::{AuditItem, SpanItem};
use crate::keys::KeyedUse;
use crate::metrics::EvictedState;
use crate::report::Verdict;
use crate::resources::{staleness, Pair, Staleness, MAX_EVIDENCE};
use toctou_schema::{hex_id, AuditAction, Decision, Finding, FindingKind, UseOutcome, UseRef};

/// An earlier use this one duplicates.
enum Prior {
    Key(UseRef),
    Create(UseRef),
}

enum Stale {
    Yes(Verdict),
    No,
    /// Evidence incomplete: counted as indeterminate, never a finding.
    Undecided,
}

fn listed(n: usize) -> String {
    if n > MAX_EVIDENCE {
        format!(" (first {MAX_EVIDENCE} listed)")
    } else {
        String::new()
    }
}

impl Engine {
    /// Remembers a use's or audit record's identity; true if it is a redelivery.
    fn redelivered(&mut self, ident: [u64; 2], time: u64) -> bool {
        self.dedupe.expire(self.clock);
        match self.dedupe.observe(ident, time) {
            Seen::Duplicate => {
                self.stats.duplicate_events += 1;
                true
            }
            Seen::New { evicted } => {
                if evicted {
                    self.stats.count_evicted(EvictedState::Dedupe);
                }
                false
            }
        }
    }

    pub(crate) fn on_use(&mut self, s: SpanItem, ident: [u64; 2], out: &mut Vec<Finding>) {
        let use_time = s.start_ns;
        if self.redelivered(ident, use_time) {
            s.release(&mut self.sym);
            return;
        }
        // The latest check of the same request on the resource, at or before the use.
        let mut matched = None;
        if let Some(slot) = self.checks.find(s.resource, &s.request) {
            let rec = self.checks.table.get(slot);
            if rec.time <= use_time {
                matched = Some(slot);
            } else if rec.superseded_earlier {
                // A late use from before a retry: the check it followed was replaced, so
                // which one it paired with is unknown. Not guessed at.
                self.stats.pairs += 1;
                self.stats.indeterminate += 1;
                s.release(&mut self.sym);
                return;
            }
        }
        if let Some(slot) = matched {
            let rec = self.checks.table.get_mut(slot);
            rec.used = true;
            let window = use_time.saturating_sub(rec.time);
            self.stats.pairs += 1;
            self.stats.race_window.observe_ns(window);
        }
        // A permission-denied status means the use did not act, whatever else it says.
        let outcome = match s.outcome {
            UseOutcome::Ok if s.permission_denied => UseOutcome::Error,
            o => o,
        };
        match outcome {
            UseOutcome::Conflict => {
                self.stats.prevented_races += 1;
            }
            UseOutcome::Error => {
                let allowed = matched
                    .map(|slot| self.checks.table.get(slot).decision == Decision::Allow)
                    .unwrap_or(false);
                if s.permission_denied && allowed {
                    let slot = matched.expect("allowed implies matched");
                    let mut v = self.policy_drift(slot, use_time).unwrap_or(Verdict {
                        kind: FindingKind::AuthzDrift,
                        reason: String::new(),
                        intervening: Vec::new(),
                        prior: None,
                    });
                    v.reason = "use was denied by permission after its check allowed it".into();
                    let f = self.use_finding(&s, Some(self.checks.table.get(slot)), v);
                    self.emit(f, use_time, out);
                }
            }
            UseOutcome::Ok => self.on_successful_use(&s, matched, out),
        }
        s.release(&mut self.sym);
    }

    fn on_successful_use(&mut self, s: &SpanItem, matched: Option<u32>, out: &mut Vec<Finding>) {
        let mut prior = None;
        if !s.idem.is_none() {
            let operation = self.sym.profile(s.profile).operation.clone();
            let first = self.register_key(KeyedUse {
                operation: &operation,
                key: &s.idem,
                request: &s.request,
                trace: s.trace,
                span: s.span,
                time: s.start_ns,
            });
            prior = first.map(|slot| {
                let k = self.keys.table.get(slot);
                Prior::Key(UseRef {
                    request_id: k.request.to_string_or_empty(&self.sym.long),
                    trace_id: hex_id(&k.trace),
                    span_id: hex_id(&k.span),
                    time_ns: k.time,
                })
            });
        }
        if self.sym.profile(s.profile).is_create {
            if let Some(p) = self.create_from_use(s, out) {
                prior = prior.or(Some(Prior::Create(p)));
            }
        }
        if let Some(v) = self.judge(s, matched, prior) {
            let check = matched.map(|slot| self.checks.table.get(slot));
            let f = self.use_finding(s, check, v);
            self.emit(f, s.start_ns, out);
        }
    }

    /// The single finding for a successful use, first rule that applies.
    fn judge(
        &mut self,
        s: &SpanItem,
        matched: Option<u32>,
        prior: Option<Prior>,
    ) -> Option<Verdict> {
        let verdict = |kind, reason: String| Verdict {
            kind,
            reason,
            intervening: Vec::new(),
            prior: None,
        };
        let Some(slot) = matched else {
            return Some(verdict(
                FindingKind::UncheckedUse,
                "use has no check by the same request on the resource before it".into(),
            ));
        };
        if self.checks.table.get(slot).decision == Decision::Deny {
            return Some(verdict(
                FindingKind::UncheckedUse,
                "use went ahead although its check denied".into(),
            ));
        }
        if let Some(v) = self.policy_drift(slot, s.start_ns) {
            return Some(v);
        }
        match prior {
            Some(Prior::Key(p)) => {
                let mut v = verdict(
                    FindingKind::DuplicateUse,
                    format!(
                        "idempotency key already used by request {} for the same operation",
                        p.request_id
                    ),
                );
                v.prior = Some(p);
                return Some(v);
            }
            Some(Prior::Create(p)) => {
                let mut v = verdict(
                    FindingKind::DuplicateUse,
                    format!("resource already created by request {}", p.request_id),
                );
                v.prior = Some(p);
                return Some(v);
            }
            None => {}
        }
        match self.stale_verdict(s, self.checks.table.get(slot)) {
            Stale::Yes(v) => Some(v),
            Stale::No => None,
            Stale::Undecided => {
                self.stats.indeterminate += 1;
                None
            }
        }
    }

    fn stale_verdict(&self, s: &SpanItem, check: &CheckRecord) -> Stale {
        let long = &self.sym.long;
        let state = self.sym.resources.value(s.resource);
        let pair = Pair {
            check_time: check.time,
            use_time: s.start_ns,
            checked: &check.version,
            used: &s.version,
            request: &s.request,
        };
        match staleness(state, &pair, long) {
            Staleness::Fresh => Stale::No,
            Staleness::Indeterminate => Stale::Undecided,
            Staleness::Stale { intervening } => {
                let resource = self.sym.resource_name(s.resource);
                let n = intervening.len();
                let refs = intervening
                    .iter()
                    .take(MAX_EVIDENCE)
                    .map(|&i| state.history[i].to_ref(resource, long))
                    .collect();
                let both = !check.version.is_none() && !s.version.is_none();
                let reason = if both {
                    let checked = check.version.to_string_or_empty(long);
                    let used = s.version.to_string_or_empty(long);
                    format!(
                        "use acted on version {used} but its check saw version {checked}; {n} write(s) by other requests in between{}",
                        listed(n)
                    )
                } else {
                    format!(
                        "{n} write(s) by other requests committed between the check and the use{}",
                        listed(n)
                    )
                };
                Stale::Yes(Verdict {
                    kind: FindingKind::StaleCheck,
                    reason,
                    intervening: refs,
                    prior: None,
                })
            }
        }
    }

    /// The `authz_drift` rule for a check that named a policy and its version.
    fn policy_drift(&mut self, slot: u32, use_time: u64) -> Option<Verdict> {
        let check = self.checks.table.get(slot);
        let profile = self.sym.profile(check.profile);
        let (Some(policy), Some(_)) =
            (profile.policy.as_deref(), profile.policy_version.as_deref())
        else {
            return None;
        };
        let policy_slot = self.policies.find(policy)?;
        let check_time = check.time;
        self.prune_policy(policy_slot);
        let check = self.checks.table.get(slot);
        let profile = self.sym.profile(check.profile);
        let policy = profile.policy.as_deref().expect("checked above");
        let version = profile.policy_version.as_deref().expect("checked above");
        let long = &self.sym.long;
        let drifted = self
            .policies
            .drift(policy_slot, version, check_time, use_time, long);
        if drifted.is_empty() {
            return None;
        }
        let changes = &self.policies.table.get(policy_slot).changes;
        let intervening: Vec<_> = drifted
            .iter()
            .take(MAX_EVIDENCE)
            .map(|&i| changes[i].to_ref(policy, long))
            .collect();
        let now_in_force = intervening
            .last()
            .and_then(|r| r.version.clone())
            .unwrap_or_default();
        Some(Verdict {
            kind: FindingKind::AuthzDrift,
            reason: format!(
                "check allowed under policy {policy} version {version}, but version {now_in_force} was in force before the use{}",
                listed(drifted.len())
            ),
            intervening,
            prior: None,
        })
    }

    pub(crate) fn on_audit(&mut self, a: AuditItem, ident: [u64; 2], out: &mut Vec<Finding>) {
        if self.redelivered(ident, a.time) {
            a.release(&mut self.sym);
            return;
        }
        match a.action {
            AuditAction::PolicyChange => self.record_policy_change(&a),
            action => {
                self.record_write(&a);
                match action {
                    AuditAction::Create => self.create_from_audit(&a, out),
                    AuditAction::Finalize => self.finalize_create(a.resource),
                    AuditAction::Delete => self.clear_create(a.resource),
                    _ => {}
                }
            }
        }
        a.release(&mut self.sym);
    }
}

#[cfg(test)]
mod ordering_tests;
#[cfg(test)]
mod tests;
