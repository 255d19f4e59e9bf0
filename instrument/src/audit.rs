//! Audit records: a change committed by a system of record, as an OTLP log record with
//! `toctou.audit.action` (what toctou reads to find the writes between a check and a use,
//! policy changes, creates and finalizes).

use opentelemetry::logs::{LogRecord as _, Logger, Severity};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use std::fmt::Display;
use std::time::SystemTime;
use toctou_schema::conventions as c;

/// What was committed (`toctou.audit.action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The resource was created (opens a pending create; a second one is a duplicate).
    Create,
    /// The resource changed (can make a check stale).
    Update,
    /// The resource was deleted (also closes a pending create).
    Delete,
    /// A created resource is fully provisioned (closes a pending create).
    Finalize,
    /// A policy changed: the resource is the policy name, the version its new version.
    PolicyChange,
}

impl Action {
    /// The attribute value the conventions define.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Finalize => "finalize",
            Action::PolicyChange => "policy_change",
        }
    }
}

/// An audit record being built; [`Audit::emit`] sends it.
#[must_use = "an audit record is sent by emit()"]
pub struct Audit<'l, L: Logger> {
    logger: &'l L,
    action: Action,
    resource: String,
    version: Option<String>,
    request_id: Option<String>,
    actor: Option<String>,
    at: Option<SystemTime>,
    context: Option<Context>,
}

impl<'l, L: Logger> Audit<'l, L> {
    pub(crate) fn new(logger: &'l L, action: Action, resource: String) -> Self {
        Audit {
            logger,
            action,
            resource,
            version: None,
            request_id: None,
            actor: None,
            at: None,
            context: None,
        }
    }

    /// The version **after** the change (for a `policy_change`, the new policy version).
    pub fn version(mut self, version: impl Display) -> Self {
        self.version = Some(version.to_string());
        self
    }

    /// The request that made the change. Without it (and without a request context, see
    /// [`Audit::context`]) the write counts as another request's for every check.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Who made the change (`toctou.actor`).
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// The commit time (default: when `emit` is called). toctou takes it as the record's
    /// event time, so give the real commit time when the record is sent later (an outbox).
    pub fn at(mut self, commit_time: SystemTime) -> Self {
        self.at = Some(commit_time);
        self
    }

    /// The request's context (default: `Context::current()`): when it has a span, the record
    /// carries its trace context, and its trace id stands in for a missing request id.
    pub fn context(mut self, cx: &Context) -> Self {
        self.context = Some(cx.clone());
        self
    }

    /// Sends the record through the logger's processors.
    pub fn emit(self) {
        let cx = self.context.unwrap_or_else(Context::current);
        let span = cx.span();
        let span_context = span.span_context();
        let request_id = self.request_id.or_else(|| {
            span_context
                .is_valid()
                .then(|| span_context.trace_id().to_string())
        });
        let mut record = self.logger.create_log_record();
        let now = SystemTime::now();
        record.set_timestamp(self.at.unwrap_or(now));
        record.set_observed_timestamp(now);
        record.set_severity_number(Severity::Info);
        record.set_body(format!("{} {}", self.action.as_str(), self.resource).into());
        record.add_attribute(c::AUDIT_ACTION, self.action.as_str());
        record.add_attribute(c::RESOURCE, self.resource);
        if let Some(v) = self.version {
            record.add_attribute(c::RESOURCE_VERSION, v);
        }
        if let Some(id) = request_id {
            record.add_attribute(c::REQUEST_ID, id);
        }
        if let Some(actor) = self.actor {
            record.add_attribute(c::ACTOR, actor);
        }
        if span_context.is_valid() {
            record.set_trace_context(
                span_context.trace_id(),
                span_context.span_id(),
                Some(span_context.trace_flags()),
            );
        }
        self.logger.emit(record);
    }
}
