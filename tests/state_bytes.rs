//! Issue 30, state bounded in bytes: attacks on a real `toctou run` over loopback, with its
//! default limits, while both cores are busy. Each attack is bounded in count and time; the
//! process must stay up, keep answering `/healthz` and a legitimate API client, and keep
//! its peak RSS (VmHWM) under the bound RELIABILITY.md states.

mod common;

use common::Toctou;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Resources attacked; each ends in one `stale_check` finding with [`WRITES`] writes.
const RESOURCES: usize = 16;
/// Writes between each check and its use: as many as an evidence list may hold by count.
const WRITES: usize = 100;
/// The receivers' longest value (collector/src/attrs.rs, MAX_VALUE_BYTES).
const VALUE: usize = 4096;
/// Peak RSS bound of the debug binary through this attack (RELIABILITY.md; measured 93-135 MiB).
/// Before evidence was capped in bytes each finding held 100 × 12 KiB of evidence (1.2 MB),
/// and each of the eight greedy answers built all of them three times over (a JSON value,
/// its text, the escaped text) under the store's read lock.
const PEAK_RSS_BOUND: u64 = 200 << 20;

use toctou_schema::now_ns;

fn long(prefix: &str) -> String {
    let mut s = prefix.to_string();
    s.push_str(&"x".repeat(VALUE - prefix.len()));
    s
}

fn attr(key: &str, value: Value) -> Value {
    json!({ "key": key, "value": value })
}

fn span(phase: &str, resource: &str, request: &str, version: u64, at: u64, i: usize) -> Value {
    json!({"resourceSpans":[{"resource":{"attributes":[attr("service.name", json!({"stringValue":"shop"}))]},
    "scopeSpans":[{"scope":{"name":"attack"},"spans":[{
        "traceId": format!("{:032x}", i + 1),
        "spanId": format!("{:016x}", if phase == "check" { 2 * i + 1 } else { 2 * i + 2 }),
        "name": phase, "kind": 1,
        "startTimeUnixNano": at.to_string(), "endTimeUnixNano": (at + 1_000).to_string(),
        "attributes": [
            attr("toctou.phase", json!({"stringValue": phase})),
            attr("toctou.resource", json!({"stringValue": resource})),
            attr("toctou.resource.version", json!({"intValue": version.to_string()})),
            attr("toctou.request_id", json!({"stringValue": request})),
        ]}]}]}]})
}

/// [`WRITES`] updates of `resource` between `at` and the use, each with a request id and
/// actor at the value limit.
fn writes(resource: &str, i: usize, at: u64) -> Value {
    let records: Vec<Value> = (0..WRITES)
        .map(|k| {
            json!({
                "timeUnixNano": (at + 1_000 * (k as u64 + 1)).to_string(),
                "body": {"stringValue": "audit"},
                "attributes": [
                    attr("toctou.audit.action", json!({"stringValue": "update"})),
                    attr("toctou.resource", json!({"stringValue": resource})),
                    attr("toctou.resource.version", json!({"intValue": (k + 2).to_string()})),
                    attr("toctou.request_id", json!({"stringValue": long(&format!("w-{i}-{k}-"))})),
                    attr("toctou.actor", json!({"stringValue": long(&format!("a-{i}-{k}-"))})),
                ]
            })
        })
        .collect();
    json!({"resourceLogs":[{"resource":{"attributes":[attr("service.name", json!({"stringValue":"db"}))]},
        "scopeLogs":[{"scope":{"name":"attack"},"logRecords": records}]}]})
}

async fn post(client: &reqwest::Client, toctou: &Toctou, path: &str, body: &Value) {
    toctou.post_json(client, path, body.to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn findings_with_evidence_at_the_value_limit_and_greedy_readers_stay_bounded() {
    let _burner = common::burner::every_core();
    // A loaded debug build may take over a second per 1.2 MB request: the TTL and
    // lateness leave room for that, so each check still pairs with its use.
    let mut toctou = Toctou::start(&["--pair-ttl", "10s", "--allowed-lateness", "3s"]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);

    // Eight readers asking for everything, all the time (bounded by `stop` and the deadline).
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (client, url, stop) = (
            client.clone(),
            toctou.api_url("/api/v1/findings?limit=100000"),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut most = 0usize;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let body: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
                most = most.max(body["findings"].as_array().unwrap().len());
            }
            most
        }));
    }
    // A legitimate client: health and the latest five findings, each answered in time.
    let legit = {
        let (client, stop) = (client.clone(), stop.clone());
        let health = toctou.api_url("/healthz");
        let latest = toctou.api_url("/api/v1/findings?limit=5");
        tokio::spawn(async move {
            let (mut served, mut slowest) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for url in [&health, &latest] {
                    let t = Instant::now();
                    let resp = client.get(url).send().await.expect("legitimate request");
                    assert!(resp.status().is_success(), "{url}: {}", resp.status());
                    resp.bytes().await.unwrap();
                    slowest = slowest.max(t.elapsed());
                    served += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (served, slowest)
        })
    };

    let started = Instant::now();
    for i in 0..RESOURCES {
        let resource = long(&format!("inventory/{i}/"));
        let request = format!("req-{i}");
        let t = now_ns();
        post(
            &client,
            &toctou,
            "/v1/traces",
            &span("check", &resource, &request, 1, t, i),
        )
        .await;
        post(&client, &toctou, "/v1/logs", &writes(&resource, i, t)).await;
        let use_at = t + 1_000 * (WRITES as u64 + 10);
        let used = WRITES as u64 + 1;
        post(
            &client,
            &toctou,
            "/v1/traces",
            &span("use", &resource, &request, used, use_at, i),
        )
        .await;
    }

    let sent = Instant::now();
    let findings = loop {
        let f = toctou.findings().await;
        let kinds: Vec<&str> = f.iter().map(|f| f["kind"].as_str().unwrap()).collect();
        if kinds.iter().filter(|k| **k == "stale_check").count() >= RESOURCES {
            break f;
        }
        // Not the whole findings: their evidence is megabytes of test values.
        assert!(
            sent.elapsed() < Duration::from_secs(40),
            "after 40 s: {kinds:?}\n{}",
            toctou.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("sent in {:?}", sent.duration_since(started));
    stop.store(true, Ordering::Relaxed);
    let mut most = 0;
    for r in readers {
        most = most.max(r.await.unwrap());
    }
    let (served, slowest) = legit.await.unwrap();

    assert!(toctou.is_running(), "{}", toctou.log());
    assert!(most <= 1000, "a page held {most} findings");
    assert!(
        served > 10,
        "the legitimate client was served {served} times"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "slowest legitimate answer {slowest:?}"
    );
    let kinds: Vec<&str> = findings
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    eprintln!("findings: {kinds:?}");
    for f in findings.iter().filter(|f| f["kind"] == "stale_check") {
        let evidence = serde_json::to_string(&f["intervening"]).unwrap().len();
        assert!(evidence < 48 * 1024, "{evidence} bytes of evidence");
        assert!(
            f["reason"].as_str().unwrap().contains("left out)"),
            "{}",
            f["reason"]
        );
    }
    let resp = client
        .get(toctou.api_url("/api/v1/findings?since=2600-01-01T00:00:00Z"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        reqwest::StatusCode::BAD_REQUEST,
        "since past u64 ns"
    );
    let stored = toctou.metric("toctou_findings_stored_bytes").await;
    assert!(
        stored > 0.0 && stored < (RESOURCES * 64 * 1024) as f64,
        "{stored}"
    );
    let peak = toctou.peak_rss();
    eprintln!(
        "peak RSS {} MiB, slowest legitimate answer {slowest:?}",
        peak >> 20
    );
    assert!(peak < PEAK_RSS_BOUND, "peak RSS {} MiB", peak >> 20);
}

/// Pending checks whose strings are all at the value limit: 10,000 checks with eight
/// distinct 4 KiB values each (resource, request id, version, idempotency key, service,
/// operation, policy, policy version) are 328 MB of strings. Before the state had a byte
/// cap this took RSS up by 354 MB (while `toctou_check_state_bytes` said 172 B a check).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fat_pending_checks_stay_under_the_interned_bytes_cap() {
    /// Checks sent, 50 to a request (1.6 MB of JSON each).
    const CHECKS: usize = 10_000;
    const PER_REQUEST: usize = 50;
    /// The cap under test; the default is 256 MiB (docs/CORRELATOR.md, "Bytes").
    const CAP: u64 = 64 << 20;
    let _burner = common::burner::every_core();
    // The orphans these checks become are findings with the same strings: the store has a
    // cap of its own (`--max-findings-bytes`, tested above), kept small here.
    const FINDINGS_CAP: u64 = 16 << 20;
    let mut toctou = Toctou::start(&[
        "--max-interned-bytes",
        &CAP.to_string(),
        "--max-findings-bytes",
        &FINDINGS_CAP.to_string(),
    ]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let legit = {
        let (client, stop) = (client.clone(), stop.clone());
        let health = toctou.api_url("/healthz");
        tokio::spawn(async move {
            let (mut served, mut slowest) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let resp = client.get(&health).send().await.expect("/healthz");
                assert!(resp.status().is_success(), "/healthz: {}", resp.status());
                slowest = slowest.max(t.elapsed());
                served += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (served, slowest)
        })
    };

    let mut most_held = 0.0f64;
    let t0 = now_ns();
    for batch in 0..CHECKS / PER_REQUEST {
        let spans: Vec<Value> = (0..PER_REQUEST)
            .map(|k| {
                let i = batch * PER_REQUEST + k;
                let s = |what: &str| json!({ "stringValue": long(&format!("{what}-{i}-")) });
                let at = t0 + i as u64 * 1_000;
                json!({
                    "traceId": format!("{:032x}", i + 1),
                    "spanId": format!("{:016x}", i + 1),
                    "name": "check", "kind": 1,
                    "startTimeUnixNano": at.to_string(), "endTimeUnixNano": (at + 500).to_string(),
                    "attributes": [
                        attr("toctou.phase", json!({"stringValue": "check"})),
                        attr("toctou.resource", s("res")),
                        attr("toctou.request_id", s("req")),
                        attr("toctou.resource.version", s("ver")),
                        attr("toctou.idempotency_key", s("key")),
                        attr("toctou.operation", s("op")),
                        attr("toctou.policy", s("pol")),
                        attr("toctou.policy.version", s("polv")),
                    ]
                })
            })
            .collect();
        let service = long(&format!("svc-{batch}-"));
        let body = json!({"resourceSpans":[{"resource":{"attributes":[attr("service.name", json!({"stringValue": service}))]},
            "scopeSpans":[{"scope":{"name":"attack"},"spans": spans}]}]});
        post(&client, &toctou, "/v1/traces", &body).await;
        if batch % 20 == 0 {
            most_held = most_held.max(toctou.metric("toctou_interned_bytes").await);
        }
    }
    // Let the correlator take the last batches, then look again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    most_held = most_held.max(toctou.metric("toctou_interned_bytes").await);
    stop.store(true, Ordering::Relaxed);
    let (served, slowest) = legit.await.unwrap();

    assert!(toctou.is_running(), "{}", toctou.log());
    let evicted = toctou.metric("toctou_evicted_for_bytes_total").await;
    let limit = toctou.metric("toctou_interned_bytes_limit").await;
    let peak = toctou.peak_rss();
    eprintln!(
        "strings held at most {:.1} MiB (cap {} MiB), {evicted} evictions for bytes, \
         peak RSS {} MiB, /healthz served {served} times (slowest {slowest:?})",
        most_held / (1 << 20) as f64,
        CAP >> 20,
        peak >> 20
    );
    assert_eq!(limit, CAP as f64);
    assert!(most_held <= CAP as f64, "{most_held} bytes of strings held");
    assert!(
        evicted > 0.0,
        "nothing evicted: the attack did not reach the cap"
    );
    assert!(served > 10, "/healthz served {served} times");
    assert!(
        slowest < Duration::from_secs(5),
        "slowest /healthz {slowest:?}"
    );
    assert!(
        peak < CAP + FINDINGS_CAP + (136 << 20),
        "peak RSS {} MiB over caps of {} MiB (strings) and {} MiB (findings)",
        peak >> 20,
        CAP >> 20,
        FINDINGS_CAP >> 20
    );
}
