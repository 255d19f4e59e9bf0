//! Debezium's change events as toctou's audit records, through the real pieces: PostgreSQL,
//! Debezium's PostgreSQL connector in Kafka Connect (scripts/debezium, with the connector
//! config of deploy/debezium/postgres-connector.json), a Kafka broker; then `toctou run
//! --cdc-debezium-topics`, and distributed mode (`toctou collector` re-keying the events into
//! the events topic, `toctou correlator` writing findings to ClickHouse). The racing workload
//! and its check against the database are `common::cdc`'s. Both cores are kept busy.
//!
//! Needs PostgreSQL (`TOCTOU_TEST_POSTGRES_URL`), scripts/kafka and scripts/debezium
//! installed, and (distributed mode) ClickHouse's server (scripts/clickhouse).

mod common;

use common::cdc::{self, client};
use common::debezium::Scripted;
use common::kafka::Broker;
use common::Toctou;
use std::time::{Duration, Instant};

/// The publication the connector config names, made here by the database's superuser so
/// that concurrent connectors do not race to create it.
async fn publication(admin: &tokio_postgres::Client) {
    admin
        .batch_execute(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'dbz_publication') THEN
                 CREATE PUBLICATION dbz_publication FOR ALL TABLES;
               END IF;
             EXCEPTION WHEN duplicate_object THEN NULL;
             END $$;",
        )
        .await
        .unwrap();
}

/// Creates the workload's tables, writes their first rows (and a claim nobody races for, in a
/// transaction that names a request, so that the message topic exists too), and waits until
/// the connector's topics for them exist: toctou then subscribes to topics that are there.
/// (A pattern's topics created later are found at the consumer's next metadata refresh.)
async fn tables_and_topics(
    admin: &tokio_postgres::Client,
    suffix: &str,
    bootstrap: &str,
    prefix: &str,
) -> cdc::Tables {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let tables = cdc::create_tables(admin, suffix, false).await;
    admin
        .batch_execute(&format!(
            "BEGIN;
             SELECT pg_logical_emit_message(true, 'toctou.request_id', 'warm-up');
             INSERT INTO {} VALUES ('unraced', 1);
             COMMIT;",
            tables.claims
        ))
        .await
        .unwrap();
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let wanted = [
        format!("{prefix}.message"),
        format!("{prefix}.transaction"),
        format!("{prefix}.public.{}", tables.inventory),
        format!("{prefix}.public.{}", tables.claims),
    ];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .unwrap();
        let have: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
        if wanted.iter().all(|w| have.contains(&w.as_str())) {
            return tables;
        }
        assert!(
            Instant::now() < deadline,
            "topics {wanted:?} not all there in 120 s: {have:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `^<prefix>\..*`: every topic of the connector, its message and transaction topics too.
fn topics(prefix: &str) -> String {
    format!("^{}\\..*", prefix)
}

/// Debezium's records come a second or more after their commits (the connector polls the
/// slot, then Kafka), later still on a busy machine: the lateness allows for it, so that a
/// finding names every write (its verdict, by versions, does not depend on it).
const LATENESS: &str = "5s";

/// Produces records that are not row changes, or not Debezium's at all, to `topic`; returns
/// the counts they must show up in.
async fn junk(bootstrap: &str, topic: &str) -> Vec<(&'static str, f64)> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let schema_change = r#"{"source": {"server": "s"}, "databaseName": "shop", "ddl": "ALTER TABLE t ADD c int", "tableChanges": []}"#;
    let snapshot = r#"{"op": "r", "after": {"sku": "a"}, "source": {"schema": "public", "table": "t", "lsn": 1}}"#;
    let records: [(Option<&str>, Option<&str>); 7] = [
        (None, Some("not json at all")),
        (Some(r#"{"id":1}"#), Some(r#"{"op": "x", "source": {}}"#)),
        (Some(r#"{"id":1}"#), Some("[1, 2, 3]")),
        (Some(r#"{"id":1}"#), None),
        (None, Some(r#"{"ts_ms": 1733580000000}"#)),
        (None, Some(schema_change)),
        (Some(r#"{"sku":"a"}"#), Some(snapshot)),
    ];
    for (key, value) in records {
        let mut record = FutureRecord::<str, str>::to(topic);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    vec![
        ("toctou_rejected_total{reason=\"malformed_json\"}", 2.0),
        ("toctou_rejected_total{reason=\"bad_attribute\"}", 1.0),
        (
            "toctou_ignored_total{signal=\"cdc\",reason=\"heartbeat\"}",
            1.0,
        ),
        (
            "toctou_ignored_total{signal=\"cdc\",reason=\"schema_change\"}",
            1.0,
        ),
        (
            "toctou_ignored_total{signal=\"cdc\",reason=\"snapshot\"}",
            1.0,
        ),
    ]
}

/// The two tests one at a time: each connector reads every table of the database (its
/// publication is FOR ALL TABLES), so another test's workload would be counted too.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_are_found_from_debezium_through_kafka_in_toctou_run() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let _burn = common::burner::every_core();
    let admin = client().await;
    publication(&admin).await;
    let suffix = cdc::suffix();
    let broker = Broker::start();
    let (prefix, slot) = (format!("dbz_{suffix}"), format!("dbz_{suffix}"));
    let _connect = Scripted::connect(&broker.bootstrap, &cdc::pg_url(), &prefix, &slot);
    let tables = tables_and_topics(&admin, &suffix, &broker.bootstrap, &prefix).await;
    // Records nobody should send, on a topic the pattern takes: each must be counted by
    // reason and skipped, and the stream go on.
    broker.create_topic(&format!("{prefix}.junk"), 1);
    let junk = junk(&broker.bootstrap, &format!("{prefix}.junk")).await;
    let toctou = Toctou::start(&[
        "--cdc-debezium-topics",
        &topics(&prefix),
        "--cdc-debezium-bootstrap",
        &broker.bootstrap,
        "--allowed-lateness",
        LATENESS,
    ]);
    // The tables' first five rows, before the workload.
    let events = || async { toctou.metric(cdc::CDC_EVENTS).await };
    cdc::wait_for_count(events, 5.0, 120, "first rows", &|| toctou.log()).await;
    let post = cdc::post_to(toctou.http_url("/v1/traces"), None);
    let w = cdc::run(&tables, 20, post).await;
    let (verdict, text) = cdc::assert_run_exact(&toctou, &w, 5.0).await;
    // Each delete's tombstone, and the transactions' BEGIN and END records, were skipped and
    // counted; every change went with its whole transaction (none waited out the hold).
    let metric = |series: &str| common::metric(&text, series);
    assert!(
        metric("toctou_ignored_total{signal=\"cdc\",reason=\"tombstone\"}") >= w.deleted() as f64
    );
    assert!(metric("toctou_ignored_total{signal=\"cdc\",reason=\"transaction\"}") > 0.0);
    assert_eq!(
        metric("toctou_cdc_debezium_released_total{why=\"timed_out\"}"),
        0.0
    );
    assert_eq!(
        metric("toctou_cdc_debezium_released_total{why=\"evicted\"}"),
        0.0
    );
    assert_eq!(metric("toctou_cdc_debezium_held_changes"), 0.0);
    for (series, n) in junk {
        assert_eq!(metric(series), n, "{series}");
    }
    println!("{verdict:?}");
    cdc::drop_slot(&admin, &slot).await;
}

/// Distributed mode: the collector reads the Debezium topics and publishes the records to the
/// events topic keyed by resource, where the correlator that owns each resource's partition
/// meets them with the spans (sent to the collector too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_are_found_from_debezium_through_kafka_in_distributed_mode() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let _burn = common::burner::every_core();
    let admin = client().await;
    publication(&admin).await;
    let suffix = cdc::suffix();
    let broker = Broker::start();
    let (prefix, slot) = (format!("dbzd_{suffix}"), format!("dbzd_{suffix}"));
    let _connect = Scripted::connect(&broker.bootstrap, &cdc::pg_url(), &prefix, &slot);
    let tables = tables_and_topics(&admin, &suffix, &broker.bootstrap, &prefix).await;
    let reader = ["--cdc-debezium-topics".to_string(), topics(&prefix)];
    let d = cdc::Distributed::start(&broker, &suffix, &reader, LATENESS);
    let log = || d.collector.log();
    cdc::wait_for_count(|| d.published(), 5.0, 120, "first rows", &log).await;
    let w = cdc::run(&tables, 15, d.post()).await;
    let verdict = d.assert_exact(&w, 5.0).await;
    println!("{verdict:?}");
    cdc::drop_slot(&admin, &slot).await;
}

/// Debezium Server's HTTP sink, no Kafka: each change event is POSTed, signed with the ingest
/// token as Standard Webhooks say, in commit order; records come without their key, so the
/// mapping file names the tables' key columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_are_found_from_debezium_servers_http_sink() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let _burn = common::burner::every_core();
    let admin = client().await;
    publication(&admin).await;
    let suffix = cdc::suffix();
    let tables = cdc::create_tables(&admin, &suffix, false).await;
    let mapping = std::env::temp_dir().join(format!("toctou-mapping-{suffix}.yaml"));
    std::fs::write(
        &mapping,
        format!(
            "tables:\n  public.{inv}: \"public.{inv}/{{sku}}\"\n  public.{cl}: \"public.{cl}/{{k}}\"\n",
            inv = tables.inventory,
            cl = tables.claims
        ),
    )
    .unwrap();
    let token = format!("ingest-{suffix}-0123456789abcdef");
    let toctou = Toctou::start_env(
        &[
            "--cdc-mapping",
            mapping.to_str().unwrap(),
            "--allowed-lateness",
            LATENESS,
        ],
        &[("TOCTOU_INGEST_TOKENS", &token)],
    );
    let slot = format!("dbzs_{suffix}");
    let sink = toctou.http_url("/v1/cdc/debezium");
    let server = Scripted::server(&sink, &format!("dbzs_{suffix}"), &slot, &token);
    admin
        .execute(
            &format!("INSERT INTO {} VALUES ('unraced', 1)", tables.claims),
            &[],
        )
        .await
        .unwrap();
    let events = || async { toctou.metric(cdc::CDC_EVENTS).await };
    cdc::wait_for_count(events, 1.0, 120, "first row", &|| toctou.log()).await;
    let post = cdc::post_to(toctou.http_url("/v1/traces"), Some(token.clone()));
    let w = cdc::run(&tables, 20, post).await;
    let (verdict, text) = cdc::assert_run_exact(&toctou, &w, 1.0).await;
    let metric = |series: &str| common::metric(&text, series);
    assert_eq!(
        metric("toctou_rejected_total{reason=\"unauthenticated\"}"),
        0.0,
        "every signed POST accepted"
    );
    assert_eq!(
        metric("toctou_rejected_total{reason=\"missing_resource\"}"),
        0.0
    );
    println!("{verdict:?}");
    let _ = std::fs::remove_file(&mapping);
    drop(server);
    cdc::drop_slot(&admin, &slot).await;
}
