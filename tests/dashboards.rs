//! Black-box tests of the Grafana dashboards (dashboards/*.json) and their provisioning.
//!
//! No Grafana server can run here, so what Grafana would do is done for real piece by piece:
//! the files are checked against Grafana's schema (grafana-foundation-sdk, through
//! `scripts/validate-deploy grafana`), every datasource reference against the provisioned
//! datasources, and every ClickHouse query — variables first, then panels, with the
//! plugin's macros expanded the way the plugin expands them (tests/grafana/macros.rs) — runs
//! on Debian's ClickHouse 18.16 and on the current engine (chdb) over data that `toctou run`
//! wrote from the racing demo workloads. Each result must have the columns its panel needs,
//! and PromQL panels may name only metrics that /metrics serves.

mod common;
mod grafana;

use grafana::data::{self, Dataset};
use grafana::queries::{self, CLICKHOUSE_UID, PROMETHEUS_UID};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn demo() -> &'static Dataset {
    static DEMO: OnceLock<Dataset> = OnceLock::new();
    DEMO.get_or_init(data::demo)
}

/// The tables of schema/sql (a query naming another fails).
const TABLES: &[&str] = &[
    "findings",
    "findings_lookup",
    "events",
    "rollup_minute",
    "risks",
];

/// Panels that may be empty on the demo's data, and why.
const MAY_BE_EMPTY: &[(&str, &str)] = &[
    (
        "Reconcile failures (M2)",
        "the demo has no reconcile operation",
    ),
    (
        "Top resource types with partial creates",
        "a 6 s demo may finalize every create",
    ),
    (
        "Orphaned resources (partial creates) and their age",
        "likewise",
    ),
];

fn provisioned() -> Value {
    let text =
        std::fs::read_to_string(root().join("dashboards/provisioning/datasources/toctou.yaml"))
            .expect("datasource provisioning");
    serde_yaml::from_str(&text).expect("datasource provisioning is YAML")
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs the schema validators (scripts/validate-deploy): run ./scripts/test"
)]
#[test]
fn dashboards_follow_grafanas_schema() {
    let files = queries::dashboard_files();
    assert_eq!(files.len(), 3, "executive, on-call, debug: {files:?}");
    let out = Command::new(root().join("scripts/validate-deploy"))
        .args(["grafana", "dashboard"])
        .args(&files)
        .output()
        .expect("running scripts/validate-deploy (run 'scripts/validate-deploy install')");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What the SDK's model cannot say: unique uids and panel ids, Grafana 11's schema
    // version, a grid position for every panel.
    let mut uids = BTreeSet::new();
    for f in &files {
        let d = queries::load_json(f);
        let name = f.display();
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{name}: uid reused"
        );
        assert!(
            d["schemaVersion"].as_i64().unwrap() >= 39,
            "{name}: schemaVersion"
        );
        let mut ids = BTreeSet::new();
        for p in queries::panels(&d) {
            assert!(
                ids.insert(p["id"].as_i64().unwrap()),
                "{name}: panel id reused"
            );
            for k in ["h", "w", "x", "y"] {
                assert!(
                    p["gridPos"][k].is_i64(),
                    "{name}: {} has no gridPos.{k}",
                    p["title"]
                );
            }
            assert!(
                p["gridPos"]["x"].as_i64().unwrap() + p["gridPos"]["w"].as_i64().unwrap() <= 24
            );
        }
    }
}

#[test]
fn every_datasource_reference_resolves_to_the_provisioned_datasources() {
    let prov = provisioned();
    let by_uid: Vec<(String, String)> = prov["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["uid"].as_str().unwrap().into(),
                d["type"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(by_uid.contains(&(
        CLICKHOUSE_UID.into(),
        "grafana-clickhouse-datasource".into()
    )));
    assert!(by_uid.contains(&(PROMETHEUS_UID.into(), "prometheus".into())));

    let mut refs = 0;
    for f in queries::dashboard_files() {
        let d = queries::load_json(&f);
        let mut check = |at: String, ds: &Value| {
            if ds.is_null() {
                return;
            }
            let pair = (
                ds["uid"].as_str().unwrap_or("").to_string(),
                ds["type"].as_str().unwrap_or("").to_string(),
            );
            assert!(
                by_uid.contains(&pair),
                "{}: {at} refers to {ds}, not provisioned",
                f.display()
            );
            refs += 1;
        };
        for v in d["templating"]["list"].as_array().unwrap() {
            check(format!("variable {}", v["name"]), &v["datasource"]);
        }
        for p in queries::panels(&d) {
            check(format!("panel {}", p["title"]), &p["datasource"]);
            for t in p["targets"].as_array().into_iter().flatten() {
                check(format!("panel {} target", p["title"]), &t["datasource"]);
                // A panel's targets share its datasource (Grafana runs them through it).
                assert_eq!(
                    t["datasource"],
                    p["datasource"],
                    "{}: {}",
                    f.display(),
                    p["title"]
                );
                if t["datasource"]["uid"] == CLICKHOUSE_UID {
                    assert_eq!(t["editorType"], "sql");
                    assert!(t["format"].is_i64() && t["queryType"].is_string());
                }
            }
        }
    }
    assert!(refs > 40, "only {refs} datasource references found");
}

#[test]
fn dashboards_have_the_variables_and_the_trace_link() {
    for f in queries::dashboard_files() {
        let d = queries::load_json(&f);
        let vars: Vec<&Value> = d["templating"]["list"].as_array().unwrap().iter().collect();
        for name in ["service", "operation", "kind"] {
            let v = vars
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{}: no {name} variable", f.display()));
            assert_eq!(v["type"], "query");
            assert_eq!(v["includeAll"], true, "{name}: All");
            assert_eq!(v["multi"], true, "{name}: multi-value");
            assert_eq!(v["refresh"], 2, "{name}: refreshed on time range change");
        }
    }
    let debug = queries::load_json(&root().join("dashboards/debug.json"));
    let vars = debug["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["name"] == "trace_ui" && v["type"] == "textbox"));
    let findings = queries::panels(&debug)
        .into_iter()
        .find(|p| p["title"] == "Findings with evidence")
        .expect("findings panel");
    let links = findings["fieldConfig"]["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["matcher"]["options"] == "trace_id")
        .expect("a trace_id override");
    let url = links["properties"][0]["value"][0]["url"].as_str().unwrap();
    assert_eq!(url, "${trace_ui}${__value.raw}");
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs ClickHouse and chdb: run ./scripts/test"
)]
#[test]
fn every_panel_query_runs_on_18_16_and_chdb_over_the_demos_data() {
    let ds = demo();
    for kind in ["stale_check", "duplicate_use", "authz_drift"] {
        assert!(
            ds.kinds.get(kind).copied().unwrap_or(0) > 0,
            "the demo made no {kind}: {:?}",
            ds.kinds
        );
    }
    let mut empty = Vec::new();
    for file in queries::dashboard_files() {
        let d = queries::load_json(&file);
        let range = d["time"]["from"]
            .as_str()
            .unwrap()
            .trim_start_matches("now-")
            .to_string();
        // All selected everywhere, then one service and one kind picked.
        for pick in [&[][..], &["service", "kind"][..]] {
            let run = grafana::dashboard_run(ds, &file, &range, pick);
            assert!(run.queries.len() >= 5, "{}", file.display());
            grafana::assert_all_fit(&run);
            if pick.is_empty() {
                for (origin, rows) in grafana::row_counts(&run) {
                    let allowed = MAY_BE_EMPTY
                        .iter()
                        .any(|(t, _)| origin.ends_with(&format!("\"{t}\"")));
                    if rows == 0 && !allowed {
                        empty.push(origin);
                    }
                }
            }
        }
    }
    assert!(empty.is_empty(), "no rows on the demo's data: {empty:#?}");
}

/// The risks panel shows what `toctou run` stored from a plain service's database spans
/// (sent beside the demo's traffic): per endpoint, kind and table, the requests sent, most
/// first, with one of them as the example and its statements; nothing for the locked
/// endpoint. On both engines, with All services and with the plain service picked.
#[cfg_attr(
    not(feature = "services"),
    ignore = "needs ClickHouse and chdb: run ./scripts/test"
)]
#[test]
fn the_risks_panel_counts_the_requests_a_run_stored_on_18_16_and_chdb() {
    use common::db_spans::{BUY, BUY_LOCKED, SIGNUP};
    const TITLE: &str = "\"Endpoints that can race (inferred from database spans)\"";
    let ds = demo();
    assert_eq!(
        ds.plain[BUY_LOCKED.route].len(),
        2,
        "the locked endpoint was sent"
    );
    let file = root().join("dashboards/debug.json");
    let d = queries::load_json(&file);
    let range = d["time"]["from"]
        .as_str()
        .unwrap()
        .trim_start_matches("now-");
    let run = grafana::dashboard_run(ds, &file, range, &[]);
    let at = run
        .queries
        .iter()
        .position(|q| q.origin.ends_with(TITLE))
        .expect("the risks panel in dashboards/debug.json");
    // The plain service picked: a service with risks only is among the options.
    let plain = with_service(ds, &file, range, data::PLAIN_SERVICE, at);
    // Most requests first.
    let want: Vec<(String, u64, Vec<String>, &[&str])> = [
        (BUY, "lost_update", "public.items"),
        (SIGNUP, "check_then_insert", "public.users"),
    ]
    .iter()
    .map(|(e, kind, table)| {
        let sent = &ds.plain[e.route];
        (
            format!("{}\t{}\t{kind}\t{table}", data::PLAIN_SERVICE, e.route),
            sent.len() as u64,
            sent.clone(),
            e.statements,
        )
    })
    .collect();
    assert!(want[0].1 > want[1].1, "{want:?}");
    for (what, run, i) in [("All services", &run, at), ("plain-shop picked", &plain, 0)] {
        for (engine, outcome) in [("18.16", &run.old[i]), ("chdb", &run.current[i])] {
            let a = outcome
                .as_ref()
                .unwrap_or_else(|e| panic!("{what}, {engine}: {e}"));
            let col = |name: &str| {
                a.columns
                    .iter()
                    .position(|(n, _)| n == name)
                    .unwrap_or_else(|| panic!("{what}, {engine}: no {name} in {:?}", a.columns))
            };
            let text = |row: &[serde_json::Value], name: &str| match &row[col(name)] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let got: Vec<&Vec<serde_json::Value>> = a
                .rows
                .iter()
                .filter(|r| text(r, "service") == data::PLAIN_SERVICE)
                .collect();
            assert_eq!(got.len(), want.len(), "{what}, {engine}: {:?}", a.rows);
            for (row, (key, requests, traces, statements)) in got.iter().zip(&want) {
                let k = ["service", "endpoint", "kind", "table_name"]
                    .map(|c| text(row, c))
                    .join("\t");
                assert_eq!(&k, key, "{what}, {engine}");
                assert_eq!(
                    text(row, "requests"),
                    requests.to_string(),
                    "{what}, {engine}: {key}"
                );
                assert!(
                    traces.contains(&text(row, "example_trace_id")),
                    "{what}, {engine}: {key}: the example is a request sent"
                );
                assert_eq!(
                    [text(row, "read_statement"), text(row, "write_statement")],
                    statements[..],
                    "{what}, {engine}: {key}"
                );
            }
        }
    }
}

/// The ClickHouse queries of `file` with `service` picked (the other variables All), for
/// the query at `at`.
fn with_service(ds: &Dataset, file: &Path, range: &str, service: &str, at: usize) -> grafana::Run {
    use grafana::macros::{self, Context, Var};
    let to = data::now_s() + 60;
    let mut ctx = Context {
        from_s: to - grafana::range_s(range),
        to_s: to,
        interval_s: 60,
        vars: Default::default(),
    };
    ctx.vars = grafana::variables(ds, file, &ctx, &[]);
    let Some(Var::All(options)) = ctx.vars.get("service") else {
        panic!("no service variable in {}", file.display());
    };
    assert!(
        options.iter().any(|o| o == service),
        "{service} is not among the service variable's options: {options:?}"
    );
    ctx.vars
        .insert("service".into(), Var::Values(vec![service.to_string()]));
    let q = &queries::dashboard_queries(file)[at];
    let sql = macros::expand(&q.sql, &ctx).unwrap_or_else(|e| panic!("{}: {e}", q.origin));
    grafana::run_both(ds, vec![q.clone()], vec![sql])
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs ClickHouse and chdb: run ./scripts/test"
)]
#[test]
fn every_alert_query_runs_on_the_demos_data_and_the_mismatch_slo_fires() {
    let ds = demo();
    let run = grafana::rules_run(ds);
    grafana::assert_all_fit(&run);
    let firing = grafana::firing(&run);
    let fast = &firing["toctou-mismatch_rate-1h-5m"];
    assert!(
        fast.iter().any(|labels| labels
            .iter()
            .any(|(k, v)| k == "service" && v == "inventory-api")),
        "the demo's oversells burn the mismatch budget: {firing:#?}"
    );
}

#[test]
fn queries_name_only_existing_tables() {
    let mut all: Vec<queries::Query> = queries::rule_queries();
    for f in queries::dashboard_files() {
        all.extend(queries::dashboard_queries(&f));
    }
    for q in &all {
        let tables = queries::tables(&q.sql);
        assert!(!tables.is_empty(), "{}: no table found", q.origin);
        for t in tables {
            assert!(
                TABLES.contains(&t.as_str()),
                "{} names table {t}, not in schema/sql",
                q.origin
            );
        }
    }
}

/// Metric names in a PromQL expression (histogram series suffixes mapped to their family).
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("toctou_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs promtool: run ./scripts/test"
)]
#[test]
fn prometheus_panels_name_only_metrics_that_metrics_serves_and_parse_as_promql() {
    let ds = demo();
    let mut exprs = Vec::new();
    for f in queries::dashboard_files() {
        let d = queries::load_json(&f);
        for p in queries::panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                if t["datasource"]["uid"] == PROMETHEUS_UID {
                    exprs.push((
                        format!("{}: {}", f.display(), p["title"]),
                        t["expr"].as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    assert!(exprs.len() >= 6, "{exprs:?}");
    for (at, e) in &exprs {
        for name in metric_names(e) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| ds.metrics.contains(*b)))
                .unwrap_or(&name);
            assert!(
                ds.metrics.contains(family),
                "{at}: {name} is not served on /metrics: {:?}",
                ds.metrics
            );
        }
    }
    // promtool parses each expression as a recording rule.
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| {
            format!(
                "      - record: toctou:dashboard_expr_{i}\n        expr: {}\n",
                serde_json::to_string(e).unwrap()
            )
        })
        .collect();
    let file =
        std::env::temp_dir().join(format!("toctou-dashboard-exprs-{}.yml", std::process::id()));
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboards\n    rules:\n{rules}"),
    )
    .unwrap();
    let out = Command::new(root().join("scripts/promtool"))
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("running scripts/promtool (run 'scripts/promtool install')");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
