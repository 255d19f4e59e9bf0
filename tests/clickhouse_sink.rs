//! Black-box test of `toctou run --clickhouse-url`: a golden scenario sent over OTLP/HTTP
//! lands in ClickHouse (Debian's 18.16, started through `scripts/clickhouse`) as the same
//! findings the API reports, its events, and rollups that agree with both.
//!
//! Like tests/clickhouse.rs, it fails (never skips) when no server can be started.

mod common;

use common::clickhouse::{server_url, sink_flags, sql, PrivateServer};
use common::Toctou;
use std::path::Path;
use std::time::Duration;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `toctou run` writing to `db`, inserting every 200 ms.
fn with_sink(url: &str, db: &str) -> Toctou {
    Toctou::start(&sink_flags(url, db))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_writes_the_scenarios_findings_events_and_rollups() {
    let url = server_url();
    let db = format!("toctou_test_{}_sink", std::process::id());
    let mut toctou = with_sink(&url, &db);

    let dir = root().join("testdata/scenarios/stale_check_versions");
    let sent = toctou.send_scenario("stale_check_versions").await;
    let expected: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("expected.jsonl"))
        .expect("expected.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("expected finding"))
        .collect();
    let found = toctou
        .wait_for(Duration::from_secs(30), |f| f.len() >= expected.len())
        .await;
    assert_sink_metrics(&toctou, found.len()).await;
    // SIGTERM: the correlator drains and the sink flushes before the process exits.
    let status = toctou.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        toctou.log()
    );

    let mut want: Vec<String> = found
        .iter()
        .map(|f| {
            format!(
                "{}\t{}\t{}\t{}\t{}\n",
                f["id"].as_str().unwrap(),
                f["kind"].as_str().unwrap(),
                f["service"].as_str().unwrap(),
                f["resource"].as_str().unwrap(),
                f["event_time_ns"].as_u64().unwrap()
            )
        })
        .collect();
    want.sort();
    let rows = sql(
        &url,
        &db,
        "SELECT id, kind, service, resource, event_time_ns FROM findings ORDER BY id",
    )
    .await;
    assert_eq!(rows, want.concat(), "{}", toctou.log());
    for e in &expected {
        assert!(rows.contains(e["id"].as_str().unwrap()), "{rows}");
    }

    let events = sql(
        &url,
        &db,
        "SELECT count(), uniqExact(event_key), countIf(type = 'audit') FROM events",
    )
    .await;
    let counts: Vec<u64> = events
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        counts[0] >= sent as u64 - 1,
        "{events}: one event per request or more"
    );
    assert_eq!(counts[0], counts[1], "{events}: each event once");
    assert!(counts[2] >= 1, "{events}: the scenario's audit records");

    let rollups = sql(
        &url,
        &db,
        "SELECT kind, sumMerge(findings) FROM rollup_minute WHERE kind != '' GROUP BY kind ORDER BY kind",
    )
    .await;
    let mut per_kind = std::collections::BTreeMap::<String, usize>::new();
    for f in &found {
        *per_kind
            .entry(f["kind"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let want_rollups: String = per_kind
        .iter()
        .map(|(k, n)| format!("{k}\t{n}\n"))
        .collect();
    assert_eq!(rollups, want_rollups);
    let uses = sql(
        &url,
        &db,
        "SELECT sumMerge(uses), sumMerge(checks) FROM rollup_minute",
    )
    .await;
    let agree = sql(
        &url,
        &db,
        "SELECT countIf(type = 'use'), countIf(type = 'check') FROM events",
    )
    .await;
    assert_eq!(uses, agree, "rollups agree with the events");
}

/// Every column of every event the sink writes, for a scenario with checks, uses, audit
/// records with and without a source id, policies and idempotency keys, read back from the
/// server: the golden file pins the rows (`UPDATE_GOLDEN=1` rewrites it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_column_for_column_as_the_golden_file() {
    let url = server_url();
    let db = format!("toctou_test_{}_golden_events", std::process::id());
    let mut toctou = with_sink(&url, &db);
    toctou.send_scenario("clean").await;
    let status = toctou.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", toctou.log());
    // event_time as seconds: its text form would depend on the server's time zone.
    let rows = sql(
        &url,
        &db,
        "SELECT type, service, operation, resource, resource_type, version, request_id, \
         trace_id, span_id, event_key, toUInt32(event_time), event_time_ns, start_ns, end_ns, \
         actor, decision, check_source, policy, policy_version, idempotency_key, outcome, \
         permission_denied, audit_action, source_id FROM events ORDER BY event_key, type",
    )
    .await;
    assert!(!rows.is_empty(), "{}", toctou.log());
    let golden = root().join("testdata/clickhouse/events_clean.tsv");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &rows).unwrap();
    }
    let want = std::fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", golden.display()));
    assert_eq!(rows, want, "events table against {}", golden.display());
}

/// Waits (the sink inserts every 200 ms) until /metrics shows every finding written, then
/// checks the sink's other series of a healthy run.
async fn assert_sink_metrics(toctou: &Toctou, findings: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while toctou
        .metric("toctou_sink_rows_total{table=\"findings\"}")
        .await
        < findings as f64
        || toctou.metric("toctou_sink_backlog_rows").await > 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink metrics never showed {findings} findings written:\n{}",
            toctou.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = toctou.metrics().await;
    for family in [
        "toctou_sink_rows_total counter",
        "toctou_sink_batches_total counter",
        "toctou_sink_backlog_rows gauge",
        "toctou_sink_retries_total counter",
        "toctou_sink_dropped_rows_total counter",
    ] {
        assert!(text.contains(&format!("# TYPE {family}\n")), "{text}");
    }
    assert_eq!(
        toctou
            .metric("toctou_sink_rows_total{table=\"findings\"}")
            .await,
        findings as f64
    );
    assert!(
        toctou
            .metric("toctou_sink_rows_total{table=\"events\"}")
            .await
            >= 1.0
    );
    for table in ["findings", "events"] {
        let ok = format!("toctou_sink_batches_total{{table=\"{table}\",result=\"ok\"}}");
        assert!(toctou.metric(&ok).await >= 1.0, "{text}");
        let failed = format!("toctou_sink_batches_total{{table=\"{table}\",result=\"failed\"}}");
        assert_eq!(toctou.metric(&failed).await, 0.0, "{text}");
        let dropped = format!("toctou_sink_dropped_rows_total{{table=\"{table}\"}}");
        assert_eq!(toctou.metric(&dropped).await, 0.0, "{text}");
    }
    assert_eq!(
        toctou.metric("toctou_sink_retries_total").await,
        0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_sent_while_clickhouse_is_down_arrive_once_it_is_back() {
    // A server of the test's own, so that stopping it disturbs no other test.
    let server = PrivateServer::start("outage");
    let url = server.url.clone();
    let db = "toctou_outage";
    let mut toctou = with_sink(&url, db);
    // Migrated at start-up; now the server goes away for 20 s while the scenario arrives.
    server.stop();
    let down = std::time::Instant::now();
    toctou.send_scenario("stale_check_versions").await;
    let found = toctou
        .wait_for(Duration::from_secs(30), |f| !f.is_empty())
        .await;
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(down.elapsed())).await;
    assert!(
        toctou.log().contains("clickhouse insert failed; retrying"),
        "the sink should have been retrying:\n{}",
        toctou.log()
    );
    // The outage shows on /metrics: retries, and rows held back rather than dropped.
    assert!(toctou.metric("toctou_sink_retries_total").await >= 1.0);
    assert!(toctou.metric("toctou_sink_backlog_rows").await >= 1.0);
    assert_eq!(
        toctou
            .metric("toctou_sink_dropped_rows_total{table=\"findings\"}")
            .await,
        0.0
    );
    server.restart();

    // The sink retries with at most 5 s between attempts: the rows come within seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let want = found.len().to_string() + "\n";
    while sql(&url, db, "SELECT uniqExact(id) FROM findings").await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "findings did not arrive after the restart:\n{}",
            toctou.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = toctou.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", toctou.log());

    let mut ids: Vec<&str> = found.iter().map(|f| f["id"].as_str().unwrap()).collect();
    ids.sort();
    let stored = sql(
        &url,
        db,
        "SELECT id, count() FROM findings FINAL GROUP BY id ORDER BY id",
    )
    .await;
    let want: String = ids.iter().map(|id| format!("{id}\t1\n")).collect();
    assert_eq!(stored, want, "every finding, once");
    let events = sql(
        &url,
        db,
        "SELECT count() > 0, count() = uniqExact(event_key) FROM events FINAL",
    )
    .await;
    assert_eq!(events, "1\t1\n", "the events too, once each");
}
