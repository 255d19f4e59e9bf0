//! ClickHouse and Kafka both go down while the distributed pipeline (collectors → Kafka →
//! correlator → ClickHouse) takes traffic, and come back in the wrong order, both ways:
//!
//! 1. ClickHouse stops, then Kafka; Kafka comes back first and ClickHouse only well after,
//!    so the correlator is handed a burst of messages it cannot store: it must pause its
//!    partitions (stay in the group, commit nothing ClickHouse does not hold) and resume.
//! 2. Kafka stops, then ClickHouse; ClickHouse comes back first and Kafka last, so the
//!    collectors push back for the whole outage and the correlator rejoins a group whose
//!    coordinator restarted.
//!
//! Nothing may be lost or doubled: ClickHouse ends with every acknowledged event once and
//! exactly the findings `toctou replay` reports for the acknowledged requests (a false
//! orphan_check or unchecked_use would be an id the oracle does not have), no process exits
//! on its own, and at the end each stops on SIGTERM with status 0.
//!
//! The allowed lateness is longer than either outage, as in tests/kafka_outage.rs, so that
//! the findings do not depend on how late each partition saw the requests held up.

mod common;

use common::clickhouse::{sql, PrivateServer};
use common::kafka::stories::{
    count_events, diff, expected_findings_with_lateness, send_stories_until, wait_for_findings,
    wait_for_progress, ACK_DEADLINE,
};
use common::kafka::{collector, correlator_with_lateness, Broker};
use common::metric;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LATENESS: &str = "40s";

fn pause(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}

/// Waits until the senders reach `n` stories, within the senders' own deadline for one
/// request: a collector that never takes requests again fails the test instead of hanging
/// it, with the timeline and what each node was doing.
async fn expect_resumed(
    progress: &AtomicU64,
    n: u64,
    after: &str,
    timeline: &std::cell::RefCell<Vec<String>>,
    nodes: &[(&str, &common::kafka::Node)],
) {
    let deadline = Instant::now() + ACK_DEADLINE;
    while progress.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            let timeline = timeline.borrow().join("\n");
            let nodes = diagnose(nodes).await;
            panic!("the stream did not resume after {after}\ntimeline:\n{timeline}\n{nodes}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What each node was doing: its producer counters and the end of its log.
async fn diagnose(nodes: &[(&str, &common::kafka::Node)]) -> String {
    let mut out = String::new();
    for (name, node) in nodes {
        let metrics = node.metrics().await;
        let counters: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("toctou_kafka_") || l.starts_with("toctou_rejected_total"))
            .collect();
        let log = node.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        out.push_str(&format!(
            "--- {name}\n{}\n... last log lines:\n{}\n",
            counters.join("\n"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_and_kafka_recovering_in_the_wrong_order_lose_nothing() {
    let broker = Broker::start();
    let topic = "toctou.events";
    broker.create_topic(topic, 3);
    let ch = PrivateServer::start("recovery-order");
    let db = "toctou_recovery_order";
    let mut corr =
        correlator_with_lateness(&broker.bootstrap, topic, "group", &ch.url, db, LATENESS);
    let mut c1 = collector(&broker.bootstrap, topic);
    let mut c2 = collector(&broker.bootstrap, topic);

    // A stream that lasts until told to stop: stopping and starting the servers takes
    // longer than any fixed stream would (18.16 may take many seconds to stop).
    let progress = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = tokio::spawn(send_stories_until(
        u64::MAX,
        vec![c1.addr("otlp_http"), c2.addr("otlp_http")],
        Duration::from_millis(20),
        progress.clone(),
        stop.clone(),
    ));
    // A cell, so that the timeline can be read between marks.
    let timeline = std::cell::RefCell::new(Vec::<String>::new());
    let t0 = Instant::now();
    let mark = |what: &str, progress: &AtomicU64| {
        timeline.borrow_mut().push(format!(
            "{:>5.1}s {what} (stories sent: {})",
            t0.elapsed().as_secs_f64(),
            progress.load(Ordering::Relaxed)
        ))
    };

    // Order 1: the store the sink writes to comes back last.
    wait_for_progress(&progress, 150).await;
    tokio::task::block_in_place(|| {
        mark("clickhouse stopped", &progress);
        ch.stop();
        pause(2);
        mark("kafka stopped", &progress);
        broker.stop();
        pause(6);
        broker.restart();
        mark("kafka back", &progress);
        pause(8);
        ch.restart();
        mark("clickhouse back", &progress);
    });
    let resumed = progress.load(Ordering::Relaxed);
    let nodes = [
        ("collector 1", &c1),
        ("collector 2", &c2),
        ("correlator", &corr),
    ];
    expect_resumed(&progress, resumed + 150, "order 1", &timeline, &nodes).await;

    // Order 2: Kafka, the pipeline's entry, comes back last.
    tokio::task::block_in_place(|| {
        mark("kafka stopped", &progress);
        broker.stop();
        pause(2);
        mark("clickhouse stopped", &progress);
        ch.stop();
        pause(5);
        ch.restart();
        mark("clickhouse back", &progress);
        pause(5);
        broker.restart();
        mark("kafka back", &progress);
    });
    // Traffic after the last recovery too, then the stream ends.
    let recovered = progress.load(Ordering::Relaxed);
    let nodes = [
        ("collector 1", &c1),
        ("collector 2", &c2),
        ("correlator", &corr),
    ];
    expect_resumed(&progress, recovered + 150, "order 2", &timeline, &nodes).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, report) = sender.await.expect("sender");
    mark("stream done", &progress);
    assert!(
        report.retryable > 0,
        "clients never saw a retryable error: {report:?}"
    );

    let expected = expected_findings_with_lateness(&sent, LATENESS);
    let (stored, rows) = wait_for_findings(&ch.url, db, &expected, Duration::from_secs(180)).await;
    mark("findings settled", &progress);
    assert_eq!(
        stored,
        expected,
        "{}\ntimeline:\n{}\ncorrelator:\n{}",
        diff(&expected, &stored),
        timeline.borrow().join("\n"),
        corr.log()
    );
    assert_eq!(
        rows,
        expected.len() as u64,
        "a finding stored twice under FINAL"
    );
    let events = count_events(&sent);
    let stored_events = sql(
        &ch.url,
        db,
        "SELECT count(), uniqExact(event_key) FROM events FINAL",
    )
    .await;
    assert_eq!(
        stored_events,
        format!("{events}\t{events}\n"),
        "every acknowledged event stored exactly once"
    );

    // Both outages were seen: the collectors pushed back, the sink retried and paused
    // consumption.
    let m = corr.metrics().await;
    assert!(metric(&m, "toctou_sink_retries_total") > 0.0, "{m}");
    let mut pushed_back = 0.0;
    let mut replaced = Vec::new();
    for c in [&c1, &c2] {
        let m = c.metrics().await;
        pushed_back += metric(&m, "toctou_rejected_total{reason=\"backpressure\"}");
        replaced.push(
            m.lines()
                .filter(|l| l.starts_with("toctou_kafka_producer_replacements_total"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    assert!(pushed_back > 0.0, "no request was pushed back");

    for (name, node) in [
        ("correlator", &mut corr),
        ("collector 1", &mut c1),
        ("collector 2", &mut c2),
    ] {
        assert!(
            node.is_running(),
            "the {name} exited during the outages:\n{}",
            node.log()
        );
    }
    for (name, node) in [
        ("collector 1", &mut c1),
        ("collector 2", &mut c2),
        ("correlator", &mut corr),
    ] {
        let status = node.terminate(Duration::from_secs(40));
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} on SIGTERM: {status:?}\n{}",
            node.log()
        );
    }
    mark("all stopped with status 0", &progress);
    println!(
        "recovery order: {} requests acknowledged, {} retried, {} events, {} findings\nproducers replaced: {replaced:?}\n{}",
        report.requests,
        report.retryable,
        events,
        expected.len(),
        timeline.borrow().join("\n")
    );
}
