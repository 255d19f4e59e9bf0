//! `toctou run --cdc-postgres`: the audit records come only from PostgreSQL's change stream,
//! and the races are judged against the database's own account of what happened.
//!
//! Four instrumented flows read a row's version (the check span), wait a little, then
//! decrement its stock in a transaction that names its request (`toctou.request_id`), with
//! `RETURNING version` telling which version the write acted on (the use span carries it).
//! Beside them a plain writer, with no span and no message, updates the same rows: an actor
//! nothing instruments. Ground truth is the database's: a flow's check was stale exactly when
//! the version its write acted on is not the one it read. toctou must report a `stale_check`
//! for exactly those flows, no finding for the others, and name the plain writer's
//! transactions among the intervening writes where they were. Both cores are kept busy.
//!
//! Needs PostgreSQL (`TOCTOU_TEST_POSTGRES_URL`, scripts/postgres).

mod common;

use common::Toctou;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use toctou_cdc::pgoutput::lsn_text;
use toctou_schema::now_ns;
use tokio_postgres::{Client, NoTls};

fn pg_url() -> String {
    std::env::var("TOCTOU_TEST_POSTGRES_URL")
        .expect("TOCTOU_TEST_POSTGRES_URL: start one with scripts/postgres start")
}

async fn client() -> Client {
    let (client, conn) = tokio_postgres::connect(&pg_url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn span(phase: &str, resource: &str, request: &str, version: i64, start: u64, end: u64) -> Value {
    let attr = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let outcome = if version < 0 { "conflict" } else { "ok" };
    let version = version.abs();
    let trace = format!("{:032x}", xxhash(request));
    let span_id = format!("{:016x}", xxhash(&format!("{request}/{phase}")) as u64);
    json!({
        "traceId": trace, "spanId": span_id, "name": phase, "kind": 1,
        "startTimeUnixNano": start.to_string(), "endTimeUnixNano": end.to_string(),
        "attributes": [
            attr("toctou.phase", phase), attr("toctou.resource", resource),
            attr("toctou.request_id", request), attr("toctou.resource.version", &version.to_string()),
            attr("toctou.operation", "reserve"), attr("toctou.use.outcome", outcome),
        ]
    })
}

/// A stable 128-bit hash, for ids derived from the request id.
fn xxhash(s: &str) -> u128 {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in s.bytes() {
        h ^= b as u128;
        h = h.wrapping_mul(0x0000000001000000000000000000013b);
    }
    h | 1
}

/// What one flow did, by the database's account.
#[derive(Debug)]
struct Flow {
    request: String,
    resource: String,
    checked: i64,
    /// The version the write acted on (its RETURNING version minus one).
    acted_on: i64,
    /// A compare-and-swap that found another version, and so wrote nothing.
    conflict: bool,
    /// 0-3: check then write; 4: compare-and-swap; 5: under the row's lock.
    style: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_are_found_from_the_change_stream_alone() {
    let _burn = common::burner::every_core();
    let admin = client().await;
    let suffix = format!("{}_{}", std::process::id(), now_ns() % 1_000_000_000);
    let table = format!("inventory_{suffix}");
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (sku text PRIMARY KEY, stock int NOT NULL, version bigint NOT NULL);
             INSERT INTO {table} SELECT 'sku-' || g, 1000000, 1 FROM generate_series(1, 4) g;
             CREATE PUBLICATION pub_{suffix} FOR TABLE {table};"
        ))
        .await
        .unwrap();
    let slot = format!("slot_{suffix}");
    let flags = cdc_flags(&slot, &suffix);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let toctou = std::sync::Arc::new(Toctou::start(&flags));

    // The stream starts where the slot does: no write before it exists is seen.
    wait_for_slot(&admin, &slot, &toctou).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The plain writer: its own record of the versions it produced, per row.
    let plain = {
        let (table, stop) = (table.clone(), stop.clone());
        tokio::spawn(async move {
            let c = client().await;
            let mut produced: BTreeSet<(String, i64)> = BTreeSet::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sku = format!("sku-{}", i % 4 + 1);
                let row = c
                    .query_one(
                        &format!("UPDATE {table} SET stock = stock + 1, version = version + 1 WHERE sku = $1 RETURNING version"),
                        &[&sku],
                    )
                    .await
                    .unwrap();
                produced.insert((format!("public.{table}/{sku}"), row.get(0)));
                i += 1;
                tokio::time::sleep(Duration::from_millis(37)).await;
            }
            produced
        })
    };
    let http = reqwest::Client::new();
    let mut flows = Vec::new();
    // Flows 0-3 check, wait, then write whatever the row holds by then; flow 4 writes only if
    // the version is still the one checked (compare-and-swap); flow 5 checks under the row's
    // lock (SELECT ... FOR UPDATE) and writes in the same transaction.
    for f in 0..6 {
        let (table, toctou) = (table.clone(), toctou.clone());
        let http = http.clone();
        flows.push(tokio::spawn(async move {
            let mut c = client().await;
            let mut done = Vec::new();
            for i in 0..20 {
                let sku = format!("sku-{}", (f + i) % 4 + 1);
                let resource = format!("public.{table}/{sku}");
                let request = format!("req-{f}-{i}");
                let locked = f == 5;
                let tx = c.transaction().await.unwrap();
                let check_start = now_ns();
                let lock = if locked { " FOR UPDATE" } else { "" };
                let checked: i64 = tx
                    .query_one(&format!("SELECT version FROM {table} WHERE sku = $1{lock}"), &[&sku])
                    .await
                    .unwrap()
                    .get(0);
                let check_end = now_ns();
                let tx = if locked {
                    tx
                } else {
                    tx.commit().await.unwrap();
                    c.transaction().await.unwrap()
                };
                tokio::time::sleep(Duration::from_millis(20 + (i as u64 * 7) % 40)).await;
                let use_start = now_ns();
                tx.execute(toctou_instrument::REQUEST_ID_SQL, &[&request])
                    .await
                    .unwrap();
                let cas = if f == 4 { " AND version = $2" } else { " AND $2::bigint > 0" };
                let new: Option<i64> = tx
                    .query_opt(
                        &format!("UPDATE {table} SET stock = stock - 1, version = version + 1 WHERE sku = $1{cas} RETURNING version"),
                        &[&sku, &checked],
                    )
                    .await
                    .unwrap()
                    .map(|r| r.get(0));
                tx.commit().await.unwrap();
                let use_end = now_ns();
                // A compare-and-swap that found another version wrote nothing: a conflict.
                let (acted_on, used) = match new {
                    Some(n) => (n - 1, n - 1),
                    None => (checked, -checked),
                };
                let body = json!({"resourceSpans": [{
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]},
                    "scopeSpans": [{"spans": [
                        span("check", &resource, &request, checked, check_start, check_end),
                        span("use", &resource, &request, used, use_start, use_end),
                    ]}]
                }]});
                toctou.post_json(&http, "/v1/traces", body.to_string()).await;
                done.push(Flow { request, resource, checked, acted_on, conflict: new.is_none(), style: f });
            }
            done
        }));
    }
    let mut all = Vec::new();
    for f in flows {
        all.extend(f.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let produced = plain.await.unwrap();

    // Compare-and-swap and locked flows never act on a version they did not check: the
    // database refused the swap (a prevented race) or the lock kept others out.
    assert!(all
        .iter()
        .filter(|f| f.style >= 4)
        .all(|f| f.acted_on == f.checked));
    let conflicts = all.iter().filter(|f| f.conflict).count();
    let stale: BTreeMap<&str, &Flow> = all
        .iter()
        .filter(|f| f.acted_on != f.checked)
        .map(|f| (f.request.as_str(), f))
        .collect();
    assert!(
        !stale.is_empty(),
        "the workload raced nowhere: nothing to find"
    );
    assert!(
        stale.len() < all.len(),
        "every flow raced: nothing to leave alone"
    );
    // Decided once the watermark passes the uses: well within 30 s.
    toctou
        .wait_for(Duration::from_secs(60), |f| {
            f.iter().filter(|f| f["kind"] == "stale_check").count() >= stale.len()
        })
        .await;
    // A little longer: nothing more may come.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let findings = toctou.findings().await;
    let found: BTreeMap<&str, &Value> = findings
        .iter()
        .filter(|f| f["kind"] == "stale_check")
        .map(|f| (f["request_id"].as_str().unwrap(), f))
        .collect();
    assert_eq!(
        found.keys().collect::<BTreeSet<_>>(),
        stale.keys().collect::<BTreeSet<_>>(),
        "stale checks by request: toctou's against the database's; log:\n{}",
        toctou.log()
    );
    let others: Vec<&Value> = findings
        .iter()
        .filter(|f| f["kind"] != "stale_check")
        .collect();
    assert!(others.is_empty(), "no other kind: {others:#?}");
    // The intervening writes are the database's: versions in (checked, acted on], and the
    // plain writer's transactions among them wherever it produced one of those versions.
    let mut plain_named = 0;
    for (request, flow) in &stale {
        let f = found[request];
        assert_eq!(f["resource"], json!(flow.resource));
        let intervening = f["intervening"].as_array().unwrap();
        assert!(!intervening.is_empty(), "{f:#}");
        for w in intervening {
            let v: i64 = w["version"].as_str().unwrap().parse().unwrap();
            assert!(
                v > flow.checked && v <= flow.acted_on,
                "{w} outside ({}, {}]",
                flow.checked,
                flow.acted_on
            );
            assert!(w["actor"].as_str().unwrap().starts_with("txid:"), "{w}");
        }
        let by_plain: BTreeSet<i64> = (flow.checked + 1..=flow.acted_on)
            .filter(|v| produced.contains(&(flow.resource.clone(), *v)))
            .collect();
        let named: BTreeSet<i64> = intervening
            .iter()
            .filter(|w| w["request_id"].is_null())
            .map(|w| w["version"].as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(named, by_plain, "the plain writer's writes in {f:#}");
        plain_named += named.len();
    }
    assert!(plain_named > 0, "the plain writer never intervened");
    // Every committed write came as one audit record: the flows' and the plain writer's.
    let text = toctou.metrics().await;
    assert_eq!(
        common::metric(&text, "toctou_events_total{signal=\"cdc\",phase=\"audit\"}"),
        (all.len() - conflicts + produced.len()) as f64
    );
    assert_eq!(
        common::metric(&text, "toctou_prevented_races_total"),
        conflicts as f64,
        "compare-and-swaps refused by the database"
    );
    assert_eq!(common::metric(&text, "toctou_cdc_read_errors_total"), 0.0);
    assert!(
        common::metric(&text, "toctou_cdc_transactions_total")
            >= (all.len() + produced.len()) as f64
    );
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
    println!(
        "{} flows ({conflicts} compare-and-swaps refused), {} stale by the database, {} found; {} intervening writes by the plain writer named",
        all.len(),
        stale.len(),
        found.len(),
        plain_named
    );
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
    let suffix = format!("{}_{}", std::process::id(), now_ns() % 1_000_000_000);
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
