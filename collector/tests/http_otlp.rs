//! Black-box tests of OTLP/HTTP: the official examples and toctou-attributed spans and
//! records, in protobuf and JSON, plain and compressed, sent with a real HTTP client to a
//! real server; the events are checked as they come out of the channel.

mod common;

use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use toctou_collector::metrics::EventPhase;
use toctou_collector::{traces_from_json, IgnoreReason, RejectReason, Signal, Transport};
use toctou_schema::{AuditAction, Event, Phase};

#[tokio::test]
async fn official_examples_over_json() {
    let h = Harness::start().await;
    for (path, file) in [
        ("/v1/traces", "otlp/trace.json"),
        ("/v1/logs", "otlp/logs.json"),
        ("/v1/logs", "otlp/events.json"),
    ] {
        let resp = post(&h.url(path), JSON, None, read(file)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{file}");
        assert_eq!(resp.headers()["content-type"], JSON);
        assert_eq!(resp.text().await.unwrap(), "{}", "{file}: full success");
    }
    let m = h.receivers.metrics();
    assert_eq!(m.ignored(IgnoreReason::NoPhase), 1);
    assert_eq!(m.ignored(IgnoreReason::NoAction), 2);
    assert!(m.received_bytes(Transport::Http) > 0);
    h.shutdown().await;
}

#[tokio::test]
async fn official_trace_example_over_protobuf_plain_gzip_and_zstd() {
    let h = Harness::start().await;
    let payload = traces_from_json(&read("otlp/trace.json"))
        .unwrap()
        .encode_to_vec();
    for (encoding, body) in [
        (None, payload.clone()),
        (Some("gzip"), gzip(&payload)),
        (Some("zstd"), zstd(&payload)),
    ] {
        let resp = post(&h.url("/v1/traces"), PROTOBUF, encoding, body).await;
        assert_eq!(resp.status(), StatusCode::OK, "{encoding:?}");
        assert_eq!(resp.headers()["content-type"], PROTOBUF);
        let body = ExportTraceServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
        assert_eq!(body.partial_success, None, "{encoding:?}");
    }
    assert_eq!(h.receivers.metrics().ignored(IgnoreReason::NoPhase), 3);
    h.shutdown().await;
}

#[tokio::test]
async fn toctou_spans_become_events_over_protobuf() {
    let mut h = Harness::start().await;
    let body = gzip(&check_and_use().encode_to_vec());
    let resp = post(&h.url("/v1/traces"), PROTOBUF, Some("gzip"), body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let batch = h.next_batch().await;
    assert_eq!(batch.len(), 2);
    let (Event::Span(check), Event::Span(used)) = (&batch[0], &batch[1]) else {
        panic!("two spans expected: {batch:?}")
    };
    assert_eq!(check.phase, Phase::Check);
    assert_eq!(check.resource, "inventory/sku-42");
    assert_eq!(check.version.as_deref(), Some("7"));
    assert_eq!(check.request_id, "order-1");
    assert_eq!(check.service, "shop");
    assert_eq!(check.end_ns, 1_001_000);
    assert_eq!(used.phase, Phase::Use);
    assert_eq!(used.operation, "reserve");
    assert_eq!(used.span_id, [3; 8]);
    assert_eq!(used.trace_id, TRACE_ID);
    let m = h.receivers.metrics();
    assert_eq!(m.events(Signal::Traces, EventPhase::Check), 1);
    assert_eq!(m.events(Signal::Traces, EventPhase::Use), 1);
    assert_eq!(m.ignored(IgnoreReason::NoPhase), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn toctou_spans_and_audit_records_over_json() {
    let mut h = Harness::start().await;
    let spans = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "EEE19B7EC3C1B174",
            "startTimeUnixNano": 1544712660000000000u64,
            "endTimeUnixNano": "1544712661000000000",
            "status": {"code": "STATUS_CODE_ERROR"},
            "attributes": [
                {"key": "toctou.phase", "value": {"stringValue": "use"}},
                {"key": "toctou.resource", "value": {"stringValue": "payments/acct-9"}},
                {"key": "toctou.resource.version", "value": {"doubleValue": 12.0}},
                {"key": "http.response.status_code", "value": {"intValue": "403"}}
            ]
        }]}]
    }]});
    let resp = post(
        &h.url("/v1/traces"),
        JSON,
        None,
        spans.to_string().into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let batch = h.next_batch().await;
    let Event::Span(used) = &batch[0] else {
        panic!("{batch:?}")
    };
    assert_eq!(used.request_id, "5b8efff798038103d269b633813fc60c");
    assert_eq!(used.version.as_deref(), Some("12"));
    assert_eq!(used.outcome, toctou_schema::UseOutcome::Error);
    assert!(used.permission_denied);
    assert_eq!(used.actor, "shop");

    let audit = logs(
        "inventory-db",
        vec![LogRecord {
            time_unix_nano: 0,
            observed_time_unix_nano: 99,
            attributes: vec![
                s("toctou.audit.action", "update"),
                s("toctou.resource", "inventory/sku-42"),
                s("toctou.resource.version", "8"),
            ],
            ..Default::default()
        }],
    );
    let resp = post(&h.url("/v1/logs"), PROTOBUF, None, audit.encode_to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let batch = h.next_batch().await;
    let Event::Audit(a) = &batch[0] else {
        panic!("{batch:?}")
    };
    assert_eq!(
        (
            a.action,
            a.time_ns,
            a.service.as_str(),
            a.version.as_deref()
        ),
        (AuditAction::Update, 99, "inventory-db", Some("8"))
    );
    assert_eq!(
        h.receivers
            .metrics()
            .events(Signal::Logs, EventPhase::Audit),
        1
    );
    h.shutdown().await;
}

#[tokio::test]
async fn bad_spans_are_a_partial_success_in_both_formats() {
    let mut h = Harness::start().await;
    // Protobuf.
    let resp = post(
        &h.url("/v1/traces"),
        PROTOBUF,
        None,
        partly_bad().encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = ExportTraceServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
    let partial = body.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    assert_eq!(
        partial.error_message,
        "rejected 2 of 4 spans: span 0202020202020202: missing attribute toctou.resource; \
         span 0303030303030303: toctou.phase is \"verify\", expected one of check, use"
    );
    assert_eq!(h.next_batch().await.len(), 2, "the good spans went through");

    // The same request as OTLP JSON.
    let as_json = json!({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "0101010101010101",
         "attributes": [{"key": "toctou.phase", "value": {"stringValue": "check"}},
                        {"key": "toctou.resource", "value": {"stringValue": "r"}}]},
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "0202020202020202",
         "attributes": [{"key": "toctou.phase", "value": {"stringValue": "use"}}]},
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "0303030303030303",
         "attributes": [{"key": "toctou.phase", "value": {"stringValue": "use"}},
                        {"key": "toctou.resource", "value": {"stringValue": "r"}},
                        {"key": "toctou.check.source", "value": {"stringValue": "disk"}}]}
    ]}]}]});
    let resp = post(
        &h.url("/v1/traces"),
        JSON,
        None,
        as_json.to_string().into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(body["partialSuccess"]["rejectedSpans"], "2");
    let msg = body["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(msg.contains("toctou.check.source is \"disk\""), "{msg}");
    assert_eq!(h.next_batch().await.len(), 1);

    let m = h.receivers.metrics();
    assert_eq!(m.rejected(RejectReason::MissingResource), 2);
    assert_eq!(m.rejected(RejectReason::BadAttribute), 2);
    assert_eq!(m.events(Signal::Traces, EventPhase::Check), 2);
    assert_eq!(m.events(Signal::Traces, EventPhase::Use), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn bad_audit_records_are_a_partial_success() {
    let h = Harness::start().await;
    let req = logs(
        "db",
        vec![LogRecord {
            attributes: vec![s("toctou.audit.action", "create")],
            ..Default::default()
        }],
    );
    let resp = post(&h.url("/v1/logs"), PROTOBUF, None, req.encode_to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = ExportLogsServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
    let partial = body.partial_success.unwrap();
    assert_eq!(partial.rejected_log_records, 1);
    assert_eq!(
        partial.error_message,
        "rejected 1 of 1 log records: log record #0: missing attribute toctou.resource"
    );
    assert_eq!(
        h.receivers
            .metrics()
            .rejected(RejectReason::MissingResource),
        1
    );
    h.shutdown().await;
}
