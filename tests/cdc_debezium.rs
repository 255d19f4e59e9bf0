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
use common::kafka::{Broker, Node};
use common::Toctou;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The checkout's script (the run-time CARGO_MANIFEST_DIR first: a binary reused from
/// another checkout keeps its compile-time one).
fn script(name: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("scripts")
        .join(name)
}

/// A Kafka Connect worker running the Debezium connector, private to one test.
struct Connect {
    home: PathBuf,
}

impl Connect {
    /// Starts the worker with `prefix` as the topic prefix and its own slot; returns once the
    /// connector and its task are running (the slot exists then).
    fn start(bootstrap: &str, prefix: &str, slot: &str) -> Connect {
        let home = std::env::var_os("TOCTOU_KAFKA_TEST_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("toctou-debezium-{prefix}"));
        std::fs::create_dir_all(&home).unwrap();
        let out = Command::new(script("debezium"))
            .args(["start", bootstrap, &cdc::pg_url(), prefix])
            .env("TOCTOU_DEBEZIUM_HOME", &home)
            .env("TOCTOU_DEBEZIUM_SLOT", slot)
            .output()
            .expect("running scripts/debezium");
        assert!(
            out.status.success(),
            "scripts/debezium start failed (run 'scripts/debezium install' first?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Connect { home }
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        let _ = Command::new(script("debezium"))
            .arg("stop")
            .env("TOCTOU_DEBEZIUM_HOME", &self.home)
            .output();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

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

/// Waits until toctou has counted the first five rows of the tables.
async fn first_rows_read(counted: impl AsyncFn() -> f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counted().await < 5.0 {
        assert!(
            Instant::now() < deadline,
            "the tables' first rows did not reach toctou in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    counted().await
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
    let _connect = Connect::start(&broker.bootstrap, &prefix, &slot);
    let tables = tables_and_topics(&admin, &suffix, &broker.bootstrap, &prefix).await;
    let toctou = Arc::new(Toctou::start_env(
        &[
            "--cdc-debezium-topics",
            &topics(&prefix),
            "--cdc-debezium-bootstrap",
            &broker.bootstrap,
        ],
        &[("TOCTOU_LOG", "info,toctou_cdc=debug")],
    ));
    let events = || async {
        toctou
            .metric("toctou_events_total{signal=\"cdc\",phase=\"audit\"}")
            .await
    };
    let before = first_rows_read(events).await;
    let http = reqwest::Client::new();
    let post: cdc::Post = {
        let toctou = toctou.clone();
        Arc::new(move |body| {
            let (toctou, http) = (toctou.clone(), http.clone());
            Box::pin(async move { toctou.post_json(&http, "/v1/traces", body).await })
        })
    };
    let w = cdc::run(&tables, 20, post).await;
    // Every change came (and nothing twice): then the verdicts are due within the pair TTL.
    let deadline = Instant::now() + Duration::from_secs(120);
    while events().await < before + w.changes() as f64 {
        assert!(
            Instant::now() < deadline,
            "{} of {} changes arrived; log:\n{}",
            events().await - before,
            w.changes(),
            toctou.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stale = w.stale().len();
    toctou
        .wait_for(Duration::from_secs(60), |f| {
            f.iter().filter(|f| f["kind"] == "stale_check").count() >= stale
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let findings = toctou.findings().await;
    let text = toctou.metrics().await;
    let counts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("toctou_cdc_") || l.contains("signal=\"cdc\""))
        .collect();
    println!("{}", counts.join("\n"));
    let verdict = cdc::assert_exact(&findings, &w, &|| toctou.log());
    assert_eq!(
        common::metric(&text, "toctou_events_total{signal=\"cdc\",phase=\"audit\"}"),
        before + w.changes() as f64,
        "each change once"
    );
    // Each delete's tombstone, and the transactions' BEGIN and END records, were skipped and
    // counted; every change found its transaction's end (none waited out the hold).
    assert!(
        common::metric(
            &text,
            "toctou_ignored_total{signal=\"cdc\",reason=\"tombstone\"}"
        ) >= w.deleted as f64
    );
    assert!(
        common::metric(
            &text,
            "toctou_ignored_total{signal=\"cdc\",reason=\"transaction\"}"
        ) > 0.0
    );
    assert_eq!(
        common::metric(&text, "toctou_cdc_debezium_released_total{why=\"evicted\"}"),
        0.0
    );
    assert_eq!(
        common::metric(&text, "toctou_cdc_debezium_held_changes"),
        0.0
    );
    assert_eq!(
        common::metric(&text, "toctou_rejected_total{reason=\"malformed_json\"}"),
        0.0
    );
    println!("{verdict:?}");
    admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .ok();
}

/// Distributed mode: the collector reads the Debezium topics and publishes the records to the
/// events topic keyed by resource, where the correlator that owns each resource's partition
/// meets them with the spans (sent to the collector too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_are_found_from_debezium_through_kafka_in_distributed_mode() {
    use common::clickhouse::{sql, PrivateServer};
    let _serial = ONE_AT_A_TIME.lock().await;
    let _burn = common::burner::every_core();
    let admin = client().await;
    publication(&admin).await;
    let suffix = cdc::suffix();
    let broker = Broker::start();
    let clickhouse = PrivateServer::start("dbz");
    let db = format!("dbz_{suffix}");
    let topic = "toctou.events";
    broker.create_topic(topic, 4);
    let (prefix, slot) = (format!("dbzd_{suffix}"), format!("dbzd_{suffix}"));
    let _connect = Connect::start(&broker.bootstrap, &prefix, &slot);
    let tables = tables_and_topics(&admin, &suffix, &broker.bootstrap, &prefix).await;
    let args: Vec<String> = [
        "collector",
        "--kafka-bootstrap",
        &broker.bootstrap,
        "--kafka-topic",
        topic,
        "--cdc-debezium-topics",
        &topics(&prefix),
    ]
    .into_iter()
    .chain(common::EPHEMERAL_PORTS)
    .map(String::from)
    .collect();
    let collector = Node::start(&args, "toctou collector listening");
    let _correlator = common::kafka::correlator(
        &broker.bootstrap,
        topic,
        &format!("g_{suffix}"),
        &clickhouse.url,
        &db,
    );
    let events = || async {
        common::metric(
            &collector.metrics().await,
            "toctou_events_total{signal=\"cdc\",phase=\"audit\"}",
        )
    };
    let before = first_rows_read(events).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/traces", collector.addr("otlp_http"));
    let post: cdc::Post = Arc::new(move |body| {
        let (http, url) = (http.clone(), url.clone());
        Box::pin(async move {
            let resp = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
        })
    });
    let w = cdc::run(&tables, 15, post).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while events().await < before + w.changes() as f64 {
        assert!(
            Instant::now() < deadline,
            "{} of {} changes published; log:\n{}",
            events().await - before,
            w.changes(),
            collector.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stale = w.stale().len();
    let query = "SELECT kind, request_id, resource, intervening.action, intervening.version, \
                 intervening.request_id, intervening.actor FROM findings FINAL FORMAT JSONEachRow";
    let deadline = Instant::now() + Duration::from_secs(90);
    let rows = loop {
        let rows: Vec<Value> = sql(&clickhouse.url, &db, query)
            .await
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let found = rows.iter().filter(|r| r["kind"] == "stale_check").count();
        if found >= stale || Instant::now() > deadline {
            tokio::time::sleep(Duration::from_secs(3)).await;
            break sql(&clickhouse.url, &db, query)
                .await
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let findings: Vec<Value> = rows.iter().map(cdc::from_clickhouse_row).collect();
    let verdict = cdc::assert_exact(&findings, &w, &|| collector.log());
    println!("{verdict:?}");
    admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .ok();
}

/// A Debezium Server private to one test, POSTing to toctou's `/v1/cdc/debezium`.
struct DebeziumServer {
    home: PathBuf,
}

impl DebeziumServer {
    fn start(sink: &str, prefix: &str, slot: &str, token: &str) -> DebeziumServer {
        let home = std::env::var_os("TOCTOU_KAFKA_TEST_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("toctou-debezium-server-{prefix}"));
        std::fs::create_dir_all(&home).unwrap();
        let out = Command::new(script("debezium-server"))
            .args(["start", sink, &cdc::pg_url(), prefix])
            .env("TOCTOU_DEBEZIUM_SERVER_HOME", &home)
            .env("TOCTOU_DEBEZIUM_SERVER_SLOT", slot)
            .env("TOCTOU_DEBEZIUM_SERVER_TOKEN", token)
            .output()
            .expect("running scripts/debezium-server");
        assert!(
            out.status.success(),
            "scripts/debezium-server start failed (run 'scripts/debezium-server install' first?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        DebeziumServer { home }
    }
}

impl Drop for DebeziumServer {
    fn drop(&mut self) {
        let _ = Command::new(script("debezium-server"))
            .arg("stop")
            .env("TOCTOU_DEBEZIUM_SERVER_HOME", &self.home)
            .output();
        let _ = std::fs::remove_dir_all(&self.home);
    }
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
    let toctou = Arc::new(Toctou::start_env(
        &["--cdc-mapping", mapping.to_str().unwrap()],
        &[("TOCTOU_INGEST_TOKENS", &token)],
    ));
    let slot = format!("dbzs_{suffix}");
    let _server = DebeziumServer::start(
        &toctou.http_url("/v1/cdc/debezium"),
        &format!("dbzs_{suffix}"),
        &slot,
        &token,
    );
    let events = || async {
        toctou
            .metric("toctou_events_total{signal=\"cdc\",phase=\"audit\"}")
            .await
    };
    admin
        .execute(
            &format!("INSERT INTO {} VALUES ('unraced', 1)", tables.claims),
            &[],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while events().await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no record reached toctou in 120 s; log:\n{}",
            toctou.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = events().await;
    let http = reqwest::Client::new();
    let url = toctou.http_url("/v1/traces");
    let post: cdc::Post = {
        let token = token.clone();
        Arc::new(move |body| {
            let (http, url, token) = (http.clone(), url.clone(), token.clone());
            Box::pin(async move {
                let resp = http
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
            })
        })
    };
    let w = cdc::run(&tables, 20, post).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while events().await < before + w.changes() as f64 {
        assert!(
            Instant::now() < deadline,
            "{} of {} changes arrived; log:\n{}",
            events().await - before,
            w.changes(),
            toctou.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stale = w.stale().len();
    toctou
        .wait_for(Duration::from_secs(60), |f| {
            f.iter().filter(|f| f["kind"] == "stale_check").count() >= stale
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let findings = toctou.findings().await;
    let verdict = cdc::assert_exact(&findings, &w, &|| toctou.log());
    let text = toctou.metrics().await;
    assert_eq!(
        common::metric(&text, "toctou_events_total{signal=\"cdc\",phase=\"audit\"}"),
        before + w.changes() as f64,
        "each change once"
    );
    assert_eq!(
        common::metric(&text, "toctou_rejected_total{reason=\"unauthenticated\"}"),
        0.0,
        "every signed POST accepted"
    );
    assert_eq!(
        common::metric(&text, "toctou_rejected_total{reason=\"missing_resource\"}"),
        0.0
    );
    println!("{verdict:?}");
    let _ = std::fs::remove_file(&mapping);
    drop(_server);
    admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .ok();
}
