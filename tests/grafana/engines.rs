//! The two ClickHouse engines every shipped query must run on: Debian's 18.16 server (over
//! HTTP, in the database the real sink wrote) and the current engine embedded in chdb (a
//! fresh session with the project's schema, filled with the same rows through
//! `scripts/chdb_queries.py`, which fires the rollup views as a server would).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One query's answer: its columns as (name, type) and its rows, or the engine's refusal.
#[derive(Debug, Clone)]
pub struct Answer {
    pub columns: Vec<(String, String)>,
    pub rows: Vec<Vec<Value>>,
}

pub type Outcome = Result<Answer, String>;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn answer(v: &Value) -> Answer {
    let columns = v["meta"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or("").to_string(),
                        c["type"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let rows = v["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|r| r.as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    Answer { columns, rows }
}

/// Runs each query on the 18.16 server in `db`.
pub fn on_18_16(url: &str, db: &str, queries: &[String]) -> Vec<Outcome> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut out = Vec::new();
        for q in queries {
            let resp = client
                .post(format!("{url}/?database={db}"))
                .body(format!("{q}\nFORMAT JSONCompact"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("sending to ClickHouse: {e}"));
            let ok = resp.status().is_success();
            let body = resp.text().await.expect("body");
            out.push(if ok {
                serde_json::from_str::<Value>(&body)
                    .map(|v| answer(&v))
                    .map_err(|e| format!("unreadable answer {e}: {body}"))
            } else {
                Err(body)
            });
        }
        out
    })
}

/// Runs each query on chdb, in a session with the schema and the rows of `dumps`
/// (table name → JSONEachRow file).
pub fn on_chdb(dumps: &[(String, PathBuf)], queries: &[String]) -> Vec<Outcome> {
    let venv = std::env::var("TOCTOU_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/toctou/venv",
            std::env::var("HOME").expect("HOME")
        )
    });
    let schema: Vec<String> = [
        "schema_migrations.sql",
        "0001_findings.sql",
        "0002_events.sql",
        "0003_rollups.sql",
        "0004_risks.sql",
    ]
    .iter()
    .map(|f| root().join("schema/sql").join(f).display().to_string())
    .collect();
    let request = serde_json::json!({
        "schema": schema,
        "load": dumps.iter().map(|(t, p)| serde_json::json!({"table": t, "path": p})).collect::<Vec<_>>(),
        "queries": queries,
    });
    let mut child = Command::new(format!("{venv}/bin/python"))
        .arg(root().join("scripts/chdb_queries.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running scripts/chdb_queries.py (run 'scripts/chdb install' first)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(request.to_string().as_bytes())
            .expect("writing the chdb request");
    }
    let out = child.wait_with_output().expect("chdb runner");
    assert!(
        out.status.success(),
        "scripts/chdb_queries.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("chdb runner JSON");
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| match r["error"].as_str() {
            Some(e) => Err(e.to_string()),
            None => Ok(answer(r)),
        })
        .collect()
}

/// The kind of a ClickHouse type, as a panel or an alert expression sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Time,
    Number,
    Text,
    Other,
}

pub fn class(ty: &str) -> Class {
    let inner = ty
        .strip_prefix("Nullable(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(ty);
    let inner = inner
        .strip_prefix("LowCardinality(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(inner);
    if inner.starts_with("DateTime") || inner == "Date" {
        Class::Time
    } else if inner.starts_with("UInt")
        || inner.starts_with("Int")
        || inner.starts_with("Float")
        || inner.starts_with("Decimal")
    {
        Class::Number
    } else if inner == "String" || inner.starts_with("FixedString") {
        Class::Text
    } else {
        Class::Other
    }
}
