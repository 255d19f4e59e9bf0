//! `toctou run --cdc-postgres`: the audit records come only from PostgreSQL's change stream,
//! and the races are judged against the database's own account of what happened.
//!
//! The workload (`common::cdc`): instrumented flows that check then write, compare-and-swap,
//! lock, and claim keys with upserts, beside a plain writer and a plain deleter that nothing
//! instruments. Ground truth is the database's: a flow's check was stale exactly when the
//! version its write acted on is not the one it read; toctou must report exactly those, with
//! the database's writes as evidence. Both cores are kept busy.
//!
//! Needs PostgreSQL (`TOCTOU_TEST_POSTGRES_URL`, scripts/postgres).

mod common;

use common::cdc::{self, client, pg_url};
use common::Toctou;
use std::time::Duration;
use toctou_cdc::pgoutput::lsn_text;
use tokio_postgres::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_are_found_from_the_change_stream_alone() {
    let _burn = common::burner::every_core();
    let admin = client().await;
    let suffix = cdc::suffix();
    let tables = cdc::create_tables(&admin, &suffix, true).await;
    let slot = format!("slot_{suffix}");
    let flags = cdc_flags(&slot, &suffix);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let toctou = std::sync::Arc::new(Toctou::start(&flags));

    // The stream starts where the slot does: no write before it exists is seen.
    wait_for_slot(&admin, &slot, &toctou).await;
    let http = reqwest::Client::new();
    let post: cdc::Post = {
        let toctou = toctou.clone();
        std::sync::Arc::new(move |body| {
            let (toctou, http) = (toctou.clone(), http.clone());
            Box::pin(async move { toctou.post_json(&http, "/v1/traces", body).await })
        })
    };
    let w = cdc::run(&tables, 20, post).await;
    let stale = w.stale().len();
    // Decided once the watermark passes the uses: well within 30 s.
    toctou
        .wait_for(Duration::from_secs(60), |f| {
            f.iter().filter(|f| f["kind"] == "stale_check").count() >= stale
        })
        .await;
    // A little longer: nothing more may come.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let findings = toctou.findings().await;
    let verdict = cdc::assert_exact(&findings, &w, &|| toctou.log());
    // Every committed write came as one audit record: the flows' and the plain actors'.
    let text = toctou.metrics().await;
    assert_eq!(
        common::metric(&text, "toctou_events_total{signal=\"cdc\",phase=\"audit\"}"),
        w.changes() as f64
    );
    assert_eq!(
        common::metric(&text, "toctou_prevented_races_total"),
        verdict.conflicts as f64,
        "compare-and-swaps refused by the database"
    );
    assert_eq!(common::metric(&text, "toctou_cdc_read_errors_total"), 0.0);
    assert!(common::metric(&text, "toctou_cdc_transactions_total") >= w.changes() as f64);
    // Every metric the change-stream alert rules read is served.
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(common::testdata("alerts/prometheus/cdc.rules.yml")).unwrap(),
    )
    .unwrap();
    for r in rules["groups"][0]["rules"].as_sequence().unwrap() {
        let expr = r["expr"].as_str().unwrap();
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("toctou_") {
                assert!(
                    text.contains(&format!("\n{word} ")),
                    "{word} is not served:\n{text}"
                );
            }
        }
    }
    println!("{verdict:?}");
    admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .ok();
}

/// The flags of a reader of the publication `pub_<suffix>` through `slot`, polling often.
fn cdc_flags(slot: &str, suffix: &str) -> Vec<String> {
    [
        "--cdc-postgres",
        &pg_url(),
        "--cdc-slot",
        slot,
        "--cdc-publication",
        &format!("pub_{suffix}"),
        "--cdc-poll-interval",
        "50ms",
    ]
    .map(String::from)
    .to_vec()
}

/// Waits until the reader of `toctou` has created its slot and reads it: its own log line says
/// so once `pg_create_logical_replication_slot` has returned, that is once the slot is
/// consistent. (The slot's row in `pg_replication_slots` appears while it is still being
/// created, waiting for the transactions running then to end.)
async fn wait_for_slot(admin: &Client, slot: &str, toctou: &Toctou) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !toctou
        .log()
        .contains("reading the PostgreSQL change stream")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the reader did not start in 30 s:\n{}",
            toctou.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = admin
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    assert!(listed.is_some(), "the reader reads no slot {slot}");
}

/// The slot's confirmed position, as a number (`pg_lsn - '0/0'`).
async fn confirmed(admin: &Client, slot: &str) -> i64 {
    admin
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

/// Where the next WAL record goes: past every record already committed. (Not
/// `pg_current_wal_lsn()`, the write position: it may lag a commit that is already flushed,
/// to the start of its page, and made this test see the slot pass a mark it had not.)
async fn wal_end(admin: &Client) -> i64 {
    admin
        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap()
        .get(0)
}

/// With `--clickhouse-url`, the slot moves only once ClickHouse holds the records: while
/// ClickHouse is down the reader waits and confirms nothing; when it is back, every record
/// lands and the slot catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_moves_only_once_clickhouse_stored_the_records() {
    use common::clickhouse::{sink_flags, sql, PrivateServer};
    let _burn = common::burner::every_core();
    let clickhouse = PrivateServer::start("cdc");
    let admin = client().await;
    let suffix = cdc::suffix();
    let (table, slot, db) = (
        format!("stock_{suffix}"),
        format!("slot_{suffix}"),
        format!("cdc_{suffix}"),
    );
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL, version bigint NOT NULL);
             INSERT INTO {table} VALUES (1, 0, 1);
             CREATE PUBLICATION pub_{suffix} FOR TABLE {table};"
        ))
        .await
        .unwrap();
    let mut flags: Vec<String> = sink_flags(&clickhouse.url, &db)
        .iter()
        .map(|s| s.to_string())
        .collect();
    flags.extend(cdc_flags(&slot, &suffix));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let toctou = Toctou::start_env(&flags, &[("TOCTOU_LOG", "info,toctou_server::cdc=debug")]);
    // Writes `n` updates; returns the WAL position just before the last one began. The slot
    // past it has confirmed that last transaction (it confirms transactions' ends, and only
    // this table's are in its publication), whatever else the server writes meanwhile.
    let write = |n: usize| {
        let (admin, table) = (&admin, &table);
        async move {
            let mut mark = 0;
            for _ in 0..n {
                mark = wal_end(admin).await;
                admin
                    .execute(
                        &format!(
                            "UPDATE {table} SET n = n + 1, version = version + 1 WHERE id = 1"
                        ),
                        &[],
                    )
                    .await
                    .unwrap();
            }
            mark
        }
    };
    let stored = |db: String, url: String, table: String| async move {
        sql(
            &url,
            &db,
            &format!("SELECT count() FROM events FINAL WHERE resource = 'public.{table}/1' AND audit_action = 'update'"),
        )
        .await
        .trim()
        .parse::<usize>()
        .unwrap()
    };
    let caught_up = |target: i64| {
        let (admin, slot) = (&admin, &slot);
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while confirmed(admin, slot).await <= target {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the slot did not reach {target}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // ClickHouse holds `n` records of the table; else what it holds, the positions and the log.
    let expect_stored = |n: usize, mark: i64| {
        let (admin, slot, db, url, table, toctou) =
            (&admin, &slot, &db, &clickhouse.url, &table, &toctou);
        async move {
            let got = stored(db.clone(), url.clone(), table.clone()).await;
            if got != n {
                let rows = sql(url, db, &format!("SELECT version, event_key FROM events WHERE resource = 'public.{table}/1' ORDER BY toUInt64(version)")).await;
                panic!(
                    "{got} of {n} stored; mark {} confirmed {}\n{rows}\nlog:\n{}",
                    lsn_text(mark as u64),
                    lsn_text(confirmed(admin, slot).await as u64),
                    toctou.log()
                );
            }
        }
    };
    wait_for_slot(&admin, &slot, &toctou).await;

    let mark = write(20).await;
    caught_up(mark).await;
    expect_stored(20, mark).await;

    clickhouse.stop();
    let before = confirmed(&admin, &slot).await;
    let mark = write(10).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        confirmed(&admin, &slot).await,
        before,
        "the slot moved while ClickHouse was down"
    );
    clickhouse.restart();
    caught_up(mark).await;
    expect_stored(30, mark).await;
    let text = toctou.metrics().await;
    assert_eq!(
        common::metric(&text, "toctou_events_total{signal=\"cdc\",phase=\"audit\"}"),
        30.0
    );
    admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .ok();
}
