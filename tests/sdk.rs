//! The real OpenTelemetry Rust SDK (`opentelemetry-otlp` exporters) sends one flow of each
//! kind, plus clean flows, into a running `toctou run` over each transport; the findings API
//! must then hold exactly the expected findings with their evidence.

mod common;

use common::otel_sdk::{sdk, send_scenario, Transport};
use common::{kinds, Toctou};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

fn by_kind(findings: &[Value]) -> BTreeMap<String, Value> {
    findings
        .iter()
        .map(|f| (f["kind"].as_str().unwrap().to_string(), f.clone()))
        .collect()
}

async fn scenario_over(transport: Transport) {
    let toctou = Toctou::start(&["--pair-ttl", "1s", "--allowed-lateness", "300ms"]);
    let sdk = {
        // The gRPC exporter needs a Tokio runtime, which this test is in.
        sdk(&toctou, transport)
    };
    let t0 = SystemTime::now() - Duration::from_secs(1);
    let sender = std::thread::spawn(move || {
        send_scenario(&sdk, t0);
        sdk
    });
    let sdk = tokio::task::spawn_blocking(move || sender.join().unwrap())
        .await
        .unwrap();

    let want: BTreeMap<String, usize> = [
        "authz_drift",
        "duplicate_use",
        "orphan_check",
        "partial_create",
        "stale_check",
        "unchecked_use",
    ]
    .iter()
    .map(|k| (k.to_string(), 1))
    .collect();
    toctou
        .wait_for(Duration::from_secs(20), |f| kinds(f) == want)
        .await;
    // Nothing more arrives once every timer has fired.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let findings = toctou.findings().await;
    assert_eq!(kinds(&findings), want, "over {transport:?}: {findings:#?}");

    let f = by_kind(&findings);
    let stale = &f["stale_check"];
    assert_eq!(stale["resource"], "inventory/sku-1");
    assert_eq!(stale["request_id"], "stale-a");
    assert_eq!(stale["service"], "shop");
    assert_eq!(stale["checked_version"], "1");
    assert_eq!(stale["used_version"], "2");
    assert_eq!(stale["intervening"][0]["version"], "2");
    assert_eq!(stale["intervening"][0]["request_id"], "stale-b");
    assert!(stale["race_window_ns"].as_u64().unwrap() >= 17_000_000);
    assert_eq!(stale["trace_id"].as_str().unwrap().len(), 32);
    assert_eq!(stale["check_span_id"].as_str().unwrap().len(), 16);
    assert_eq!(stale["use_span_id"].as_str().unwrap().len(), 16);

    let dup = &f["duplicate_use"];
    assert_eq!(dup["request_id"], "dup-2");
    assert_eq!(dup["idempotency_key"], "evt-42");
    assert_eq!(dup["prior_use"]["request_id"], "dup-1");
    assert_eq!(f["unchecked_use"]["request_id"], "nocheck");
    assert_eq!(f["authz_drift"]["policy"], "policies/docs");
    assert_eq!(f["authz_drift"]["policy_version"], "3");
    assert_eq!(f["partial_create"]["resource"], "claims/ns/pod-1");
    assert_eq!(f["orphan_check"]["request_id"], "orphan");
    assert_eq!(f["orphan_check"]["severity"], "info");

    assert_eq!(
        toctou
            .metric("toctou_findings_total{kind=\"stale_check\"}")
            .await,
        1.0
    );
    assert!(toctou.metric("toctou_pairs_total").await >= 6.0);
    assert_eq!(
        toctou
            .metric(
                "toctou_service_findings_total{service=\"shop\",operation=\"reserve\",kind=\"stale_check\"}"
            )
            .await,
        1.0
    );
    // The same findings went to the JSON lines output.
    let lines = std::fs::read_to_string(&toctou.findings_file).unwrap();
    assert_eq!(lines.lines().count(), 6, "{lines}");

    let _ = tokio::task::spawn_blocking(move || {
        let _ = sdk.traces.shutdown();
        let _ = sdk.logs.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_over_grpc() {
    scenario_over(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_over_http_protobuf() {
    scenario_over(Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_over_http_json() {
    scenario_over(Transport::HttpJson).await;
}
