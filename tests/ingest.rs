//! Black-box ingest tests against the real `toctou run` binary: the official OTLP examples
//! over HTTP/JSON, HTTP/protobuf and gRPC; captured Kubernetes audit events on the webhook;
//! and hostile input, after which the process must still be up and have counted each
//! rejection on /metrics.

mod common;

use common::{testdata, Toctou};
use flate2::write::GzEncoder;
use flate2::Compression;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use reqwest::StatusCode;
use std::io::Write;

const JSON: &str = "application/json";
const PROTOBUF: &str = "application/x-protobuf";

fn read(path: &str) -> Vec<u8> {
    std::fs::read(testdata(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn post(url: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    post_encoded(url, content_type, None, body).await
}

async fn post_encoded(
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
    req.send().await.expect("request sent")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_otlp_examples_are_accepted_on_every_transport() {
    let toctou = Toctou::start(&[]);
    let trace_json = read("collector/testdata/otlp/trace.json");
    let logs_json = read("collector/testdata/otlp/logs.json");

    // HTTP/JSON, as published (upper-case hex ids, unquoted int64s).
    let resp = post(&toctou.http_url("/v1/traces"), JSON, trace_json.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body.get("partialSuccess")
            .is_none_or(|p| p["rejectedSpans"].as_i64().unwrap_or(0) == 0),
        "{body}"
    );
    let resp = post(&toctou.http_url("/v1/logs"), JSON, logs_json.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // The same payloads in protobuf over HTTP, plain and gzip.
    let traces = toctou_collector::traces_from_json(&trace_json).unwrap();
    let logs = toctou_collector::logs_from_json(&logs_json).unwrap();
    let resp = post(
        &toctou.http_url("/v1/traces"),
        PROTOBUF,
        traces.encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], PROTOBUF);
    let answer = ExportTraceServiceResponse::decode(resp.bytes().await.unwrap()).unwrap();
    assert!(answer.partial_success.is_none_or(|p| p.rejected_spans == 0));
    let resp = post_encoded(
        &toctou.http_url("/v1/logs"),
        PROTOBUF,
        Some("gzip"),
        gzip(&logs.encode_to_vec()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);

    // And over gRPC, with gzip.
    let endpoint = format!("http://{}", toctou.grpc);
    let mut client = TraceServiceClient::connect(endpoint.clone())
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    client.export(traces.clone()).await.expect("gRPC traces");
    let mut client = LogsServiceClient::connect(endpoint).await.unwrap();
    client.export(logs.clone()).await.expect("gRPC logs");

    // The examples carry no toctou attributes: accepted, ignored and counted, three times.
    let spans: usize = traces
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    assert!(spans > 0);
    assert_eq!(
        toctou
            .metric("toctou_ignored_total{signal=\"traces\",reason=\"no_phase\"}")
            .await,
        (3 * spans) as f64
    );
    assert_eq!(
        toctou
            .metric("toctou_rejected_total{reason=\"malformed_json\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_kubernetes_audit_events_are_accepted() {
    let toctou = Toctou::start(&[]);
    let dir = testdata("collector/testdata/k8s-audit");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "captured events missing in {dir:?}");
    for f in &files {
        let resp = post(
            &toctou.http_url("/v1/k8s-audit"),
            JSON,
            std::fs::read(f).unwrap(),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{}", f.display());
    }
    let audits = toctou
        .metric("toctou_events_total{signal=\"k8s_audit\",phase=\"audit\"}")
        .await;
    assert!(
        audits >= 10.0,
        "only {audits} audit events from {} files",
        files.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_the_spec_status_and_a_counter_and_the_process_stays_up() {
    let mut toctou = Toctou::start(&["--max-request-bytes", "1048576"]);
    let traces = toctou.http_url("/v1/traces");

    // Malformed protobuf: a field that claims 100 bytes and holds 2.
    let resp = post(&traces, PROTOBUF, vec![0x0a, 100, 1, 2]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Invalid JSON.
    let resp = post(&traces, JSON, b"{\"resourceSpans\": [".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Wrong content type.
    let resp = post(&traces, "text/plain", b"hello".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Oversized body. The server refuses it from its Content-Length without reading it and
    // closes the connection, so the client may see the 413 or a reset while still sending;
    // either way the refusal is counted (asserted below).
    let oversized = reqwest::Client::new()
        .post(&traces)
        .header("content-type", PROTOBUF)
        .body(vec![0u8; 2 * 1024 * 1024])
        .send()
        .await;
    if let Ok(resp) = oversized {
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    // A gzip bomb: 64 KiB on the wire, 64 MiB inflated.
    let bomb = gzip(&vec![b' '; 64 * 1024 * 1024]);
    assert!(bomb.len() < 128 * 1024);
    let resp = post_encoded(&traces, JSON, Some("gzip"), bomb).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A check span without its resource: partial success naming what is missing.
    let span = serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "check",
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000001000000",
        "attributes": [{"key": "toctou.phase", "value": {"stringValue": "check"}}]
    }]}]}]});
    let resp = post(&traces, JSON, serde_json::to_vec(&span).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["partialSuccess"]["rejectedSpans"], "1", "{body}");
    let message = body["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(message.contains("toctou.resource"), "{message}");

    for (reason, n) in [
        ("malformed_protobuf", 1.0),
        ("malformed_json", 1.0),
        ("unsupported_content_type", 1.0),
        ("too_large", 2.0),
        ("missing_resource", 1.0),
    ] {
        let series = format!("toctou_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(toctou.metric(&series).await, n, "{series}");
    }
    assert!(toctou.is_running());
    let health = reqwest::get(toctou.api_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // And it still correlates.
    let resp = post(&traces, JSON, read("collector/testdata/otlp/trace.json")).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_api_validates_its_parameters() {
    let toctou = Toctou::start(&[]);
    let resp = reqwest::get(toctou.api_url("/api/v1/findings?kind=nope"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("stale_check"));
    let resp = reqwest::get(toctou.api_url("/api/v1/findings?since=yesterday"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = reqwest::get(toctou.api_url("/api/v1/findings?limit=-1"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = reqwest::get(
        toctou.api_url("/api/v1/findings?kind=stale_check&since=2026-01-01T00:00:00Z&limit=10"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["findings"], serde_json::json!([]));
}
