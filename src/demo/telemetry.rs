//! The demo's OpenTelemetry plumbing: one tracer and one logger per demo service, exporting
//! over OTLP (gRPC or HTTP) exactly as an instrumented application would.

use anyhow::{Context as _, Result};
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{LogExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::logs::{self, BatchLogProcessor, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::{self, BatchSpanProcessor, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::time::{Duration, SystemTime};

/// How often each demo service exports its batch of spans and of audit records.
const EXPORT_DELAY: Duration = Duration::from_millis(200);

/// The transport the demo exports with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// OTLP/gRPC (port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318).
    Http,
}

/// One instrumented service: its tracer, its logger, and the providers to flush at the end.
pub struct Service {
    tracer: SdkTracer,
    logger: SdkLogger,
    tracer_provider: SdkTracerProvider,
    logger_provider: SdkLoggerProvider,
}

impl Service {
    /// Must be called inside a Tokio runtime: the gRPC exporter needs one.
    pub fn new(name: &str, transport: Transport, endpoint: &str) -> Result<Service> {
        let resource = Resource::builder()
            .with_service_name(name.to_string())
            .build();
        let (spans, logs) = match transport {
            Transport::Grpc => (
                SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .context("building the OTLP/gRPC span exporter")?,
                LogExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .context("building the OTLP/gRPC log exporter")?,
            ),
            Transport::Http => {
                let base = endpoint.trim_end_matches('/');
                (
                    SpanExporter::builder()
                        .with_http()
                        .with_protocol(Protocol::HttpBinary)
                        .with_endpoint(format!("{base}/v1/traces"))
                        .build()
                        .context("building the OTLP/HTTP span exporter")?,
                    LogExporter::builder()
                        .with_http()
                        .with_protocol(Protocol::HttpBinary)
                        .with_endpoint(format!("{base}/v1/logs"))
                        .build()
                        .context("building the OTLP/HTTP log exporter")?,
                )
            }
        };
        // The SDKs' default export delay (5 s for spans, 1 s for logs) is longer than the
        // default allowed lateness; a short one keeps the demo's events in order.
        let span_batches = BatchSpanProcessor::builder(spans)
            .with_batch_config(
                trace::BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_DELAY)
                    .build(),
            )
            .build();
        let log_batches = BatchLogProcessor::builder(logs)
            .with_batch_config(
                logs::BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_DELAY)
                    .build(),
            )
            .build();
        let tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(span_batches)
            .build();
        let logger_provider = SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_log_processor(log_batches)
            .build();
        Ok(Service {
            tracer: tracer_provider.tracer("toctou-demo"),
            logger: logger_provider.logger("toctou-demo"),
            tracer_provider,
            logger_provider,
        })
    }

    /// Starts a request: a server span whose trace id is the request id of its check and use.
    pub fn request(&self, name: &'static str) -> Request {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .start(&self.tracer);
        let cx = Context::current_with_span(span);
        let request_id = cx.span().span_context().trace_id().to_string();
        Request { cx, request_id }
    }

    /// Starts a child span of `request` with the given attributes; end it with `Span::end`.
    pub fn span(
        &self,
        request: &Request,
        name: &'static str,
        attributes: Vec<KeyValue>,
    ) -> opentelemetry_sdk::trace::Span {
        self.tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &request.cx)
    }

    /// Emits an audit record, as a system of record does when it commits a change.
    pub fn audit(&self, at: SystemTime, attributes: Vec<(&'static str, String)>) {
        let mut record = self.logger.create_log_record();
        record.set_timestamp(at);
        record.set_observed_timestamp(SystemTime::now());
        record.set_severity_number(Severity::Info);
        record.set_body("audit".into());
        for (k, v) in attributes {
            record.add_attribute(k, v);
        }
        self.logger.emit(record);
    }

    /// Exports everything still buffered; returns once the exporters have answered.
    pub fn shutdown(&self) {
        let _ = self.tracer_provider.force_flush();
        let _ = self.logger_provider.force_flush();
        let _ = self.tracer_provider.shutdown();
        let _ = self.logger_provider.shutdown();
    }
}

/// One request in flight: its context (the parent of its spans) and its id.
pub struct Request {
    cx: Context,
    pub request_id: String,
}

impl Request {
    pub fn end(self) {
        self.cx.span().end();
    }
}

/// Ends a span after setting its final attributes.
pub fn finish(mut span: opentelemetry_sdk::trace::Span, attributes: Vec<KeyValue>) {
    span.set_attributes(attributes);
    span.end();
}
