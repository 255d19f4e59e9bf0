//! `toctou demo` end to end: its workloads race for real on SQLite, export over OTLP into a
//! real `toctou run`, and what happened (counted from the database) must equal what toctou
//! found, kind by kind, with every kind happening at least once. The findings are also
//! counted here, from the API, independently of the demo's own comparison.

mod common;

use common::demo::{parse, KINDS};
use common::Toctou;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Output};

fn demo(args: &[&str]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_toctou"))
        .arg("demo")
        .args(args)
        .env("TOCTOU_LOG", "warn")
        .output()
        .expect("running toctou demo");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out, stdout)
}

fn assert_agrees(out: &Output, stdout: &str) -> (String, BTreeMap<String, (u64, u64)>) {
    assert!(
        out.status.success(),
        "toctou demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (run, table) = parse(stdout);
    assert_eq!(table.len(), KINDS.len(), "{stdout}");
    for (kind, (happened, found)) in &table {
        assert_eq!(happened, found, "{kind} differs:\n{stdout}");
        assert!(
            *happened > 0,
            "no {kind} happened, the test proves nothing:\n{stdout}"
        );
    }
    assert!(stdout.contains("toctou found exactly the races that happened."));
    (run, table)
}

#[test]
fn demo_against_a_running_toctou_finds_exactly_what_happened() {
    let toctou = Toctou::start(&["--pair-ttl", "2s", "--allowed-lateness", "2s"]);
    let endpoint = format!("http://{}", toctou.grpc);
    let api = toctou.api_url("");
    let (out, stdout) = demo(&[
        "--endpoint",
        &endpoint,
        "--api",
        &api,
        "--duration",
        "5s",
        "--pair-ttl",
        "2s",
        "--allowed-lateness",
        "2s",
    ]);
    let (run, table) = assert_agrees(&out, &stdout);
    assert!(!stdout.contains("embedded"), "{stdout}");

    // The same counts, read from the API here rather than by the demo.
    let findings: Vec<Value> = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(toctou.findings());
    let mut ours: BTreeMap<String, u64> = BTreeMap::new();
    for f in &findings {
        assert!(
            f["resource"]
                .as_str()
                .unwrap()
                .contains(&format!("/{run}/")),
            "a finding on a resource not of this run: {f}"
        );
        *ours
            .entry(f["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let expected: BTreeMap<String, u64> = table.iter().map(|(k, (h, _))| (k.clone(), *h)).collect();
    assert_eq!(ours, expected, "{stdout}");
}

#[test]
fn demo_alone_starts_an_embedded_toctou_run_over_http() {
    // A port nobody listens on: the demo must start its own server.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let db = std::env::temp_dir().join(format!("toctou-demo-test-{}.sqlite", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let (out, stdout) = demo(&[
        "--endpoint",
        &format!("http://{closed}"),
        "--api",
        &format!("http://{closed}"),
        "--transport",
        "http",
        "--duration",
        "4s",
        "--pair-ttl",
        "1s",
        "--db",
        db.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("started an embedded `toctou run` on loopback"),
        "{stdout}"
    );
    assert_agrees(&out, &stdout);
    // The embedded server's findings file is kept for the user; not for the test.
    let findings_file = stdout
        .split("findings in ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("no findings file named in:\n{stdout}"));
    let kept = std::fs::read_to_string(findings_file).expect("the embedded findings file");
    assert!(kept.lines().count() > 0);
    let _ = std::fs::remove_file(findings_file);

    // --db kept the database: its tables hold what happened.
    let conn = rusqlite::Connection::open(&db).expect("the kept database");
    let charged: i64 = conn
        .query_row("SELECT count(*) FROM charges", [], |r| r.get(0))
        .unwrap();
    assert!(charged > 0);
    let audited: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE committed_ns IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(audited > 0);
    drop(conn);
    // A kept database is never reused: the counts must be this run's only.
    let (again, stdout) = demo(&["--db", db.to_str().unwrap(), "--duration", "1s"]);
    assert!(!again.status.success(), "{stdout}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

#[test]
fn run_with_demo_keeps_stdout_for_findings_only() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = Command::new(env!("CARGO_BIN_EXE_toctou"))
        .arg("run")
        .args(common::EPHEMERAL_PORTS)
        .args(["--pair-ttl", "1s", "--demo", "--demo-duration", "3s"])
        .env("TOCTOU_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting toctou run --demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut kinds = BTreeMap::<String, u64>::new();
    while Instant::now() < deadline && kinds.len() < KINDS.len() {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let f: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("stdout line is no finding ({e}): {line}"));
        *kinds
            .entry(f["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(kinds.len(), KINDS.len(), "findings by kind: {kinds:?}");
}
