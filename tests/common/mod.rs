//! A real `toctou run` process for black-box tests: started on free loopback ports, found
//! through its start-up log line, killed when dropped (a [`process::Node`] underneath).

#![allow(dead_code)]

pub mod burner;
pub mod cdc;
pub mod clickhouse;
pub mod db_spans;
pub mod debezium;
pub mod demo;
pub mod kafka;
pub mod otel_sdk;
pub mod otelcol;
pub mod page;
pub mod process;

use process::Node;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Every listener of a node on a loopback port the OS picks (its start-up line says which).
pub const EPHEMERAL_PORTS: [&str; 6] = [
    "--otlp-grpc-addr",
    "127.0.0.1:0",
    "--otlp-http-addr",
    "127.0.0.1:0",
    "--api-addr",
    "127.0.0.1:0",
];

pub struct Toctou {
    node: Node,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
    pub findings_file: PathBuf,
}

impl Toctou {
    /// Starts `toctou run` on ports the OS picks, with `extra` flags appended.
    pub fn start(extra: &[&str]) -> Toctou {
        Toctou::start_env(extra, &[])
    }

    /// [`Toctou::start`] with environment variables set (tokens given as variables, say).
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Toctou {
        let findings_file = std::env::temp_dir().join(format!(
            "toctou-findings-{}-{}.jsonl",
            std::process::id(),
            rand_suffix()
        ));
        let mut args: Vec<String> = std::iter::once("run")
            .chain(EPHEMERAL_PORTS)
            .map(String::from)
            .collect();
        args.push("--findings-file".into());
        args.push(findings_file.display().to_string());
        args.extend(extra.iter().map(|a| a.to_string()));
        let node = Node::start_env(&args, env, "toctou run listening");
        Toctou {
            grpc: node.addr("otlp_grpc"),
            http: node.addr("otlp_http"),
            api: node.addr("api"),
            node,
            findings_file,
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Posts one OTLP/JSON body to the receiver's `path`, which must answer 2xx.
    pub async fn post_json(&self, client: &reqwest::Client, path: &str, body: String) {
        let resp = client
            .post(self.http_url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("posting OTLP/JSON");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    }

    /// Posts every line of a golden scenario's input (OTLP JSON) to its receiver, each
    /// answered 2xx; returns how many requests were sent.
    pub async fn send_scenario(&self, name: &str) -> usize {
        let input =
            std::fs::read_to_string(testdata(&format!("testdata/scenarios/{name}/input.jsonl")))
                .unwrap();
        let client = reqwest::Client::new();
        let mut sent = 0;
        for line in input.lines().filter(|l| !l.trim().is_empty()) {
            let path = if line.contains("resourceSpans") {
                "/v1/traces"
            } else {
                "/v1/logs"
            };
            let resp = client
                .post(self.http_url(path))
                .header("content-type", "application/json")
                .body(line.to_string())
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{name}: {}", resp.status());
            sent += 1;
        }
        sent
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn log(&self) -> String {
        self.node.log()
    }

    /// Every finding the API holds, oldest first, following its cursor page by page.
    pub async fn findings(&self) -> Vec<Value> {
        all_findings(&self.api_url("/api/v1/findings?limit=1000")).await
    }

    /// Polls the API until `done` holds for the findings, or panics after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let f = self.findings().await;
            if done(&f) {
                return f;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for findings; have {}:\n{}\nlog:\n{}",
                    f.len(),
                    serde_json::to_string_pretty(&f).unwrap(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.api_url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample line of /metrics (`name{labels}` exactly as printed).
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics().await, series)
    }

    /// Sends SIGTERM and waits up to `deadline` for the exit status.
    pub fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        self.node.terminate(deadline)
    }

    pub fn is_running(&mut self) -> bool {
        self.node.is_running()
    }

    /// The peak resident set of the process so far (`VmHWM` of /proc/<pid>/status), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.node.pid()))
            .expect("reading /proc/<pid>/status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status");
        kb * 1024
    }

    /// The process id, to read its /proc entries (peak RSS).
    pub fn pid(&self) -> u32 {
        self.node.pid()
    }
}

impl Drop for Toctou {
    fn drop(&mut self) {
        self.node.kill9();
        let _ = std::fs::remove_file(&self.findings_file);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// The value of one sample line of a /metrics text (`name{labels}` exactly as printed).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Counts findings by kind.
pub fn kinds(findings: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut k = std::collections::BTreeMap::new();
    for f in findings {
        *k.entry(f["kind"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    k
}

/// The venv's python: TOCTOU_TEST_PYTHON, else the one `scripts/otel-python` installed.
pub fn otel_python() -> String {
    if let Ok(p) = std::env::var("TOCTOU_TEST_PYTHON") {
        return p;
    }
    let out = std::process::Command::new(testdata("scripts/otel-python"))
        .arg("path")
        .output()
        .expect("running scripts/otel-python");
    assert!(
        out.status.success(),
        "the OpenTelemetry Python SDK is not installed: run `scripts/otel-python install` \
         (./scripts/test does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Checks that a buyers example (examples/python, examples/go) succeeded and that its race
/// really happened: the plain write oversold, the conditional one was refused.
pub fn assert_buyers_raced(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        out.status.success(),
        "the example failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("plain write:       a sold true, b sold true, stock now -1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("conditional write: a sold false, b sold true, stock now 0"),
        "{stdout}"
    );
}

pub fn testdata(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every finding an API answers for `url` (a findings query with its own parameters),
/// oldest first, following `next` page by page (at most 1000 pages).
pub async fn all_findings(url: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut before: Option<u64> = None;
    for _ in 0..1000 {
        let page_url = match before {
            Some(b) => format!("{url}&before={b}"),
            None => url.to_string(),
        };
        let body: Value = reqwest::get(page_url)
            .await
            .expect("findings API")
            .json()
            .await
            .expect("findings JSON");
        let mut page = body["findings"].as_array().cloned().unwrap_or_default();
        page.append(&mut all);
        all = page;
        before = body["next"].as_u64();
        if before.is_none() {
            return all;
        }
    }
    panic!("the findings API answered more than 1000 pages")
}

/// The findings (id, kind) of JSON lines, one finding per line.
pub fn ids_and_kinds(jsonl: &str) -> std::collections::BTreeSet<(String, String)> {
    jsonl
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_owned(),
                v["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `data` gzip-compressed, as a client sends `content-encoding: gzip`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
