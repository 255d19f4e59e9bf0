//! The ClickHouse server of the black-box storage tests and a way to query it over HTTP.
//!
//! `scripts/test` starts one and exports its URL; run alone, a test starts one through
//! `scripts/clickhouse` and fails (never skips) when it cannot.

use std::path::Path;
use std::process::Command;

/// The test server's URL (`http://127.0.0.1:PORT`).
pub fn server_url() -> String {
    if let Ok(url) = std::env::var("TOCTOU_TEST_CLICKHOUSE_URL") {
        return url;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/clickhouse");
    let out = Command::new(script)
        .arg("start")
        .output()
        .expect("running scripts/clickhouse start");
    assert!(
        out.status.success(),
        "scripts/clickhouse start failed (run 'scripts/clickhouse install' first?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Runs `statement` in database `db`; the answer in ClickHouse's default TSV. Panics with
/// the server's message when it refuses.
pub async fn sql(url: &str, db: &str, statement: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{url}/?database={db}"))
        .body(statement.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("sending {statement:?}: {e}"));
    let status = resp.status();
    let body = resp.text().await.expect("body");
    assert!(status.is_success(), "{statement}\n=> {status}: {body}");
    body
}
