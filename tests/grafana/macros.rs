//! Query interpolation as Grafana and the ClickHouse plugin do it, in their order, so that a
//! test runs the SQL ClickHouse would receive from a panel or an alert rule.
//!
//! 1. `$__conditionalAll(condition, $var)`: the plugin's frontend, before anything else
//!    (grafana/clickhouse-datasource `src/data/CHDatasource.ts`, `applyConditionalAll`):
//!    occurrences are handled from the last to the first; the condition is kept unless the
//!    variable's current value is All (`$__all`) or empty, which gives `1=1`.
//! 2. Template variables: Grafana's `templateSrv.replace` — `${name:singlequote}` quotes
//!    each value (`'` escaped as `\'`) and joins them with `,` (grafana/grafana
//!    `public/app/features/templating/formatRegistry.ts`, tested there as
//!    `'test','test\'2'`); All stands for every option.
//!    `$__...` names are not dashboard variables and are left for the backend.
//! 3. Backend macros: the plugin's `pkg/macros/macros.go` (`$__timeFilter`, `$__fromTime`,
//!    `$__toTime`, `$__dateFilter`, `$__timeInterval`, `$__interval_s`, ...), found by
//!    grafana-plugin-sdk-go's `data/sqlutil/macros.go` `getMacroMatches`: after the name,
//!    the first `(` opens the arguments unless a `)` comes first, and arguments are split on
//!    `,` and trimmed.

use std::collections::BTreeMap;

/// A dashboard variable's current value.
#[derive(Debug, Clone)]
pub enum Var {
    /// A multi-value variable with All selected: every option's value.
    All(Vec<String>),
    /// Chosen values.
    Values(Vec<String>),
    /// A textbox or constant.
    Text(String),
}

/// The time range, interval and variables a query is interpolated with.
#[derive(Debug, Clone)]
pub struct Context {
    pub from_s: i64,
    pub to_s: i64,
    pub interval_s: u64,
    pub vars: BTreeMap<String, Var>,
}

pub fn expand(sql: &str, ctx: &Context) -> Result<String, String> {
    let sql = conditional_all(sql, ctx)?;
    let sql = variables(&sql, ctx)?;
    backend_macros(&sql, ctx)
}

/// Splits macro arguments on top-level commas (the frontend's `getMacroArgs`).
fn args_at(sql: &str, open: usize) -> Option<(Vec<String>, usize)> {
    let bytes = sql.as_bytes();
    let mut depth = 0;
    let mut args = Vec::new();
    let mut start = open + 1;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    args.push(sql[start..i].to_string());
                    return Some((args, i + 1));
                }
            }
            b',' if depth == 1 => {
                args.push(sql[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    None
}

fn conditional_all(sql: &str, ctx: &Context) -> Result<String, String> {
    const MACRO: &str = "$__conditionalAll(";
    let mut sql = sql.to_string();
    while let Some(at) = sql.rfind(MACRO) {
        let open = at + MACRO.len() - 1;
        let (args, end) = args_at(&sql, open).ok_or("unclosed $__conditionalAll(")?;
        if args.len() != 2 {
            return Err(format!("$__conditionalAll takes 2 arguments: {args:?}"));
        }
        let name = args[1].trim().trim_start_matches('$');
        let phrase = match ctx.vars.get(name) {
            Some(Var::All(_)) => "1=1".to_string(),
            Some(Var::Values(v)) if v.is_empty() => "1=1".to_string(),
            Some(_) => args[0].clone(),
            None => return Err(format!("$__conditionalAll names no variable: {name}")),
        };
        sql.replace_range(at..end, &phrase);
    }
    Ok(sql)
}

fn values(var: &Var) -> Vec<String> {
    match var {
        Var::All(v) | Var::Values(v) => v.clone(),
        Var::Text(t) => vec![t.clone()],
    }
}

fn format(var: &Var, fmt: Option<&str>) -> Result<String, String> {
    let vals = values(var);
    match fmt {
        Some("singlequote") => Ok(vals
            .iter()
            .map(|v| format!("'{}'", v.replace('\'', "\\'")))
            .collect::<Vec<_>>()
            .join(",")),
        Some("csv") => Ok(vals.join(",")),
        Some(other) => Err(format!("format :{other} is not used here")),
        None if vals.len() == 1 => Ok(vals[0].clone()),
        None => Ok(format!("{{{}}}", vals.join(","))),
    }
}

fn variables(sql: &str, ctx: &Context) -> Result<String, String> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(body) = tail.strip_prefix('{') {
            let close = body.find('}').ok_or("unclosed ${")?;
            let (name, fmt) = match body[..close].split_once(':') {
                Some((n, f)) => (n, Some(f)),
                None => (&body[..close], None),
            };
            let var = ctx
                .vars
                .get(name)
                .ok_or_else(|| format!("no dashboard variable {name}"))?;
            out.push_str(&format(var, fmt)?);
            rest = &body[close + 1..];
            continue;
        }
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..len];
        if name.starts_with("__") || name.is_empty() {
            out.push('$');
            rest = tail;
            continue;
        }
        let var = ctx
            .vars
            .get(name)
            .ok_or_else(|| format!("no dashboard variable {name}"))?;
        out.push_str(&format(var, None)?);
        rest = &tail[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// sqlutil's getMacroMatches: the macro text and its raw arguments, for each occurrence of
/// `$__name` followed by a non-word character.
fn macro_matches(sql: &str, name: &str) -> Vec<(String, String)> {
    let needle = format!("$__{name}");
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(pos) = sql[from..].find(&needle) {
        let start = from + pos;
        let after = start + needle.len();
        from = after;
        let boundary = sql[after..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if !boundary {
            continue;
        }
        let copy = &sql[start..];
        let (mut depth, mut arg_start, mut end) = (0usize, 0usize, 0usize);
        for (i, c) in copy.char_indices() {
            if depth == 0 && end > 0 {
                break;
            }
            match c {
                '(' => {
                    depth += 1;
                    if arg_start == 0 {
                        arg_start = i + 1;
                    }
                }
                ')' => {
                    if depth == 0 {
                        end = 0;
                        break;
                    }
                    depth -= 1;
                    end = i + 1;
                }
                _ => {}
            }
        }
        if end == 0 {
            end = needle.len();
        }
        let text = copy[..end].to_string();
        let args = if arg_start > 0 && arg_start <= end.saturating_sub(1) {
            copy[arg_start..end - 1].to_string()
        } else {
            String::new()
        };
        found.push((text, args));
    }
    found
}

fn date(s: i64) -> String {
    // toDate('YYYY-MM-DD') of a UTC day, without a date library: days since the epoch.
    let days = s.div_euclid(86_400);
    let (y, m, d) = civil(days);
    format!("toDate('{y:04}-{m:02}-{d:02}')")
}

/// Howard Hinnant's days-to-civil.
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn apply(name: &str, args: &[String], ctx: &Context) -> Result<String, String> {
    let one = || -> Result<&str, String> {
        match args {
            [a] if !a.is_empty() => Ok(a.as_str()),
            _ => Err(format!(
                "$__{name}: expected 1 argument, received {}",
                args.len()
            )),
        }
    };
    let (from, to) = (ctx.from_s, ctx.to_s);
    Ok(match name {
        "fromTime" => format!("toDateTime({from})"),
        "toTime" => format!("toDateTime({to})"),
        "fromTime_ms" => format!("fromUnixTimestamp64Milli({})", from * 1000),
        "toTime_ms" => format!("fromUnixTimestamp64Milli({})", to * 1000),
        "timeFilter" => {
            let c = one()?;
            format!("{c} >= toDateTime({from}) AND {c} <= toDateTime({to})")
        }
        "timeFilter_ms" => {
            let c = one()?;
            format!(
                "{c} >= fromUnixTimestamp64Milli({}) AND {c} <= fromUnixTimestamp64Milli({})",
                from * 1000,
                to * 1000
            )
        }
        "dateFilter" => {
            let c = one()?;
            format!("{c} >= {} AND {c} <= {}", date(from), date(to))
        }
        "timeInterval" => format!(
            "toStartOfInterval(toDateTime({}), INTERVAL {} second)",
            one()?,
            ctx.interval_s.max(1)
        ),
        "interval_s" => format!("{}", ctx.interval_s.max(1)),
        other => return Err(format!("$__{other} is not a macro of the plugin")),
    })
}

const MACROS: &[&str] = &[
    "fromTime",
    "toTime",
    "fromTime_ms",
    "toTime_ms",
    "timeFilter",
    "timeFilter_ms",
    "dateFilter",
    "timeInterval",
    "interval_s",
];

fn backend_macros(sql: &str, ctx: &Context) -> Result<String, String> {
    let mut sql = sql.to_string();
    for name in MACROS {
        for (text, raw) in macro_matches(&sql, name) {
            let args: Vec<String> = if raw.is_empty() && !text.contains('(') {
                Vec::new()
            } else {
                raw.split(',').map(|a| a.trim().to_string()).collect()
            };
            let res = apply(name, &args, ctx)?;
            sql = sql.replace(&text, &res);
        }
    }
    if let Some(at) = sql.find("$__") {
        return Err(format!("unexpanded macro at: {}", &sql[at..]));
    }
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(service: Var) -> Context {
        Context {
            from_s: 1_700_000_000,
            to_s: 1_700_003_600,
            interval_s: 60,
            vars: BTreeMap::from([("service".to_string(), service)]),
        }
    }

    #[test]
    fn expands_like_the_plugin() {
        let sql = "SELECT $__timeInterval(minute) AS t FROM r WHERE $__timeFilter(minute) \
                   AND $__conditionalAll(service IN (${service:singlequote}), $service) \
                   AND (x >= $__toTime - 300) AND d >= $__fromTime";
        let all = expand(sql, &ctx(Var::All(vec!["a".into(), "b".into()]))).unwrap();
        assert_eq!(
            all,
            "SELECT toStartOfInterval(toDateTime(minute), INTERVAL 60 second) AS t FROM r WHERE \
             minute >= toDateTime(1700000000) AND minute <= toDateTime(1700003600) AND 1=1 \
             AND (x >= toDateTime(1700003600) - 300) AND d >= toDateTime(1700000000)"
        );
        let one = expand(sql, &ctx(Var::Values(vec!["o'k".into(), "b".into()]))).unwrap();
        assert!(one.contains("AND service IN ('o\\'k','b') AND"), "{one}");
    }

    #[test]
    fn an_argument_less_macro_takes_a_following_parenthesis_as_its_arguments() {
        // What getMacroMatches does: the whole "... IN (1)" becomes part of the macro.
        let m = macro_matches("a >= $__toTime - 1 AND b IN (1)", "toTime");
        assert_eq!(m[0].0, "$__toTime - 1 AND b IN (1)");
        let m = macro_matches("(a >= $__toTime - 1) AND b IN (1)", "toTime");
        assert_eq!(m[0].0, "$__toTime");
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date(0), "toDate('1970-01-01')");
        assert_eq!(date(1_700_000_000), "toDate('2023-11-14')");
    }
}
