//! The broker stopped for 15 s while collectors receive: clients get retryable answers
//! (503 + Retry-After) and send again, and nothing accepted is lost: ClickHouse ends with
//! every event sent (once each) and exactly the findings `toctou replay` reports for the
//! same requests.
//!
//! The allowed lateness is longer than the outage, as a deployment that rides out such
//! outages sets it: requests held up by the outage then arrive within it, and the findings
//! do not depend on how late each partition saw them (with a shorter lateness both this
//! pipeline and `toctou run` correlate them as late events, each from its own watermark,
//! and the oracle's single watermark may disagree on which).

mod common;

use common::metric;

use common::clickhouse::{server_url, sql};
use common::kafka::stories::{
    assert_stored_exactly, count_events, expected_findings_with_lateness, send_stories,
    wait_for_progress,
};
use common::kafka::{collector, correlator_with_lateness, Broker};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longer than the outage (15 s) and the broker's restart.
const LATENESS: &str = "40s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_pushes_back_and_loses_nothing() {
    let broker = Broker::start();
    let topic = "toctou.events";
    broker.create_topic(topic, 3);
    let url = server_url();
    let db = format!("toctou_test_{}_kafka_outage", std::process::id());
    let corr = correlator_with_lateness(&broker.bootstrap, topic, "group", &url, &db, LATENESS);
    let c1 = collector(&broker.bootstrap, topic);
    let c2 = collector(&broker.bootstrap, topic);

    let progress = Arc::new(AtomicU64::new(0));
    let sender = tokio::spawn(send_stories(
        600,
        vec![c1.addr("otlp_http"), c2.addr("otlp_http")],
        Duration::from_millis(10),
        progress.clone(),
    ));
    wait_for_progress(&progress, 150).await;
    broker.stop();
    let stalled_at = progress.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let during = progress.load(Ordering::Relaxed);
    broker.restart();
    let (sent, report) = sender.await.expect("sender");
    assert!(
        during - stalled_at <= 2,
        "stories kept being accepted with the broker down ({stalled_at} -> {during})"
    );
    assert!(
        report.retryable > 0,
        "clients never saw a retryable error: {report:?}"
    );

    let expected = expected_findings_with_lateness(&sent, LATENESS);
    assert_stored_exactly(&url, &db, &expected, Duration::from_secs(150), || {
        format!("correlator:\n{}\ncollector 1:\n{}", corr.log(), c1.log())
    })
    .await;

    let spans_and_audits: u64 = count_events(&sent);
    let events = sql(&url, &db, "SELECT uniqExact(event_key) FROM events").await;
    assert_eq!(
        events.trim().parse::<u64>().unwrap(),
        spans_and_audits,
        "every accepted event is stored"
    );
    // The collectors counted their push-back, and every message ended acknowledged.
    let (mut pushed_back, mut inflight) = (0.0, 0.0);
    for c in [&c1, &c2] {
        let m = c.metrics().await;
        pushed_back += metric(&m, "toctou_rejected_total{reason=\"backpressure\"}");
        inflight += metric(&m, "toctou_kafka_inflight_batches");
    }
    assert!(
        pushed_back > 0.0,
        "no request was pushed back during the outage"
    );
    assert_eq!(
        inflight, 0.0,
        "batches still waiting for kafka after the stream"
    );
}
