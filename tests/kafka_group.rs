//! Distributed mode end to end on a real broker and ClickHouse 18.16: two collectors, a
//! 6-partition topic, two correlators in one group. ClickHouse must hold exactly the
//! findings `toctou replay` reports for the same requests (by id), each once.

mod common;

use common::metric;

use common::clickhouse::{server_url, sql};
use common::kafka::stories::{
    assert_stored_exactly, count_events, expected_findings, send_stories,
};
use common::kafka::{collector, correlator, Broker};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_correlators_store_exactly_the_expected_findings() {
    let broker = Broker::start();
    let topic = "toctou.events";
    let url = server_url();
    let db = format!("toctou_test_{}_kafka_group", std::process::id());

    // Without the topic, both tiers refuse to start and say how to create it.
    for args in [
        vec!["correlator", "--clickhouse-url", url.as_str()],
        vec!["collector"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_toctou"))
            .args(&args)
            .args([
                "--kafka-bootstrap",
                &broker.bootstrap,
                "--kafka-topic",
                topic,
            ])
            .args(["--api-addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started without its topic");
        assert!(
            stderr.contains("does not exist") && stderr.contains("toctou kafka init"),
            "{args:?}: {stderr}"
        );
    }

    broker.create_topic(topic, 6);
    // Idempotent: a second init with the same partitions says so and succeeds; another
    // partition count is refused.
    broker.create_topic(topic, 6);
    let out = Command::new(env!("CARGO_BIN_EXE_toctou"))
        .args(["kafka", "init", "--kafka-bootstrap", &broker.bootstrap])
        .args(["--kafka-topic", topic, "--partitions", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists with 6 partitions, not 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut a = correlator(&broker.bootstrap, topic, "group", &url, &db);
    let mut b = correlator(&broker.bootstrap, topic, "group", &url, &db);
    let c1 = collector(&broker.bootstrap, topic);
    let c2 = collector(&broker.bootstrap, topic);

    // A message from a future format version: counted and skipped, never a crash.
    produce_raw(&broker.bootstrap, topic, b"\x09 from the future").await;

    let progress = Arc::new(AtomicU64::new(0));
    let (sent, _) = send_stories(
        700,
        vec![c1.addr("otlp_http"), c2.addr("otlp_http")],
        Duration::from_millis(5),
        progress,
    )
    .await;
    let expected = expected_findings(&sent);
    assert!(
        expected.len() >= 500,
        "the stream has races: {}",
        expected.len()
    );

    assert_stored_exactly(&url, &db, &expected, Duration::from_secs(60), || {
        format!("correlator a:\n{}\ncorrelator b:\n{}", a.log(), b.log())
    })
    .await;

    // Both members got partitions; every message but the future one decoded.
    let mut unknown_version = 0.0;
    for (name, node) in [("a", &a), ("b", &b)] {
        let m = node.metrics().await;
        let assigned = metric(&m, "toctou_kafka_assigned_partitions");
        assert!(assigned >= 1.0, "correlator {name} owns no partition:\n{m}");
        assert_eq!(
            metric(&m, "toctou_kafka_decode_errors_total{reason=\"malformed\"}"),
            0.0
        );
        unknown_version += metric(
            &m,
            "toctou_kafka_decode_errors_total{reason=\"unknown_version\"}",
        );
    }
    assert_eq!(unknown_version, 1.0);
    // Everything is read: the lag both members report (from librdkafka's statistics, every
    // 5 s) comes down to 0.
    for (name, node) in [("a", &a), ("b", &b)] {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = node.metrics().await;
            let lag = m
                .lines()
                .find_map(|l| l.strip_prefix("toctou_kafka_consumer_lag_messages "))
                .map(|v| v.trim().parse::<f64>().unwrap());
            if lag == Some(0.0) {
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "correlator {name}: consumer lag {lag:?}, not 0:\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let produced: f64 = [&c1, &c2]
        .iter()
        .map(|c| futures::executor::block_on(c.metrics()))
        .map(|m| metric(&m, "toctou_kafka_produced_events_total"))
        .sum();
    assert!(produced > 0.0, "collectors report what they produced");

    // Every event accepted is stored once (policy changes once, not once per partition).
    let events = sql(
        &url,
        &db,
        "SELECT count(), uniqExact(event_key) FROM events FINAL",
    )
    .await;
    let counts: Vec<u64> = events
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(counts[0], counts[1], "{events}");
    let spans_and_audits: u64 = count_events(&sent);
    assert_eq!(counts[1], spans_and_audits, "{events}");

    for node in [&mut a, &mut b] {
        let status = node.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "{status:?}\n{}",
            node.log()
        );
    }
}

/// Writes `payload` to the topic as is, the way another producer (or a newer toctou) might.
async fn produce_raw(bootstrap: &str, topic: &str, payload: &[u8]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(topic)
                .key("inventory/sku-x")
                .payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("producing the raw message");
}
