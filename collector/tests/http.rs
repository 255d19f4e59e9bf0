//! Black-box tests of the HTTP receivers: a real server on 127.0.0.1:0, a real HTTP client,
//! and the events as they come out of the channel.

mod common;

use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use toctou_collector::metrics::EventPhase;
use toctou_collector::{
    traces_from_json, IgnoreReason, ReceiverConfig, RejectReason, Signal, Transport,
};
use toctou_schema::{AuditAction, Event, Phase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

async fn post(
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    req.send().await.unwrap()
}

/// `google.rpc.Status`, to read protobuf error bodies.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

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

#[tokio::test]
async fn malformed_bodies_are_400_in_the_request_format() {
    let mut h = Harness::start().await;
    // Field 1 (resource_spans) says it holds 100 bytes and holds 2.
    let resp = post(&h.url("/v1/traces"), PROTOBUF, None, vec![0x0a, 100, 1, 2]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["content-type"], PROTOBUF);
    let status = RpcStatus::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 3, "INVALID_ARGUMENT");
    assert!(
        status.message.starts_with("malformed protobuf"),
        "{}",
        status.message
    );

    let resp = post(
        &h.url("/v1/logs"),
        JSON,
        None,
        b"{\"resourceLogs\": [".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(body["code"], 3);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("malformed json"),
        "{body}"
    );

    let m = h.receivers.metrics();
    assert_eq!(m.rejected(RejectReason::MalformedProtobuf), 1);
    assert_eq!(m.rejected(RejectReason::MalformedJson), 1);
    h.assert_no_batch();
    // The server is still up.
    let resp = post(&h.url("/v1/traces"), JSON, None, read("otlp/trace.json")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    h.shutdown().await;
}

#[tokio::test]
async fn unsupported_content_types_and_encodings_are_415() {
    let h = Harness::start().await;
    let resp = post(&h.url("/v1/traces"), "text/plain", None, b"hi".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = post(&h.url("/v1/k8s-audit"), PROTOBUF, None, b"hi".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = post(&h.url("/v1/traces"), JSON, Some("br"), b"{}".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Declared gzip, but is not.
    let resp = post(&h.url("/v1/traces"), JSON, Some("gzip"), b"{}".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let m = h.receivers.metrics();
    assert_eq!(m.rejected(RejectReason::UnsupportedContentType), 2);
    assert_eq!(m.rejected(RejectReason::BadEncoding), 2);
    h.shutdown().await;
}

fn small_limit() -> ReceiverConfig {
    ReceiverConfig {
        max_request_bytes: 64 * 1024,
        ..Default::default()
    }
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let h = Harness::with(small_limit(), 16).await;
    let resp = post(&h.url("/v1/traces"), JSON, None, vec![b' '; 64 * 1024 + 1]).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly at the limit is fine (whitespace around the example is still the example).
    let mut at_limit = read("otlp/trace.json");
    at_limit.resize(64 * 1024, b' ');
    let resp = post(&h.url("/v1/traces"), JSON, None, at_limit).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(h.receivers.metrics().rejected(RejectReason::TooLarge), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn oversized_chunked_body_is_stopped_while_reading() {
    let h = Harness::with(small_limit(), 16).await;
    // No Content-Length: the limit can only be enforced as the chunks arrive.
    let conn = tokio::net::TcpStream::connect(h.http).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    // Up to 1 MiB in 16 KiB chunks; the server must answer long before the end, and may
    // stop reading, so the writer runs apart from the reader and is dropped after.
    let writer = tokio::spawn(async move {
        wr.write_all(
            b"POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              transfer-encoding: chunked\r\n\r\n",
        )
        .await?;
        let chunk = vec![b' '; 16 * 1024];
        for _ in 0..64 {
            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            wr.write_all(&chunk).await?;
            wr.write_all(b"\r\n").await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), rd.read(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    writer.abort();
    let status_line = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line:?}");
    assert_eq!(h.receivers.metrics().rejected(RejectReason::TooLarge), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn gzip_bomb_is_413_without_inflating_it() {
    let h = Harness::with(small_limit(), 16).await;
    // 32 MiB of zeroes deflate to about 32 KiB: under the 64 KiB wire limit, 512 times the
    // limit once inflated.
    let bomb = gzip(&vec![0u8; 32 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let started = std::time::Instant::now();
    let resp = post(&h.url("/v1/traces"), PROTOBUF, Some("gzip"), bomb).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let status = RpcStatus::decode(resp.bytes().await.unwrap()).unwrap();
    assert!(
        status.message.contains("decompressed"),
        "{}",
        status.message
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(h.receivers.metrics().rejected(RejectReason::TooLarge), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn wrong_method_is_405() {
    let h = Harness::start().await;
    let resp = reqwest::get(h.url("/v1/traces")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");
    let resp = reqwest::Client::new()
        .put(h.url("/v1/k8s-audit"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        h.receivers
            .metrics()
            .rejected(RejectReason::MethodNotAllowed),
        2
    );
    h.shutdown().await;
}

#[tokio::test]
async fn full_sink_is_503_with_retry_after() {
    let mut h = Harness::with(ReceiverConfig::default(), 1).await;
    // Fill the channel; nobody drains it.
    h.tx.send(Vec::new()).await.unwrap();
    let body = check_and_use().encode_to_vec();
    let resp = post(&h.url("/v1/traces"), PROTOBUF, None, body.clone()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let status = RpcStatus::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, 14, "UNAVAILABLE");
    let m = h.receivers.metrics();
    assert_eq!(m.rejected(RejectReason::Backpressure), 1);
    // Nothing of the refused request was counted: the client sends it again.
    assert_eq!(m.events(Signal::Traces, EventPhase::Check), 0);
    assert_eq!(m.ignored(IgnoreReason::NoPhase), 0);

    // Once the consumer catches up, the retry goes through.
    assert!(h.next_batch().await.is_empty());
    let resp = post(&h.url("/v1/traces"), PROTOBUF, None, body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(h.next_batch().await.len(), 2);
    h.shutdown().await;
}

#[tokio::test]
async fn kubernetes_audit_webhook() {
    let mut h = Harness::start().await;
    let items: Vec<Json> = [
        "k8s-audit/create_configmap_no_sensitive_values.json",
        "k8s-audit/attach_pod.json",
        "k8s-audit/delete_configmap.json",
        "k8s-audit/delete_configmap.json",
    ]
    .iter()
    .map(|f| serde_json::from_slice(&read(f)).unwrap())
    .collect();
    let list = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items});
    let resp = post(
        &h.url("/v1/k8s-audit"),
        JSON,
        None,
        list.to_string().into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"accepted": 2, "ignored": 2, "rejected": 0, "errors": []})
    );
    let batch = h.next_batch().await;
    let resources: Vec<_> = batch
        .iter()
        .map(|e| match e {
            Event::Audit(a) => (a.action, a.resource.as_str()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        resources,
        [
            (AuditAction::Create, "k8s/configmaps/default/my-config"),
            (AuditAction::Delete, "k8s/configmaps/default/my-config"),
        ]
    );
    let m = h.receivers.metrics();
    assert_eq!(m.events(Signal::K8sAudit, EventPhase::Audit), 2);
    assert_eq!(m.ignored(IgnoreReason::NonFinalStage), 1);
    assert_eq!(m.ignored(IgnoreReason::Duplicate), 1);

    // A single Event works too; a broken one names the problem.
    let resp = post(
        &h.url("/v1/k8s-audit"),
        JSON,
        None,
        read("k8s-audit/create_service.json"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(h.next_batch().await.len(), 1);
    let no_name = json!({"kind": "Event", "auditID": "a", "stage": "ResponseComplete",
        "verb": "create", "objectRef": {"resource": "pods", "namespace": "default"},
        "stageTimestamp": "2024-01-01T00:00:00Z"});
    let resp = post(
        &h.url("/v1/k8s-audit"),
        JSON,
        None,
        no_name.to_string().into_bytes(),
    )
    .await;
    let body: Json = resp.json().await.unwrap();
    assert_eq!(body["rejected"], 1);
    assert_eq!(
        body["errors"][0],
        "audit event a: no objectRef.name nor responseObject.metadata.name"
    );
    let resp = post(
        &h.url("/v1/k8s-audit"),
        JSON,
        None,
        b"{\"kind\":\"Pod\"}".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    h.shutdown().await;
}
