//! A correlator killed with SIGKILL in the middle of the stream and restarted: its
//! partitions move to the other member and back, each new owner rebuilds from the committed
//! offsets, and ClickHouse ends with exactly the findings `toctou replay` reports for the
//! same requests: none lost, none doubled, no false orphan_check or unchecked_use from the
//! handover (any would be an id the oracle does not have).

mod common;

use common::metric;

use common::clickhouse::server_url;
use common::kafka::stories::{
    assert_stored_exactly, expected_findings, send_stories, wait_for_progress,
};
use common::kafka::{collector, correlator, Broker};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_loses_and_doubles_nothing() {
    let broker = Broker::start();
    let topic = "toctou.events";
    broker.create_topic(topic, 6);
    let url = server_url();
    let db = format!("toctou_test_{}_kafka_crash", std::process::id());
    let start_a = || correlator(&broker.bootstrap, topic, "group", &url, &db);
    let mut a = start_a();
    let mut b = correlator(&broker.bootstrap, topic, "group", &url, &db);
    let c1 = collector(&broker.bootstrap, topic);
    let c2 = collector(&broker.bootstrap, topic);

    let progress = Arc::new(AtomicU64::new(0));
    let sender = tokio::spawn(send_stories(
        1_000,
        vec![c1.addr("otlp_http"), c2.addr("otlp_http")],
        Duration::from_millis(10),
        progress.clone(),
    ));
    wait_for_progress(&progress, 300).await;
    a.kill9();
    let killed_at = progress.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a2 = start_a();
    let (sent, _) = sender.await.expect("sender");
    assert!(
        killed_at < 1_000 * 2 / 3,
        "the kill came too late to be mid-stream ({killed_at} stories sent)"
    );

    let expected = expected_findings(&sent);
    assert_stored_exactly(&url, &db, &expected, Duration::from_secs(90), || {
        format!("correlator b:\n{}\nrestarted a:\n{}", b.log(), a2.log())
    })
    .await;

    // The handover really happened: somebody re-read a predecessor's messages.
    let replayed: f64 = [&b, &a2]
        .iter()
        .map(|n| futures::executor::block_on(n.metrics()))
        .map(|m| metric(&m, "toctou_kafka_replayed_messages_total"))
        .sum();
    assert!(replayed > 0.0, "no partition was rebuilt");
    let status = b.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        b.log()
    );
}
