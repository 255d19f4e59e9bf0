//! A short overload run against a real `toctou run` (the checks of `scripts/soak`, in
//! seconds rather than minutes): a server with little room (2 decoding slots, a queue of 4
//! batches, 20 ms to find room) under `toctou loadgen` at its maximal rate over 16
//! connections. It must push back (HTTP 503), count every push-back the client saw, and
//! count every item it acknowledged: nothing acknowledged is dropped.

mod common;

use common::{metric, Toctou};
use std::process::Command;

fn sum(text: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn pushed_back_load_loses_nothing_acknowledged() {
    let toctou = Toctou::start(&[
        "--max-concurrent-requests",
        "2",
        "--queue-capacity",
        "4",
        "--submit-timeout",
        "20ms",
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_toctou"))
        .args(["loadgen", "--endpoint"])
        .arg(format!("http://{}", toctou.http))
        .args([
            "--connections",
            "16",
            "--duration",
            "8s",
            "--warmup",
            "0s",
            "--spans-per-request",
            "64",
            "--threads",
            "1",
        ])
        .output()
        .expect("running toctou loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(out.stdout.trim_ascii()).expect("the loadgen report");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let text = rt.block_on(toctou.metrics());
    let acked =
        report["spans_accepted"].as_f64().unwrap() + report["logs_accepted"].as_f64().unwrap();
    let refused = report["errors"]["http 503"].as_f64().unwrap_or(0.0);
    assert!(acked > 0.0, "{report}");
    assert!(refused > 0.0, "no push-back at all: {report}");
    assert!(
        report["items_pushed_back"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert_eq!(
        report["errors_total"].as_f64().unwrap(),
        refused,
        "only push-backs: {report}"
    );
    // Every item answered 200 was counted as an event; every 503 as backpressure.
    assert_eq!(sum(&text, "toctou_events_total"), acked, "{report}");
    assert_eq!(
        metric(&text, "toctou_rejected_total{reason=\"backpressure\"}"),
        refused
    );
    assert_eq!(report["items_rejected"], 0, "{report}");
    // The queue the push-back came from is on /metrics, and empties once the load stops.
    assert_eq!(metric(&text, "toctou_queue_capacity"), 4.0);
    assert!(metric(&text, "toctou_queue_batches") <= 4.0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while metric(&rt.block_on(toctou.metrics()), "toctou_queue_batches") > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never drained"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Still serving.
    let health = rt
        .block_on(reqwest::get(toctou.api_url("/healthz")))
        .expect("healthz");
    assert_eq!(health.status(), 200);
}
