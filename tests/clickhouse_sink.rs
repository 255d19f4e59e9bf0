//! Black-box test of `toctou run --clickhouse-url`: a golden scenario sent over OTLP/HTTP
//! lands in ClickHouse (Debian's 18.16, started through `scripts/clickhouse`) as the same
//! findings the API reports, its events, and rollups that agree with both; a plain
//! service's database spans land as inference's risks, counted by the requests sent.
//!
//! Like tests/clickhouse.rs, it fails (never skips) when no server can be started.

mod common;

use common::clickhouse::{server_url, sink_flags, sql, PrivateServer};
use common::db_spans::{self, BUY, BUY_LOCKED, SIGNUP};
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

/// Inference's risks in `risks`, against the requests sent (the ground truth): a service with
/// no toctou code sends its database spans (a lost update and a check-then-insert endpoint,
/// and a locked twin with no risk) to a `toctou run`, which writes a row a minute for each
/// risk counted since its previous row; more requests follow, then a shutdown, which writes
/// the rest; then a second run on the same database gets more. Each row holds the requests
/// sent between two writes (none for a risk with no new request), so the sums per risk are
/// the requests sent, across the restart too. The API agreed before each write, and each
/// row's example trace and statements are those of a request sent to its run.
///
/// Takes a minute: the first run waits for its periodic write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risks_are_stored_as_the_requests_counted_since_the_previous_row() {
    let url = server_url();
    let db = format!("toctou_test_{}_risks", std::process::id());
    let service = "plain-shop";
    let lost_update: Risk = (service, BUY.route, "lost_update", "public.items");
    let check_then_insert: Risk = (service, SIGNUP.route, "check_then_insert", "public.users");
    // Per run, per write: the buys and signups sent before it.
    let runs: [&[(usize, usize)]; 2] = [&[(3, 2), (2, 0)], &[(4, 1)]];
    let mut rows_seen = 0;
    let mut totals = (0, 0);
    for (run, writes) in runs.into_iter().enumerate() {
        let mut toctou = with_sink(&url, &db);
        let started = toctou_schema::now_ns();
        let mut sent = db_spans::Sent::new();
        let mut counted = (0, 0);
        for (write, &(buys, signups)) in writes.iter().enumerate() {
            let last = write + 1 == writes.len();
            let plan = [(BUY, buys), (SIGNUP, signups), (BUY_LOCKED, 2)];
            db_spans::send(&toctou, service, &plan, &mut sent).await;
            counted = (counted.0 + buys, counted.1 + signups);
            let want = risks([(lost_update, counted.0), (check_then_insert, counted.1)]);
            let api = db_spans::api_risks(&toctou, Duration::from_secs(30), |r| *r == want).await;
            assert_eq!(api, want, "run {run}, write {write}: /api/v1/risks");
            let before = toctou_schema::now_ns();
            if last {
                let status = toctou.terminate(Duration::from_secs(30));
                assert!(status.is_some_and(|s| s.success()), "{}", toctou.log());
            }
            // The row of each risk with requests since the previous write.
            let mut want_rows: Vec<String> = [(lost_update, buys), (check_then_insert, signups)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|((s, e, k, t), n)| format!("{s}\t{e}\t{k}\t{t}\t{n}"))
                .collect();
            want_rows.sort();
            let rows = wait_for_rows(&url, &db, rows_seen + want_rows.len(), &toctou).await;
            let found = toctou_schema::now_ns();
            let new = &rows[rows_seen..];
            rows_seen = rows.len();
            let mut got: Vec<String> = new.iter().map(|r| r[..5].join("\t")).collect();
            got.sort();
            assert_eq!(got, want_rows, "run {run}, write {write}");
            for row in new {
                let endpoint = if row[1] == BUY.route { BUY } else { SIGNUP };
                assert!(
                    sent[endpoint.route].contains(&row[5]),
                    "run {run}: the example {} is a request of {} sent to this run",
                    row[5],
                    endpoint.route
                );
                assert_eq!(row[6..8], endpoint.statements[..], "run {run}");
                let at: u64 = row[8].parse().unwrap();
                assert_eq!(row[9], (at / 1_000_000_000).to_string());
                assert!(
                    (before..=found).contains(&at),
                    "run {run}, write {write}: counted at {at}, after the requests were counted \
                     ({before}) and before the rows were read ({found})"
                );
                // The periodic write: a minute after the process started, a moment before
                // `started`.
                assert!(
                    last || at - started >= 55_000_000_000,
                    "run {run}: the periodic write came {} ms after the start",
                    (at - started) / 1_000_000
                );
            }
        }
        assert!(
            !sent[BUY_LOCKED.route].is_empty(),
            "the locked endpoint was sent"
        );
        totals = (totals.0 + counted.0, totals.1 + counted.1);
    }
    assert_eq!(rows_seen, 5);

    // The sums over both runs are the requests sent; nothing of the locked endpoint.
    let sums = sql(
        &url,
        &db,
        "SELECT endpoint, kind, table_name, sum(requests), count() FROM \
         (SELECT * FROM risks LIMIT 1 BY service, endpoint, kind, table_name, counted_at_ns) \
         GROUP BY endpoint, kind, table_name ORDER BY endpoint",
    )
    .await;
    let want = format!(
        "{}\tlost_update\tpublic.items\t{}\t3\n{}\tcheck_then_insert\tpublic.users\t{}\t2\n",
        BUY.route, totals.0, SIGNUP.route, totals.1
    );
    assert_eq!(sums, want);
    assert_eq!(totals, (9, 3));
}

/// A risk: service, endpoint, kind, table.
type Risk<'a> = (&'a str, &'a str, &'a str, &'a str);

/// `/api/v1/risks`' counts, as `db_spans::api_risks` reads them: the risks counted.
fn risks<const N: usize>(
    counts: [(Risk, usize); N],
) -> std::collections::BTreeMap<(String, String, String, String), u64> {
    counts
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|((s, e, k, t), n)| ((s.into(), e.into(), k.into(), t.into()), n as u64))
        .collect()
}

/// Every row of `risks`, oldest write first, once there are `n` of them (the periodic write
/// comes a minute after the start: waits up to two).
async fn wait_for_rows(url: &str, db: &str, n: usize, toctou: &Toctou) -> Vec<Vec<String>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let text = sql(
            url,
            db,
            "SELECT service, endpoint, kind, table_name, requests, example_trace_id, \
             read_statement, write_statement, counted_at_ns, toUInt32(counted_at) \
             FROM risks ORDER BY counted_at_ns, endpoint",
        )
        .await;
        let rows: Vec<Vec<String>> = text
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect();
        if rows.len() >= n {
            assert_eq!(rows.len(), n, "more rows than written: {rows:?}");
            return rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} rows of risks, waiting for {n}: {rows:?}\n{}",
            rows.len(),
            toctou.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
