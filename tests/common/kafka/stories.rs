//! The test stream and its oracle: per resource a short story (clean, stale by versions or
//! by an audit write, unchecked, orphaned, duplicated, or a policy change in between), sent
//! through the collectors with retries, and `toctou replay` over exactly the bytes sent as
//! the judge of which findings ClickHouse must hold.

use super::{temp_dir, LATENESS, PAIR_TTL};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn hex(seed: u64, bytes: usize) -> String {
    // splitmix64: distinct, deterministic ids with no dependency.
    let mut out = String::new();
    let mut x = seed;
    while out.len() < bytes * 2 {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.push_str(&format!("{z:016x}"));
    }
    out.truncate(bytes * 2);
    out
}

fn attr(k: &str, v: Value) -> Value {
    match v {
        Value::Number(n) => json!({"key": k, "value": {"intValue": n.to_string()}}),
        Value::Bool(b) => json!({"key": k, "value": {"boolValue": b}}),
        other => json!({"key": k, "value": {"stringValue": other}}),
    }
}

/// One span of a step, placed `at_ms` after the step's first send.
struct SpanSpec {
    request: u64,
    phase: &'static str,
    at_ms: u64,
    attrs: Vec<(&'static str, Value)>,
}

enum Step {
    Spans {
        service: &'static str,
        spans: Vec<SpanSpec>,
    },
    Audit {
        service: &'static str,
        at_ms: u64,
        attrs: Vec<(&'static str, Value)>,
    },
}

impl Step {
    /// The OTLP/JSON request, with times relative to `base_ns`; and its path.
    fn render(&self, base_ns: u64) -> (&'static str, String) {
        let ns = |ms: u64| (base_ns + ms * 1_000_000).to_string();
        match self {
            Step::Spans { service, spans } => {
                let spans: Vec<Value> = spans
                    .iter()
                    .map(|s| {
                        let mut attrs = vec![attr("toctou.phase", json!(s.phase))];
                        attrs.extend(s.attrs.iter().map(|(k, v)| attr(k, v.clone())));
                        json!({
                            "traceId": hex(s.request, 16),
                            "spanId": hex(s.request * 1000 + s.at_ms + 7, 8),
                            "name": s.phase,
                            "kind": 1,
                            "startTimeUnixNano": ns(s.at_ms),
                            "endTimeUnixNano": ns(s.at_ms + 2),
                            "attributes": attrs,
                        })
                    })
                    .collect();
                let body = json!({"resourceSpans": [{
                    "resource": {"attributes": [attr("service.name", json!(service))]},
                    "scopeSpans": [{"scope": {"name": "kafka-test"}, "spans": spans}]
                }]});
                ("/v1/traces", body.to_string())
            }
            Step::Audit {
                service,
                at_ms,
                attrs,
            } => {
                let rec = json!({
                    "timeUnixNano": ns(*at_ms),
                    "observedTimeUnixNano": ns(*at_ms + 1),
                    "severityNumber": 9,
                    "body": {"stringValue": "audit"},
                    "attributes": attrs.iter().map(|(k, v)| attr(k, v.clone())).collect::<Vec<_>>(),
                });
                let body = json!({"resourceLogs": [{
                    "resource": {"attributes": [attr("service.name", json!(service))]},
                    "scopeLogs": [{"scope": {"name": "kafka-test"}, "logRecords": [rec]}]
                }]});
                ("/v1/logs", body.to_string())
            }
        }
    }
}

/// The requests of resource `i`'s story; which race (if any) depends on `i % 7`.
fn story(i: u64) -> Vec<Step> {
    let r = format!("inventory/sku-{i}");
    let res = |v: u64| {
        vec![
            ("toctou.resource", json!(r.clone())),
            ("toctou.resource.version", json!(v)),
        ]
    };
    let a = i * 10 + 1;
    let b = i * 10 + 2;
    let span = |request, phase, at_ms, attrs| SpanSpec {
        request,
        phase,
        at_ms,
        attrs,
    };
    let with = |mut v: Vec<(&'static str, Value)>, extra: Vec<(&'static str, Value)>| {
        v.extend(extra);
        v
    };
    match i % 7 {
        // Clean: check and use on the same version.
        0 => vec![Step::Spans {
            service: "shop",
            spans: vec![span(a, "check", 0, res(1)), span(a, "use", 10, res(1))],
        }],
        // Stale by versions: checked 1, acted on 2.
        1 => vec![Step::Spans {
            service: "shop",
            spans: vec![span(a, "check", 0, res(1)), span(a, "use", 10, res(2))],
        }],
        // Stale by an audit write of another request in between.
        2 => vec![
            Step::Spans {
                service: "shop",
                spans: vec![span(a, "check", 0, res(1))],
            },
            Step::Audit {
                service: "db",
                at_ms: 5,
                attrs: with(
                    res(2),
                    vec![
                        ("toctou.audit.action", json!("update")),
                        ("toctou.request_id", json!(hex(b, 16))),
                    ],
                ),
            },
            Step::Spans {
                service: "shop",
                spans: vec![span(a, "use", 10, res(1))],
            },
        ],
        // Unchecked use.
        3 => vec![Step::Spans {
            service: "shop",
            spans: vec![span(a, "use", 0, res(1))],
        }],
        // Orphan check.
        4 => vec![Step::Spans {
            service: "shop",
            spans: vec![span(a, "check", 0, res(1))],
        }],
        // Duplicate use of one idempotency key by two requests.
        5 => {
            let key = |v| {
                with(
                    res(v),
                    vec![("toctou.idempotency_key", json!(format!("key-{i}")))],
                )
            };
            vec![Step::Spans {
                service: "pay",
                spans: vec![
                    span(a, "check", 0, key(1)),
                    span(a, "use", 5, key(1)),
                    span(b, "check", 10, key(1)),
                    span(b, "use", 15, key(1)),
                ],
            }]
        }
        // Authorization drift: the policy the check evaluated changes before the use. The
        // policy's partition is not the resource's: the collector broadcasts the change.
        _ => {
            let policy = format!("policies/p-{i}");
            let pol = |v: &str| {
                with(
                    res(1),
                    vec![
                        ("toctou.policy", json!(policy.clone())),
                        ("toctou.policy.version", json!(v)),
                    ],
                )
            };
            vec![
                Step::Spans {
                    service: "docs",
                    spans: vec![span(a, "check", 0, pol("3"))],
                },
                Step::Audit {
                    service: "iam",
                    at_ms: 5,
                    attrs: vec![
                        ("toctou.audit.action", json!("policy_change")),
                        ("toctou.resource", json!(policy.clone())),
                        ("toctou.resource.version", json!("4")),
                        ("toctou.actor", json!("admin")),
                    ],
                },
                Step::Spans {
                    service: "docs",
                    spans: vec![span(a, "use", 10, pol("3"))],
                },
            ]
        }
    }
}

/// How long a story sender keeps retrying one request. The longest outage a test makes
/// lasts well under a minute; a collector must take requests again within the delivery
/// timeout of Kafka's return (60 s in these tests), plus the time it takes to notice a
/// producer that cannot deliver and replace it.
pub const ACK_DEADLINE: Duration = Duration::from_secs(240);

/// What a sender saw.
#[derive(Debug, Default)]
pub struct SendReport {
    pub requests: u64,
    /// 503/429 answers and refused connections, each retried.
    pub retryable: u64,
}

/// Sends the stories of resources `0..n` through the collectors' OTLP/HTTP ports, one
/// sequential sender per collector (resources split between them), paced by `gap` between
/// stories; every request is retried until accepted. Times are taken at each request's
/// first send, so they follow the wall clock like real traffic. Returns the requests as sent (the oracle's
/// input) and what the senders saw. `progress` counts stories completed.
/// Waits (up to 60 s) until `send_stories` has sent `n` stories.
pub async fn wait_for_progress(progress: &AtomicU64, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while progress.load(std::sync::atomic::Ordering::Relaxed) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream did not get going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn send_stories(
    n: u64,
    collectors: Vec<SocketAddr>,
    gap: Duration,
    progress: Arc<AtomicU64>,
) -> (Vec<String>, SendReport) {
    send_stories_until(n, collectors, gap, progress, Arc::default()).await
}

/// `send_stories`, where each sender also stops before its next story once `stop` is set,
/// for tests whose faults take longer than any fixed stream would last.
pub async fn send_stories_until(
    n: u64,
    collectors: Vec<SocketAddr>,
    gap: Duration,
    progress: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<String>, SendReport) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let retryable = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (k, addr) in collectors.iter().copied().enumerate() {
        let (sent, retryable, requests, progress, stop) = (
            sent.clone(),
            retryable.clone(),
            requests.clone(),
            progress.clone(),
            stop.clone(),
        );
        let stride = collectors.len() as u64;
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut i = k as u64;
            while i < n && !stop.load(Ordering::Relaxed) {
                for step in story(i) {
                    // Each request is timed when first sent, as an instrumented service would
                    // time it: a request held up by an outage keeps its times, the next ones
                    // are later, and `toctou replay` over the same bytes sees the same gaps.
                    let (path, body) = step.render(now_ns());
                    let url = format!("http://{addr}{path}");
                    // A transport error (the receiver restarting) is retried like a push-back,
                    // but not forever: a collector that never takes the request again fails
                    // the test instead of hanging it.
                    let retry = async {
                        while post_acked(&client, &url, &body, &retryable, 200)
                            .await
                            .is_err()
                        {
                            retryable.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    };
                    if tokio::time::timeout(ACK_DEADLINE, retry).await.is_err() {
                        panic!(
                            "collector {addr} did not acknowledge a request for {ACK_DEADLINE:?}"
                        );
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                    sent.lock().unwrap().push(body);
                }
                progress.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(gap).await;
                i += stride;
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender task");
    }
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let report = SendReport {
        requests: requests.load(Ordering::Relaxed),
        retryable: retryable.load(Ordering::Relaxed),
    };
    (sent, report)
}

/// Sends the stories of resources `0, 1, 2, ...` from `tasks` concurrent senders (sender k
/// takes resources k, k + tasks, ...) to one OTLP/HTTP receiver, as fast as it answers,
/// until it stops answering: a request answered 2xx is acknowledged and recorded (the
/// oracle's input, in the order acknowledged); 503 and 429 are retried; anything else
/// (refused or reset connections: the receiver is going away) ends that sender, and the rest
/// of its story is never sent. `progress` counts stories completed.
pub async fn send_until_refused(
    addr: SocketAddr,
    tasks: u64,
    progress: Arc<AtomicU64>,
) -> (Vec<String>, SendReport) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let retryable = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for k in 0..tasks {
        let (acked, retryable, progress) = (acked.clone(), retryable.clone(), progress.clone());
        handles.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let mut i = k;
            loop {
                for step in story(i) {
                    let (path, body) = step.render(now_ns());
                    let url = format!("http://{addr}{path}");
                    if post_acked(&client, &url, &body, &retryable, 50)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    acked.lock().unwrap().push(body);
                }
                progress.fetch_add(1, Ordering::Relaxed);
                i += tasks;
            }
        }));
    }
    for h in handles {
        h.await.expect("sender task");
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let report = SendReport {
        requests: acked.len() as u64,
        retryable: retryable.load(Ordering::Relaxed),
    };
    (acked, report)
}

/// Posts one OTLP/JSON request until it is acknowledged (2xx), retrying 503 and 429 after
/// `retry_ms` (counted in `retryable`); any other answer fails the test. `Err` is a transport
/// error, which each sender treats its own way.
async fn post_acked(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    retryable: &AtomicU64,
    retry_ms: u64,
) -> Result<(), reqwest::Error> {
    loop {
        let r = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await?;
        if r.status().is_success() {
            return Ok(());
        }
        if r.status() == 503 || r.status() == 429 {
            retryable.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(retry_ms)).await;
        } else {
            panic!("receiver answered {}: {:?}", r.status(), r.text().await);
        }
    }
}

/// Spans and audit records in OTLP/JSON requests as `story` renders them.
pub fn count_events(requests: &[String]) -> u64 {
    requests
        .iter()
        .map(|r| {
            (r.matches("\"toctou.phase\"").count() + r.matches("\"toctou.audit.action\"").count())
                as u64
        })
        .sum()
}

pub use toctou_schema::now_ns;

/// The findings (id, kind) `toctou replay` reports for the requests sent: what the
/// distributed pipeline must store, no more and no less.
pub fn expected_findings(requests: &[String]) -> BTreeSet<(String, String)> {
    expected_findings_with_lateness(requests, LATENESS)
}

pub fn expected_findings_with_lateness(
    requests: &[String],
    lateness: &str,
) -> BTreeSet<(String, String)> {
    let dir = temp_dir("oracle");
    let file = dir.join("sent.jsonl");
    std::fs::write(&file, requests.join("\n") + "\n").unwrap();
    // To look into a failure: the exact requests, replayable with `toctou replay`.
    if let Some(keep) = std::env::var_os("TOCTOU_KAFKA_TEST_KEEP") {
        std::fs::copy(&file, keep).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_toctou"))
        .args([
            "replay",
            "--pair-ttl",
            PAIR_TTL,
            "--allowed-lateness",
            lateness,
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "toctou replay: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    super::super::ids_and_kinds(&String::from_utf8(out.stdout).unwrap())
}

/// Waits (up to `timeout`) for the expected findings in ClickHouse, then asserts that it
/// holds exactly them, each once under FINAL; `context` (the nodes' logs) explains a
/// difference.
pub async fn assert_stored_exactly(
    url: &str,
    db: &str,
    expected: &BTreeSet<(String, String)>,
    timeout: Duration,
    context: impl Fn() -> String,
) {
    let (stored, rows) = wait_for_findings(url, db, expected, timeout).await;
    assert_eq!(
        &stored,
        expected,
        "{}\n{}",
        diff(expected, &stored),
        context()
    );
    assert_eq!(
        rows,
        expected.len() as u64,
        "a finding stored twice under FINAL"
    );
}

/// Polls ClickHouse until it holds every expected finding (or `timeout`), then returns the
/// stored set and the row count under FINAL.
pub async fn wait_for_findings(
    url: &str,
    db: &str,
    expected: &BTreeSet<(String, String)>,
    timeout: Duration,
) -> (BTreeSet<(String, String)>, u64) {
    let deadline = Instant::now() + timeout;
    loop {
        let rows =
            super::super::clickhouse::sql(url, db, "SELECT id, kind FROM findings FINAL").await;
        let set: BTreeSet<(String, String)> = rows
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        if expected.is_subset(&set) || Instant::now() > deadline {
            // A moment more, so that a late extra finding has time to show up too.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let rows =
                super::super::clickhouse::sql(url, db, "SELECT id, kind FROM findings FINAL").await;
            let set = rows
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect();
            return (set, rows.lines().count() as u64);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Describes the difference between two finding sets by kind, for assertion messages.
pub fn diff(expected: &BTreeSet<(String, String)>, stored: &BTreeSet<(String, String)>) -> String {
    let missing: Vec<_> = expected.difference(stored).collect();
    let extra: Vec<_> = stored.difference(expected).collect();
    fn count(v: &[&(String, String)]) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for (_, k) in v {
            *m.entry(k.clone()).or_default() += 1;
        }
        m
    }
    format!(
        "expected {} findings, stored {}; missing {:?}; extra {:?}\nmissing ids: {:?}\nextra ids: {:?}",
        expected.len(),
        stored.len(),
        count(&missing),
        count(&extra),
        missing.iter().take(20).collect::<Vec<_>>(),
        extra.iter().take(20).collect::<Vec<_>>()
    )
}
