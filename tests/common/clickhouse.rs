//! The ClickHouse server of the black-box storage tests and a way to query it over HTTP.
//!
//! `scripts/test` starts one and exports its URL; run alone, a test starts one through
//! `scripts/clickhouse` and fails (never skips) when it cannot.

use std::path::Path;
use std::process::Command;

/// The flags of a ClickHouse sink writing to `db` at `url`, batches at most 200 ms old.
pub fn sink_flags<'a>(url: &'a str, db: &'a str) -> [&'a str; 6] {
    [
        "--clickhouse-url",
        url,
        "--clickhouse-database",
        db,
        "--clickhouse-batch-age",
        "200ms",
    ]
}

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

/// A ClickHouse server of one test's own, through `scripts/clickhouse` with a home of its
/// own, so that stopping and restarting it disturbs no other test; stopped and removed on
/// drop. A restart keeps its port (the clients keep their URL).
pub struct PrivateServer {
    home: std::path::PathBuf,
    pub url: String,
}

impl PrivateServer {
    pub fn start(name: &str) -> PrivateServer {
        let home = std::env::temp_dir().join(format!(
            "toctou-ch-{name}-{}-{}",
            std::process::id(),
            super::rand_suffix()
        ));
        let url = script(&home, "start");
        PrivateServer { home, url }
    }

    pub fn stop(&self) {
        script(&self.home, "stop");
    }

    /// Starts it again, on the same port.
    pub fn restart(&self) {
        let url = script(&self.home, "start");
        assert_eq!(url, self.url, "the server came back on another port");
    }
}

fn script(home: &Path, command: &str) -> String {
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/clickhouse"))
        .arg(command)
        .env("TOCTOU_CLICKHOUSE_HOME", home)
        .output()
        .expect("running scripts/clickhouse");
    assert!(
        out.status.success(),
        "scripts/clickhouse {command} failed (run 'scripts/clickhouse install' first?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/clickhouse"))
            .arg("stop")
            .env("TOCTOU_CLICKHOUSE_HOME", &self.home)
            .output();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}
