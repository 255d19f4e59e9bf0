//! `toctou collector` stops cleanly on SIGTERM under load: every request it answered 200
//! is in the topic (a correlator downstream stores each of its events once and exactly the
//! findings `toctou replay` reports for the acknowledged requests), and it exits 0 within
//! its deadline; then the correlator, with nothing in flight, also exits 0 on SIGTERM.

mod common;

use common::clickhouse::{server_url, sql};
use common::kafka::stories::{
    assert_stored_exactly, count_events, expected_findings, send_until_refused, wait_for_progress,
};
use common::kafka::{collector, correlator, Broker};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_sigterm_under_load_keeps_everything_acknowledged() {
    let broker = Broker::start();
    let topic = "toctou.events";
    broker.create_topic(topic, 3);
    let url = server_url();
    let db = format!("toctou_test_{}_collector_sigterm", std::process::id());
    let mut corr = correlator(&broker.bootstrap, topic, "group", &url, &db);
    let mut coll = collector(&broker.bootstrap, topic);

    let progress = Arc::new(AtomicU64::new(0));
    let senders = tokio::spawn(send_until_refused(
        coll.addr("otlp_http"),
        4,
        progress.clone(),
    ));
    wait_for_progress(&progress, 500).await;
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| coll.terminate(Duration::from_secs(40)));
    let took = started.elapsed();
    let (acked, report) = senders.await.expect("senders");
    let status = status.unwrap_or_else(|| panic!("no exit within 40 s:\n{}", coll.log()));
    assert!(status.success(), "exit status {status}:\n{}", coll.log());
    println!(
        "collector sigterm under load: {} requests acknowledged ({} stories), exit 0 after {:.2} s",
        report.requests,
        progress.load(Ordering::Relaxed),
        took.as_secs_f64()
    );

    let expected = expected_findings(&acked);
    assert_stored_exactly(&url, &db, &expected, Duration::from_secs(90), || {
        format!("correlator:\n{}", corr.log())
    })
    .await;
    let events = count_events(&acked);
    assert_eq!(
        sql(
            &url,
            &db,
            "SELECT count(), uniqExact(event_key) FROM events FINAL"
        )
        .await,
        format!("{events}\t{events}\n"),
        "every acknowledged event in the topic and stored once"
    );
    let status = tokio::task::block_in_place(|| corr.terminate(Duration::from_secs(40)));
    assert!(
        status.is_some_and(|s| s.success()),
        "correlator on SIGTERM: {status:?}\n{}",
        corr.log()
    );
}
