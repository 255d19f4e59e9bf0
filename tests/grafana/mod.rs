//! What tests/dashboards.rs and tests/alerts.rs share: the plugin's query interpolation
//! ([`macros`]), the queries of the shipped files ([`queries`]), the two engines
//! ([`engines`]) and pipeline-made data ([`data`]).

#![allow(dead_code)]

pub mod data;
pub mod engines;
pub mod macros;
pub mod queries;

use data::Dataset;
use engines::Outcome;
use macros::{Context, Var};
use queries::{Query, Shape};
use std::collections::BTreeMap;

/// Seconds in a Grafana relative range such as "30d", "6h", "5m".
pub fn range_s(text: &str) -> i64 {
    let (n, unit) = text.split_at(text.len() - 1);
    let n: i64 = n.parse().unwrap_or_else(|_| panic!("range {text}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => panic!("range unit in {text}"),
    }
}

/// Both engines' answers to `sql` built per query by `expand`.
pub struct Run {
    pub queries: Vec<Query>,
    pub expanded: Vec<String>,
    pub old: Vec<Outcome>,
    pub current: Vec<Outcome>,
}

pub fn run_both(ds: &Dataset, queries: Vec<Query>, expanded: Vec<String>) -> Run {
    let old = engines::on_18_16(&data::server_url(), &ds.db, &expanded);
    let current = engines::on_chdb(&ds.dumps, &expanded);
    Run {
        queries,
        expanded,
        old,
        current,
    }
}

/// The dashboard's variables as a user opening it sees them: each query variable's options
/// (its query run over the dashboard's range, on 18.16) with All selected, unless `pick`
/// chooses the first option of the named variable instead; textbox and constant values.
pub fn variables(
    ds: &Dataset,
    file: &std::path::Path,
    ctx: &Context,
    pick: &[&str],
) -> BTreeMap<String, Var> {
    let d = queries::load_json(file);
    let mut vars = BTreeMap::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap().to_string();
        match v["type"].as_str().unwrap_or("") {
            "query" => {
                let mut c = ctx.clone();
                c.vars = vars.clone();
                let sql = macros::expand(v["query"].as_str().unwrap(), &c)
                    .unwrap_or_else(|e| panic!("variable {name}: {e}"));
                let out = engines::on_18_16(&data::server_url(), &ds.db, &[sql]);
                let answer = out[0]
                    .as_ref()
                    .unwrap_or_else(|e| panic!("variable {name}: {e}"));
                let options: Vec<String> = answer
                    .rows
                    .iter()
                    .map(|r| r[0].as_str().unwrap_or("").to_string())
                    .collect();
                let value = if pick.contains(&name.as_str()) && !options.is_empty() {
                    Var::Values(vec![options[0].clone()])
                } else {
                    Var::All(options)
                };
                vars.insert(name, value);
            }
            "textbox" | "constant" => {
                vars.insert(
                    name,
                    Var::Text(v["query"].as_str().unwrap_or("").to_string()),
                );
            }
            other => panic!("variable {name} of unexpected type {other}"),
        }
    }
    vars
}

/// Every ClickHouse query of one dashboard, expanded for a user looking at `range` up to now.
pub fn dashboard_run(ds: &Dataset, file: &std::path::Path, range: &str, pick: &[&str]) -> Run {
    let to = data::now_s() + 60;
    let base = Context {
        from_s: to - range_s(range),
        to_s: to,
        interval_s: 60,
        vars: BTreeMap::new(),
    };
    let vars = variables(ds, file, &base, pick);
    let qs = queries::dashboard_queries(file);
    let expanded = qs
        .iter()
        .map(|q| {
            let mut c = base.clone();
            c.vars = vars.clone();
            if let Some(tf) = &q.time_from {
                c.from_s = to - range_s(tf);
            }
            macros::expand(&q.sql, &c).unwrap_or_else(|e| panic!("{}: {e}", q.origin))
        })
        .collect();
    run_both(ds, qs, expanded)
}

/// Every alert rule query, expanded as Grafana evaluates it now (its relative range).
pub fn rules_run(ds: &Dataset) -> Run {
    let to = data::now_s();
    let qs = queries::rule_queries();
    let expanded = qs
        .iter()
        .map(|q| {
            let c = Context {
                from_s: to - q.range_s.expect("relativeTimeRange"),
                to_s: to,
                interval_s: 60,
                vars: BTreeMap::new(),
            };
            macros::expand(&q.sql, &c).unwrap_or_else(|e| panic!("{}: {e}", q.origin))
        })
        .collect();
    run_both(ds, qs, expanded)
}

/// Panics naming every query an engine refused or whose result does not fit its consumer;
/// the two engines must also agree on the columns' names and kinds.
pub fn assert_all_fit(run: &Run) {
    let mut problems = Vec::new();
    for (i, q) in run.queries.iter().enumerate() {
        for (engine, outcome) in [("18.16", &run.old[i]), ("chdb", &run.current[i])] {
            match outcome {
                Err(e) => problems.push(format!(
                    "{} refused on {engine}: {}\n{}",
                    q.origin,
                    e.lines().next().unwrap_or(""),
                    run.expanded[i]
                )),
                Ok(a) => {
                    if let Err(e) = queries::check_shape(q, a) {
                        problems.push(format!("{} on {engine}: {e}", q.origin));
                    }
                }
            }
        }
        if let (Ok(a), Ok(b)) = (&run.old[i], &run.current[i]) {
            let ka: Vec<_> = a
                .columns
                .iter()
                .map(|(n, t)| (n, engines::class(t)))
                .collect();
            let kb: Vec<_> = b
                .columns
                .iter()
                .map(|(n, t)| (n, engines::class(t)))
                .collect();
            if ka != kb {
                problems.push(format!(
                    "{}: 18.16 gives {:?}, chdb {:?}",
                    q.origin, a.columns, b.columns
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Rows per query on one engine, by origin.
pub fn row_counts(run: &Run) -> BTreeMap<String, usize> {
    run.queries
        .iter()
        .zip(&run.current)
        .map(|(q, o)| {
            (
                q.origin.clone(),
                o.as_ref().map(|a| a.rows.len()).unwrap_or(0),
            )
        })
        .collect()
}

/// Firing instances per rule uid, on each engine (they must agree).
pub fn firing(run: &Run) -> BTreeMap<String, Vec<Vec<(String, String)>>> {
    let mut out = BTreeMap::new();
    for (i, q) in run.queries.iter().enumerate() {
        let a = run.old[i]
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", q.origin));
        let b = run.current[i]
            .as_ref()
            .unwrap_or_else(|e| panic!("{}: {e}", q.origin));
        let (fa, fb) = (queries::firing(q, a), queries::firing(q, b));
        assert_eq!(
            fa, fb,
            "{}: 18.16 and chdb disagree on what fires",
            q.origin
        );
        let uid = q
            .origin
            .rsplit(' ')
            .next()
            .unwrap()
            .trim_matches('"')
            .to_string();
        out.insert(uid, fa);
    }
    out
}

pub fn is_shape(q: &Query, s: &Shape) -> bool {
    &q.shape == s
}
