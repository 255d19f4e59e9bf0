//! Turning a decision into a [`Finding`]: the evidence rendered back to strings, the
//! deterministic id, the one-sentence reason. The only place the engine allocates per
//! finding.
//!
//! Ids hash arrival-independent parts only (see "Finding ids" in `docs/CORRELATOR.md`).
//! When a span carries no ids at all, its event time joins the parts so that two such spans
//! of one request on one resource do not collapse into one finding.

use crate::checks::CheckRecord;
use crate::creates::PendingCreate;
use crate::engine::Engine;
use crate::item::{AuditItem, SpanItem};
use crate::resources::AuditWrite;
use toctou_schema::conventions::OPERATION_CREATE;
use toctou_schema::{finding_id, hex_id, AuditRef, Finding, FindingKind, SpanId, TraceId, UseRef};

/// What a use was found to be, with its evidence.
pub(crate) struct Verdict {
    pub kind: FindingKind,
    pub reason: String,
    pub intervening: Vec<AuditRef>,
    pub prior: Option<UseRef>,
}

fn human(ns: u64) -> String {
    crate::config::duration::format(std::time::Duration::from_nanos(ns))
}

/// The id parts naming one span: its trace and span ids, or its time when it has neither.
fn span_parts(trace: &TraceId, span: &SpanId, time: u64) -> (String, String, Option<String>) {
    let (t, s) = (hex_id(trace), hex_id(span));
    let time = (t.is_empty() && s.is_empty()).then(|| time.to_string());
    (t, s, time)
}

fn id_for(
    kind: FindingKind,
    resource: &str,
    request: &str,
    span: &(String, String, Option<String>),
) -> String {
    let (t, s, time) = span;
    match time {
        Some(time) => finding_id(kind, &[resource, request, t, s, time]),
        None => finding_id(kind, &[resource, request, t, s]),
    }
}

impl Engine {
    /// Counts and emits a finding decided by the event (or timer) at `event_time`.
    pub(crate) fn emit(&mut self, finding: Finding, event_time: u64, out: &mut Vec<Finding>) {
        self.stats.count_finding(finding.kind);
        self.stats
            .detection_latency
            .observe_ns(self.now.saturating_sub(event_time));
        out.push(finding);
    }

    fn check_policy(&self, check: Option<&CheckRecord>) -> (Option<String>, Option<String>) {
        match check {
            Some(c) => {
                let p = self.sym.profile(c.profile);
                (
                    p.policy.as_deref().map(str::to_owned),
                    p.policy_version.as_deref().map(str::to_owned),
                )
            }
            None => (None, None),
        }
    }

    /// A finding about a use (every kind but `orphan_check` and `partial_create`).
    pub(crate) fn use_finding(
        &self,
        s: &SpanItem,
        check: Option<&CheckRecord>,
        v: Verdict,
    ) -> Finding {
        let long = &self.sym.long;
        let resource = self.sym.resource_name(s.resource).to_owned();
        let profile = self.sym.profile(s.profile);
        let request_id = s.request.to_string_or_empty(long);
        let parts = span_parts(&s.trace, &s.span, s.start_ns);
        let id = id_for(v.kind, &resource, &request_id, &parts);
        let (policy, policy_version) = self.check_policy(check);
        let (trace_id, use_span_id, _) = parts;
        Finding {
            id,
            kind: v.kind,
            severity: v.kind.severity(),
            service: profile.service.to_string(),
            operation: profile.operation.to_string(),
            resource,
            request_id,
            trace_id,
            check_span_id: check.map(|c| hex_id(&c.span)).unwrap_or_default(),
            check_time_ns: check.map(|c| c.time),
            use_span_id,
            use_time_ns: Some(s.start_ns),
            race_window_ns: check.map(|c| s.start_ns.saturating_sub(c.time)),
            checked_version: check.and_then(|c| c.version.to_string_opt(long)),
            used_version: s.version.to_string_opt(long),
            check_source: check.and_then(|c| c.source),
            idempotency_key: s
                .idem
                .to_string_opt(long)
                .or_else(|| check.and_then(|c| c.idem.to_string_opt(long))),
            policy,
            policy_version,
            intervening: v.intervening,
            prior_use: v.prior,
            reason: v.reason,
            event_time_ns: s.start_ns,
            detected_at_ns: self.now,
            inferred: None,
        }
    }

    /// An allowing check that left the tombstones never used.
    pub(crate) fn orphan_finding(&self, c: &CheckRecord, at: u64, evicted: bool) -> Finding {
        let long = &self.sym.long;
        let kind = FindingKind::OrphanCheck;
        let resource = self.sym.resource_name(c.resource).to_owned();
        let profile = self.sym.profile(c.profile);
        let request_id = c.request.to_string_or_empty(long);
        let parts = span_parts(&c.trace, &c.span, c.time);
        let id = id_for(kind, &resource, &request_id, &parts);
        let (policy, policy_version) = self.check_policy(Some(c));
        let (trace_id, check_span_id, _) = parts;
        let reason = if evicted {
            "allowing check had no use by its request when it was evicted early (tombstones full)"
                .to_string()
        } else {
            format!(
                "allowing check had no use by its request within {} (pair ttl, then tombstone)",
                human(2 * self.ttl_ns)
            )
        };
        Finding {
            id,
            kind,
            severity: kind.severity(),
            service: profile.service.to_string(),
            operation: profile.operation.to_string(),
            resource,
            request_id,
            trace_id,
            check_span_id,
            check_time_ns: Some(c.time),
            use_span_id: String::new(),
            use_time_ns: None,
            race_window_ns: None,
            checked_version: c.version.to_string_opt(long),
            used_version: None,
            check_source: c.source,
            idempotency_key: c.idem.to_string_opt(long),
            policy,
            policy_version,
            intervening: Vec::new(),
            prior_use: None,
            reason,
            event_time_ns: at,
            detected_at_ns: self.now,
            inferred: None,
        }
    }

    fn audit_ref(&self, resource: &str, w: &AuditWrite) -> AuditRef {
        w.to_ref(resource, &self.sym.long)
    }

    /// A create that saw no finalize (or delete) within the pair TTL.
    pub(crate) fn partial_create_finding(
        &self,
        resource: u32,
        pc: &PendingCreate,
        at: u64,
        evicted: bool,
    ) -> Finding {
        let long = &self.sym.long;
        let kind = FindingKind::PartialCreate;
        let name = self.sym.resource_name(resource).to_owned();
        let profile = self.sym.profile(pc.profile);
        let request_id = pc.request.to_string_or_empty(long);
        let id = finding_id(kind, &[&name, &request_id, &pc.time.to_string()]);
        let intervening: Vec<AuditRef> =
            pc.audit.iter().map(|w| self.audit_ref(&name, w)).collect();
        let operation = if profile.operation.is_empty() {
            OPERATION_CREATE.to_string()
        } else {
            profile.operation.to_string()
        };
        let reason = if evicted {
            "create was still unfinished when evicted early (pending creates full)".to_string()
        } else {
            format!(
                "create saw no finalize or delete within {} (pair ttl)",
                human(self.ttl_ns)
            )
        };
        Finding {
            id,
            kind,
            severity: kind.severity(),
            service: profile.service.to_string(),
            operation,
            resource: name,
            request_id,
            trace_id: hex_id(&pc.trace),
            check_span_id: String::new(),
            check_time_ns: None,
            use_span_id: hex_id(&pc.span),
            use_time_ns: pc.use_time,
            race_window_ns: None,
            checked_version: None,
            used_version: pc
                .audit
                .as_ref()
                .and_then(|w| w.version.to_string_opt(long)),
            check_source: None,
            idempotency_key: None,
            policy: None,
            policy_version: None,
            intervening,
            prior_use: None,
            reason,
            event_time_ns: at,
            detected_at_ns: self.now,
            inferred: None,
        }
    }

    /// An audit `create` by another known request while a create is pending.
    pub(crate) fn audit_duplicate_finding(&self, a: &AuditItem, prior: UseRef) -> Finding {
        let long = &self.sym.long;
        let kind = FindingKind::DuplicateUse;
        let name = self.sym.resource_name(a.resource).to_owned();
        let request_id = a.request.to_string_or_empty(long);
        let source = a
            .source_id
            .to_string_opt(long)
            .unwrap_or_else(|| a.time.to_string());
        let id = finding_id(kind, &[&name, &request_id, &source]);
        let audit = AuditRef {
            action: a.action,
            resource: name.clone(),
            version: a.version.to_string_opt(long),
            request_id: a.request.to_string_opt(long),
            actor: a.actor.to_string_opt(long),
            time_ns: a.time,
        };
        let reason = format!(
            "request {request_id} created the resource again, already created by request {}",
            prior.request_id
        );
        Finding {
            id,
            kind,
            severity: kind.severity(),
            service: self.sym.profile(a.profile).service.to_string(),
            operation: OPERATION_CREATE.to_string(),
            resource: name,
            request_id,
            trace_id: hex_id(&a.trace),
            check_span_id: String::new(),
            check_time_ns: None,
            use_span_id: String::new(),
            use_time_ns: Some(a.time),
            race_window_ns: None,
            checked_version: None,
            used_version: a.version.to_string_opt(long),
            check_source: None,
            idempotency_key: None,
            policy: None,
            policy_version: None,
            intervening: vec![audit],
            prior_use: Some(prior),
            reason,
            event_time_ns: a.time,
            detected_at_ns: self.now,
            inferred: None,
        }
    }
}
