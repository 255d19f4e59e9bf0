//! The page tests' harness: Debian's Chromium driven through tests/page/drive.mjs, what
//! it read of the page, the findings API it is compared with, and OTLP/JSON to make findings.

use super::{testdata, Toctou};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Rows the page lists (its `LIMIT`).
pub const PAGE_ROWS: usize = 50;

pub struct Browser {
    chromium: PathBuf,
    node_modules: PathBuf,
}

impl Browser {
    /// What tests/page/setup.sh installs; a clear failure when it has not run.
    pub fn find() -> Browser {
        let hint = "run ./scripts/test, or tests/page/setup.sh, to install them";
        let chromium = PathBuf::from(
            std::env::var("TOCTOU_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        );
        assert!(
            chromium.exists(),
            "the page tests need Debian's chromium at {}: {hint}",
            chromium.display()
        );
        let node = Command::new("node").arg("--version").output();
        assert!(
            node.as_ref().is_ok_and(|o| o.status.success()),
            "the page tests need node (Node.js >= 20) on PATH: {hint}"
        );
        let node_dir = std::env::var("TOCTOU_NODE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/toctou/node")
            });
        let node_modules = node_dir.join("node_modules");
        assert!(
            node_modules.join("playwright-core/package.json").exists(),
            "the page tests need playwright-core in {}: {hint}",
            node_modules.display()
        );
        Browser {
            chromium,
            node_modules,
        }
    }

    /// Loads the page of `toctou` in Chromium and returns what tests/page/drive.mjs read.
    pub async fn visit(&self, toctou: &Toctou, mut spec: Value) -> Value {
        spec["url"] = json!(toctou.api_url("/"));
        spec["chromium"] = json!(self.chromium);
        spec["nodeModules"] = json!(self.node_modules);
        let script = testdata("tests/page/drive.mjs");
        let out = tokio::process::Command::new("node")
            .arg(script)
            .arg(spec.to_string())
            .output()
            .await
            .expect("running node");
        assert!(
            out.status.success(),
            "tests/page/drive.mjs failed ({}):\n{}\ntoctou log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            toctou.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "drive.mjs printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// The page loaded everything it asked for and logged no error.
pub fn assert_clean(seen: &Value) {
    for list in ["errors", "failedRequests", "badResponses"] {
        assert_eq!(
            seen[list],
            json!([]),
            "{list}; everything the console said: {:#}",
            seen["console"]
        );
    }
    assert_eq!(seen["status"], "live", "{seen:#}");
    assert_eq!(seen["charts"], 2, "both charts drawn: {seen:#}");
}

pub async fn get_json(toctou: &Toctou, path: &str) -> Value {
    reqwest::get(toctou.api_url(path))
        .await
        .expect("API request")
        .json()
        .await
        .expect("API JSON")
}

pub async fn api_findings(toctou: &Toctou, query: &str) -> Vec<Value> {
    get_json(toctou, &format!("/api/v1/findings?{query}")).await["findings"]
        .as_array()
        .cloned()
        .unwrap()
}

/// Waits until no check is pending and the findings total has not moved for `quiet`.
pub async fn wait_until_settled(toctou: &Toctou, quiet: Duration, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let mut last = (u64::MAX, Instant::now());
    loop {
        let s = get_json(toctou, "/api/v1/summary").await;
        let total = s["total"].as_u64().unwrap();
        let pending = s["pipeline"]["pending_checks"].as_u64().unwrap();
        if total != last.0 || pending > 0 {
            last = (total, Instant::now());
        } else if last.1.elapsed() >= quiet {
            return total;
        }
        assert!(
            Instant::now() < deadline,
            "findings never settled: {s:#}\n{}",
            toctou.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The ids the page should list: the API's latest ones, newest first.
pub fn newest_first(findings: &[Value]) -> Vec<String> {
    findings
        .iter()
        .rev()
        .take(PAGE_ROWS)
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn row_ids(seen: &Value) -> Vec<String> {
    seen["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn page_counts(seen: &Value) -> BTreeMap<String, usize> {
    seen["counts"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, n)| n.as_u64().unwrap() > 0)
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap() as usize))
        .collect()
}

#[allow(unused_imports)]
pub use toctou_schema::now_ns;

pub fn attr(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

pub fn span(service: &str, trace: &str, span_id: &str, start: u64, attrs: Vec<Value>) -> Value {
    json!({ "resourceSpans": [{
        "resource": { "attributes": [attr("service.name", service)] },
        "scopeSpans": [{ "scope": { "name": "page-test" }, "spans": [{
            "traceId": trace, "spanId": span_id, "name": "op", "kind": 1,
            "startTimeUnixNano": start.to_string(),
            "endTimeUnixNano": (start + 1_000_000).to_string(),
            "attributes": attrs,
        }]}],
    }]})
}

pub async fn post_json(toctou: &Toctou, path: &str, body: &Value) {
    let resp = reqwest::Client::new()
        .post(toctou.http_url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("OTLP request");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
}
