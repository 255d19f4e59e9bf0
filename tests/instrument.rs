//! `toctou-instrument` end to end: flows written with its builders, exported by the real
//! OpenTelemetry SDK over OTLP (gRPC and HTTP/protobuf) into a running `toctou run`; the
//! findings API must hold exactly the findings the flows make, with the attributes the
//! crate set (request ids, versions, idempotency key, policy, source).

mod common;

use common::otel_sdk::{sdk, Sdk, Transport};
use common::{kinds, Toctou};
use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::trace::{TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::Context;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use toctou_instrument::{audit, check, use_, Action, Source};

/// Time for the check's end to be clearly before the use's start, and the audit between.
fn tick() {
    std::thread::sleep(Duration::from_millis(3));
}

/// Sends the flows; returns the trace id of the one whose request id is left to default.
fn send_flows(sdk: &Sdk) -> String {
    let tracer = sdk.traces.tracer("instrument-test");
    let logger = sdk.logs.logger("instrument-test");

    // stale_check: checked v1, another request's committed write made v2, the use acted on v2.
    let c = check(&tracer, "inventory/sku-1")
        .request_id("stale-a")
        .source(Source::Replica)
        .version(1)
        .allow();
    tick();
    audit(&logger, Action::Update, "inventory/sku-1")
        .version(2)
        .request_id("stale-b")
        .emit();
    tick();
    c.use_("reserve").version(2).ok();

    // duplicate_use: one payment event delivered twice, both pass the check, both charge.
    let checks: Vec<_> = ["dup-1", "dup-2"]
        .iter()
        .map(|req| {
            check(&tracer, "payments/evt-42")
                .request_id(*req)
                .idempotency_key("evt-42")
                .version(0)
                .allow()
        })
        .collect();
    tick();
    for (n, c) in checks.iter().enumerate() {
        c.use_("charge").version(n).ok();
        tick();
    }

    // unchecked_use: a legacy job writes without a check.
    use_(&tracer, "inventory/sku-2", "restock")
        .request_id("nocheck")
        .version(5)
        .ok();

    // authz_drift twice: the policy changed before the edit; and an edit refused (403).
    let c = check(&tracer, "docs/doc-1")
        .request_id("authz-policy")
        .policy("policies/docs", 3)
        .version(1)
        .allow();
    tick();
    audit(&logger, Action::PolicyChange, "policies/docs")
        .version(4)
        .request_id("admin")
        .emit();
    tick();
    c.use_("edit").version(1).ok();
    let c = check(&tracer, "docs/doc-2")
        .request_id("authz-403")
        .policy("policies/docs", 4)
        .version(1)
        .allow();
    tick();
    c.use_("edit").version(1).denied();

    // partial_create: claims finalize (pod-0), pod-1 is created and never finalized.
    audit(&logger, Action::Finalize, "claims/ns/pod-0")
        .version(3)
        .emit();
    let c = check(&tracer, "claims/ns/pod-1")
        .request_id("create")
        .version(0)
        .allow();
    tick();
    c.use_("create").version(0).ok();
    audit(&logger, Action::Create, "claims/ns/pod-1")
        .version(1)
        .request_id("create")
        .emit();

    // orphan_check: allowed, never used.
    let _orphan = check(&tracer, "inventory/sku-3")
        .request_id("orphan")
        .version(7)
        .allow();

    // No finding: a fresh pair, a race caught by compare-and-swap, a denied check nobody
    // used, a check dropped while reading (failed: it denied, it is no orphan).
    let c = check(&tracer, "inventory/sku-4")
        .request_id("clean")
        .version(3)
        .allow();
    tick();
    c.use_("reserve").version(3).ok();
    let c = check(&tracer, "inventory/sku-4")
        .request_id("caught")
        .version(3)
        .allow();
    tick();
    c.use_("reserve").version(3).conflict();
    let _ = check(&tracer, "inventory/sku-5")
        .request_id("denied")
        .version(1)
        .deny();
    {
        let _reading = check(&tracer, "inventory/sku-6").request_id("dropped");
    }

    // The request id left to default: check and use pair by the request's trace id, and
    // the use acted on another version: a stale_check whose request id is that trace id.
    let request = tracer.start("POST /cart/reserve");
    let cx = Context::current_with_span(request);
    let trace_id = cx.span().span_context().trace_id().to_string();
    let c = check(&tracer, "inventory/sku-7")
        .context(&cx)
        .version(10)
        .allow();
    tick();
    c.use_("reserve").version(11).ok();
    cx.span().end();

    sdk.traces.force_flush().expect("flushing spans");
    sdk.logs.force_flush().expect("flushing logs");
    trace_id
}

fn by_request(findings: &[Value]) -> BTreeMap<String, Value> {
    findings
        .iter()
        .map(|f| (f["request_id"].as_str().unwrap().to_string(), f.clone()))
        .collect()
}

async fn flows_over(transport: Transport) {
    let toctou = Toctou::start(&["--pair-ttl", "1s", "--allowed-lateness", "300ms"]);
    let sdk = sdk(&toctou, transport);
    let (sdk, trace_id) = tokio::task::spawn_blocking(move || {
        let trace_id = send_flows(&sdk);
        (sdk, trace_id)
    })
    .await
    .unwrap();

    let want: BTreeMap<String, usize> = [
        ("authz_drift", 2),
        ("duplicate_use", 1),
        ("orphan_check", 1),
        ("partial_create", 1),
        ("stale_check", 2),
        ("unchecked_use", 1),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), *n))
    .collect();
    toctou
        .wait_for(Duration::from_secs(20), |f| kinds(f) == want)
        .await;
    // Nothing more arrives once every timer has fired.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let findings = toctou.findings().await;
    assert_eq!(kinds(&findings), want, "over {transport:?}: {findings:#?}");

    let f = by_request(&findings);
    let stale = &f["stale-a"];
    assert_eq!(stale["kind"], "stale_check");
    assert_eq!(stale["checked_version"], "1");
    assert_eq!(stale["used_version"], "2");
    assert_eq!(stale["check_source"], "replica");
    assert_eq!(stale["operation"], "reserve");
    assert_eq!(stale["intervening"][0]["request_id"], "stale-b");
    assert_eq!(stale["service"], "shop");
    let dup = &f["dup-2"];
    assert_eq!(dup["kind"], "duplicate_use");
    assert_eq!(dup["idempotency_key"], "evt-42");
    assert_eq!(dup["prior_use"]["request_id"], "dup-1");
    assert_eq!(f["nocheck"]["kind"], "unchecked_use");
    assert_eq!(f["authz-policy"]["kind"], "authz_drift");
    assert_eq!(f["authz-policy"]["policy"], "policies/docs");
    assert_eq!(f["authz-policy"]["policy_version"], "3");
    assert_eq!(f["authz-403"]["kind"], "authz_drift");
    assert_eq!(f["create"]["kind"], "partial_create");
    assert_eq!(f["create"]["resource"], "claims/ns/pod-1");
    assert_eq!(f["orphan"]["kind"], "orphan_check");
    let defaulted = &f[&trace_id];
    assert_eq!(defaulted["kind"], "stale_check");
    assert_eq!(defaulted["trace_id"], trace_id);
    assert_eq!(defaulted["resource"], "inventory/sku-7");

    assert_eq!(toctou.metric("toctou_prevented_races_total").await, 1.0);

    let _ = tokio::task::spawn_blocking(move || {
        let _ = sdk.traces.shutdown();
        let _ = sdk.logs.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrumented_flows_over_grpc() {
    flows_over(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrumented_flows_over_http_protobuf() {
    flows_over(Transport::HttpProtobuf).await;
}
