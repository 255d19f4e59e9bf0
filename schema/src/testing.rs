//! Builders for tests and benchmarks (feature `test-util`): a check, a use, an audit
//! record or a finding in one line, with the fields a story does not care about filled the
//! same way everywhere. Times are milliseconds after [`BASE_NS`] ([`check`], [`use_`], [`audit`])
//! or nanoseconds ([`span_at`], [`audit_at`]); ids derive from the request and span, so that
//! a request's check and use share a trace and scenarios read like the stories they tell.

use crate::{
    AuditAction, AuditEvent, CheckSource, Decision, Event, Finding, FindingKind, Phase, Severity,
    SpanEvent, UseOutcome,
};
use xxhash_rust::xxh3::xxh3_128;

pub const BASE_NS: u64 = 1_700_000_000_000_000_000;

pub fn ms(t: u64) -> u64 {
    BASE_NS + t * 1_000_000
}

/// A trace id derived from the request, so a request's check and use share a trace.
pub fn trace_of(request: &str) -> [u8; 16] {
    xxh3_128(request.as_bytes()).to_be_bytes()
}

pub struct Span(pub SpanEvent);

/// A span of `phase` by `request` on `resource` at `at_ns`: a check ends there, a use starts
/// there; it lasts 1 ms.
pub fn span_at(phase: Phase, resource: &str, request: &str, at_ns: u64) -> Span {
    let id = xxh3_128(format!("{phase:?}/{resource}/{request}/{at_ns}").as_bytes()) as u64;
    // A check's time is its end, a use's its start.
    let (start_ns, end_ns) = match phase {
        Phase::Check => (at_ns - 1_000_000, at_ns),
        Phase::Use => (at_ns, at_ns + 1_000_000),
    };
    Span(SpanEvent {
        phase,
        resource: resource.into(),
        version: None,
        request_id: request.into(),
        trace_id: trace_of(request),
        span_id: id.to_be_bytes(),
        start_ns,
        end_ns,
        service: "shop".into(),
        operation: "reserve".into(),
        actor: "shop".into(),
        decision: Decision::Allow,
        source: None,
        policy: None,
        policy_version: None,
        idempotency_key: None,
        outcome: UseOutcome::Ok,
        permission_denied: false,
    })
}

fn span(phase: Phase, resource: &str, request: &str, at_ms: u64) -> Span {
    span_at(phase, resource, request, ms(at_ms))
}

/// A check by `request` on `resource`, ending at `at_ms`.
pub fn check(resource: &str, request: &str, at_ms: u64) -> Span {
    span(Phase::Check, resource, request, at_ms)
}

/// A use by `request` on `resource`, starting at `at_ms`.
pub fn use_(resource: &str, request: &str, at_ms: u64) -> Span {
    span(Phase::Use, resource, request, at_ms)
}

impl Span {
    /// A use whose span lasts `ms` from its start (a write that waited on a lock).
    pub fn lasting(mut self, ms: u64) -> Self {
        self.0.end_ns = self.0.start_ns + ms * 1_000_000;
        self
    }
    /// Lasting `ns`, kept at its time: a check's start moves, a use's end.
    pub fn lasting_ns(mut self, ns: u64) -> Self {
        match self.0.phase {
            Phase::Check => self.0.start_ns = self.0.end_ns - ns,
            Phase::Use => self.0.end_ns = self.0.start_ns + ns,
        }
        self
    }
    /// Sent by `service` (also its actor) as `operation`.
    pub fn service(mut self, service: &str, operation: &str) -> Self {
        self.0.service = service.into();
        self.0.actor = service.into();
        self.0.operation = operation.into();
        self
    }
    /// These trace and span ids (and the request id unchanged).
    pub fn ids(mut self, trace: [u8; 16], span: [u8; 8]) -> Self {
        self.0.trace_id = trace;
        self.0.span_id = span;
        self
    }
    pub fn version(mut self, v: &str) -> Self {
        self.0.version = Some(v.into());
        self
    }
    pub fn deny(mut self) -> Self {
        self.0.decision = Decision::Deny;
        self
    }
    pub fn source(mut self, s: CheckSource) -> Self {
        self.0.source = Some(s);
        self
    }
    pub fn policy(mut self, p: &str, v: &str) -> Self {
        self.0.policy = Some(p.into());
        self.0.policy_version = Some(v.into());
        self
    }
    pub fn key(mut self, k: &str) -> Self {
        self.0.idempotency_key = Some(k.into());
        self
    }
    pub fn op(mut self, o: &str) -> Self {
        self.0.operation = o.into();
        self
    }
    pub fn outcome(mut self, o: UseOutcome) -> Self {
        self.0.outcome = o;
        self
    }
    /// Failed with HTTP 403 / `PERMISSION_DENIED`.
    pub fn denied(mut self) -> Self {
        self.0.outcome = UseOutcome::Error;
        self.0.permission_denied = true;
        self
    }
    pub fn no_ids(mut self) -> Self {
        self.0.trace_id = [0; 16];
        self.0.span_id = [0; 8];
        self
    }
    /// The request id is the trace id (no `toctou.request_id`), as the collector renders it.
    pub fn request_is_trace(mut self) -> Self {
        self.0.request_id = crate::hex_id(&self.0.trace_id);
        self
    }
    pub fn ev(self) -> Event {
        Event::Span(self.0)
    }
}

pub struct Audit(pub AuditEvent);

/// An audit record of `action` on `resource`, committed at `at_ms`.
pub fn audit(action: AuditAction, resource: &str, at_ms: u64) -> Audit {
    audit_at(action, resource, ms(at_ms))
}

/// An audit record of `action` on `resource`, committed at `at_ns`, by the service `db`.
pub fn audit_at(action: AuditAction, resource: &str, at_ns: u64) -> Audit {
    Audit(AuditEvent {
        action,
        resource: resource.into(),
        version: None,
        request_id: None,
        actor: None,
        time_ns: at_ns,
        service: "db".into(),
        source_id: None,
        trace_id: [0; 16],
        span_id: [0; 8],
    })
}

impl Audit {
    pub fn version(mut self, v: &str) -> Self {
        self.0.version = Some(v.into());
        self
    }
    pub fn request(mut self, r: &str) -> Self {
        self.0.request_id = Some(r.into());
        self
    }
    pub fn actor(mut self, a: &str) -> Self {
        self.0.actor = Some(a.into());
        self
    }
    pub fn source(mut self, id: &str) -> Self {
        self.0.source_id = Some(id.into());
        self
    }
    pub fn ev(self) -> Event {
        Event::Audit(self.0)
    }
}

/// A finding of `kind` numbered `n` (its id, event and detection time), with no evidence.
pub fn finding(n: u64, kind: FindingKind) -> Finding {
    Finding {
        id: format!("{n:032x}"),
        kind,
        severity: Severity::High,
        service: "svc".into(),
        operation: "op".into(),
        resource: "r".into(),
        request_id: "q".into(),
        trace_id: String::new(),
        check_span_id: String::new(),
        check_time_ns: None,
        use_span_id: String::new(),
        use_time_ns: None,
        race_window_ns: None,
        checked_version: None,
        used_version: None,
        check_source: None,
        idempotency_key: None,
        policy: None,
        policy_version: None,
        intervening: vec![],
        prior_use: None,
        reason: String::new(),
        event_time_ns: n,
        detected_at_ns: n,
        inferred: None,
    }
}

/// A use with every optional field set, each to a value no other field has: what a wire
/// format's round trip must keep.
pub fn every_field_span() -> SpanEvent {
    SpanEvent {
        phase: Phase::Use,
        resource: "orders/42".into(),
        version: Some("7".into()),
        request_id: "req-1".into(),
        trace_id: [1; 16],
        span_id: [2; 8],
        start_ns: 1_700_000_000_000_000_001,
        end_ns: 1_700_000_000_000_000_002,
        service: "shop".into(),
        operation: "reserve".into(),
        actor: "alice".into(),
        decision: Decision::Deny,
        source: Some(CheckSource::Cache),
        policy: Some("acl".into()),
        policy_version: Some("v3".into()),
        idempotency_key: Some("key-9".into()),
        outcome: UseOutcome::Conflict,
        permission_denied: true,
    }
}

/// A policy change with every optional field set (see [`every_field_span`]).
pub fn every_field_audit() -> AuditEvent {
    AuditEvent {
        action: AuditAction::PolicyChange,
        resource: "acl".into(),
        version: Some("v4".into()),
        request_id: Some("req-2".into()),
        actor: Some("admin".into()),
        time_ns: 1_700_000_000_000_000_003,
        service: "iam".into(),
        source_id: Some("audit-5".into()),
        trace_id: [3; 16],
        span_id: [4; 8],
    }
}
