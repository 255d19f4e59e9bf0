//! `toctou run` stops cleanly on SIGTERM: it stops accepting, lets the correlator drain what
//! was accepted, flushes the engine, the findings output and ClickHouse, and exits 0 within
//! its deadline; nothing acknowledged is lost. Past the deadline it exits non-zero and says
//! what it did not flush.

mod common;

use common::clickhouse::{server_url, sink_flags, sql, PrivateServer};
use common::kafka::stories::{
    count_events, diff, expected_findings_with_lateness, send_until_refused, wait_for_progress,
};
use common::{kinds, Toctou};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let mut toctou = Toctou::start(&["--allowed-lateness", "200ms"]);
    toctou.send_scenario("stale_check_versions").await;
    // The scenario lies in the past: the idle watermark passes it within the lateness.
    toctou
        .wait_for(Duration::from_secs(10), |f| {
            kinds(f).get("stale_check") == Some(&1)
        })
        .await;
    let status = toctou
        .terminate(Duration::from_secs(10))
        .expect("toctou run did not exit within 10 s of SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        toctou.log()
    );
    let written = std::fs::read_to_string(&toctou.findings_file).unwrap();
    assert_eq!(written.lines().count(), 1, "{written}");
    assert!(written.contains("\"stale_check\""));
}

/// The findings (id, kind) of a JSON lines file.
fn findings_in(path: &std::path::Path) -> BTreeSet<(String, String)> {
    common::ids_and_kinds(&std::fs::read_to_string(path).unwrap())
}

/// Longer than any arrival jitter on a loaded 2-core machine: `run` and the oracle then
/// order every event alike.
const LATENESS: &str = "5s";

/// SIGTERM in the middle of continuous traffic from four senders, with the ClickHouse
/// sink: every request answered 200 has its events in ClickHouse exactly once, the findings
/// (in ClickHouse and in the findings file) are exactly `toctou replay` over the
/// acknowledged requests (the shutdown flushes the engine as a replay's end of input does),
/// and the process exits 0 within its deadline. Nothing is waited for after the exit: what
/// is not stored by then was lost.
#[cfg_attr(
    not(feature = "services"),
    ignore = "needs ClickHouse: run ./scripts/test"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_acknowledged() {
    let url = server_url();
    let db = format!("toctou_test_{}_sigterm", std::process::id());
    let timing = [
        "--pair-ttl",
        "2s",
        "--allowed-lateness",
        LATENESS,
        "--shutdown-timeout",
        "20s",
    ];
    let mut toctou = Toctou::start(&[&sink_flags(&url, &db)[..], &timing].concat());
    let progress = Arc::new(AtomicU64::new(0));
    let senders = tokio::spawn(send_until_refused(toctou.http, 4, progress.clone()));
    wait_for_progress(&progress, 1_000).await;
    let signalled_at = progress.load(Ordering::Relaxed);
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| toctou.terminate(Duration::from_secs(25)));
    let took = started.elapsed();
    let (acked, report) = senders.await.expect("senders");
    let status = status.unwrap_or_else(|| panic!("no exit within 25 s:\n{}", toctou.log()));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        toctou.log()
    );
    assert!(
        progress.load(Ordering::Relaxed) > signalled_at,
        "the load had stopped before the signal"
    );
    println!(
        "sigterm under load: {} requests acknowledged ({} stories, {} pushed back and retried), exit 0 after {:.2} s",
        report.requests,
        progress.load(Ordering::Relaxed),
        report.retryable,
        took.as_secs_f64()
    );

    let events = count_events(&acked);
    let stored = sql(
        &url,
        &db,
        "SELECT count(), uniqExact(event_key) FROM events FINAL",
    )
    .await;
    assert_eq!(
        stored,
        format!("{events}\t{events}\n"),
        "every acknowledged event stored exactly once (count, distinct)"
    );
    let expected = expected_findings_with_lateness(&acked, LATENESS);
    let rows = sql(&url, &db, "SELECT id, kind FROM findings FINAL").await;
    let in_clickhouse: BTreeSet<(String, String)> = rows
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    assert_eq!(
        in_clickhouse,
        expected,
        "{}\nlog:\n{}",
        diff(&expected, &in_clickhouse),
        toctou.log()
    );
    assert_eq!(
        rows.lines().count(),
        expected.len(),
        "a finding stored twice"
    );
    let in_file = findings_in(&toctou.findings_file);
    assert_eq!(in_file, expected, "{}", diff(&expected, &in_file));
    // The acknowledged traffic had races of every kind the stories make, orphans included
    // (checks whose use was never sent, decided by the shutdown's flush).
    let kinds: BTreeSet<&str> = expected.iter().map(|(_, k)| k.as_str()).collect();
    for kind in [
        "stale_check",
        "unchecked_use",
        "orphan_check",
        "duplicate_use",
        "authz_drift",
    ] {
        assert!(kinds.contains(kind), "no {kind} among {kinds:?}");
    }
}

/// ClickHouse is down when SIGTERM comes and stays down: the sink cannot write what it
/// holds, so past --shutdown-timeout the process gives up, exits non-zero, and its last
/// words say how many rows were not written.
#[cfg_attr(
    not(feature = "services"),
    ignore = "needs ClickHouse: run ./scripts/test"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_deadline_it_exits_non_zero_saying_what_was_not_flushed() {
    let server = PrivateServer::start("deadline");
    let mut toctou = Toctou::start(&[
        "--clickhouse-url",
        &server.url,
        "--clickhouse-database",
        "toctou_deadline",
        "--clickhouse-batch-age",
        "100ms",
        "--shutdown-timeout",
        "3s",
    ]);
    server.stop();
    toctou.send_scenario("stale_check_versions").await;
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| toctou.terminate(Duration::from_secs(20)))
        .unwrap_or_else(|| panic!("no exit within 20 s:\n{}", toctou.log()));
    let took = started.elapsed();
    let log = toctou.log();
    assert!(!status.success(), "exited 0 with rows unwritten:\n{log}");
    assert!(
        took < Duration::from_secs(8),
        "took {took:?} with a 3 s deadline:\n{log}"
    );
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("could not be written to ClickHouse by the shutdown deadline")
            || last.contains("rows not written to ClickHouse"),
        "last log line: {last}\n{log}"
    );
    println!(
        "deadline passed: exit {status} after {:.2} s: {last}",
        took.as_secs_f64()
    );
}
