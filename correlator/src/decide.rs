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
use crate::resources::{evidence, same_version, staleness, OwnWrite, Pair, Staleness};
use crate::waiting::{Prior, WaitingUse};
use toctou_schema::{hex_id, AuditAction, Decision, Finding, FindingKind, UseOutcome, UseRef};

enum Stale {
    Yes(Verdict),
    No,
    /// Evidence incomplete: counted as indeterminate, never a finding.
    Undecided,
}

/// The `duplicate_use` verdict of a use whose prior is `p`.
fn duplicate(p: Prior) -> Verdict {
    let (reason, prior) = match p {
        Prior::Key(p) => (
            format!(
                "idempotency key already used by request {} for the same operation",
                p.request_id
            ),
            p,
        ),
        Prior::Create(p) => (
            format!("resource already created by request {}", p.request_id),
            p,
        ),
    };
    Verdict {
        kind: FindingKind::DuplicateUse,
        reason,
        intervening: Vec::new(),
        prior: Some(prior),
    }
}

/// What the reason adds when the evidence lists only `shown` of `n` entries (see
/// [`evidence`]: capped in count and in bytes).
fn listed(n: usize, shown: usize) -> String {
    if n > shown {
        format!(" (first {shown} listed, {} left out)", n - shown)
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

    /// A use, processed at `placed_at` (its start, or its arrival when its clock is ahead).
    pub(crate) fn on_use(
        &mut self,
        s: SpanItem,
        ident: [u64; 2],
        placed_at: u64,
        out: &mut Vec<Finding>,
    ) {
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
                    let check = self.checks.table.get(slot);
                    let (profile, check_time) = (check.profile, check.time);
                    // Refused: it did not act, so its time is its start.
                    let mut v =
                        self.policy_drift(profile, check_time, use_time)
                            .unwrap_or(Verdict {
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
            UseOutcome::Ok => return self.on_successful_use(s, matched, placed_at, out),
        }
        s.release(&mut self.sym);
    }

    /// Registers what a successful use made (its idempotency key, its create) at its start,
    /// so that later uses see it, and decides it at once when its check alone decides it
    /// (`unchecked_use`); otherwise it waits for its write (`waiting`).
    fn on_successful_use(
        &mut self,
        s: SpanItem,
        matched: Option<u32>,
        placed_at: u64,
        out: &mut Vec<Finding>,
    ) {
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
            if let Some(p) = self.create_from_use(&s, out) {
                prior = prior.or(Some(Prior::Create(p)));
            }
        }
        let unchecked = match matched {
            None => Some("use has no check by the same request on the resource before it"),
            Some(slot) if self.checks.table.get(slot).decision == Decision::Deny => {
                Some("use went ahead although its check denied")
            }
            Some(_) => None,
        };
        if let Some(reason) = unchecked {
            let v = Verdict {
                kind: FindingKind::UncheckedUse,
                reason: reason.into(),
                intervening: Vec::new(),
                prior: None,
            };
            let check = matched.map(|slot| self.checks.table.get(slot));
            let f = self.use_finding(&s, check, v);
            self.emit(f, s.start_ns, out);
            s.release(&mut self.sym);
            return;
        }
        let slot = matched.expect("unchecked handled above");
        let check = self.checks.table.get(slot);
        let profile = self.sym.profile(check.profile);
        if profile.policy.is_none() || profile.policy_version.is_none() {
            // No policy to judge at the write's time: a duplicate is one whatever happens
            // while the use runs, and versions that agree are fresh whatever it wrote on.
            // Decided now, the usual case, without waiting.
            if let Some(p) = prior {
                let f = self.use_finding(&s, Some(check), duplicate(p));
                self.emit(f, s.start_ns, out);
                s.release(&mut self.sym);
                return;
            }
            if !check.version.is_none() && same_version(&check.version, &s.version, &self.sym.long)
            {
                s.release(&mut self.sym);
                return;
            }
        }
        let check = check.share(&mut self.sym);
        let w = WaitingUse {
            span: s,
            check,
            prior,
            placed_at,
            waited: false,
        };
        // Its end, measured from its place in the order (a fast clock's span keeps its
        // length, not its distance from the wall clock).
        let deadline = placed_at.saturating_add(w.end_ns() - w.span.start_ns);
        self.waiting.park(w, deadline);
        while self.waiting.len > self.config.max_pending {
            if !self.evict_oldest_waiting(out) {
                break;
            }
        }
    }

    /// Decides the waiting use due first now; false if none is waiting.
    pub(crate) fn evict_oldest_waiting(&mut self, out: &mut Vec<Finding>) -> bool {
        let Some((at, slot)) = self.waiting.timers.pop() else {
            return false;
        };
        self.stats.count_evicted(EvictedState::Use);
        self.decide_waiting(at, slot, true, out);
        true
    }

    /// Decision timer of a waiting use (or its early eviction): applies the rules that
    /// depend on what happened while it ran, with its own write (or its end) as its time.
    pub(crate) fn decide_waiting(
        &mut self,
        deadline: u64,
        slot: u32,
        evicted: bool,
        out: &mut Vec<Finding>,
    ) {
        let mut w = self.waiting.take(slot);
        let own = self.own_write(&w);
        if own.is_none() && !w.waited && !evicted && self.expects_own_write(&w) {
            // Its own audit record may carry a commit time after the span's end (another
            // clock, a commit after the span): wait for it, within the lateness.
            w.waited = true;
            let later = deadline.saturating_add(self.lateness_ns);
            self.waiting.park(w, later);
            return;
        }
        let effect = own.as_ref().map_or(w.end_ns(), |o| o.time);
        if let Some(v) = self.judge(&w, own.as_ref(), effect, deadline) {
            let mut f = self.use_finding(&w.span, Some(&w.check), v);
            // Decided now, in event time: what a Kafka hand-over compares with the committed
            // watermark to tell what the previous owner had already reported.
            f.event_time_ns = deadline;
            self.emit(f, deadline, out);
        }
        self.release_check(w.check);
        w.span.release(&mut self.sym);
    }

    /// Whether a use's verdict needs its own audit record: it lacks a version on either
    /// side (with both, the versions decide), and it has a request its record can name. The
    /// resource's history may still be empty here: its first write can be the use's own,
    /// committed after the span's end on the database's clock.
    fn expects_own_write(&self, w: &WaitingUse) -> bool {
        (w.check.version.is_none() || w.span.version.is_none()) && !w.span.request.is_none()
    }

    /// The use's own write: a write of the resource by the same request after its check,
    /// the first inside its span, else the nearest to it by commit time within the lateness
    /// (the earlier one on a tie).
    fn own_write(&self, w: &WaitingUse) -> Option<OwnWrite> {
        if w.span.request.is_none() {
            return None;
        }
        let long = &self.sym.long;
        let history = &self.sym.resources.value(w.span.resource).history;
        let (start, end) = (w.span.start_ns, w.end_ns());
        let checked = w.check.version.version_int(long);
        let own = |i: usize| {
            let a = &history[i];
            a.request == w.span.request
                && match (checked, a.version_int(long)) {
                    (Some(c), Some(v)) => v > c,
                    _ => a.time > w.check.time,
                }
        };
        // Inside the span first (the usual place: the first one there), then outwards from
        // it on each side, so a hot resource's history is read only as far as the nearest.
        let first_in = history.partition_point(|a| a.time < start);
        let after_end = history.partition_point(|a| a.time <= end);
        let found = (first_in..after_end).find(|&i| own(i)).or_else(|| {
            let earliest = start.saturating_sub(self.lateness_ns);
            let latest = end.saturating_add(self.lateness_ns);
            let before = (0..first_in)
                .rev()
                .take_while(|&i| history[i].time >= earliest)
                .find(|&i| own(i));
            let after = (after_end..history.len())
                .take_while(|&i| history[i].time <= latest)
                .find(|&i| own(i));
            match (before, after) {
                (Some(b), Some(a)) if history[a].time - end < start - history[b].time => Some(a),
                (Some(b), _) => Some(b),
                (None, a) => a,
            }
        })?;
        Some(OwnWrite {
            time: history[found].time,
            version: history[found].version_int(long),
        })
    }

    /// The single finding for a successful use that matched an allowing check: the first
    /// of `authz_drift`, `duplicate_use`, `stale_check` that applies, judged with the use
    /// taking effect at `effect`; `decided_at` is the event time of the decision.
    fn judge(
        &mut self,
        w: &WaitingUse,
        own: Option<&OwnWrite>,
        effect: u64,
        decided_at: u64,
    ) -> Option<Verdict> {
        if let Some(v) = self.policy_drift(w.check.profile, w.check.time, effect) {
            return Some(v);
        }
        if let Some(p) = &w.prior {
            return Some(duplicate(p.clone()));
        }
        // Writes after the check may have left the history before this decision (a use
        // that paired with an old tombstone and ran long): "fresh" cannot be trusted then.
        let complete = w.check.time.saturating_add(self.history_window_ns) >= decided_at;
        match self.stale_verdict(&w.span, &w.check, own, effect) {
            Stale::Yes(v) => Some(v),
            Stale::No if complete => None,
            Stale::No | Stale::Undecided => {
                self.stats.indeterminate += 1;
                None
            }
        }
    }

    fn stale_verdict(
        &self,
        s: &SpanItem,
        check: &CheckRecord,
        own: Option<&OwnWrite>,
        effect: u64,
    ) -> Stale {
        let long = &self.sym.long;
        let state = self.sym.resources.value(s.resource);
        let pair = Pair {
            check_time: check.time,
            use_time: effect,
            own_version: own.and_then(|o| o.version),
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
                let refs = evidence(
                    intervening
                        .iter()
                        .map(|&i| state.history[i].to_ref(resource, long)),
                );
                let shown = refs.len();
                let both = !check.version.is_none() && !s.version.is_none();
                let reason = if both {
                    let checked = check.version.to_string_or_empty(long);
                    let used = s.version.to_string_or_empty(long);
                    format!(
                        "use acted on version {used} but its check saw version {checked}; {n} write(s) by other requests in between{}",
                        listed(n, shown)
                    )
                } else {
                    format!(
                        "{n} write(s) by other requests committed between the check and the use{}",
                        listed(n, shown)
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
    fn policy_drift(&mut self, profile: u32, check_time: u64, use_time: u64) -> Option<Verdict> {
        let p = self.sym.profile(profile);
        let (Some(policy), Some(_)) = (p.policy.as_deref(), p.policy_version.as_deref()) else {
            return None;
        };
        let policy_slot = self.policies.find(policy)?;
        self.prune_policy(policy_slot);
        let profile = self.sym.profile(profile);
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
        let intervening = evidence(drifted.iter().map(|&i| changes[i].to_ref(policy, long)));
        let now_in_force = intervening
            .last()
            .and_then(|r| r.version.clone())
            .unwrap_or_default();
        Some(Verdict {
            kind: FindingKind::AuthzDrift,
            reason: format!(
                "check allowed under policy {policy} version {version}, but version {now_in_force} was in force before the use{}",
                listed(drifted.len(), intervening.len())
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
#[cfg(test)]
mod waiting_tests;
