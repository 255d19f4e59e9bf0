//! Black-box tests of the built-in page: the real `toctou run`, real traffic (the demo
//! workloads, hand-made OTLP with hostile strings, 100k findings), and Debian's headless
//! Chromium driven by playwright-core (tests/page/drive.mjs) reading what the page shows,
//! compared with what the findings API answers.
//!
//! Chromium and playwright-core are installed by tests/page/setup.sh, which ./scripts/test
//! runs (with the `services` feature: without it the browser tests are ignored, saying so);
//! when they are missing these tests fail and say so, they never skip.
//! `UPDATE_SCREENSHOT=1 cargo test --test page` also rewrites docs/page.png after a longer demo.

mod common;

use common::page::*;
use common::{all_findings, kinds, testdata, Toctou};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs the demo workloads against `toctou` for `duration`. The demo's own comparison of
/// what happened with what was found is tests/demo.rs's business (`--api ""` turns it
/// off); here the page is compared with the API, whatever the demo made.
fn run_demo(toctou: &Toctou, duration: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_toctou"))
        .args(["demo", "--endpoint"])
        .arg(format!("http://{}", toctou.grpc))
        .args(["--api", "", "--duration", duration])
        .output()
        .expect("running toctou demo");
    assert!(
        out.status.success(),
        "toctou demo failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs Chromium and Node (tests/page/setup.sh): run ./scripts/test"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_demo_the_page_shows_the_counts_and_latest_findings_the_api_returns() {
    let browser = Browser::find();
    let toctou = Toctou::start(&["--pair-ttl", "2s", "--allowed-lateness", "500ms"]);
    let screenshot = std::env::var("UPDATE_SCREENSHOT").is_ok_and(|v| v == "1");
    let demo = if screenshot { "40s" } else { "5s" };
    {
        let toctou = &toctou;
        tokio::task::block_in_place(|| run_demo(toctou, demo));
    }
    let total = wait_until_settled(&toctou, Duration::from_secs(3), Duration::from_secs(60)).await;
    assert!(total > PAGE_ROWS as u64, "the demo found only {total}");

    let all = all_findings(&toctou.api_url("/api/v1/findings?limit=1000")).await;
    let seen = browser.visit(&toctou, json!({ "polls": 2 })).await;
    assert_eq!(
        all,
        all_findings(&toctou.api_url("/api/v1/findings?limit=1000")).await,
        "settled"
    );
    assert_clean(&seen);

    // Counts by kind: every kind the API holds, with its number (nothing was dropped).
    assert_eq!(page_counts(&seen), kinds(&all), "{:#}", seen["counts"]);
    assert_eq!(all.len() as u64, total);
    // The latest findings, newest first, row for row.
    assert_eq!(row_ids(&seen), newest_first(&all));
    let by_id: BTreeMap<&str, &Value> =
        all.iter().map(|f| (f["id"].as_str().unwrap(), f)).collect();
    for row in seen["rows"].as_array().unwrap() {
        let f = by_id[row["id"].as_str().unwrap()];
        assert_eq!(row["kind"], f["kind"]);
        assert_eq!(row["service"], f["service"]);
        assert_eq!(row["resource"], f["resource"]);
        assert_eq!(row["request"], f["request_id"]);
    }
    assert_eq!(seen["findingsEmptyShown"], false);
    assert_eq!(seen["rateEmptyShown"], false);
    assert_eq!(seen["histEmptyShown"], false);

    // Filtered to one kind, with the evidence of its newest finding open.
    let stale = all_findings(&toctou.api_url("/api/v1/findings?kind=stale_check&limit=1000")).await;
    assert!(!stale.is_empty(), "the demo makes stale checks");
    let seen = browser
        .visit(
            &toctou,
            json!({ "polls": 2, "filter": "stale_check", "open": "kind:stale_check" }),
        )
        .await;
    assert_clean(&seen);
    assert_eq!(seen["filter"], "stale_check");
    assert_eq!(row_ids(&seen), newest_first(&stale));
    let newest = stale.last().unwrap();
    assert_eq!(seen["detailId"], newest["id"]);
    let detail = seen["detail"].as_str().unwrap();
    for field in [
        "reason",
        "id",
        "trace_id",
        "check_span_id",
        "use_span_id",
        "resource",
    ] {
        let value = newest[field].as_str().unwrap();
        assert!(
            detail.contains(value),
            "evidence lacks {field} {value:?}: {detail}"
        );
    }
    for field in ["checked_version", "used_version"] {
        if let Some(v) = newest[field].as_str() {
            assert!(detail.contains(v), "evidence lacks {field} {v:?}: {detail}");
        }
    }
    for write in newest["intervening"].as_array().unwrap() {
        if let Some(r) = write["request_id"].as_str() {
            assert!(
                detail.contains(r),
                "evidence lacks the write by {r}: {detail}"
            );
        }
    }

    if screenshot {
        let path = testdata("docs/page.png");
        let seen = browser
            .visit(
                &toctou,
                json!({ "polls": 2, "filter": "stale_check", "open": "kind:stale_check", "screenshot": path,
                        "width": 1440, "height": 1240 }),
            )
            .await;
        assert_clean(&seen);
        eprintln!("wrote {}", path.display());
    }
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs Chromium and Node (tests/page/setup.sh): run ./scripts/test"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_from_findings_are_shown_as_text_never_as_markup() {
    let browser = Browser::find();
    let toctou = Toctou::start(&["--pair-ttl", "1s", "--allowed-lateness", "200ms"]);

    // No findings yet: the empty states, and still no error.
    let seen = browser.visit(&toctou, json!({ "polls": 1 })).await;
    assert_clean(&seen);
    assert_eq!(seen["rows"], json!([]));
    assert!(seen["counts"].as_object().unwrap().values().all(|n| n == 0));
    assert_eq!(seen["findingsEmptyShown"], true);
    assert_eq!(seen["rateEmptyShown"], true);
    assert_eq!(seen["histEmptyShown"], true);

    // A stale check whose every string is markup: service, operation, resource, request,
    // versions, and the intervening write's request and actor.
    let service = r#"<img src=x onerror="window.__pwned='service'">"#;
    let operation = "</td><td>op<script>window.__pwned='operation'</script>";
    let resource = "inventory/<script>window.__pwned='resource'</script>";
    let request = r#""><svg onload="window.__pwned='request'">"#;
    let checked = "<i>1</i>";
    let writer = "<b>writer</b>&amp;";
    let actor = "<iframe src=/metrics></iframe>";
    let t0 = now_ns() - 1_000_000_000;
    let trace = "5f0c6a1e8d2b4c7a9e1f3b5d7c9a0b2d";
    let check = span(
        service,
        trace,
        "1111111111111111",
        t0,
        vec![
            attr("toctou.phase", "check"),
            attr("toctou.resource", resource),
            attr("toctou.resource.version", checked),
            attr("toctou.request_id", request),
        ],
    );
    let write = json!({ "resourceLogs": [{
        "resource": { "attributes": [attr("service.name", "store")] },
        "scopeLogs": [{ "scope": { "name": "page-test" }, "logRecords": [{
            "timeUnixNano": (t0 + 5_000_000).to_string(),
            "severityNumber": 9,
            "body": { "stringValue": "audit" },
            "attributes": [
                attr("toctou.audit.action", "update"),
                attr("toctou.resource", resource),
                attr("toctou.resource.version", "<u>2</u>"),
                attr("toctou.request_id", writer),
                attr("toctou.actor", actor),
            ],
        }]}],
    }]});
    let use_ = span(
        service,
        trace,
        "2222222222222222",
        t0 + 10_000_000,
        vec![
            attr("toctou.phase", "use"),
            attr("toctou.resource", resource),
            attr("toctou.resource.version", "<u>2</u>"),
            attr("toctou.request_id", request),
            attr("toctou.operation", operation),
        ],
    );
    post_json(&toctou, "/v1/traces", &check).await;
    post_json(&toctou, "/v1/logs", &write).await;
    post_json(&toctou, "/v1/traces", &use_).await;
    let found = toctou
        .wait_for(Duration::from_secs(20), |f| {
            f.iter().any(|f| f["kind"] == "stale_check")
        })
        .await;
    let stale = found.iter().find(|f| f["kind"] == "stale_check").unwrap();
    assert_eq!(stale["service"], service);
    assert_eq!(stale["intervening"][0]["actor"], actor);

    let seen = browser
        .visit(&toctou, json!({ "polls": 2, "open": stale["id"] }))
        .await;
    assert_clean(&seen);
    // Nothing ran: no handler fired, and the only scripts are the page's own two.
    assert_eq!(seen["pwned"], Value::Null);
    assert_eq!(seen["scripts"], 2);
    // Every element in the findings table is one the page made itself.
    let made: BTreeSet<&str> = [
        "table", "thead", "tbody", "tr", "th", "td", "span", "div", "p", "h3",
    ]
    .into_iter()
    .collect();
    for tag in seen["elementsInTable"].as_array().unwrap() {
        assert!(
            made.contains(tag.as_str().unwrap()),
            "a finding made a <{tag}>"
        );
    }
    // And the strings are there, character for character, as text.
    let row = &seen["rows"][0];
    assert_eq!(row["id"], stale["id"]);
    assert_eq!(row["service"], service);
    assert_eq!(row["resource"], resource);
    assert_eq!(row["request"], request);
    let detail = seen["detail"].as_str().unwrap();
    for s in [
        service, operation, resource, request, checked, "<u>2</u>", writer, actor,
    ] {
        assert!(detail.contains(s), "evidence lacks {s:?} as text: {detail}");
    }
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs Chromium and Node (tests/page/setup.sh): run ./scripts/test"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_100k_findings_the_page_shows_them_all_counted_and_the_latest_listed() {
    const N: usize = 100_000;
    const BATCH: usize = 5_000;
    let browser = Browser::find();
    let toctou = Toctou::start(&["--allowed-lateness", "200ms"]);
    // Uses with no check: each is an unchecked_use at once, with its own trace.
    let t0 = now_ns() - 2_000_000_000;
    for b in 0..N / BATCH {
        let spans: Vec<Value> = (0..BATCH)
            .map(|i| {
                let n = b * BATCH + i;
                json!({
                    "traceId": format!("{:032x}", n + 1),
                    "spanId": format!("{:016x}", n + 1),
                    "name": "use", "kind": 1,
                    "startTimeUnixNano": (t0 + n as u64 * 1_000).to_string(),
                    "endTimeUnixNano": (t0 + n as u64 * 1_000 + 500).to_string(),
                    "attributes": [
                        attr("toctou.phase", "use"),
                        attr("toctou.resource", &format!("inventory/sku-{}", n % 1000)),
                        attr("toctou.operation", "reserve"),
                    ],
                })
            })
            .collect();
        let body = json!({ "resourceSpans": [{
            "resource": { "attributes": [attr("service.name", "bulk")] },
            "scopeSpans": [{ "scope": { "name": "page-test" }, "spans": spans }],
        }]});
        post_json(&toctou, "/v1/traces", &body).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = get_json(&toctou, "/api/v1/summary").await;
        if s["total"] == N {
            break;
        }
        assert!(Instant::now() < deadline, "only {} findings", s["total"]);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let seen = browser.visit(&toctou, json!({ "polls": 2 })).await;
    assert_clean(&seen);
    assert_eq!(seen["counts"]["unchecked_use"], N);
    let latest = api_findings(&toctou, &format!("limit={PAGE_ROWS}")).await;
    assert_eq!(row_ids(&seen), newest_first(&latest));
    assert_eq!(
        seen["pipeline"]
            .as_str()
            .map(|p| p.contains("100,000 events")),
        Some(true),
        "{}",
        seen["pipeline"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_embedded_with_its_types_cache_headers_and_policy() {
    let toctou = Toctou::start(&[]);
    let client = reqwest::Client::new();
    let page = client.get(toctou.api_url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self';"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    let html = page.text().await.unwrap();

    // Every asset the HTML names is served, versioned, with its type and for good.
    let mut types = BTreeMap::new();
    for piece in html.split("\"/assets/").skip(1) {
        let reference = piece.split('"').next().unwrap();
        let resp = client
            .get(toctou.api_url(&format!("/assets/{reference}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{reference}");
        assert!(reference.contains("?v="), "{reference} is not versioned");
        assert_eq!(
            resp.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        let etag = resp.headers()["etag"].clone();
        let name = reference.split('?').next().unwrap().to_owned();
        types.insert(
            name,
            resp.headers()["content-type"].to_str().unwrap().to_owned(),
        );
        // Revalidation answers 304 without a body.
        let again = client
            .get(toctou.api_url(&format!("/assets/{reference}")))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{reference}");
    }
    assert_eq!(types["app.js"], "text/javascript; charset=utf-8");
    assert_eq!(types["uPlot.iife.min.js"], "text/javascript; charset=utf-8");
    assert_eq!(types["app.css"], "text/css; charset=utf-8");
    assert_eq!(types["favicon.svg"], "image/svg+xml");

    // The vendored uPlot is the one scripts/vendor-uplot pins, byte for byte.
    let served = client
        .get(toctou.api_url("/assets/uPlot.iife.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        served.headers()["cache-control"],
        "no-cache",
        "unversioned: revalidated"
    );
    let served = served.bytes().await.unwrap();
    let vendored =
        std::fs::read(testdata("server/src/page/vendor/uplot/uPlot.iife.min.js")).unwrap();
    assert_eq!(served.as_ref(), vendored.as_slice());
    let license = client
        .get(toctou.api_url("/assets/uPlot.LICENSE.txt"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(license.starts_with("The MIT License"), "{license}");

    let missing = client
        .get(toctou.api_url("/assets/../Cargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let missing = client
        .get(toctou.api_url("/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The summary the page polls: every kind, and its parameter checked.
    let s = get_json(&toctou, "/api/v1/summary?seconds=60").await;
    assert_eq!(s["counts"].as_object().unwrap().len(), 6);
    assert_eq!(
        s["rate"]["counts"]["stale_check"].as_array().unwrap().len(),
        60
    );
    assert_eq!(s["total"], 0);
    for bad in ["seconds=0", "seconds=601", "seconds=abc"] {
        let resp = client
            .get(toctou.api_url(&format!("/api/v1/summary?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("seconds"),
            "{body}"
        );
    }
}
