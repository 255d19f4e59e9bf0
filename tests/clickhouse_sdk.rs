//! Black-box test of `toctou run --clickhouse-url` fed by the real OpenTelemetry SDK (the
//! `opentelemetry-otlp` exporters, as in tests/sdk.rs): the findings table holds exactly the
//! scenario's findings, the events table its events, and the rollups agree with both.
//!
//! Uses the ClickHouse server of `scripts/test` (or starts one); fails, never skips, without.

mod common;

use common::clickhouse::{server_url, sink_flags, sql};
use common::otel_sdk::{sdk, send_scenario, Transport};
use common::{kinds, Toctou};
use std::time::{Duration, SystemTime};

/// The scenario's findings as stored: kind, service, operation, resource, request id.
const WANT_FINDINGS: &str = "\
authz_drift\tshop\tedit\tdocs/doc-1\tauthz
duplicate_use\tshop\tcharge\tpayments/evt-42\tdup-2
orphan_check\tshop\t\tinventory/sku-3\torphan
partial_create\tshop\tcreate\tclaims/ns/pod-1\tcreate
stale_check\tshop\treserve\tinventory/sku-1\tstale-a
unchecked_use\tshop\trestock\tinventory/sku-2\tnocheck
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_scenario_lands_as_exactly_its_findings_events_and_rollups() {
    let url = server_url();
    let db = format!("toctou_test_{}_sdk", std::process::id());
    let timing = ["--pair-ttl", "1s", "--allowed-lateness", "300ms"];
    let mut toctou = Toctou::start(&[&timing[..], &sink_flags(&url, &db)].concat());
    let sdk = sdk(&toctou, Transport::HttpProtobuf);
    let t0 = SystemTime::now() - Duration::from_secs(1);
    let sdk = tokio::task::spawn_blocking(move || {
        send_scenario(&sdk, t0);
        sdk
    })
    .await
    .unwrap();

    let want_kinds: std::collections::BTreeMap<String, usize> = WANT_FINDINGS
        .lines()
        .map(|l| (l.split('\t').next().unwrap().to_owned(), 1))
        .collect();
    toctou
        .wait_for(Duration::from_secs(20), |f| kinds(f) == want_kinds)
        .await;
    // Nothing more arrives once every timer has fired.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let found = toctou.findings().await;
    assert_eq!(kinds(&found), want_kinds, "{found:#?}");
    let _ = tokio::task::spawn_blocking(move || {
        let _ = sdk.traces.shutdown();
        let _ = sdk.logs.shutdown();
    })
    .await;
    // SIGTERM: the sink flushes what it holds before the process exits.
    let status = toctou.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", toctou.log());

    // Exactly the expected rows: no duplicate (count without FINAL), nothing missing.
    let rows = sql(
        &url,
        &db,
        "SELECT kind, service, operation, resource, request_id FROM findings ORDER BY kind",
    )
    .await;
    assert_eq!(rows, WANT_FINDINGS, "{}", toctou.log());
    let mut api_ids: Vec<String> = found
        .iter()
        .map(|f| {
            format!(
                "{}\t{}\n",
                f["kind"].as_str().unwrap(),
                f["id"].as_str().unwrap()
            )
        })
        .collect();
    api_ids.sort();
    let ids = sql(&url, &db, "SELECT kind, id FROM findings ORDER BY kind").await;
    assert_eq!(ids, api_ids.concat(), "the API's finding ids");
    let stale = sql(
        &url,
        &db,
        "SELECT checked_version, used_version, length(trace_id), race_window_ns >= 17000000 \
         FROM findings WHERE kind = 'stale_check'",
    )
    .await;
    assert_eq!(stale, "1\t2\t32\t1\n");

    // The SDK sent 8 checks (one denied), 7 uses and 4 audit records, each stored once.
    let events = sql(
        &url,
        &db,
        "SELECT countIf(type = 'check'), countIf(type = 'use'), countIf(type = 'audit'), \
         count() = uniqExact(event_key) FROM events",
    )
    .await;
    assert_eq!(events, "8\t7\t4\t1\n");

    // Rollups agree with the rows they summarize.
    let rolled = sql(
        &url,
        &db,
        "SELECT sumMerge(checks), sumMerge(uses), sumMerge(audits) FROM rollup_minute",
    )
    .await;
    assert_eq!(rolled, "8\t7\t4\n", "rollup counts of events");
    let per_finding = sql(
        &url,
        &db,
        "SELECT operation, kind, sumMerge(findings) FROM rollup_minute WHERE kind != '' \
         GROUP BY operation, kind ORDER BY operation, kind",
    )
    .await;
    let direct = sql(
        &url,
        &db,
        "SELECT operation, kind, count() FROM findings GROUP BY operation, kind \
         ORDER BY operation, kind",
    )
    .await;
    assert_eq!(per_finding, direct, "rollup counts of findings");
    assert_eq!(per_finding.lines().count(), 6, "{per_finding}");
    let keyed = sql(
        &url,
        &db,
        "SELECT sumMerge(findings_keyed), sumMerge(uses_keyed) FROM rollup_minute",
    )
    .await;
    assert_eq!(
        keyed, "1\t2\n",
        "the duplicate payment and its two keyed uses"
    );
}
