//! A real `toctou run` process for black-box tests: started on free loopback ports, found
//! through its start-up log line, killed when dropped.

#![allow(dead_code)]

pub mod clickhouse;
pub mod kafka;
pub mod otel_sdk;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Toctou {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
    pub findings_file: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Toctou {
    /// Starts `toctou run` on ports the OS picks, with `extra` flags appended.
    pub fn start(extra: &[&str]) -> Toctou {
        let findings_file = std::env::temp_dir().join(format!(
            "toctou-findings-{}-{}.jsonl",
            std::process::id(),
            rand_suffix()
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_toctou"))
            .args([
                "run",
                "--otlp-grpc-addr",
                "127.0.0.1:0",
                "--otlp-http-addr",
                "127.0.0.1:0",
                "--api-addr",
                "127.0.0.1:0",
                "--findings-file",
            ])
            .arg(&findings_file)
            .args(extra)
            .env("TOCTOU_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting toctou run");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("toctou run listening") {
                        let _ = tx.send(line.clone());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "toctou run did not start; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|tok| tok.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
                .parse()
                .unwrap()
        };
        Toctou {
            grpc: field("otlp_grpc"),
            http: field("otlp_http"),
            api: field("api"),
            child,
            findings_file,
            log,
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub async fn findings(&self) -> Vec<Value> {
        let body: Value = reqwest::get(self.api_url("/api/v1/findings?limit=1000000"))
            .await
            .expect("findings API")
            .json()
            .await
            .expect("findings JSON");
        body["findings"].as_array().cloned().unwrap_or_default()
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
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Sends SIGTERM and waits up to `deadline` for the exit status.
    pub fn terminate(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Toctou {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.findings_file);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
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

pub fn testdata(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}
