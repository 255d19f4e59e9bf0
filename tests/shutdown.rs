//! `toctou run` stops cleanly on SIGTERM: it stops accepting, lets the correlator drain what
//! was accepted, flushes the findings output, and exits 0 within a deadline.

mod common;

use common::{kinds, testdata, Toctou};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_zero() {
    let mut toctou = Toctou::start(&["--allowed-lateness", "200ms"]);
    let input = std::fs::read_to_string(testdata(
        "testdata/scenarios/stale_check_versions/input.jsonl",
    ))
    .unwrap();
    let client = reqwest::Client::new();
    for line in input.lines() {
        let path = if line.contains("resourceSpans") {
            "/v1/traces"
        } else {
            "/v1/logs"
        };
        let resp = client
            .post(toctou.http_url(path))
            .header("content-type", "application/json")
            .body(line.to_string())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
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
