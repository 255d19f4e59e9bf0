//! Data for the dashboard and alert queries, made by the real pipeline: `toctou run
//! --clickhouse-url` writing into the 18.16 server (its own sink, its own inserts, the
//! schema's views making the rollups), fed either by `toctou demo` (racing workloads over
//! the OpenTelemetry SDK) or by golden scenarios of testdata/scenarios sent over OTLP/HTTP,
//! each repetition given fresh trace, span and resource ids and current times. The demo's
//! run also gets the database spans of a service with no toctou code, for inference's risks
//! (tests/common/db_spans.rs). The rows are then dumped as JSONEachRow for the chdb session.

use crate::common::db_spans::{self, BUY, BUY_LOCKED, SIGNUP};
use crate::common::{self, Toctou};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_toctou");
/// Short TTL and lateness, so TTL-decided kinds (partial creates) are decided in seconds.
const PAIR_TTL: &str = "2s";
const LATENESS: &str = "1s";
/// The service with no toctou code whose database spans the demo's run also gets.
pub const PLAIN_SERVICE: &str = "plain-shop";

/// What one run of the pipeline left in ClickHouse.
pub struct Dataset {
    pub name: String,
    /// The 18.16 database the sink wrote.
    pub db: String,
    /// Its `findings` and `events` rows, for chdb.
    pub dumps: Vec<(String, PathBuf)>,
    /// Every metric family /metrics served during the run.
    pub metrics: BTreeSet<String>,
    /// Finding rows by kind.
    pub kinds: BTreeMap<String, u64>,
    /// The requests of [`PLAIN_SERVICE`] sent (trace ids by route): the ground truth of the
    /// risks stored.
    pub plain: db_spans::Sent,
}

pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn server_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(common::clickhouse::server_url).clone()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Runs `toctou run` into a fresh database, lets `feed` send it data, waits for the
/// TTL-decided findings, stops it with SIGTERM (which flushes the sink) and dumps the rows.
fn pipeline(name: &str, feed: impl FnOnce(&Toctou)) -> Dataset {
    let url = server_url();
    let db = format!("toctou_grafana_{}_{name}", std::process::id());
    block_on(common::clickhouse::sql(
        &url,
        "default",
        &format!("DROP DATABASE IF EXISTS {db}"),
    ));
    let mut toctou = Toctou::start(
        &[
            &common::clickhouse::sink_flags(&url, &db)[..],
            &["--pair-ttl", PAIR_TTL, "--allowed-lateness", LATENESS],
        ]
        .concat(),
    );
    feed(&toctou);
    // Past the pair TTL plus lateness of the last event: the watermark advances while idle.
    std::thread::sleep(Duration::from_secs(5));
    let text = block_on(toctou.metrics());
    let metrics = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let status = toctou.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "toctou run did not stop cleanly: {status:?}\n{}",
        toctou.log()
    );

    // Under the target's scratch directory, one per dataset, overwritten by the next run.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("grafana-{name}"));
    std::fs::create_dir_all(&dir).expect("dump directory");
    let mut dumps = Vec::new();
    for table in ["findings", "events", "risks"] {
        let rows = block_on(dump(&url, &db, table));
        let path = dir.join(format!("{table}.jsonl"));
        std::fs::write(&path, rows).expect("writing a dump");
        dumps.push((table.to_string(), path));
    }
    let counted = block_on(common::clickhouse::sql(
        &url,
        &db,
        "SELECT kind, uniqExact(id) FROM findings GROUP BY kind ORDER BY kind",
    ));
    let kinds = counted
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, n)| (k.to_string(), n.parse().unwrap()))
        .collect();
    Dataset {
        name: name.to_string(),
        db,
        dumps,
        metrics,
        kinds,
        plain: db_spans::Sent::new(),
    }
}

async fn dump(url: &str, db: &str, table: &str) -> String {
    // Unquoted 64-bit integers: JSONEachRow input on the current engine takes them as is.
    let resp = reqwest::Client::new()
        .post(format!(
            "{url}/?database={db}&output_format_json_quote_64bit_integers=0"
        ))
        .body(format!("SELECT * FROM {table} FORMAT JSONEachRow"))
        .send()
        .await
        .expect("dumping a table");
    assert!(resp.status().is_success(), "dump of {table} refused");
    resp.text().await.expect("dump body")
}

/// The racing demo workloads for a few seconds, over OTLP/gRPC, and a plain service's
/// requests (two endpoints with a risk each, one locked), over OTLP/HTTP.
pub fn demo() -> Dataset {
    let mut plain = db_spans::Sent::new();
    let mut ds = pipeline("demo", |toctou| {
        let out = Command::new(BIN)
            .args(["demo", "--endpoint"])
            .arg(format!("http://{}", toctou.grpc))
            .arg("--api")
            .arg(format!("http://{}", toctou.api))
            .args(["--duration", "6s", "--pair-ttl", PAIR_TTL])
            .args(["--allowed-lateness", LATENESS])
            .output()
            .expect("running toctou demo");
        // The demo's own verdict (ground truth against findings) is its tests' business;
        // here only its traffic matters, and the findings are checked below.
        eprintln!(
            "toctou demo: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let plan = [(BUY, 5), (SIGNUP, 3), (BUY_LOCKED, 2)];
        block_on(db_spans::send(toctou, PLAIN_SERVICE, &plan, &mut plain));
    });
    ds.plain = plain;
    ds
}

/// One scenario of testdata/scenarios sent `times` times, optionally under other service
/// names.
pub struct Repeat<'a> {
    pub scenario: &'a str,
    pub times: usize,
    pub services: &'a [(&'a str, &'a str)],
}

/// Scenario inputs, repeated with fresh identities, sent in event-time order, 10
/// repetitions per OTLP request, ending a few seconds before now.
pub fn scenarios(name: &str, repeats: &[Repeat]) -> Dataset {
    let mut reps: Vec<Vec<Value>> = Vec::new();
    for r in repeats {
        let lines = std::fs::read_to_string(common::testdata(&format!(
            "testdata/scenarios/{}/input.jsonl",
            r.scenario
        )))
        .expect("scenario input");
        let requests: Vec<Value> = lines
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("scenario JSON"))
            .collect();
        for _ in 0..r.times {
            reps.push(
                requests
                    .iter()
                    .map(|req| {
                        let mut req = req.clone();
                        rename_services(&mut req, r.services);
                        req
                    })
                    .collect(),
            );
        }
    }
    // Interleave the scenarios (a repetition of each in turn), as production traffic would.
    let gap_ns: u64 = 10_000_000;
    let total = reps.len() as u64;
    let start_ns = (now_s() as u64 - 5) * 1_000_000_000 - total * gap_ns;
    let mut order: Vec<usize> = (0..reps.len()).collect();
    order.sort_by_key(|&i| (i * 7919) % reps.len().max(1));
    pipeline(name, |toctou| {
        block_on(async {
            let client = reqwest::Client::new();
            for (slot, chunk) in order.chunks(10).enumerate() {
                let mut spans = Vec::new();
                let mut logs = Vec::new();
                for (k, &i) in chunk.iter().enumerate() {
                    let n = (slot * 10 + k) as u64;
                    for req in &reps[i] {
                        let req = rewrite(req, i as u64, start_ns + n * gap_ns);
                        if let Some(rs) = req["resourceSpans"].as_array() {
                            spans.extend(rs.iter().cloned());
                        }
                        if let Some(rl) = req["resourceLogs"].as_array() {
                            logs.extend(rl.iter().cloned());
                        }
                    }
                }
                for (path, body) in [
                    ("/v1/traces", json!({ "resourceSpans": spans })),
                    ("/v1/logs", json!({ "resourceLogs": logs })),
                ] {
                    let resp = client
                        .post(toctou.http_url(path))
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .expect("sending OTLP/JSON");
                    assert!(resp.status().is_success(), "{path}: {}", resp.status());
                }
            }
        })
    })
}

fn rename_services(req: &mut Value, services: &[(&str, &str)]) {
    for list in ["resourceSpans", "resourceLogs"] {
        for r in req[list].as_array_mut().into_iter().flatten() {
            for a in r["resource"]["attributes"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                if a["key"] == "service.name" {
                    for (from, to) in services {
                        if a["value"]["stringValue"] == *from {
                            a["value"]["stringValue"] = json!(to);
                        }
                    }
                }
            }
        }
    }
}

fn hash(rep: u64, s: &str) -> u64 {
    xxhash(format!("{rep}/{s}").as_bytes())
}

/// FNV-1a: enough to give each repetition its own ids, stable from run to run.
fn xxhash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Fresh ids (trace and span ids, request ids that are trace ids, resources, policies and
/// idempotency keys) and times shifted so the scenario starts at `base_ns`; the time offsets
/// within the scenario are kept.
fn rewrite(req: &Value, rep: u64, base_ns: u64) -> Value {
    // Scenario times start at 2026-01-01T00:00:00Z.
    const SCENARIO_EPOCH_NS: u64 = 1_767_225_600_000_000_000;
    let trace = |old: &str| format!("{:016x}{:016x}", hash(rep, old), hash(rep + 1, old));
    let mut req = req.clone();
    fn walk(v: &mut Value, f: &mut dyn FnMut(&str, &mut Value)) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    f(k, child);
                    walk(child, f);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, f)),
            _ => {}
        }
    }
    walk(&mut req, &mut |key, value| match key {
        "traceId" => {
            let old = value.as_str().unwrap_or("").to_string();
            *value = json!(trace(&old));
        }
        "spanId" | "parentSpanId" => {
            let old = value.as_str().unwrap_or("").to_string();
            if !old.is_empty() {
                *value = json!(format!("{:016x}", hash(rep, &old)));
            }
        }
        "startTimeUnixNano" | "endTimeUnixNano" | "timeUnixNano" | "observedTimeUnixNano" => {
            let old: u64 = value.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
            let t = base_ns + old.saturating_sub(SCENARIO_EPOCH_NS);
            *value = json!(t.to_string());
        }
        _ => {}
    });
    // Attribute values that identify a resource, request or key.
    walk(&mut req, &mut |key, value| {
        if key != "attributes" {
            return;
        }
        for a in value.as_array_mut().into_iter().flatten() {
            let k = a["key"].as_str().unwrap_or("").to_string();
            let Some(s) = a["value"]["stringValue"].as_str().map(str::to_string) else {
                continue;
            };
            let new = match k.as_str() {
                "toctou.request_id" if is_hex(&s, 32) => trace(&s),
                "toctou.resource"
                | "toctou.policy"
                | "toctou.idempotency_key"
                | "toctou.request_id" => format!("{s}-r{rep}"),
                _ => continue,
            };
            a["value"]["stringValue"] = json!(new);
        }
    });
    req
}
