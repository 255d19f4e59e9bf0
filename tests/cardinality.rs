//! Label cardinality of `toctou run`'s /metrics under a flood of names: findings from 5,000
//! distinct services and operations, sent over OTLP, must leave /metrics, the summary and the
//! findings API bounded. The named series stop at the cap, `_other` carries the rest, and
//! `toctou_metric_series_overflow_total` counts exactly the findings folded into it.

mod common;

use common::{metric, Toctou};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::time::{Duration, Instant};

/// `MAX_SERVICE_SERIES` in server/src/store.rs: (service, operation) pairs with a series of their own.
const CAP: usize = 1000;
const SERVICES: usize = 5000;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// One unchecked use (a use span with no check before it) from service `svc-{i}`, operation
/// `op-{i}`: one finding per service.
fn unchecked_use(i: usize, operation: &str, now_ns: u64) -> ResourceSpans {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    let mut span_id = [0u8; 8];
    span_id.copy_from_slice(&(i as u64 + 1).to_be_bytes());
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv("service.name", &format!("svc-{i}"))],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans: vec![Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                name: "use".into(),
                start_time_unix_nano: now_ns,
                end_time_unix_nano: now_ns + 1_000_000,
                attributes: vec![
                    kv("toctou.phase", "use"),
                    kv("toctou.resource", &format!("stock/{i}")),
                    kv("toctou.operation", operation),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

use toctou_schema::now_ns;

/// Every sample line of `name` (with labels).
fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}{{");
    text.lines().filter(|l| l.starts_with(&prefix)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_service_names_stays_under_the_series_cap() {
    let toctou = Toctou::start(&[
        "--allowed-lateness",
        "200ms",
        "--pair-ttl",
        "1s",
        "--max-findings",
        "100",
    ]);
    let client = reqwest::Client::new();
    let now = now_ns();
    // One name past the label length bound (128 bytes), well under the 4 KiB attribute limit:
    // it is accepted, found, and counted under `_other` however few series are in use.
    let long_operation = "o".repeat(200);
    let mut resources: Vec<ResourceSpans> = (0..SERVICES)
        .map(|i| unchecked_use(i, &format!("op-{i}"), now))
        .collect();
    resources[0] = unchecked_use(0, &long_operation, now);
    for chunk in resources.chunks(500) {
        let body = ExportTraceServiceRequest {
            resource_spans: chunk.to_vec(),
        }
        .encode_to_vec();
        let resp = client
            .post(toctou.http_url("/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    // The correlator publishes its counters and the store's on their own schedules: wait
    // for both to hold every finding.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = toctou.metrics().await;
        let found = metric(&text, "toctou_findings_total{kind=\"unchecked_use\"}");
        let by_service: f64 = series(&text, "toctou_service_findings_total")
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        if found >= SERVICES as f64 && by_service >= SERVICES as f64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "not all findings in time ({found} found, {by_service} by service)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        metric(&text, "toctou_findings_total{kind=\"unchecked_use\"}"),
        SERVICES as f64
    );

    let lines = series(&text, "toctou_service_findings_total");
    // One kind per pair here: the named pairs up to the cap, and `_other`.
    assert_eq!(lines.len(), CAP + 1, "{} series", lines.len());
    let other_series =
        "toctou_service_findings_total{service=\"_other\",operation=\"_other\",kind=\"unchecked_use\"}";
    let other = metric(&text, other_series);
    let named: f64 = lines
        .iter()
        .filter(|l| !l.starts_with(other_series))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(named + other, SERVICES as f64);
    // The long name found no series; the first CAP short pairs did, every later one folded.
    assert!(!text.contains(&long_operation));
    assert_eq!(named, CAP as f64);
    assert_eq!(other, (SERVICES - CAP) as f64);
    assert_eq!(
        metric(
            &text,
            "toctou_metric_series_overflow_total{metric=\"toctou_service_findings_total\"}"
        ),
        other
    );
    // Everything else on the page is a fixed set of series; the whole page stays small.
    let samples = text.lines().filter(|l| !l.starts_with('#')).count();
    assert!(samples < CAP + 1 + 200, "{samples} samples on /metrics");
    assert!(text.len() < 200 * 1024, "/metrics is {} bytes", text.len());

    // The page summary is by kind only, and the API holds at most --max-findings.
    let summary = reqwest::get(toctou.api_url("/api/v1/summary"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(summary.len() < 20_000, "summary is {} bytes", summary.len());
    assert!(!summary.contains("svc-"), "the summary names no service");
    assert_eq!(toctou.findings().await.len(), 100);
}
