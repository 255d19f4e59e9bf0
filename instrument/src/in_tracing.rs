//! With the `tracing` feature: checks, uses and audit records under the current `tracing`
//! span, for services whose request spans are `tracing` spans exported by
//! `tracing-opentelemetry`. The check and use become children of that span, and its trace id
//! is their default request id, exactly as with an OpenTelemetry context.

use crate::{Audit, Check, Use};
use opentelemetry::logs::Logger;
use opentelemetry::trace::Tracer;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The OpenTelemetry context of the current `tracing` span.
fn current() -> opentelemetry::Context {
    tracing::Span::current().context()
}

impl<T: Tracer> Check<'_, T> {
    /// Puts the check (and its uses) under the current `tracing` span.
    pub fn in_current_span(self) -> Self {
        self.context(&current())
    }
}

impl<T: Tracer> Use<'_, T> {
    /// Puts a use that no check precedes under the current `tracing` span.
    pub fn in_current_span(self) -> Self {
        self.context(&current())
    }
}

impl<L: Logger> Audit<'_, L> {
    /// Ties the record to the current `tracing` span (its trace context and, when no request
    /// id is set, its trace id as the request id).
    pub fn in_current_span(self) -> Self {
        self.context(&current())
    }
}

#[cfg(test)]
mod tests {
    use crate::{check, use_};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt as _;

    #[test]
    fn check_and_use_are_children_of_the_current_tracing_span() {
        let spans = InMemorySpanExporter::default();
        let tp = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(tp.tracer("tracing")));
        let tracer = tp.tracer("toctou");
        tracing::subscriber::with_default(subscriber, || {
            let request = tracing::info_span!("POST /cart/reserve");
            let _entered = request.enter();
            let checked = check(&tracer, "inventory/sku-1")
                .in_current_span()
                .version(1)
                .allow();
            checked.use_("reserve").version(1).ok();
            use_(&tracer, "inventory/sku-2", "restock")
                .in_current_span()
                .ok();
        });
        let finished = spans.get_finished_spans().unwrap();
        let request = finished
            .iter()
            .find(|s| s.name == "POST /cart/reserve")
            .expect("the tracing span, exported");
        let trace_id = request.span_context.trace_id();
        let ours: Vec<_> = finished
            .iter()
            .filter(|s| s.name != "POST /cart/reserve")
            .collect();
        assert_eq!(ours.len(), 3);
        for s in ours {
            assert_eq!(s.span_context.trace_id(), trace_id, "{}", s.name);
            assert_eq!(
                s.parent_span_id,
                request.span_context.span_id(),
                "{}",
                s.name
            );
            let request_id = s
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "toctou.request_id")
                .map(|kv| kv.value.to_string());
            assert_eq!(request_id, Some(trace_id.to_string()), "{}", s.name);
        }
    }
}
