//! The real OpenTelemetry Rust SDK (`opentelemetry-otlp` exporters) pointed at a running
//! `toctou run`, and one scenario sent through it: a flow of each finding kind plus clean
//! flows. tests/sdk.rs checks the API's findings; tests/clickhouse_sdk.rs the stored rows.

use super::Toctou;
use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{LogExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

pub struct Sdk {
    pub traces: SdkTracerProvider,
    pub logs: SdkLoggerProvider,
}

pub fn sdk(toctou: &Toctou, transport: Transport) -> Sdk {
    let resource = Resource::builder().with_service_name("shop").build();
    let (spans, logs) = match transport {
        Transport::Grpc => {
            let endpoint = format!("http://{}", toctou.grpc);
            (
                SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(&endpoint)
                    .build()
                    .unwrap(),
                LogExporter::builder()
                    .with_tonic()
                    .with_endpoint(&endpoint)
                    .build()
                    .unwrap(),
            )
        }
        Transport::HttpProtobuf | Transport::HttpJson => {
            let protocol = match transport {
                Transport::HttpJson => Protocol::HttpJson,
                _ => Protocol::HttpBinary,
            };
            (
                SpanExporter::builder()
                    .with_http()
                    .with_protocol(protocol)
                    .with_endpoint(toctou.http_url("/v1/traces"))
                    .build()
                    .unwrap(),
                LogExporter::builder()
                    .with_http()
                    .with_protocol(protocol)
                    .with_endpoint(toctou.http_url("/v1/logs"))
                    .build()
                    .unwrap(),
            )
        }
    };
    Sdk {
        traces: SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_batch_exporter(spans)
            .build(),
        logs: SdkLoggerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(logs)
            .build(),
    }
}

/// Sends the scenario with explicit timestamps relative to `t0`; request ids are explicit
/// attributes so that each flow pairs the way the scenario says.
pub fn send_scenario(sdk: &Sdk, t0: SystemTime) {
    let tracer = sdk.traces.tracer("sdk-test");
    let logger = sdk.logs.logger("sdk-test");
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let span = |name: &'static str, start: u64, attrs: Vec<KeyValue>| {
        let mut s = tracer
            .span_builder(name)
            .with_start_time(at(start))
            .with_attributes(attrs)
            .start(&tracer);
        s.end_with_timestamp(at(start + 2));
    };
    let check = |req: &str, start: u64, resource: &str, mut extra: Vec<KeyValue>| {
        let mut attrs = vec![
            KeyValue::new("toctou.phase", "check"),
            KeyValue::new("toctou.resource", resource.to_string()),
            KeyValue::new("toctou.request_id", req.to_string()),
        ];
        attrs.append(&mut extra);
        span("check", start, attrs);
    };
    let use_ = |req: &str, start: u64, resource: &str, op: &str, mut extra: Vec<KeyValue>| {
        let mut attrs = vec![
            KeyValue::new("toctou.phase", "use"),
            KeyValue::new("toctou.resource", resource.to_string()),
            KeyValue::new("toctou.request_id", req.to_string()),
            KeyValue::new("toctou.operation", op.to_string()),
        ];
        attrs.append(&mut extra);
        span("use", start, attrs);
    };
    let audit = |ms: u64, attrs: &[(&'static str, &str)]| {
        let mut rec = logger.create_log_record();
        rec.set_timestamp(at(ms));
        rec.set_severity_number(Severity::Info);
        for (k, v) in attrs {
            rec.add_attribute(*k, v.to_string());
        }
        logger.emit(rec);
    };
    let v = |n: i64| KeyValue::new("toctou.resource.version", n);

    // stale_check: checked v1, another request's write made v2, the use acted on v2.
    check("stale-a", 0, "inventory/sku-1", vec![v(1)]);
    audit(
        10,
        &[
            ("toctou.audit.action", "update"),
            ("toctou.resource", "inventory/sku-1"),
            ("toctou.resource.version", "2"),
            ("toctou.request_id", "stale-b"),
        ],
    );
    use_("stale-a", 20, "inventory/sku-1", "reserve", vec![v(2)]);

    // duplicate_use: one payment event delivered twice, both charged.
    for (n, req) in ["dup-1", "dup-2"].iter().enumerate() {
        let key = KeyValue::new("toctou.idempotency_key", "evt-42");
        check(
            req,
            30 + n as u64,
            "payments/evt-42",
            vec![key.clone(), v(0)],
        );
    }
    for (n, req) in ["dup-1", "dup-2"].iter().enumerate() {
        let key = KeyValue::new("toctou.idempotency_key", "evt-42");
        use_(
            req,
            40 + 10 * n as u64,
            "payments/evt-42",
            "charge",
            vec![key, v(n as i64)],
        );
    }

    // unchecked_use: a write nobody checked.
    use_("nocheck", 60, "inventory/sku-2", "restock", vec![v(5)]);

    // authz_drift: allowed under policy v3, the policy moved to v4 before the edit.
    check(
        "authz",
        70,
        "docs/doc-1",
        vec![
            v(1),
            KeyValue::new("toctou.policy", "policies/docs"),
            KeyValue::new("toctou.policy.version", "3"),
        ],
    );
    audit(
        75,
        &[
            ("toctou.audit.action", "policy_change"),
            ("toctou.resource", "policies/docs"),
            ("toctou.resource.version", "4"),
        ],
    );
    use_("authz", 80, "docs/doc-1", "edit", vec![v(1)]);

    // partial_create: created (span and audit of the same request), never finalized, while
    // another claim was: claims are a type that finalizes.
    audit(
        85,
        &[
            ("toctou.audit.action", "finalize"),
            ("toctou.resource", "claims/ns/pod-0"),
            ("toctou.resource.version", "3"),
        ],
    );
    check("create", 90, "claims/ns/pod-1", vec![v(0)]);
    use_("create", 95, "claims/ns/pod-1", "create", vec![v(0)]);
    audit(
        97,
        &[
            ("toctou.audit.action", "create"),
            ("toctou.resource", "claims/ns/pod-1"),
            ("toctou.resource.version", "1"),
            ("toctou.request_id", "create"),
        ],
    );

    // orphan_check: allowed, never used.
    check("orphan", 100, "inventory/sku-3", vec![v(7)]);

    // clean: check and use on the same version; a denied check nobody used.
    check("clean", 110, "inventory/sku-4", vec![v(3)]);
    use_("clean", 115, "inventory/sku-4", "reserve", vec![v(3)]);
    check(
        "denied",
        120,
        "inventory/sku-5",
        vec![v(1), KeyValue::new("toctou.check.decision", "deny")],
    );

    sdk.traces.force_flush().expect("flushing spans");
    sdk.logs.force_flush().expect("flushing logs");
}
