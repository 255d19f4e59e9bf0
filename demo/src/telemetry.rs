//! The demo's OpenTelemetry plumbing: one tracer and one logger per demo service, exporting
//! over OTLP (gRPC or HTTP) exactly as an instrumented application would. What the spans and
//! records say is `toctou-instrument`'s business; this module only sets up the SDK: where it
//! exports, how often, and (see [`super::clock`]) on what host clock.

use super::clock::ClockOffset;
use super::delivery::{CountedLogExporter, CountedSpanExporter, Delivery, Handed};
use super::hook::Hooked;
use crate::Secret;
use anyhow::{Context as _, Result};
use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_otlp::{
    LogExporter, Protocol, RetryPolicy, SpanExporter, WithExportConfig, WithHttpConfig,
    WithTonicConfig,
};
use opentelemetry_sdk::logs::{self, BatchLogProcessor, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::{self, BatchSpanProcessor, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::sync::Arc;
use std::time::Duration;

/// How often each demo service exports its batch of spans and of audit records, unless it
/// keeps the SDK's default schedule ([`Exporting::sdk_default_delays`]).
const EXPORT_DELAY: Duration = Duration::from_millis(200);
/// The SDK drops what does not fit its queue (2,048 by default); as a load generator the
/// demo can outrun that between two exports, and a dropped span would be a race that
/// happened and could not be found. The workers hold back well before it fills (see
/// `load::MAX_IN_FLIGHT`). The SDK allocates the whole queue up front, per service and
/// signal, hence no larger.
pub const QUEUE: usize = 1 << 15;
/// Spans or records per export request (512 by default): fewer, larger requests.
const BATCH: usize = 4096;
/// How long one export may keep being retried (the exporters' default is 10 s, with 3
/// retries): a span given up on is a race that happened and cannot be found, so the demo
/// rides out what an instrumented service should, such as a collector answering 503 while
/// its Kafka is down for a few seconds. Also each attempt's timeout. Three minutes: a
/// broker frozen for 10 s on a machine whose cores are all busy has taken up to a minute
/// more to take writes again (tests/kafka_demo.rs), and a demo that gives up then reports
/// races as missed that toctou was never handed.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest wait between two attempts (1.6 s by default; the collector's Retry-After is 1 s).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Retries until [`EXPORT_TIMEOUT`] rather than a count.
fn retry_policy() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(usize::MAX)
        .with_max_delay(MAX_RETRY_DELAY)
}

/// The transport the demo exports with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Transport {
    /// OTLP/gRPC (port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318).
    Http,
}

/// How one service's SDK exports, beyond where to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exporting {
    /// The SDK's default batch schedule (spans every 5 s, logs every 1 s) rather than the
    /// demo's 200 ms: an application left at the defaults, whose events reach toctou later
    /// than its default allowed lateness.
    pub sdk_default_delays: bool,
    /// The offset of the service's host clock: every time its SDK records is shifted by it.
    pub clock: ClockOffset,
}

impl Exporting {
    fn span_delay(self) -> Duration {
        if self.sdk_default_delays {
            trace::OTEL_BSP_SCHEDULE_DELAY_DEFAULT
        } else {
            EXPORT_DELAY
        }
    }

    fn log_delay(self) -> Duration {
        if self.sdk_default_delays {
            logs::OTEL_BLRP_SCHEDULE_DELAY_DEFAULT
        } else {
            EXPORT_DELAY
        }
    }
}

/// One instrumented service: its tracer, its logger, and the providers to flush at the end.
pub struct Service {
    /// Its `service.name`.
    pub name: String,
    pub tracer: SdkTracer,
    pub logger: SdkLogger,
    tracer_provider: SdkTracerProvider,
    logger_provider: SdkLoggerProvider,
}

impl Service {
    /// Must be called inside a Tokio runtime: the gRPC exporter needs one. Only a service
    /// that sends `audit` records gets a full-size log queue.
    pub fn new(
        name: &str,
        transport: Transport,
        endpoint: &str,
        token: Option<&Secret>,
        delivery: &Arc<Delivery>,
        audit: bool,
        exporting: Exporting,
    ) -> Result<Service> {
        // The bearer token as gRPC metadata or an HTTP header, as any OTLP exporter sends it.
        let mut metadata = tonic::metadata::MetadataMap::new();
        let mut headers = std::collections::HashMap::new();
        if let Some(token) = token {
            let value = token
                .bearer()
                .parse()
                .context("the token is not a valid header value")?;
            metadata.insert("authorization", value);
            headers.insert("authorization".to_string(), token.bearer());
        }
        let resource = Resource::builder()
            .with_service_name(name.to_string())
            .build();
        let (spans, logs) = match transport {
            Transport::Grpc => (
                SpanExporter::builder()
                    .with_tonic()
                    .with_metadata(metadata.clone())
                    .with_endpoint(endpoint)
                    .with_timeout(EXPORT_TIMEOUT)
                    .with_retry_policy(retry_policy())
                    .build()
                    .context("building the OTLP/gRPC span exporter")?,
                LogExporter::builder()
                    .with_tonic()
                    .with_metadata(metadata)
                    .with_endpoint(endpoint)
                    .with_timeout(EXPORT_TIMEOUT)
                    .with_retry_policy(retry_policy())
                    .build()
                    .context("building the OTLP/gRPC log exporter")?,
            ),
            Transport::Http => {
                let base = endpoint.trim_end_matches('/');
                (
                    SpanExporter::builder()
                        .with_http()
                        .with_protocol(Protocol::HttpBinary)
                        .with_headers(headers.clone())
                        .with_endpoint(format!("{base}/v1/traces"))
                        .with_timeout(EXPORT_TIMEOUT)
                        .with_retry_policy(retry_policy())
                        .build()
                        .context("building the OTLP/HTTP span exporter")?,
                    LogExporter::builder()
                        .with_http()
                        .with_protocol(Protocol::HttpBinary)
                        .with_headers(headers)
                        .with_endpoint(format!("{base}/v1/logs"))
                        .with_timeout(EXPORT_TIMEOUT)
                        .with_retry_policy(retry_policy())
                        .build()
                        .context("building the OTLP/HTTP log exporter")?,
                )
            }
        };
        // The SDKs' default export delay (5 s for spans, 1 s for logs) is longer than the
        // default allowed lateness; a short one keeps the demo's events in order, unless the
        // service is to show what the defaults do.
        let spans = CountedSpanExporter {
            inner: spans,
            delivery: delivery.clone(),
        };
        let logs = CountedLogExporter {
            inner: logs,
            delivery: delivery.clone(),
        };
        let span_batches = BatchSpanProcessor::builder(spans)
            .with_batch_config(
                trace::BatchConfigBuilder::default()
                    .with_scheduled_delay(exporting.span_delay())
                    .with_max_queue_size(QUEUE)
                    .with_max_export_batch_size(BATCH)
                    .build(),
            )
            .build();
        let log_batches = BatchLogProcessor::builder(logs)
            .with_batch_config(
                logs::BatchConfigBuilder::default()
                    .with_scheduled_delay(exporting.log_delay())
                    .with_max_queue_size(if audit { QUEUE } else { BATCH })
                    .with_max_export_batch_size(BATCH)
                    .build(),
            )
            .build();
        let tracer_provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(Hooked {
                inner: Hooked {
                    inner: span_batches,
                    hook: exporting.clock,
                },
                hook: Handed(delivery.clone()),
            })
            .build();
        let logger_provider = SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_log_processor(Hooked {
                inner: Hooked {
                    inner: log_batches,
                    hook: exporting.clock,
                },
                hook: Handed(delivery.clone()),
            })
            .build();
        Ok(Service {
            name: name.to_string(),
            tracer: tracer_provider.tracer("toctou-demo"),
            logger: logger_provider.logger("toctou-demo"),
            tracer_provider,
            logger_provider,
        })
    }

    /// Starts a request: a server span, the parent of its check and use spans; its trace
    /// id is their request id.
    pub fn request(&self, name: &'static str) -> Request {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .start(&self.tracer);
        Request {
            cx: Context::current_with_span(span),
        }
    }

    /// Exports everything still buffered; returns once the exporters have answered.
    pub fn shutdown(&self) {
        let _ = self.tracer_provider.force_flush();
        let _ = self.logger_provider.force_flush();
        let _ = self.tracer_provider.shutdown();
        let _ = self.logger_provider.shutdown();
    }
}

/// One request in flight: its context, the parent of its spans.
pub struct Request {
    pub cx: Context,
}

impl Request {
    /// The request id its check and use spans carry: the trace id, as the conventions say.
    pub fn id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    pub fn end(self) {
        self.cx.span().end();
    }
}
