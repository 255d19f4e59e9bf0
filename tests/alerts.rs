//! Black-box tests of the alerting files: the Grafana-managed rules, notification policy,
//! contact points and mute timings generated from alerts/slo.yaml, and the Prometheus rules
//! for the pipeline's health.
//!
//! The Grafana rules' queries, expanded as the ClickHouse plugin expands them, run on 18.16
//! and on chdb over data that `toctou run` wrote from golden scenarios: clean traffic (with
//! one stale check, well inside the budget) must leave every rule quiet; the same traffic
//! with an injected incident (a burst of stale checks and duplicate charges, an authorization
//! drift on a security flow, half-made creates) must fire exactly the expected rules with
//! the expected labels. The Prometheus rules run under `promtool test rules`.

mod common;
mod grafana;

use grafana::data::{self, Dataset, Repeat};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_toctou");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// 1000 repetitions of the clean scenario (about 3 check-use pairs of `shop` and one keyed
/// charge of `pay` each) and one stale check: 0.03% mismatches against a 0.1% budget.
const CLEAN: &[Repeat] = &[
    Repeat {
        scenario: "clean",
        times: 1000,
        services: &[],
    },
    Repeat {
        scenario: "stale_check_versions",
        times: 1,
        services: &[],
    },
];

fn clean() -> &'static Dataset {
    static CLEAN_DATA: OnceLock<Dataset> = OnceLock::new();
    CLEAN_DATA.get_or_init(|| data::scenarios("clean", CLEAN))
}

fn incident() -> &'static Dataset {
    static INCIDENT: OnceLock<Dataset> = OnceLock::new();
    INCIDENT.get_or_init(|| {
        data::scenarios(
            "incident",
            &[
                Repeat {
                    scenario: "clean",
                    times: 1000,
                    services: &[],
                },
                // 60 stale checks over ~3000 shop pairs: 2%, a burn rate of ~20 (page > 14.4).
                Repeat {
                    scenario: "stale_check_versions",
                    times: 60,
                    services: &[],
                },
                // 30 duplicate charges over ~1100 pay uses: ~2.7%, a burn rate of ~27.
                Repeat {
                    scenario: "duplicate_use_idempotency",
                    times: 30,
                    services: &[],
                },
                // An authorization drift on a security flow (docs-api), and unchecked uses on
                // flows that are not security-labelled (batch, shop): only the first pages.
                Repeat {
                    scenario: "authz_drift_denied",
                    times: 1,
                    services: &[("docs", "docs-api")],
                },
                Repeat {
                    scenario: "unchecked_use",
                    times: 1,
                    services: &[],
                },
                // 7 creates of claims never finalized: above the threshold of 5.
                Repeat {
                    scenario: "partial_create",
                    times: 7,
                    services: &[],
                },
            ],
        )
    })
}

#[test]
fn the_committed_rules_are_what_the_slo_file_generates() {
    let out = Command::new(BIN)
        .args(["alerts", "generate", "--check", "--slo"])
        .arg(root().join("alerts/slo.yaml"))
        .arg("--out")
        .arg(root().join("alerts/grafana"))
        .output()
        .expect("running toctou alerts generate --check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A fresh generation into an empty directory gives the same bytes, file by file.
    let dir = std::env::temp_dir().join(format!("toctou-alerts-{}", std::process::id()));
    let out = Command::new(BIN)
        .args(["alerts", "generate", "--slo"])
        .arg(root().join("alerts/slo.yaml"))
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("running toctou alerts generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "contact-points.yaml",
            "mute-timings.yaml",
            "notification-policies.yaml",
            "rules.yaml"
        ]
    );
    for n in &names {
        let fresh = std::fs::read_to_string(dir.join(n)).unwrap();
        let committed = std::fs::read_to_string(root().join("alerts/grafana").join(n)).unwrap();
        assert_eq!(
            fresh, committed,
            "alerts/grafana/{n} is stale: regenerate it"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    // A change to a number shows: the generator reads the file, not a copy of its own.
    let slo = std::fs::read_to_string(root().join("alerts/slo.yaml")).unwrap();
    let edited = dir.with_extension("yaml");
    std::fs::write(
        &edited,
        slo.replacen("budget_consumed: 0.02", "budget_consumed: 0.04", 1),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["alerts", "generate", "--check", "--slo"])
        .arg(&edited)
        .arg("--out")
        .arg(root().join("alerts/grafana"))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&edited);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rules.yaml out of date"));
}

#[test]
fn a_bad_slo_file_is_refused_with_the_field_named() {
    let slo = std::fs::read_to_string(root().join("alerts/slo.yaml")).unwrap();
    let file = std::env::temp_dir().join(format!("toctou-bad-slo-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        slo.replacen("long_window: 1h", "long_window: soon", 1),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["alerts", "generate", "--slo"])
        .arg(&file)
        .args(["--out", "/nonexistent/never-written"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("slos[0].burn_alerts[0].long_window: \"soon\" is not a duration"),
        "{err}"
    );
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs the schema validators (scripts/validate-deploy): run ./scripts/test"
)]
#[test]
fn the_alerting_files_follow_grafanas_model_and_refer_to_each_other() {
    // Rules and contact points through Grafana's schema-generated models.
    for (kind, file) in [
        ("rules", "alerts/grafana/rules.yaml"),
        ("contact-points", "alerts/grafana/contact-points.yaml"),
    ] {
        let out = Command::new(root().join("scripts/validate-deploy"))
            .args(["grafana", kind])
            .arg(root().join(file))
            .output()
            .expect("running scripts/validate-deploy (run 'scripts/validate-deploy install')");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // File provisioning structure (Grafana's documented format), and the cross references.
    let datasources = yaml("dashboards/provisioning/datasources/toctou.yaml");
    let ds_uids: BTreeSet<&str> = datasources["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["uid"].as_str().unwrap())
        .collect();
    let rules = yaml("alerts/grafana/rules.yaml");
    assert_eq!(rules["apiVersion"], 1);
    let mut uids = BTreeSet::new();
    let mut severities = BTreeSet::new();
    for g in rules["groups"].as_array().unwrap() {
        for k in ["orgId", "name", "folder", "interval", "rules"] {
            assert!(!g[k].is_null(), "group without {k}");
        }
        for r in g["rules"].as_array().unwrap() {
            let uid = r["uid"].as_str().unwrap();
            assert!(
                uid.len() <= 40 && uids.insert(uid.to_string()),
                "rule uid {uid}"
            );
            let refs: Vec<&str> = r["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["refId"].as_str().unwrap())
                .collect();
            assert!(
                refs.contains(&r["condition"].as_str().unwrap()),
                "{uid}: condition names no query"
            );
            for d in r["data"].as_array().unwrap() {
                let ds = d["datasourceUid"].as_str().unwrap();
                assert!(
                    ds == "__expr__" || ds_uids.contains(ds),
                    "{uid}: datasource {ds} is not provisioned"
                );
            }
            for k in ["noDataState", "execErrState", "for", "title"] {
                assert!(!r[k].is_null(), "{uid}: no {k}");
            }
            let labels = &r["labels"];
            assert!(
                labels["severity"] == "page" || labels["severity"] == "ticket",
                "{uid}: severity"
            );
            severities.insert((
                labels["source"].as_str().unwrap().to_string(),
                labels["severity"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(uids.len() >= 7, "{uids:?}");

    let contact = yaml("alerts/grafana/contact-points.yaml");
    let receivers: BTreeSet<&str> = contact["contactPoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let mutes = yaml("alerts/grafana/mute-timings.yaml");
    let mute_names: BTreeSet<&str> = mutes["muteTimes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for m in mutes["muteTimes"].as_array().unwrap() {
        for ti in m["time_intervals"].as_array().unwrap() {
            for t in ti["times"].as_array().unwrap() {
                for k in ["start_time", "end_time"] {
                    let v = t[k]
                        .as_str()
                        .unwrap_or_else(|| panic!("{k} must be a string \"HH:MM\""));
                    assert!(v.len() == 5 && &v[2..3] == ":", "{k}: {v}");
                }
            }
        }
    }
    let policies = yaml("alerts/grafana/notification-policies.yaml");
    let root_policy = &policies["policies"][0];
    assert!(receivers.contains(root_policy["receiver"].as_str().unwrap()));
    let group_by: Vec<&str> = root_policy["group_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        group_by.contains(&"service") && group_by.contains(&"kind"),
        "{group_by:?}"
    );
    let routes = root_policy["routes"].as_array().unwrap();
    // Every (source, severity) a rule carries has a route to an existing contact point;
    // only security pages escape the deploy-window mute.
    for (source, severity) in &severities {
        let route = routes
            .iter()
            .find(|r| {
                let m = r["object_matchers"].as_array().unwrap();
                m.contains(&serde_json::json!(["source", "=", source]))
                    && m.contains(&serde_json::json!(["severity", "=", severity]))
            })
            .unwrap_or_else(|| panic!("no route for source={source} severity={severity}"));
        assert!(receivers.contains(route["receiver"].as_str().unwrap()));
        let muted: Vec<&str> = route["mute_time_intervals"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        for m in &muted {
            assert!(
                mute_names.contains(m),
                "route mutes with unknown timing {m}"
            );
        }
        assert_eq!(
            muted.is_empty(),
            source == "security",
            "{source}/{severity}: {muted:?}"
        );
    }
}

fn labels(instance: &[(String, String)], key: &str) -> String {
    instance
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs ClickHouse and chdb: run ./scripts/test"
)]
#[test]
fn every_rule_stays_quiet_on_clean_data() {
    let ds = clean();
    assert_eq!(ds.kinds.get("stale_check"), Some(&1), "{:?}", ds.kinds);
    let run = grafana::rules_run(ds);
    grafana::assert_all_fit(&run);
    let firing = grafana::firing(&run);
    eprintln!("clean findings {:?}", ds.kinds);
    let loud: Vec<_> = firing.iter().filter(|(_, f)| !f.is_empty()).collect();
    assert!(loud.is_empty(), "rules fire on clean data: {loud:#?}");
    // Not quiet for want of data: the burn-rate queries saw the services.
    for q in &run.current {
        let a = q.as_ref().unwrap();
        if a.columns.iter().any(|(n, _)| n == "burn_rate") {
            assert!(a.rows.len() >= 3, "{:?}", a.rows);
        }
    }
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs ClickHouse and chdb: run ./scripts/test"
)]
#[test]
fn an_injected_incident_fires_exactly_the_expected_rules() {
    let ds = incident();
    let run = grafana::rules_run(ds);
    grafana::assert_all_fit(&run);
    let firing = grafana::firing(&run);
    eprintln!("incident findings {:?}\nfiring {firing:#?}", ds.kinds);
    let services =
        |uid: &str| -> Vec<String> { firing[uid].iter().map(|l| labels(l, "service")).collect() };

    // Stale checks: every mismatch window pair fires for shop, and only for shop.
    for uid in [
        "toctou-mismatch_rate-1h-5m",
        "toctou-mismatch_rate-6h-30m",
        "toctou-mismatch_rate-3d-6h",
    ] {
        assert_eq!(services(uid), ["shop"], "{uid}: {firing:#?}");
    }
    // Duplicate charges: pay.
    for uid in ["toctou-duplicate_rate-1h-5m", "toctou-duplicate_rate-3d-6h"] {
        assert_eq!(services(uid), ["pay"], "{uid}: {firing:#?}");
    }
    // Security: the drift on docs-api pages, one instance per resource; the unchecked uses of
    // batch and shop (not security flows) do not.
    let security = &firing["toctou-security-findings"];
    assert_eq!(security.len(), 1, "{security:?}");
    assert_eq!(labels(&security[0], "service"), "docs-api");
    assert_eq!(labels(&security[0], "kind"), "authz_drift");
    assert!(
        labels(&security[0], "resource").starts_with("docs/doc-2-r"),
        "{security:?}"
    );
    // Partial creates: 7 claims of ctl-a, above 5.
    let partial = &firing["toctou-partial-creates"];
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert_eq!(labels(&partial[0], "service"), "ctl-a");
}

#[cfg_attr(
    not(feature = "services"),
    ignore = "needs promtool: run ./scripts/test"
)]
#[test]
fn the_prometheus_rules_pass_promtool_and_name_real_metrics() {
    let promtool = |args: &[&str]| {
        let out = Command::new(root().join("scripts/promtool"))
            .args(args)
            .current_dir(root().join("alerts/prometheus"))
            .output()
            .expect("running scripts/promtool (run 'scripts/promtool install')");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        text
    };
    assert!(promtool(&["check", "rules", "pipeline.rules.yml"]).contains("SUCCESS: 7 rules found"));
    assert!(promtool(&["test", "rules", "pipeline.test.yml"]).contains("SUCCESS"));
    // Distributed mode's rules; their metrics are checked against a running collector and
    // correlator in tests/deploy.rs.
    assert!(promtool(&["check", "rules", "kafka.rules.yml"]).contains("SUCCESS: 6 rules found"));
    assert!(promtool(&["test", "rules", "kafka.test.yml"]).contains("SUCCESS"));
    // The change-stream readers' rules; their metrics are checked against real readers in
    // tests/cdc_run.rs.
    assert!(promtool(&["check", "rules", "cdc.rules.yml"]).contains("SUCCESS: 4 rules found"));
    assert!(promtool(&["test", "rules", "cdc.test.yml"]).contains("SUCCESS"));

    // Every metric a rule reads is served by a real `toctou run` with the ClickHouse sink.
    let served = &clean().metrics;
    let rules = yaml("alerts/prometheus/pipeline.rules.yml");
    for r in rules["groups"][0]["rules"].as_array().unwrap() {
        let expr = r["expr"].as_str().unwrap();
        let mut rest = expr;
        let mut names = 0;
        while let Some(at) = rest.find("toctou_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            assert!(
                served.contains(name),
                "{}: {name} is not on /metrics: {served:?}",
                r["alert"]
            );
            names += 1;
            rest = &tail[end..];
        }
        assert!(names > 0, "{}: reads no toctou metric", r["alert"]);
    }
}
