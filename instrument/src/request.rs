//! What a check and its uses share: the tracer, the request's context (their parent), the
//! resource, the request id, the operation and the idempotency key; and the one place that
//! turns them into a recorded span.

use opentelemetry::trace::Span as _;
use opentelemetry::trace::{SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use std::borrow::Cow;
use std::time::SystemTime;
use toctou_schema::conventions as c;

pub(crate) fn now() -> SystemTime {
    SystemTime::now()
}

pub(crate) struct RequestScope<'t, T: Tracer> {
    pub tracer: &'t T,
    /// The parent of the check and use spans: the request, so they are siblings under it
    /// (a use nested in its check would start before the check ends, which the conventions
    /// forbid).
    pub parent: Context,
    pub resource: String,
    /// Explicit, or (once the first span is recorded) the trace id standing in for it.
    pub request_id: Option<String>,
    pub operation: Option<Cow<'static, str>>,
    pub idempotency_key: Option<String>,
}

// Derived Clone would ask `T: Clone`; only the reference is copied.
impl<T: Tracer> Clone for RequestScope<'_, T> {
    fn clone(&self) -> Self {
        RequestScope {
            tracer: self.tracer,
            parent: self.parent.clone(),
            resource: self.resource.clone(),
            request_id: self.request_id.clone(),
            operation: self.operation.clone(),
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}

impl<'t, T: Tracer> RequestScope<'t, T> {
    pub fn new(tracer: &'t T, resource: String) -> Self {
        RequestScope {
            tracer,
            parent: Context::current(),
            resource,
            request_id: None,
            operation: None,
            idempotency_key: None,
        }
    }

    /// Records one span from `start` to `end` under the parent, with the scope's shared
    /// attributes after `attributes`, and returns its context. The request id defaults to
    /// the trace id: the parent's when it has a span, else the new span's (which then
    /// becomes the parent of the spans recorded after it from this scope).
    pub fn record(
        &mut self,
        name: Cow<'static, str>,
        start: SystemTime,
        mut attributes: Vec<KeyValue>,
        status: Option<Status>,
        end: SystemTime,
    ) -> SpanContext {
        if self.request_id.is_none() {
            let parent = self.parent.span().span_context().clone();
            if parent.is_valid() {
                self.request_id = Some(parent.trace_id().to_string());
            }
        }
        if let Some(id) = &self.request_id {
            attributes.push(KeyValue::new(c::REQUEST_ID, id.clone()));
        }
        if let Some(op) = &self.operation {
            attributes.push(KeyValue::new(c::OPERATION, op.clone()));
        }
        if let Some(key) = &self.idempotency_key {
            attributes.push(KeyValue::new(c::IDEMPOTENCY_KEY, key.clone()));
        }
        let builder = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attributes);
        let mut span = self.tracer.build_with_context(builder, &self.parent);
        if self.request_id.is_none() {
            // A new trace: its id is the request id, of this span and of the uses to come,
            // which then start under this span, so that the request stays one trace.
            let id = span.span_context().trace_id().to_string();
            span.set_attribute(KeyValue::new(c::REQUEST_ID, id.clone()));
            self.request_id = Some(id);
            self.parent = self
                .parent
                .with_remote_span_context(span.span_context().clone());
        }
        if let Some(status) = status {
            span.set_status(status);
        }
        span.end_with_timestamp(end.max(start));
        span.span_context().clone()
    }
}
