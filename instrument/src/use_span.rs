//! Use spans: the write or action taken on a check's decision (`toctou.phase` = `use`).
//!
//! A [`Use`] starts when it is created (its start is the use's event time) and is recorded
//! when its outcome is known: [`Use::ok`], [`Use::conflict`], [`Use::failed`] or
//! [`Use::denied`]. Dropped without an outcome, it is recorded as failed.

use crate::request::{now, RequestScope};
use opentelemetry::trace::{SpanContext, Status, Tracer};
use opentelemetry::{Context, KeyValue};
use std::borrow::Cow;
use std::fmt::Display;
use std::time::SystemTime;
use toctou_schema::conventions as c;

/// How a use ended (`toctou.use.outcome`, and the status codes toctou reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The use took effect (`ok`).
    Ok,
    /// The use's own precondition caught the race (compare-and-swap on the version, a
    /// unique constraint, `If-Match`): `conflict`, a prevented race, never a finding.
    Conflict,
    /// The use failed for another reason (`error`): it did not act, never a finding.
    Failed,
    /// The use was refused by permission (`error` with HTTP 403 or gRPC 7): after an
    /// allowing check, an `authz_drift`.
    Denied,
}

impl Outcome {
    /// The `toctou.use.outcome` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Conflict => "conflict",
            Outcome::Failed | Outcome::Denied => "error",
        }
    }
}

/// gRPC's `PERMISSION_DENIED`.
const GRPC_PERMISSION_DENIED: i64 = 7;
const HTTP_FORBIDDEN: i64 = 403;

/// A use in progress, from [`Checked::use_`](crate::Checked::use_) or, for a use that no
/// check precedes, [`use_`](crate::use_()).
#[must_use = "a use is recorded when its outcome is known: call ok(), conflict(), failed() or denied()"]
pub struct Use<'t, T: Tracer> {
    inner: Option<Inner<'t, T>>,
}

struct Inner<'t, T: Tracer> {
    scope: RequestScope<'t, T>,
    name: Option<Cow<'static, str>>,
    started: SystemTime,
    version: Option<String>,
    attributes: Vec<KeyValue>,
    http_status: Option<i64>,
    grpc_status: Option<i64>,
}

impl<'t, T: Tracer> Use<'t, T> {
    pub(crate) fn new(scope: RequestScope<'t, T>) -> Self {
        Use {
            inner: Some(Inner {
                scope,
                name: None,
                started: now(),
                version: None,
                attributes: Vec::new(),
                http_status: None,
                grpc_status: None,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Inner<'t, T>)) -> Self {
        // Only `finish` takes it, and `finish` consumes the use.
        f(self.inner.as_mut().expect("a use ends only once"));
        self
    }

    /// The version the use acted on (`toctou.resource.version`): its pre-image, i.e. the
    /// version in the write's condition or the old version the write returned. Not a copy
    /// of the checked version: that would hide the very races toctou looks for.
    pub fn version(self, version: impl Display) -> Self {
        self.with(|i| i.version = Some(version.to_string()))
    }

    /// The idempotency key of the request (`toctou.idempotency_key`), when the check did
    /// not already carry it.
    pub fn idempotency_key(self, key: impl Into<String>) -> Self {
        self.with(|i| i.scope.idempotency_key = Some(key.into()))
    }

    /// The request id, for a use not started from a check (see [`crate::use_()`]).
    pub fn request_id(self, id: impl Into<String>) -> Self {
        self.with(|i| i.scope.request_id = Some(id.into()))
    }

    /// Who acts (`toctou.actor`).
    pub fn actor(self, actor: impl Into<String>) -> Self {
        self.with(|i| i.attributes.push(KeyValue::new(c::ACTOR, actor.into())))
    }

    /// The HTTP status the action answered (`http.response.status_code`).
    pub fn http_status(self, code: u16) -> Self {
        self.with(|i| i.http_status = Some(i64::from(code)))
    }

    /// The gRPC status code the action answered (`rpc.grpc.status_code`).
    pub fn grpc_status(self, code: i32) -> Self {
        self.with(|i| i.grpc_status = Some(i64::from(code)))
    }

    /// The request's context, the parent of the use span (for a use not started from a
    /// check; defaults to `Context::current()` when the use was created).
    pub fn context(self, cx: &Context) -> Self {
        self.with(|i| i.scope.parent = cx.clone())
    }

    /// The span's name (default: the operation); low cardinality.
    pub fn name(self, name: impl Into<Cow<'static, str>>) -> Self {
        self.with(|i| i.name = Some(name.into()))
    }

    /// Overrides the start time taken at creation.
    pub fn started_at(self, at: SystemTime) -> Self {
        self.with(|i| i.started = at)
    }

    /// The use took effect.
    pub fn ok(self) -> SpanContext {
        self.end(Outcome::Ok)
    }

    /// The use's own precondition caught the race: nothing was written.
    pub fn conflict(self) -> SpanContext {
        self.end(Outcome::Conflict)
    }

    /// The use failed and did not act.
    pub fn failed(self) -> SpanContext {
        self.end(Outcome::Failed)
    }

    /// The use was refused by permission: recorded with gRPC status 7 when a gRPC status
    /// was set, else with HTTP status 403.
    pub fn denied(self) -> SpanContext {
        self.end(Outcome::Denied)
    }

    /// Ends with the given outcome; returns the use span's context.
    pub fn end(mut self, outcome: Outcome) -> SpanContext {
        let inner = self.inner.take().expect("a use ends only once");
        inner.finish(outcome, None)
    }
}

impl<T: Tracer> Inner<'_, T> {
    fn finish(mut self, outcome: Outcome, status: Option<Status>) -> SpanContext {
        if outcome == Outcome::Denied {
            match self.grpc_status {
                Some(_) => self.grpc_status = Some(GRPC_PERMISSION_DENIED),
                None => self.http_status = Some(HTTP_FORBIDDEN),
            }
        }
        let mut attributes = vec![
            KeyValue::new(c::PHASE, "use"),
            KeyValue::new(c::RESOURCE, self.scope.resource.clone()),
            KeyValue::new(c::USE_OUTCOME, outcome.as_str()),
        ];
        if let Some(v) = self.version.take() {
            attributes.push(KeyValue::new(c::RESOURCE_VERSION, v));
        }
        if let Some(code) = self.http_status {
            attributes.push(KeyValue::new(c::HTTP_RESPONSE_STATUS_CODE, code));
        }
        if let Some(code) = self.grpc_status {
            attributes.push(KeyValue::new(c::RPC_GRPC_STATUS_CODE, code));
        }
        attributes.append(&mut self.attributes);
        let status = status.or(match outcome {
            Outcome::Ok | Outcome::Conflict => None,
            Outcome::Failed => Some(Status::error("use failed")),
            Outcome::Denied => Some(Status::error("permission denied")),
        });
        let name = self
            .name
            .take()
            .or_else(|| self.scope.operation.clone())
            .unwrap_or(Cow::Borrowed("use"));
        self.scope
            .record(name, self.started, attributes, status, now())
    }
}

impl<T: Tracer> Drop for Use<'_, T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.finish(
                Outcome::Failed,
                Some(Status::error("use ended without an outcome")),
            );
        }
    }
}
