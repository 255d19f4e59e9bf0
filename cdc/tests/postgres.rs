//! The PostgreSQL source against a real server (scripts/postgres: PostgreSQL 15,
//! `wal_level=logical`), ground truth from the writers' own record of what they committed:
//! every committed change read once, with its resource, version, request id and writer; a
//! rolled-back transaction never; a 100,000-row transaction whole; after a reconnect the
//! slot resumes at the confirmed position and re-reads what was not confirmed.
//!
//! Needs `TOCTOU_TEST_POSTGRES_URL` (./scripts/test sets it); built with `--features services`.
#![cfg(feature = "services")]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use toctou_cdc::postgres::{PostgresConfig, PostgresSource, DEFAULT_MAX_CHANGES};
use toctou_cdc::{Mapping, Op, RowChange};
use tokio_postgres::{Client, NoTls};

fn url() -> String {
    std::env::var("TOCTOU_TEST_POSTGRES_URL")
        .expect("TOCTOU_TEST_POSTGRES_URL: start one with scripts/postgres start")
}

async fn client() -> Client {
    let (client, conn) = tokio_postgres::connect(&url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// A name no other test (or earlier run) uses: slots and tables outlive a run.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        toctou_schema::now_ns() % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A slot and publication of this test's own, on `tables` only: other tests' writes stay out.
async fn source(admin: &Client, tables: &[&str]) -> (PostgresConfig, PostgresSource) {
    let publication = unique("pub");
    admin
        .batch_execute(&format!(
            "CREATE PUBLICATION {publication} FOR TABLE {}",
            tables.join(", ")
        ))
        .await
        .unwrap();
    let config = PostgresConfig {
        url: url(),
        slot: unique("slot"),
        publication,
        max_changes: DEFAULT_MAX_CHANGES,
        version_column: "version".into(),
        row_images: true,
    };
    let source = PostgresSource::connect(config.clone()).await.unwrap();
    (config, source)
}

/// A new table (`prefix` and a unique suffix) with `columns`, and a source reading it alone.
async fn table_and_source(
    admin: &Client,
    prefix: &str,
    columns: &str,
) -> (String, PostgresConfig, PostgresSource) {
    let table = unique(prefix);
    admin
        .batch_execute(&format!("CREATE TABLE {table} ({columns})"))
        .await
        .unwrap();
    let (config, source) = source(admin, &[&table]).await;
    (table, config, source)
}

/// Reads and confirms until `want` changes have come, or fails after 30 s.
async fn read_all(source: &mut PostgresSource, want: usize) -> Vec<RowChange> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < want {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {want} changes after 30 s",
            out.len()
        );
        let batch = source.read().await.unwrap();
        if let Some(lsn) = batch.end_lsn {
            source.confirm(lsn).await.unwrap();
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        out.extend(batch.changes);
    }
    out
}

async fn drop_slot(admin: &Client, config: &PostgresConfig) {
    admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&config.slot])
        .await
        .unwrap();
}

/// What a writer committed, by its own record: (resource, version, request id) per change.
type Truth = Vec<(Op, String, Option<String>, Option<String>)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_change_is_read_once_with_its_request_and_writer() {
    let admin = client().await;
    let (table, config, mut source) = table_and_source(
        &admin,
        "inventory",
        "sku text PRIMARY KEY, stock int NOT NULL, version bigint NOT NULL",
    )
    .await;

    // Four writers at once, each on its own connection: instrumented ones name their request
    // in the transaction, the plain one does not; every fifth transaction rolls back.
    let mut writers = Vec::new();
    for w in 0..4 {
        let table = table.clone();
        writers.push(tokio::spawn(async move {
            let mut c = client().await;
            let mut truth: Truth = Vec::new();
            for i in 0..50 {
                let sku = format!("w{w}-{}", i % 10);
                let request = (w != 3).then(|| format!("req-{w}-{i}"));
                let tx = c.transaction().await.unwrap();
                if let Some(r) = &request {
                    tx.execute(
                        "SELECT pg_logical_emit_message(true, 'toctou.request_id', $1)",
                        &[r],
                    )
                    .await
                    .unwrap();
                }
                let version = (i + 1) as i64;
                let (op, sql) = if i < 10 {
                    (Op::Insert, format!("INSERT INTO {table} VALUES ($1, 5, $2)"))
                } else if i % 7 == 6 {
                    (Op::Delete, format!("DELETE FROM {table} WHERE sku = $1 AND $2::bigint > 0"))
                } else {
                    (
                        Op::Update,
                        format!(
                            "INSERT INTO {table} VALUES ($1, 4, $2) ON CONFLICT (sku) DO UPDATE SET stock = 4, version = $2"
                        ),
                    )
                };
                let n = tx.execute(&sql, &[&sku, &version]).await.unwrap();
                if i % 5 == 4 {
                    tx.rollback().await.unwrap();
                    continue;
                }
                tx.commit().await.unwrap();
                if n == 0 {
                    continue; // a delete of a row already gone: no change
                }
                // An upsert of a deleted row is an insert.
                let op = if op == Op::Update && !truth.iter().rev().find(|t| t.1.ends_with(&sku)).is_some_and(|t| t.0 != Op::Delete) {
                    Op::Insert
                } else {
                    op
                };
                let version = (op != Op::Delete).then(|| version.to_string());
                truth.push((op, format!("public.{table}/{sku}"), version, request));
            }
            truth
        }));
    }
    let mut truth: Truth = Vec::new();
    for w in writers {
        truth.extend(w.await.unwrap());
    }
    let changes = read_all(&mut source, truth.len()).await;

    let mapping = Mapping::new("postgres");
    let mut seen = HashSet::new();
    let mut got: BTreeMap<String, Truth> = BTreeMap::new();
    let mut position = 0;
    for c in &changes {
        assert!(c.position >= position, "commit order");
        position = c.position;
        let a = mapping.audit(c);
        assert!(
            seen.insert(a.source_id.clone().unwrap()),
            "read twice: {c:?}"
        );
        assert!(a.actor.as_deref().unwrap().starts_with("txid:"));
        let version = (c.op != Op::Delete).then(|| a.version.clone().unwrap());
        got.entry(a.resource.clone()).or_default().push((
            c.op,
            a.resource,
            version,
            c.request_id.clone(),
        ));
    }
    let mut want: BTreeMap<String, Truth> = BTreeMap::new();
    for t in truth {
        want.entry(t.1.clone()).or_default().push(t);
    }
    // Per resource, in commit order: the changes each writer committed, and no others.
    assert_eq!(got, want);
    assert_eq!(changes.len(), want.values().map(Vec::len).sum::<usize>());
    drop_slot(&admin, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resumes_at_the_confirmed_position_and_rereads_the_rest() {
    let admin = client().await;
    let (table, config, mut source) = table_and_source(
        &admin,
        "accounts",
        "region text, id int, balance int, PRIMARY KEY (id, region)",
    )
    .await;
    for i in 0..6 {
        admin
            .execute(&format!("INSERT INTO {table} VALUES ('eu', $1, 0)"), &[&i])
            .await
            .unwrap();
    }
    let first = read_all(&mut source, 6).await;
    // Key order, not column order; no version column: the commit position.
    assert_eq!(
        first[0].key,
        [
            ("id".to_string(), "0".to_string()),
            ("region".to_string(), "eu".to_string())
        ]
    );
    assert_eq!(
        Mapping::new("postgres").resource(&first[0]),
        format!("public.{table}/0,eu")
    );
    assert_eq!(first[0].row_version, None);
    let confirmed = source.confirmed().await.unwrap().unwrap();
    // Two more, read but not confirmed, then the reader goes away.
    for i in 6..8 {
        admin
            .execute(
                &format!("UPDATE {table} SET balance = 1 WHERE id = $1"),
                &[&(i - 6)],
            )
            .await
            .unwrap();
    }
    let mut unconfirmed = Vec::new();
    while unconfirmed.len() < 2 {
        unconfirmed.extend(source.read().await.unwrap().changes);
    }
    drop(source);
    let mut again = PostgresSource::connect(config.clone()).await.unwrap();
    assert_eq!(again.confirmed().await.unwrap(), Some(confirmed));
    let reread = read_all(&mut again, 2).await;
    assert_eq!(
        reread, unconfirmed,
        "what was not confirmed comes again, as it was"
    );
    assert!(reread
        .iter()
        .all(|c| c.op == Op::Update && c.request_id.is_none()));
    drop_slot(&admin, &config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_100_000_rows_is_read_whole() {
    let admin = client().await;
    let (table, config, mut source) =
        table_and_source(&admin, "bulk", "id int PRIMARY KEY, version int NOT NULL").await;
    admin
        .batch_execute(&format!(
            "BEGIN; SELECT pg_logical_emit_message(true, 'toctou.request_id', 'bulk-1'); \
             INSERT INTO {table} SELECT g, 1 FROM generate_series(1, 100000) g; \
             TRUNCATE {table}; COMMIT;"
        ))
        .await
        .unwrap();
    let batch = source.read().await.unwrap();
    assert_eq!(batch.transactions, 1);
    assert_eq!(batch.truncates, 1);
    assert_eq!(batch.changes.len(), 100_000);
    assert!(batch
        .changes
        .iter()
        .all(|c| c.request_id.as_deref() == Some("bulk-1")));
    let tx = &batch.changes[0].tx;
    assert!(batch
        .changes
        .iter()
        .enumerate()
        .all(|(i, c)| c.index as usize == i && &c.tx == tx));
    source.confirm(batch.end_lsn.unwrap()).await.unwrap();
    assert!(source.read().await.unwrap().changes.is_empty());
    drop_slot(&admin, &config).await;
}
