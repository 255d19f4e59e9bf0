//! The queries toctou ships, read from the files Grafana reads: every ClickHouse panel target
//! and query variable of dashboards/*.json and every ClickHouse query of the generated alert
//! rules, with what their consumer needs of the result.

use super::engines::{class, Answer, Class};
use serde_json::Value;
use std::path::Path;

pub const CLICKHOUSE_UID: &str = "toctou-clickhouse";
pub const PROMETHEUS_UID: &str = "toctou-prometheus";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the consumer of a result needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Time series: a time column named `time`, then numbers (and optional text labels).
    TimeSeries,
    /// A stat or bar gauge: at least one number.
    Numbers,
    /// A table: the named columns (field overrides and links name them) must exist.
    Table(Vec<String>),
    /// A variable: exactly one text column.
    Variable,
    /// An alert query: text label columns and exactly one number (Grafana's server-side
    /// expressions turn such a table into one number per label set).
    Alert,
}

#[derive(Debug, Clone)]
pub struct Query {
    /// Where it comes from, for messages.
    pub origin: String,
    pub panel_type: String,
    pub sql: String,
    pub shape: Shape,
    /// Seconds of time range for alert queries (their relativeTimeRange); dashboards use the
    /// dashboard's range.
    pub range_s: Option<i64>,
    pub threshold: Option<f64>,
    /// The panel's own time range override ("30d", "5m").
    pub time_from: Option<String>,
}

pub fn dashboard_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("dashboards"))
        .expect("dashboards/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

pub fn load_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("reading a dashboard"))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Panels at any depth (rows hold panels of their own).
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(inner) = p.get("panels") {
                walk(inner, out);
            }
        }
    }
    walk(&dashboard["panels"], &mut out);
    out
}

fn override_names(panel: &Value) -> Vec<String> {
    panel["fieldConfig"]["overrides"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["matcher"]["id"] == "byName")
        .filter_map(|o| o["matcher"]["options"].as_str().map(str::to_string))
        .collect()
}

/// Panel targets and variables on the ClickHouse datasource.
pub fn dashboard_queries(path: &Path) -> Vec<Query> {
    let d = load_json(path);
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let mut out = Vec::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" && v["datasource"]["uid"] == CLICKHOUSE_UID {
            out.push(Query {
                origin: format!("{file}: variable {}", v["name"]),
                panel_type: "variable".into(),
                sql: v["query"].as_str().expect("variable query").to_string(),
                shape: Shape::Variable,
                range_s: None,
                threshold: None,
                time_from: None,
            });
        }
    }
    for p in panels(&d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if t["datasource"]["uid"] != CLICKHOUSE_UID {
                continue;
            }
            let ptype = p["type"].as_str().unwrap_or("").to_string();
            let shape = match ptype.as_str() {
                "timeseries" | "heatmap" => Shape::TimeSeries,
                "stat" | "bargauge" | "gauge" => Shape::Numbers,
                _ => Shape::Table(override_names(p)),
            };
            out.push(Query {
                origin: format!("{file}: panel {}", p["title"]),
                panel_type: ptype,
                sql: t["rawSql"].as_str().expect("rawSql").to_string(),
                shape,
                range_s: None,
                threshold: None,
                time_from: p["timeFrom"].as_str().map(str::to_string),
            });
        }
    }
    out
}

/// The ClickHouse query (refId A) of each generated alert rule, with its threshold.
pub fn rule_queries() -> Vec<Query> {
    let text = std::fs::read_to_string(root().join("alerts/grafana/rules.yaml")).expect("rules");
    let doc: Value = serde_yaml::from_str(&text).expect("rules.yaml is YAML");
    let mut out = Vec::new();
    for g in doc["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let data = r["data"].as_array().expect("data");
            let a = data.iter().find(|d| d["refId"] == "A").expect("query A");
            let b = data
                .iter()
                .find(|d| d["refId"] == "B")
                .expect("threshold B");
            out.push(Query {
                origin: format!("alerts/grafana/rules.yaml: rule {}", r["uid"]),
                panel_type: "alert".into(),
                sql: a["model"]["rawSql"].as_str().expect("rawSql").to_string(),
                shape: Shape::Alert,
                range_s: a["relativeTimeRange"]["from"].as_i64(),
                threshold: b["model"]["conditions"][0]["evaluator"]["params"][0].as_f64(),
                time_from: None,
            });
        }
    }
    out
}

/// Checks an answer against what its consumer needs; the problem, if any.
pub fn check_shape(q: &Query, a: &Answer) -> Result<(), String> {
    let classes: Vec<Class> = a.columns.iter().map(|(_, t)| class(t)).collect();
    let numbers = classes.iter().filter(|c| **c == Class::Number).count();
    let names: Vec<&str> = a.columns.iter().map(|(n, _)| n.as_str()).collect();
    match &q.shape {
        Shape::TimeSeries => {
            if names.first() != Some(&"time") || classes.first() != Some(&Class::Time) {
                return Err(format!(
                    "a time series needs `time` (DateTime) first: {:?}",
                    a.columns
                ));
            }
            if numbers == 0 {
                return Err(format!("a time series needs a number: {:?}", a.columns));
            }
        }
        Shape::Numbers => {
            if numbers == 0 {
                return Err(format!(
                    "a {} needs a number: {:?}",
                    q.panel_type, a.columns
                ));
            }
        }
        Shape::Table(needed) => {
            for n in needed {
                if !names.contains(&n.as_str()) {
                    return Err(format!("the panel configures column {n}, not in {names:?}"));
                }
            }
        }
        Shape::Variable => {
            if classes != [Class::Text] {
                return Err(format!("a variable needs one text column: {:?}", a.columns));
            }
        }
        Shape::Alert => {
            if numbers != 1
                || classes
                    .iter()
                    .any(|c| !matches!(c, Class::Number | Class::Text))
            {
                return Err(format!(
                    "an alert query needs text labels and exactly one number: {:?}",
                    a.columns
                ));
            }
        }
    }
    Ok(())
}

/// Firing instances of an alert answer: the label set of every row whose number exceeds the
/// threshold (the rule's `gt` threshold expression).
pub fn firing(q: &Query, a: &Answer) -> Vec<Vec<(String, String)>> {
    let threshold = q.threshold.expect("alert threshold");
    let mut out = Vec::new();
    for row in &a.rows {
        let mut labels = Vec::new();
        let mut value = f64::NAN;
        for ((name, ty), cell) in a.columns.iter().zip(row) {
            match class(ty) {
                Class::Number => {
                    value = match cell {
                        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                        Value::String(s) => s.parse().unwrap_or(f64::NAN),
                        _ => f64::NAN,
                    }
                }
                _ => labels.push((name.clone(), cell.as_str().unwrap_or("").to_string())),
            }
        }
        if value > threshold {
            out.push(labels);
        }
    }
    out.sort();
    out
}

/// Table names after FROM / JOIN (subqueries and ARRAY JOIN excepted), for the existence
/// check.
pub fn tables(sql: &str) -> Vec<String> {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let mut out = Vec::new();
    for i in 1..words.len() {
        let kw = words[i - 1];
        let array_join = i >= 2 && words[i - 2].eq_ignore_ascii_case("ARRAY");
        if (kw.eq_ignore_ascii_case("FROM") || kw.eq_ignore_ascii_case("JOIN")) && !array_join {
            let name = words[i].trim_end_matches([')', ',', ';']);
            if !name.starts_with('(') && !name.is_empty() {
                out.push(name.to_string());
            }
        }
    }
    out
}
