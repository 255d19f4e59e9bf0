//! The metric families `toctou run` exposes are a public interface (dashboards, alert rules
//! and users' own queries name them): every family's name, type and label names, as
//! /metrics serves them once a finding has been made, against `testdata/metrics.golden`.
//! (The ClickHouse sink's and the Kafka nodes' families need those services; the
//! dashboards' and alerts' tests check that every family they name is served.) A change to the list is a change to the interface: regenerate
//! with `UPDATE_GOLDEN=1 cargo test --test metrics_golden` and say so in the change.

mod common;

use common::Toctou;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `name type label,label` lines, sorted, from a Prometheus text exposition.
fn families(text: &str) -> Vec<String> {
    let mut kinds = BTreeMap::new();
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            kinds.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let series = line.rsplit_once(' ').expect("series value").0;
        let (name, label_text) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        // Histogram series belong to their family.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| kinds.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        let names = labels.entry(family.to_string()).or_default();
        for pair in label_text.split(',').filter(|p| !p.is_empty()) {
            let key = pair.split_once('=').expect("label=value").0;
            if key != "le" {
                names.insert(key.to_string());
            }
        }
    }
    kinds
        .iter()
        .map(|(name, kind)| {
            let l: Vec<&str> = labels
                .get(name)
                .map(|s| s.iter().map(String::as_str).collect())
                .unwrap_or_default();
            format!("{name} {kind} {}", l.join(","))
                .trim_end()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metric_families_are_the_golden_list() {
    let toctou = Toctou::start(&["--allowed-lateness", "0s"]);
    // One use with no check: an `unchecked_use`, so that the per-service families have a
    // series (and their labels show).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let attr = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let body = json!({"resourceSpans":[{"resource":{"attributes":[attr("service.name", "shop")]},
        "scopeSpans":[{"scope":{"name":"golden"},"spans":[{
            "traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
            "name": "use", "kind": 1,
            "startTimeUnixNano": now.to_string(), "endTimeUnixNano": (now + 1_000).to_string(),
            "attributes": [attr("toctou.phase", "use"), attr("toctou.resource", "inventory/1"),
                attr("toctou.request_id", "req-1")]}]}]}]});
    toctou
        .post_json(&reqwest::Client::new(), "/v1/traces", body.to_string())
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while toctou.findings().await.is_empty() {
        assert!(Instant::now() < deadline, "no finding after 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = families(&toctou.metrics().await).join("\n") + "\n";
    let path = common::testdata("testdata/metrics.golden");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        got, want,
        "the metric families changed (left: /metrics, right: testdata/metrics.golden); \
         regenerate with UPDATE_GOLDEN=1 if the change is meant"
    );
}

#[test]
fn families_are_read_with_their_labels() {
    let text = "# TYPE a_total counter\na_total{kind=\"x\",b=\"y\"} 1\n\
                # TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_sum 0\nh_count 0\n# TYPE g gauge\ng 2\n";
    assert_eq!(
        families(text),
        ["a_total counter b,kind", "g gauge", "h histogram"]
    );
}
