//! Black-box tests of what the HTTP receivers refuse, with the status the OTLP/HTTP spec
//! prescribes and a counter for each: malformed bodies, unsupported content types and
//! encodings, oversized bodies and gzip bombs, wrong methods, and a full sink.

mod common;

use common::*;
use prost::Message;
use reqwest::StatusCode;
use serde_json::Value as Json;
use toctou_collector::metrics::EventPhase;
use toctou_collector::{IgnoreReason, ReceiverConfig, RejectReason, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
