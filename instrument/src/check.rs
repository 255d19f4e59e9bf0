//! Check spans: the read a decision is based on, and the decision (`toctou.phase` = `check`).
//!
//! A [`Check`] is in progress from [`check`](crate::check) until its decision; deciding
//! ([`Check::allow`], [`Check::deny`]) records the span and returns a [`Checked`], which
//! carries what its uses need: the resource, the request id and the request's context.

use crate::request::{now, RequestScope};
use crate::use_span::Use;
use opentelemetry::trace::{SpanContext, Status, Tracer};
use opentelemetry::{Context, KeyValue};
use std::borrow::Cow;
use std::fmt::Display;
use std::time::SystemTime;
use toctou_schema::conventions as c;

/// Where the checked state was read (`toctou.check.source`): carried into the finding,
/// since a stale check read from a replica or a cache points at the fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The system of record itself.
    Primary,
    /// A read replica, possibly behind the primary.
    Replica,
    /// A cache in front of the system of record.
    Cache,
}

impl Source {
    /// The attribute value the conventions define.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Primary => "primary",
            Source::Replica => "replica",
            Source::Cache => "cache",
        }
    }
}

/// What a check decided (`toctou.check.decision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The action may go ahead: a use is expected (else an `orphan_check`).
    Allow,
    /// The action is refused: a use after it is an `unchecked_use`; never an orphan.
    Deny,
}

impl Decision {
    /// The attribute value the conventions define.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// A check in progress. Its start time is taken when it is created, its end (the check's
/// event time) when it is decided; the span is recorded then, with every attribute, so a
/// sampler sees the version and the decision too.
///
/// Dropped without a decision (an early return or `?` while reading), it is recorded as a
/// failed check that denied: nothing was allowed, so it can never become an orphan, and a
/// use that follows it anyway is reported as unchecked.
#[must_use = "a check is recorded when it is decided: call allow(), deny() or decide()"]
pub struct Check<'t, T: Tracer> {
    inner: Option<Inner<'t, T>>,
}

struct Inner<'t, T: Tracer> {
    scope: RequestScope<'t, T>,
    name: Cow<'static, str>,
    started: SystemTime,
    attributes: Vec<KeyValue>,
    version: Option<String>,
}

impl<'t, T: Tracer> Check<'t, T> {
    pub(crate) fn new(tracer: &'t T, resource: String) -> Self {
        Check {
            inner: Some(Inner {
                scope: RequestScope::new(tracer, resource),
                name: Cow::Borrowed("check"),
                started: now(),
                attributes: Vec::new(),
                version: None,
            }),
        }
    }

    fn inner(&mut self) -> &mut Inner<'t, T> {
        // Only `finish` takes it, and `finish` consumes the check.
        self.inner.as_mut().expect("a check is decided only once")
    }

    fn with(mut self, f: impl FnOnce(&mut Inner<'t, T>)) -> Self {
        f(self.inner());
        self
    }

    /// The version the read observed (`toctou.resource.version`), sent as a string.
    pub fn version(self, version: impl Display) -> Self {
        self.with(|i| i.version = Some(version.to_string()))
    }

    /// Where the state was read (`toctou.check.source`).
    pub fn source(self, source: Source) -> Self {
        self.with(|i| {
            i.attributes
                .push(KeyValue::new(c::CHECK_SOURCE, source.as_str()))
        })
    }

    /// The request id joining this check to its uses (`toctou.request_id`). Without it, the
    /// trace id of the request's context stands in, as the conventions say; set it whenever
    /// the use can run in another trace (a queue, a retry, a callback).
    pub fn request_id(self, id: impl Into<String>) -> Self {
        self.with(|i| i.scope.request_id = Some(id.into()))
    }

    /// The operation the check guards (`toctou.operation`); low cardinality.
    pub fn operation(self, operation: impl Into<Cow<'static, str>>) -> Self {
        self.with(|i| i.scope.operation = Some(operation.into()))
    }

    /// An authorization check: the policy evaluated and its version (`toctou.policy`,
    /// `toctou.policy.version`), matching the `policy_change` audit records of that policy.
    pub fn policy(self, policy: impl Into<String>, version: impl Display) -> Self {
        self.with(|i| {
            i.attributes.push(KeyValue::new(c::POLICY, policy.into()));
            i.attributes
                .push(KeyValue::new(c::POLICY_VERSION, version.to_string()));
        })
    }

    /// The idempotency key of the request (`toctou.idempotency_key`); its uses carry it too.
    pub fn idempotency_key(self, key: impl Into<String>) -> Self {
        self.with(|i| i.scope.idempotency_key = Some(key.into()))
    }

    /// Who acts (`toctou.actor`); toctou takes the service name when absent.
    pub fn actor(self, actor: impl Into<String>) -> Self {
        self.with(|i| i.attributes.push(KeyValue::new(c::ACTOR, actor.into())))
    }

    /// The request's context, parent of the check span and of its uses. Defaults to
    /// `Context::current()` at the time [`check`](crate::check) was called.
    pub fn context(self, cx: &Context) -> Self {
        self.with(|i| i.scope.parent = cx.clone())
    }

    /// The span's name (default `check`); low cardinality, like any span name.
    pub fn name(self, name: impl Into<Cow<'static, str>>) -> Self {
        self.with(|i| i.name = name.into())
    }

    /// Overrides the start time taken at creation (for a read timed elsewhere).
    pub fn started_at(self, at: SystemTime) -> Self {
        self.with(|i| i.started = at)
    }

    /// The check allows the action: records the span, returns what its uses need.
    pub fn allow(self) -> Checked<'t, T> {
        self.decide(true)
    }

    /// The check refuses the action: records the span.
    pub fn deny(self) -> Checked<'t, T> {
        self.decide(false)
    }

    /// Allows when `allowed`, else denies.
    pub fn decide(mut self, allowed: bool) -> Checked<'t, T> {
        let decision = if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        };
        let inner = self.inner.take().expect("a check is decided only once");
        inner.finish(decision, None)
    }
}

impl<'t, T: Tracer> Inner<'t, T> {
    fn finish(mut self, decision: Decision, status: Option<Status>) -> Checked<'t, T> {
        let mut attributes = vec![
            KeyValue::new(c::PHASE, "check"),
            KeyValue::new(c::RESOURCE, self.scope.resource.clone()),
            KeyValue::new(c::CHECK_DECISION, decision.as_str()),
        ];
        if let Some(v) = self.version.take() {
            attributes.push(KeyValue::new(c::RESOURCE_VERSION, v));
        }
        attributes.append(&mut self.attributes);
        let span_context = self
            .scope
            .record(self.name, self.started, attributes, status, now());
        Checked {
            scope: self.scope,
            decision,
            span_context,
        }
    }
}

impl<T: Tracer> Drop for Check<'_, T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.finish(
                Decision::Deny,
                Some(Status::error("check ended without a decision")),
            );
        }
    }
}

/// A decided check: what its uses need to pair with it. One check may be followed by
/// several uses of its request ([`Checked::use_`] borrows it).
pub struct Checked<'t, T: Tracer> {
    scope: RequestScope<'t, T>,
    decision: Decision,
    span_context: SpanContext,
}

impl<'t, T: Tracer> Checked<'t, T> {
    /// Starts the use of this check: a sibling of the check span (same parent context),
    /// same resource, request id, operation and idempotency key. Its start is the use's
    /// event time, so call it right before the write (under the write's lock, if any).
    /// After a denied check it is still recorded, and reported as an `unchecked_use`.
    pub fn use_(&self, operation: impl Into<Cow<'static, str>>) -> Use<'t, T> {
        let mut scope = self.scope.clone();
        scope.operation = Some(operation.into());
        Use::new(scope)
    }

    /// The request id the check carried (explicit, or the trace id standing in for it).
    pub fn request_id(&self) -> &str {
        self.scope.request_id.as_deref().unwrap_or_default()
    }

    /// The resource checked.
    pub fn resource(&self) -> &str {
        &self.scope.resource
    }

    /// The decision recorded.
    pub fn decision(&self) -> Decision {
        self.decision
    }

    /// Whether the check allowed the action.
    pub fn is_allowed(&self) -> bool {
        self.decision == Decision::Allow
    }

    /// The check span's own context (trace and span id), e.g. for a link.
    pub fn span_context(&self) -> &SpanContext {
        &self.span_context
    }

    /// The request's context: the parent of the check span and of its uses.
    pub fn context(&self) -> &Context {
        &self.scope.parent
    }
}
