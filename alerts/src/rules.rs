//! The Grafana-managed alert rules (file provisioning format, `apiVersion: 1`) made from an
//! [`SloConfig`]: one multi-window burn-rate rule per SLO alert, one security rule, one
//! partial-create rule. Each rule is a ClickHouse query (refId `A`, the datasource
//! plugin's SQL model) and a threshold expression (refId `B`) over its one numeric column;
//! the string columns (`service`, `kind`, `resource`, ...) become the alert's labels.
//!
//! The SQL uses only the plugin's backend macros (`$__timeFilter`, `$__fromTime`,
//! `$__toTime`) and is accepted by ClickHouse 18.16 as well as current releases: the tests
//! expand the macros and run every query on both.

use super::config::{duration, ConfigError, Denominator, Severity, SloConfig};
use serde_json::{json, Value};

/// The rule's evaluation: the query `A`, over `range_s` seconds back from now, must return
/// rows whose numeric column exceeds `threshold`.
pub struct Rule {
    pub uid: String,
    pub title: String,
    pub sql: String,
    pub range_s: u64,
    pub threshold: f64,
    pub pending: String,
    pub labels: Vec<(String, String)>,
    pub summary: String,
    pub description: String,
}

/// A string literal for ClickHouse: quotes and backslashes escaped.
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn secs(field: &str, text: &str) -> Result<u64, ConfigError> {
    Ok(duration(field, text)?.as_secs())
}

/// Every rule of the file, in a stable order: SLOs as listed, then security, then partial
/// creates.
pub fn rules(config: &SloConfig) -> Result<Vec<Rule>, ConfigError> {
    let mut out = Vec::new();
    for (i, slo) in config.slos.iter().enumerate() {
        let period = secs(&format!("slos[{i}].window"), &slo.window)?;
        let budget = 1.0 - slo.objective;
        let services = if slo.services.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = slo.services.iter().map(|s| sql_string(s)).collect();
            format!(" AND service IN ({})", list.join(", "))
        };
        for (j, alert) in slo.burn_alerts.iter().enumerate() {
            let at = format!("slos[{i}].burn_alerts[{j}]");
            let long = secs(&format!("{at}.long_window"), &alert.long_window)?;
            let short = secs(&format!("{at}.short_window"), &alert.short_window)?;
            // The burn rate at which `budget_consumed` of the period's budget goes in `long`.
            let factor = round4(alert.budget_consumed * period as f64 / long as f64);
            let sql = burn_rate_sql(&slo.kind, slo.denominator, budget, short, &services);
            out.push(Rule {
                uid: uid(&format!(
                    "{}-{}-{}",
                    slo.name, alert.long_window, alert.short_window
                )),
                title: format!(
                    "{} burn rate over {} and {} ({})",
                    slo.name,
                    alert.long_window,
                    alert.short_window,
                    alert.severity.as_str()
                ),
                sql,
                range_s: long,
                threshold: factor,
                pending: alert.r#for.clone(),
                labels: vec![
                    ("kind".into(), slo.kind.clone()),
                    ("severity".into(), alert.severity.as_str().into()),
                    ("slo".into(), slo.name.clone()),
                    ("source".into(), "slo".into()),
                ],
                summary: format!(
                    "{{{{ $labels.service }}}}: {} burning its error budget {{{{ $values.A.Value | printf \"%.1f\" }}}}x too fast",
                    slo.name
                ),
                description: format!(
                    "{}. Objective {} over {}; over both the last {} and the last {} the \
                     error rate spent budget at more than {factor}x the sustainable rate \
                     ({}% of the {} budget in {}).",
                    slo.description,
                    slo.objective,
                    slo.window,
                    alert.long_window,
                    alert.short_window,
                    round4(alert.budget_consumed * 100.0),
                    slo.window,
                    alert.long_window
                ),
            });
        }
    }

    let sec = &config.security;
    let kinds: Vec<String> = sec.kinds.iter().map(|k| sql_string(k)).collect();
    let flows: Vec<String> = sec
        .flows
        .iter()
        .map(|f| {
            let mut c = vec![format!("service = {}", sql_string(&f.service))];
            if let Some(op) = &f.operation {
                c.push(format!("operation = {}", sql_string(op)));
            }
            if let Some(rt) = &f.resource_type {
                c.push(format!("resource_type = {}", sql_string(rt)));
            }
            format!("({})", c.join(" AND "))
        })
        .collect();
    // By detection time, so a finding decided late (after the pair TTL) still pages; the
    // event-time bound only lets ClickHouse skip old partitions. It is parenthesized: the
    // plugin takes the first parenthesis after an argument-less macro as its arguments
    // unless a closing one comes first (sqlutil's getMacroMatches).
    let sql = format!(
        "SELECT service, kind, resource, uniqExact(id) AS findings\n\
         FROM findings\n\
         WHERE $__timeFilter(detected_at)\n  \
         AND (event_time >= $__fromTime - 86400)\n  \
         AND kind IN ({})\n  \
         AND ({})\n\
         GROUP BY service, kind, resource\n\
         ORDER BY service, kind, resource",
        kinds.join(", "),
        flows.join(" OR ")
    );
    out.push(Rule {
        uid: uid("security-findings"),
        title: "security flow race (page)".into(),
        sql,
        range_s: secs("security.window", &sec.window)?,
        threshold: 0.0,
        pending: "0s".into(),
        labels: vec![
            ("severity".into(), Severity::Page.as_str().into()),
            ("source".into(), "security".into()),
        ],
        summary: "{{ $labels.kind }} on {{ $labels.resource }} ({{ $labels.service }})".into(),
        description: format!(
            "A {} finding on a security-labelled flow: an action ran without a valid \
             authorization or check. Open the Debug dashboard for its evidence and trace.",
            sec.kinds.join(" or ")
        ),
    });

    let pc = &config.partial_creates;
    out.push(Rule {
        uid: uid("partial-creates"),
        title: format!("partial creates above {} per {}", pc.threshold, pc.window),
        sql: "SELECT service, resource_type, sumMerge(findings) AS partial_creates\n\
              FROM rollup_minute\n\
              WHERE $__timeFilter(minute) AND kind = 'partial_create'\n\
              GROUP BY service, resource_type\n\
              ORDER BY service, resource_type"
            .into(),
        range_s: secs("partial_creates.window", &pc.window)?,
        threshold: pc.threshold as f64,
        pending: "0s".into(),
        labels: vec![
            ("kind".into(), "partial_create".into()),
            ("severity".into(), pc.severity.as_str().into()),
            ("source".into(), "threshold".into()),
        ],
        summary: "{{ $labels.service }}: {{ $values.A.Value }} half-made {{ $labels.resource_type }} resources".into(),
        description: format!(
            "More than {} creates of one resource type were never finalized within the pair \
             TTL in {}. See the Debug dashboard's orphaned resources.",
            pc.threshold, pc.window
        ),
    });
    Ok(out)
}

/// Per service: the smaller of the long-window and short-window burn rates (error rate
/// divided by the budget), so the one numeric column exceeds the factor only when both
/// windows do. The long window is the rule's time range; the short one ends at its end.
fn burn_rate_sql(
    kind: &str,
    denominator: Denominator,
    budget: f64,
    short_s: u64,
    services: &str,
) -> String {
    let kind = sql_string(kind);
    let short = format!("minute >= $__toTime - {short_s}");
    let denom = |cond: &str| -> String {
        let with = |extra: &str| {
            if cond.is_empty() {
                extra.to_string()
            } else {
                format!("{extra} AND {cond}")
            }
        };
        match denominator {
            // Pairs are uses minus unchecked uses (schema/sql/README.md, "SLIs").
            Denominator::Pairs => format!(
                "greatest(toInt64(sumIf(u, {})) - toInt64(sumIf(f, {})), 1)",
                with("kind = ''"),
                with("kind = 'unchecked_use'")
            ),
            Denominator::Uses => format!("greatest(toInt64(sumIf(u, {})), 1)", with("kind = ''")),
        }
    };
    format!(
        "SELECT service, round(least(long_burn, short_burn), 4) AS burn_rate\n\
         FROM\n\
         (\n    \
             SELECT\n        \
                 service,\n        \
                 sumIf(f, kind = {kind}) / {long_denom} / {budget} AS long_burn,\n        \
                 sumIf(f, kind = {kind} AND {short}) / {short_denom} / {budget} AS short_burn\n    \
             FROM\n    \
             (\n        \
                 SELECT service, minute, kind, sumMerge(uses) AS u, sumMerge(findings) AS f\n        \
                 FROM rollup_minute\n        \
                 WHERE $__timeFilter(minute){services}\n        \
                 GROUP BY service, minute, kind\n    \
             )\n    \
             GROUP BY service\n\
         )\n\
         ORDER BY service",
        long_denom = denom(""),
        short_denom = denom(&short),
        budget = round6(budget),
    )
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Grafana rule uids are at most 40 characters of letters, digits, `-` and `_`.
fn uid(name: &str) -> String {
    let cleaned: String = format!("toctou-{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    cleaned.chars().take(40).collect()
}

/// The provisioning file: one group per source (SLO burn, security, threshold), so each can
/// be paused or re-evaluated on its own.
pub fn rules_file(config: &SloConfig) -> Result<Value, ConfigError> {
    let all = rules(config)?;
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for rule in &all {
        let source = rule
            .labels
            .iter()
            .find(|(k, _)| k == "source")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let name = format!("toctou-{source}");
        let value = rule_value(config, rule);
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, rules)) => rules.push(value),
            None => groups.push((name, vec![value])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, rules)| {
            json!({
                "orgId": 1,
                "name": name,
                "folder": config.folder,
                "interval": config.evaluation_interval,
                "rules": rules,
            })
        })
        .collect();
    Ok(json!({ "apiVersion": 1, "groups": groups }))
}

fn rule_value(config: &SloConfig, rule: &Rule) -> Value {
    let mut labels = serde_json::Map::new();
    for (k, v) in &config.labels {
        labels.insert(k.clone(), json!(v));
    }
    for (k, v) in &rule.labels {
        labels.insert(k.clone(), json!(v));
    }
    json!({
        "uid": rule.uid,
        "title": rule.title,
        "condition": "B",
        "data": [
            {
                "refId": "A",
                "relativeTimeRange": { "from": rule.range_s, "to": 0 },
                "datasourceUid": config.datasource_uid,
                "model": {
                    "refId": "A",
                    "datasource": { "type": "grafana-clickhouse-datasource", "uid": config.datasource_uid },
                    "editorType": "sql",
                    "queryType": "table",
                    "format": 1,
                    "rawSql": rule.sql,
                    "intervalMs": 60000,
                    "maxDataPoints": 43200,
                }
            },
            {
                "refId": "B",
                "relativeTimeRange": { "from": 0, "to": 0 },
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "B",
                    "datasource": { "type": "__expr__", "uid": "__expr__" },
                    "type": "threshold",
                    "expression": "A",
                    "conditions": [ { "evaluator": { "type": "gt", "params": [rule.threshold] } } ],
                }
            }
        ],
        // No rows means no findings in the window: healthy, not unknown.
        "noDataState": "OK",
        "execErrState": "Error",
        "for": rule.pending,
        "annotations": {
            "summary": rule.summary,
            "description": rule.description,
        },
        "labels": labels,
        "isPaused": false,
    })
}
