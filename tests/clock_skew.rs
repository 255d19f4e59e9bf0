//! A producer whose clock runs ten minutes fast, through `toctou run` over OTLP/HTTP: with
//! the clock-skew bound (the default `--max-clock-skew 10s`) its events are ordered by
//! arrival and counted, the other producer's pairs join as usual (no false orphan_check or
//! unchecked_use, nothing late), and both producers' races are found. The same traffic with
//! the bound off (`--max-clock-skew 0`) shows what it prevents: the fast clock drags the
//! watermark ten minutes ahead and the correct producer's pending checks expire at once.
//! A producer ten minutes slow is counted as a past outlier.

mod common;

use common::{kinds, Toctou};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

const MIN: u64 = 60_000_000_000;

use toctou_schema::now_ns;

fn attr(k: &str, v: &str) -> Value {
    json!({"key": k, "value": {"stringValue": v}})
}

/// One OTLP/JSON traces request with one check or use span by `service` at `at_ns`.
fn span(
    service: &str,
    request: u8,
    phase: &str,
    resource: &str,
    version: &str,
    at_ns: u64,
) -> String {
    let start = if phase == "check" {
        at_ns - 1_000_000
    } else {
        at_ns
    };
    json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", service)]},
        "scopeSpans": [{"scope": {"name": "skew-test"}, "spans": [{
            "traceId": format!("{request:02x}").repeat(16),
            "spanId": format!("{:02x}", if phase == "check" { 1 } else { 2 }).repeat(8),
            "name": phase,
            "kind": 1,
            "startTimeUnixNano": start.to_string(),
            "endTimeUnixNano": (start + 1_000_000).to_string(),
            "attributes": [
                attr("toctou.phase", phase),
                attr("toctou.resource", resource),
                attr("toctou.resource.version", version),
            ],
        }]}]
    }]})
    .to_string()
}

async fn post(client: &reqwest::Client, toctou: &Toctou, body: String) {
    let resp = client
        .post(toctou.http_url("/v1/traces"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
}

/// The traffic, sent to both processes at once: a correct `shop` (a clean pair on sku-1, a
/// stale one on sku-2), a `fast` producer ten minutes ahead (a stale pair on sku-9) whose
/// events arrive between shop's checks and uses, and one use from a `slow` producer ten
/// minutes behind.
async fn send(targets: &[&Toctou]) {
    let client = reqwest::Client::new();
    let t = now_ns();
    let all = |body: String| {
        let client = client.clone();
        async move {
            for toctou in targets {
                post(&client, toctou, body.clone()).await;
            }
        }
    };
    all(span("shop", 1, "check", "inventory/sku-1", "1", t)).await;
    all(span("shop", 2, "check", "inventory/sku-2", "1", t)).await;
    let f = now_ns() + 10 * MIN;
    all(span("fast", 9, "check", "inventory/sku-9", "4", f)).await;
    all(span(
        "fast",
        9,
        "use",
        "inventory/sku-9",
        "5",
        f + 5_000_000,
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let u = now_ns();
    all(span("shop", 1, "use", "inventory/sku-1", "1", u)).await;
    all(span("shop", 2, "use", "inventory/sku-2", "2", u)).await;
    all(span(
        "slow",
        7,
        "use",
        "inventory/sku-7",
        "1",
        now_ns() - 10 * MIN,
    ))
    .await;
}

/// Findings by (service, resource, kind).
fn by_resource(findings: &[Value]) -> BTreeMap<(String, String, String), usize> {
    let mut m = BTreeMap::new();
    for f in findings {
        *m.entry((
            f["service"].as_str().unwrap_or("?").to_owned(),
            f["resource"].as_str().unwrap_or("?").to_owned(),
            f["kind"].as_str().unwrap_or("?").to_owned(),
        ))
        .or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_producer_cannot_expire_the_others_state() {
    let flags = ["--pair-ttl", "2s", "--allowed-lateness", "500ms"];
    let bounded = Toctou::start(&flags);
    let unbounded = Toctou::start(&[&flags[..], &["--max-clock-skew", "0"]].concat());
    send(&[&bounded, &unbounded]).await;

    // Shop's pairs are decided within the lateness; give orphans (a pending check expires
    // after 2 TTLs of 2 s once the idle watermark moves on) ample time to show up too.
    let found = bounded
        .wait_for(Duration::from_secs(20), |f| {
            kinds(f).get("stale_check") == Some(&2)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let found_later = bounded.findings().await;
    assert_eq!(found.len(), found_later.len(), "{found_later:#?}");
    let got = by_resource(&found_later);
    let want: BTreeMap<(String, String, String), usize> = [
        ("shop", "inventory/sku-2", "stale_check"),
        ("fast", "inventory/sku-9", "stale_check"),
        ("slow", "inventory/sku-7", "unchecked_use"),
    ]
    .into_iter()
    .map(|(s, r, k)| ((s.to_owned(), r.to_owned(), k.to_owned()), 1))
    .collect();
    assert_eq!(got, want, "{found_later:#?}\nlog:\n{}", bounded.log());
    // The fast producer's finding keeps its own times as evidence.
    let fast = found_later.iter().find(|f| f["service"] == "fast").unwrap();
    assert!(fast["use_time_ns"].as_u64().unwrap() > now_ns() + 9 * MIN);

    assert_eq!(
        bounded
            .metric("toctou_clock_skew_events_total{direction=\"future\"}")
            .await,
        2.0
    );
    assert_eq!(
        bounded
            .metric("toctou_clock_skew_events_total{direction=\"past\"}")
            .await,
        1.0
    );
    // Only the slow producer's use was late.
    assert_eq!(bounded.metric("toctou_late_events_total").await, 1.0);

    // Without the bound the fast clock moved the watermark ten minutes ahead: shop's checks
    // expired as orphans before their uses came, and the uses were late and unchecked.
    let without = unbounded.findings().await;
    let got = by_resource(&without);
    for r in ["inventory/sku-1", "inventory/sku-2"] {
        for k in ["orphan_check", "unchecked_use"] {
            assert_eq!(
                got.get(&("shop".to_owned(), r.to_owned(), k.to_owned())),
                Some(&1),
                "{r} {k} without the bound: {without:#?}"
            );
        }
    }
    assert_eq!(
        unbounded
            .metric("toctou_clock_skew_events_total{direction=\"future\"}")
            .await,
        0.0
    );
    assert!(unbounded.metric("toctou_late_events_total").await >= 3.0);
}
