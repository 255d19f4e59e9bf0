//! Accounting of the demo's telemetry between the SDK and `toctou run`: every span and audit
//! record handed to the SDK's batch processors, and those its exporters delivered or failed
//! to deliver. The difference waits in the SDK's queues, which are bounded and drop what
//! does not fit: the workers hold back while too much is in flight (push-back instead of
//! loss), and the demo reports anything not delivered, since a lost span is a race that
//! happened and cannot be found.

use super::hook::{LogHook, SpanHook};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, SdkLogRecord};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counters shared by every demo service.
#[derive(Debug, Default)]
pub struct Delivery {
    handed: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl Delivery {
    /// Spans and records handed to the SDK and not yet exported (delivered or failed).
    pub fn in_flight(&self) -> u64 {
        let done = self.delivered.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        self.handed.load(Ordering::Relaxed).saturating_sub(done)
    }

    /// Blocks while more than `limit` are in flight.
    pub fn wait_below(&self, limit: u64) {
        while self.in_flight() > limit {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Blocks until nothing is in flight any more, or `deadline`.
    pub fn wait_drained(&self, deadline: std::time::Instant) {
        while self.in_flight() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// (handed, delivered, failed).
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.handed.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn exported(&self, n: u64, ok: bool) {
        let counter = if ok { &self.delivered } else { &self.failed };
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The hook that counts every span and record the SDK is handed (a processor's, see
/// [`super::hook::Hooked`]).
#[derive(Debug, Clone)]
pub struct Handed(pub Arc<Delivery>);

impl SpanHook for Handed {
    fn on_end(&self, _: &mut SpanData) {
        self.0.handed.fetch_add(1, Ordering::Relaxed);
    }
}

impl LogHook for Handed {
    fn on_emit(&self, _: &mut SdkLogRecord) {
        self.0.handed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A span exporter that counts what it delivered and what it failed to.
#[derive(Debug)]
pub struct CountedSpanExporter<E> {
    pub inner: E,
    pub delivery: Arc<Delivery>,
}

impl<E: SpanExporter> SpanExporter for CountedSpanExporter<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = batch.len() as u64;
        let delivery = self.delivery.clone();
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            delivery.exported(n, result.is_ok());
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// A log exporter that counts what it delivered and what it failed to.
#[derive(Debug)]
pub struct CountedLogExporter<E> {
    pub inner: E,
    pub delivery: Arc<Delivery>,
}

impl<E: LogExporter> LogExporter for CountedLogExporter<E> {
    fn export(
        &self,
        batch: LogBatch<'_>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = batch.iter().count() as u64;
        let delivery = self.delivery.clone();
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            delivery.exported(n, result.is_ok());
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::super::hook::Hooked;
    use super::*;
    use opentelemetry::logs::{Logger as _, LoggerProvider as _};
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLoggerProvider, SimpleLogProcessor};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};

    #[test]
    fn counts_what_is_handed_and_delivered_and_keeps_the_resource() {
        let delivery = Arc::new(Delivery::default());
        let spans = InMemorySpanExporter::default();
        let logs = InMemoryLogExporter::default();
        let resource = Resource::builder().with_service_name("svc").build();
        let tp = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(Hooked {
                inner: SimpleSpanProcessor::new(CountedSpanExporter {
                    inner: spans.clone(),
                    delivery: delivery.clone(),
                }),
                hook: Handed(delivery.clone()),
            })
            .build();
        let lp = SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_log_processor(Hooked {
                inner: SimpleLogProcessor::new(CountedLogExporter {
                    inner: logs.clone(),
                    delivery: delivery.clone(),
                }),
                hook: Handed(delivery.clone()),
            })
            .build();
        let tracer = tp.tracer("t");
        tracer.start("a").end();
        tracer.start("b").end();
        let logger = lp.logger("l");
        logger.emit(logger.create_log_record());
        assert_eq!(delivery.totals(), (3, 3, 0));
        assert_eq!(delivery.in_flight(), 0);
        let exported = spans.get_finished_spans().unwrap();
        assert_eq!(exported.len(), 2);
        assert_eq!(
            logs.get_emitted_logs().unwrap()[0]
                .resource
                .get(&opentelemetry::Key::new("service.name")),
            Some(opentelemetry::Value::from("svc"))
        );
    }
}
