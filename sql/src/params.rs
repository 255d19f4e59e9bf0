//! Statement parameters as OpenTelemetry's database instrumentations render them, to their
//! values as text:
//!
//! - a Python tuple or list `repr` (opentelemetry-instrumentation-dbapi and -psycopg put
//!   `db.statement.parameters` this way), with the driver's wrapper types around values:
//!   `(Int4(0), Int4(1), 7)`, `Decimal('10.00')`, `UUID('…')`, `datetime.datetime(2024, 1,
//!   2, 3, 4, 5)`, `b'…'`, `None`, `True`;
//! - a JSON array (`pgx.query.parameters`, `db.postgresql.values`);
//! - one attribute per index (`db.query.parameter.0`, …): the caller collects those.
//!
//! Only the values that name rows and versions are kept downstream; this module reads them
//! all, as text, and says which it could not.

use thiserror::Error;

/// One parameter's value: text, `None` for SQL NULL, or `Unknown` for a rendering toctou
/// does not take apart (a `datetime`, a nested structure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Null,
    Unknown,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ParamError {
    #[error("not a tuple, list or JSON array of parameters")]
    NotAList,
    #[error("unterminated {0}")]
    Unterminated(&'static str),
}

/// Reads a rendering of a statement's parameters, in order. A dict of named parameters
/// (SQLAlchemy, psycopg's `%(name)s`) comes in the dict's order: use [`parse_params_for`]
/// with the statement's names to have them in the statement's.
pub fn parse_params(rendered: &str) -> Result<Vec<Param>, ParamError> {
    parse_params_for(rendered, &[])
}

/// [`parse_params`], a dict of named parameters ordered by `names` (the statement's
/// placeholders in order of first appearance, `Statement::names`); a name the dict lacks is
/// `Unknown`.
pub fn parse_params_for(rendered: &str, names: &[String]) -> Result<Vec<Param>, ParamError> {
    let s = rendered.trim();
    // No parameters: Python's `None`, SQLAlchemy's `immutabledict({})`.
    if s == "None" {
        return Ok(Vec::new());
    }
    let s = unwrap_call(s).unwrap_or(s);
    if let Some(inner) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        let mut entries = Vec::new();
        for item in split_top_level(inner)? {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (key, value) = split_entry(item)?;
            let key = python_string(key.trim())?.ok_or(ParamError::NotAList)?;
            entries.push((key, python_param(value.trim())?));
        }
        if names.is_empty() {
            return Ok(entries.into_iter().map(|(_, v)| v).collect());
        }
        return Ok(names
            .iter()
            .map(|n| {
                entries
                    .iter()
                    .find(|(k, _)| k == n)
                    .map_or(Param::Unknown, |(_, v)| v.clone())
            })
            .collect());
    }
    if s.starts_with('[') {
        if let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(s) {
            return Ok(values.iter().map(json_param).collect());
        }
    }
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .or_else(|| s.strip_prefix('[').and_then(|s| s.strip_suffix(']')))
        .ok_or(ParamError::NotAList)?;
    let mut out = Vec::new();
    for item in split_top_level(inner)? {
        let item = item.trim();
        if item.is_empty() {
            continue; // `(7,)`: a one-tuple's trailing comma
        }
        out.push(python_param(item)?);
    }
    Ok(out)
}

/// `name(inner)` → `inner`, for a wrapper around the whole rendering (`immutabledict({...})`).
fn unwrap_call(s: &str) -> Option<&str> {
    let open = s.find('(')?;
    let name = &s[..open];
    (!name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && s.ends_with(')'))
    .then(|| s[open + 1..s.len() - 1].trim())
    .filter(|inner| inner.starts_with('{'))
}

/// `'key': value` at its top-level colon.
fn split_entry(item: &str) -> Result<(&str, &str), ParamError> {
    let bytes = item.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        match (quote, bytes[i]) {
            (Some(_), b'\\') => i += 1,
            (Some(q), b) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(bytes[i]),
            (None, b':') => return Ok((&item[..i], &item[i + 1..])),
            _ => {}
        }
        i += 1;
    }
    Err(ParamError::NotAList)
}

fn json_param(v: &serde_json::Value) -> Param {
    match v {
        serde_json::Value::Null => Param::Null,
        serde_json::Value::String(s) => Param::Text(s.clone()),
        serde_json::Value::Number(n) => Param::Text(n.to_string()),
        serde_json::Value::Bool(b) => Param::Text(b.to_string()),
        _ => Param::Unknown,
    }
}

/// Splits at commas outside brackets and quotes.
fn split_top_level(s: &str) -> Result<Vec<&str>, ParamError> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    let mut quote: Option<u8> = None;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match (quote, b) {
            (Some(_), b'\\') => i += 1,
            (Some(q), b) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(b),
            (None, b'(' | b'[' | b'{') => depth += 1,
            (None, b')' | b']' | b'}') => depth -= 1,
            (None, b',') if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if quote.is_some() {
        return Err(ParamError::Unterminated("string"));
    }
    if depth != 0 {
        return Err(ParamError::Unterminated("bracket"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// One Python `repr`: a literal, or a wrapper call around one (`Int4(0)`, `Decimal('1.5')`,
/// `UUID('…')`).
fn python_param(item: &str) -> Result<Param, ParamError> {
    match item {
        "None" => return Ok(Param::Null),
        "True" => return Ok(Param::Text("true".into())),
        "False" => return Ok(Param::Text("false".into())),
        _ => {}
    }
    if let Some(s) = python_string(item)? {
        return Ok(Param::Text(s));
    }
    if item.parse::<f64>().is_ok() {
        return Ok(Param::Text(item.to_string()));
    }
    // A wrapper: Name(one argument) unwraps to that argument; more arguments (a datetime)
    // are not taken apart.
    if let Some(open) = item.find('(') {
        let name = &item[..open];
        if item.ends_with(')')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            let args = split_top_level(&item[open + 1..item.len() - 1])?;
            if let [one] = args.as_slice() {
                return python_param(one.trim());
            }
        }
    }
    Ok(Param::Unknown)
}

/// A Python string literal (`'a'`, `"it's"`, `b'x'`), unescaped; `None` if `item` is none.
fn python_string(item: &str) -> Result<Option<String>, ParamError> {
    let body = item.strip_prefix('b').unwrap_or(item);
    let Some(q) = body.chars().next().filter(|c| *c == '\'' || *c == '"') else {
        return Ok(None);
    };
    let Some(inner) = body[1..].strip_suffix(q) else {
        return Err(ParamError::Unterminated("string"));
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                match u8::from_str_radix(&hex, 16) {
                    Ok(b) => out.push(char::from(b)),
                    Err(_) => return Ok(Some(item.to_string())),
                }
            }
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Param {
        Param::Text(s.into())
    }

    #[test]
    fn python_tuples_with_driver_wrappers() {
        assert_eq!(
            parse_params("(Int4(0), Int4(1), 7)").unwrap(),
            [text("0"), text("1"), text("7")]
        );
        assert_eq!(
            parse_params(
                "(Decimal('10.00'), UUID('550e8400-e29b-41d4-a716-446655440000'), None, True)"
            )
            .unwrap(),
            [
                text("10.00"),
                text("550e8400-e29b-41d4-a716-446655440000"),
                Param::Null,
                text("true")
            ]
        );
        assert_eq!(
            parse_params("('it\\'s, here', \"a \\\"b\\\"\", b'x\\x41')").unwrap(),
            [text("it's, here"), text("a \"b\""), text("xA")]
        );
        assert_eq!(
            parse_params("(datetime.datetime(2024, 1, 2, 3, 4, 5), 'sku-1',)").unwrap(),
            [Param::Unknown, text("sku-1")]
        );
        assert_eq!(parse_params("[1, 'a']").unwrap(), [text("1"), text("a")]);
        assert_eq!(parse_params("()").unwrap(), []);
    }

    #[test]
    fn dicts_of_named_parameters_in_the_statements_order() {
        let names = ["id".to_string(), "amount".to_string()];
        assert_eq!(
            parse_params_for("{'amount': Decimal('2.25'), 'id': 1}", &names).unwrap(),
            [text("1"), text("2.25")]
        );
        assert_eq!(
            parse_params("{'amount': Decimal('2.25'), 'id': 1}").unwrap(),
            [text("2.25"), text("1")],
            "without names, the dict's order"
        );
        assert_eq!(
            parse_params_for("{'a': 'x: y'}", &["a".into(), "b".into()]).unwrap(),
            [text("x: y"), Param::Unknown]
        );
        assert_eq!(parse_params("None").unwrap(), []);
        assert_eq!(parse_params("immutabledict({})").unwrap(), []);
        assert_eq!(
            parse_params("immutabledict({'pk_1': 1})").unwrap(),
            [text("1")]
        );
    }

    #[test]
    fn json_arrays() {
        assert_eq!(
            parse_params(r#"["sku-1", 3, null, true, {"a": 1}]"#).unwrap(),
            [
                text("sku-1"),
                text("3"),
                Param::Null,
                text("true"),
                Param::Unknown
            ]
        );
    }

    #[test]
    fn what_is_not_a_list_says_so() {
        assert_eq!(parse_params("sku-1").unwrap_err(), ParamError::NotAList);
        assert_eq!(
            parse_params("('unterminated)").unwrap_err(),
            ParamError::Unterminated("string")
        );
        assert_eq!(
            parse_params("(Int4(0, )").unwrap_err(),
            ParamError::Unterminated("bracket")
        );
    }
}
