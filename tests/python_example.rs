//! The Python example of schema/CONVENTIONS.md, run for real: the OpenTelemetry Python SDK
//! (PyPI, installed by `scripts/otel-python`) sends two racing buyers into a running
//! `toctou run`, which must report the race of the plain write, with its evidence, and
//! nothing for the write conditioned on the checked version. Also checks that the example
//! printed in CONVENTIONS.md is the file that runs here, so the documentation cannot drift.

mod common;

use common::{kinds, Toctou};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const EXAMPLE: &str = "examples/python/inventory.py";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_example_reports_the_plain_write_race_only() {
    let toctou = Toctou::start(&["--pair-ttl", "1s", "--allowed-lateness", "300ms"]);
    let out = Command::new(common::otel_python())
        .arg(repo().join(EXAMPLE))
        .env("TOCTOU_OTLP_HTTP", toctou.http_url(""))
        .output()
        .expect("running the Python example");
    common::assert_buyers_raced(&out);

    toctou
        .wait_for(Duration::from_secs(20), |f| !f.is_empty())
        .await;
    // Every timer (pair TTL, tombstones) has fired by now: nothing else may follow.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let found = toctou.findings().await;
    assert_eq!(
        kinds(&found),
        [("stale_check".to_string(), 1)].into_iter().collect(),
        "{found:#?}"
    );
    let f = &found[0];
    assert_eq!(f["service"], "inventory");
    assert_eq!(f["operation"], "reserve");
    assert_eq!(f["resource"], "inventory/sku-42");
    assert_eq!(f["request_id"], "order-A-42");
    assert_eq!(f["checked_version"], "7");
    assert_eq!(f["used_version"], "8");
    assert_eq!(f["check_source"], "primary");
    let intervening = f["intervening"].as_array().unwrap();
    assert_eq!(intervening.len(), 1, "{f:#}");
    assert_eq!(intervening[0]["request_id"], "order-B-42");
    assert_eq!(intervening[0]["version"], "8");
    assert_eq!(intervening[0]["action"], "update");
}

#[test]
fn conventions_show_the_example_that_runs() {
    let doc = std::fs::read_to_string(repo().join("schema/CONVENTIONS.md")).unwrap();
    let file = std::fs::read_to_string(repo().join(EXAMPLE)).unwrap();
    let block = format!("```python\n{file}```");
    assert!(
        doc.contains(&block),
        "schema/CONVENTIONS.md must show {EXAMPLE} verbatim in a ```python block"
    );
}
