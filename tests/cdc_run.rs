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

use common::cdc::{self, client, pg_url, wait_for_slot};
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
    let toctou = Toctou::start(&flags);

    // The stream starts where the slot does: no write before it exists is seen.
    wait_for_slot(&admin, &slot, &toctou).await;
    let post = cdc::post_to(toctou.http_url("/v1/traces"), None);
    let w = cdc::run(&tables, 20, post).await;
    // Every committed write comes as one audit record: the flows' and the plain actors'.
    let (verdict, text) = cdc::assert_run_exact(&toctou, &w, 0.0).await;
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
                    text.contains(&format!("\n{word} ")) || text.contains(&format!("\n{word}{{")),
                    "{word} is not served:\n{text}"
                );
            }
        }
    }
    println!("{verdict:?}");
    cdc::drop_slot(&admin, &slot).await;
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
    cdc::drop_slot(&admin, &slot).await;
}

/// `kill -9` of `toctou run` in the middle of the load, then a restart with the same flags:
/// the slot was confirmed only as far as ClickHouse had stored, so the new process reads the
/// rest again and loses no change; what both processes wrote is there once under FINAL. The
/// spans stand for an at-least-once source (a Collector with a persistent queue, say): those
/// the killed process accepted are sent again to the new one, and every race is found once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_loses_no_change_and_reports_every_race_once() {
    use common::clickhouse::{sink_flags, sql, PrivateServer};
    use std::sync::{Arc, Mutex};
    let _burn = common::burner::every_core();
    let clickhouse = PrivateServer::start("cdckill");
    let admin = client().await;
    let suffix = cdc::suffix();
    let tables = cdc::create_tables(&admin, &suffix, true).await;
    let (slot, db) = (format!("slot_{suffix}"), format!("cdckill_{suffix}"));
    let mut flags: Vec<String> = sink_flags(&clickhouse.url, &db)
        .iter()
        .map(|s| s.to_string())
        .collect();
    flags.extend(cdc_flags(&slot, &suffix));
    // A restart's backlog (the slot read again, the spans sent again) arrives seconds late.
    flags.extend(["--allowed-lateness".to_string(), "10s".to_string()]);
    let flags: Vec<&'static str> = flags
        .into_iter()
        .map(|s| &*Box::leak(s.into_boxed_str()))
        .collect();
    let first = Toctou::start(&flags);
    wait_for_slot(&admin, &slot, &first).await;

    // The current process's receiver; the bodies it accepted; a gate the restart closes.
    let url = Arc::new(Mutex::new(first.http_url("/v1/traces")));
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let http = reqwest::Client::new();
    let post: cdc::Post = {
        let (url, accepted, gate) = (url.clone(), accepted.clone(), gate.clone());
        Arc::new(move |body| {
            let (url, accepted, gate, http) =
                (url.clone(), accepted.clone(), gate.clone(), http.clone());
            Box::pin(async move {
                loop {
                    let open = gate.read().await;
                    let to = url.lock().unwrap().clone();
                    let sent = http
                        .post(&to)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status().is_success()) {
                        accepted.lock().unwrap().push(body);
                        return;
                    }
                    drop(open);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
    };
    let killer = {
        let (url, accepted, gate) = (url.clone(), accepted.clone(), gate.clone());
        let (slot, flags) = (slot.clone(), flags.clone());
        tokio::spawn(async move {
            let admin = client().await;
            // Mid-load (a third of the flows sent): some decided and stored, others pending,
            // the slot behind.
            while accepted.lock().unwrap().len() < 80 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let closed = gate.write().await;
            // The requests whose spans the first process took: decided again after the
            // restart, perhaps without the writes it had confirmed.
            let before: std::collections::BTreeSet<String> = accepted
                .lock()
                .unwrap()
                .iter()
                .flat_map(|b| {
                    let v: serde_json::Value = serde_json::from_str(b).unwrap();
                    v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|s| s["attributes"].as_array().unwrap().clone())
                        .filter(|a| a["key"] == "toctou.request_id")
                        .map(|a| a["value"]["stringValue"].as_str().unwrap().to_string())
                        .collect::<Vec<_>>()
                })
                .collect();
            drop(first);
            let at_kill = confirmed(&admin, &slot).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                confirmed(&admin, &slot).await,
                at_kill,
                "the slot moved with no reader"
            );
            let second = Toctou::start(&flags);
            let bodies = accepted.lock().unwrap().clone();
            let http = reqwest::Client::new();
            for body in bodies {
                second.post_json(&http, "/v1/traces", body).await;
            }
            *url.lock().unwrap() = second.http_url("/v1/traces");
            drop(closed);
            (second, before, at_kill)
        })
    };
    let w = cdc::run(&tables, 30, post).await;
    let (second, before, at_kill) = killer.await.unwrap();
    let sent_before = before.len();
    assert!(
        sent_before > 0 && sent_before < w.flows.len(),
        "the kill came at {sent_before} of {} flows: not during the load",
        w.flows.len()
    );

    // Every change the database committed is stored once (the slot resumed where it was
    // confirmed, and what it read again replaced what was there).
    let changes = format!(
        "SELECT count() FROM events FINAL WHERE audit_action != '' AND (resource LIKE 'public.{}/%' OR resource LIKE 'public.{}/%')",
        tables.inventory, tables.claims
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let n: usize = sql(&clickhouse.url, &db, &changes)
            .await
            .trim()
            .parse()
            .unwrap();
        if n >= w.changes() || std::time::Instant::now() > deadline {
            assert_eq!(
                n,
                w.changes(),
                "changes stored once; log:\n{}",
                second.log()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        confirmed(&admin, &slot).await > at_kill,
        "the new reader confirmed nothing past the killed one"
    );
    let findings = cdc::clickhouse_findings(&clickhouse.url, &db, w.stale().len()).await;
    let verdict = cdc::assert_exact_with(&findings, &w, &|| second.log(), &|r| !before.contains(r));
    // Once: no finding twice, though some were decided by both processes.
    let distinct = sql(
        &clickhouse.url,
        &db,
        "SELECT count(), uniqExact(id) FROM findings FINAL",
    )
    .await;
    let (n, ids) = distinct.trim().split_once('\t').unwrap();
    assert_eq!(n, ids, "a finding stored twice under FINAL");
    println!("killed after {sent_before} flows; {verdict:?}");
    cdc::drop_slot(&admin, &slot).await;
}

/// Distributed mode: the collector reads the slot and publishes the audit records to the
/// events topic keyed by resource; the correlator that owns each resource's partition meets
/// them there with the spans (sent to the collector too) and writes the findings to
/// ClickHouse. The slot moves only once Kafka acknowledged the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_are_found_from_the_change_stream_in_distributed_mode() {
    let _burn = common::burner::every_core();
    let admin = client().await;
    let suffix = cdc::suffix();
    let tables = cdc::create_tables(&admin, &suffix, true).await;
    let slot = format!("slot_{suffix}");
    let broker = common::kafka::Broker::start();
    let d = cdc::Distributed::start(&broker, &suffix, &cdc_flags(&slot, &suffix), "3s");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !d
        .collector
        .log()
        .contains("reading the PostgreSQL change stream")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the collector's reader did not start:\n{}",
            d.collector.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let w = cdc::run(&tables, 15, d.post()).await;
    let verdict = d.assert_exact(&w, 0.0).await;
    let text = d.collector.metrics().await;
    assert_eq!(
        common::metric(&text, cdc::CDC_EVENTS),
        w.changes() as f64,
        "each change once"
    );
    assert!(common::metric(&text, "toctou_cdc_transactions_total") >= w.changes() as f64);
    println!("{verdict:?}");
    drop(d);
    cdc::drop_slot(&admin, &slot).await;
}
