//! Checks and uses inferred from one request's statements: a read that pins a row by its
//! key, then a write of that row. The resource is named as the change stream names it
//! (`<schema>.<table>/<key values in key order, joined with ",">`, `toctou_cdc`'s mapping),
//! so the change stream's records of the row meet the pair; the version the write acted on,
//! when its parameters say it (`WHERE version = %s`, or `SET version = %s` with the read
//! version plus one), is the checked version.
//!
//! A read pinned by other columns than the key (an ORM reading a stock record by
//! `product_id`, then updating it by `id`) names no row: it pairs with a later write of a row
//! of its table through its filter (the columns it pins and their values), and whether the
//! written row is one it read is for the change stream's row image to say.

use crate::params::Param;
use crate::statement::{Operation, Protection, Statement, ValueRef};

/// One statement of a request, read, with its parameters' values.
pub struct Call<'a> {
    pub statement: &'a Statement,
    pub params: &'a [Param],
}

/// A read and a later write of the same row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The row, named as the change stream names it.
    pub resource: String,
    /// Indexes of the read and the write among the calls.
    pub read: usize,
    pub write: usize,
    /// The version the write acted on, when its parameters carry it.
    pub checked_version: Option<String>,
    /// What protects the pair, if anything (a protected pair is no race).
    pub protection: Protection,
    /// For a read pinned by other columns than the key, those (column, value) pairs, sorted
    /// by column: the written row is one it read only if its columns show them. Empty for
    /// a read of the row by its key.
    pub filter: Vec<(String, String)>,
}

/// The pairs among one request's calls, in order of their writes; each write with the latest
/// earlier read of its row by its key, else with the latest earlier read of its table pinned
/// by other columns (with its filter). `key_columns` gives a table's primary key columns in key order
/// (`schema.table`); `version_column` is the column that holds a row's version.
pub fn pairs(
    calls: &[Call<'_>],
    default_schema: &str,
    key_columns: &dyn Fn(&str) -> Option<Vec<String>>,
    version_column: &str,
) -> Vec<Pair> {
    let rows: Vec<Option<String>> = calls
        .iter()
        .map(|c| row(c, default_schema, key_columns))
        .collect();
    let mut out = Vec::new();
    for (w, call) in calls.iter().enumerate() {
        if call.statement.operation == Operation::Select {
            continue;
        }
        let Some(resource) = &rows[w] else {
            continue;
        };
        let read = (0..w).rev().find(|&r| {
            calls[r].statement.operation == Operation::Select && rows[r].as_ref() == Some(resource)
        });
        let (r, filter) = match read {
            Some(r) => (r, Vec::new()),
            // An insert after a read by its values is a check-then-insert (the read found
            // no row), not a read of the row it makes.
            None if call.statement.operation == Operation::Insert => continue,
            None => {
                let table = call.statement.table.qualified(default_schema);
                let by_filter = (0..w).rev().find_map(|r| {
                    let c = &calls[r];
                    if c.statement.operation != Operation::Select
                        || rows[r].is_some()
                        || c.statement.table.qualified(default_schema) != table
                    {
                        return None;
                    }
                    Some((r, filter(c)?))
                });
                let Some(found) = by_filter else {
                    continue;
                };
                found
            }
        };
        let protection = match (&calls[r].statement.protection, &call.statement.protection) {
            (p @ (Protection::ForUpdate | Protection::ForShare), _) => p.clone(),
            (_, p) => p.clone(),
        };
        out.push(Pair {
            resource: resource.clone(),
            read: r,
            write: w,
            checked_version: checked_version(call, version_column),
            protection,
            filter,
        });
    }
    out
}

/// The (column, value) pairs a read pins its rows by, sorted by column; `None` when it pins
/// none or a value is not known.
fn filter(call: &Call<'_>) -> Option<Vec<(String, String)>> {
    let mut terms = call
        .statement
        .conditions
        .iter()
        .map(|t| Some((t.column.clone(), value(&t.value, call.params)?)))
        .collect::<Option<Vec<_>>>()?;
    if terms.is_empty() {
        return None;
    }
    terms.sort();
    Some(terms)
}

/// The row a call pins by its table's key, named as the change stream names it.
fn row(
    call: &Call<'_>,
    default_schema: &str,
    key_columns: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Option<String> {
    let (mut name, key) = row_key(call, default_schema, key_columns)?;
    name.push('/');
    for (i, (_, v)) in key.iter().enumerate() {
        if i > 0 {
            name.push(',');
        }
        name.push_str(v);
    }
    Some(name)
}

/// The row a call pins by its table's key: the table (`schema.table`) and the key's
/// (column, value) pairs in key order. An insert names its row by the values it writes; the
/// others by their predicate. `None` when a key column's value is not known.
pub fn row_key(
    call: &Call<'_>,
    default_schema: &str,
    key_columns: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Option<(String, Vec<(String, String)>)> {
    let s = call.statement;
    let table = s.table.qualified(default_schema);
    let key = key_columns(&table)?;
    let terms = match s.operation {
        Operation::Insert => &s.writes,
        _ => &s.conditions,
    };
    let values = key
        .into_iter()
        .map(|column| {
            let term = terms.iter().find(|t| t.column == column)?;
            let v = value(&term.value, call.params)?;
            Some((column, v))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((table, values))
}

/// The version a write acted on, from its own parameters: pinned (`WHERE version = %s`), or
/// set to the next (`SET version = %s`, an integer: the one read was one less).
fn checked_version(call: &Call<'_>, version_column: &str) -> Option<String> {
    let s = call.statement;
    if let Some(pinned) = s.conditions.iter().find(|c| c.column == version_column) {
        return value(&pinned.value, call.params);
    }
    let set = s.writes.iter().find(|c| c.column == version_column)?;
    let next: i128 = value(&set.value, call.params)?.parse().ok()?;
    Some((next - 1).to_string())
}

/// A statement's value: a literal, or the parameter's value; `None` when computed, null or
/// not known (parameters not captured).
pub fn value(v: &ValueRef, params: &[Param]) -> Option<String> {
    match v {
        ValueRef::Literal(l) => Some(l.clone()),
        ValueRef::Param(i) => match params.get(*i)? {
            Param::Text(t) => Some(t.clone()),
            Param::Null | Param::Unknown => None,
        },
        ValueRef::Computed => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::parse_params_for;
    use crate::statement::interpret;

    fn keys(table: &str) -> Option<Vec<String>> {
        match table {
            "public.items" | "public.accounts" => Some(vec!["id".into()]),
            "public.stock" => Some(vec!["region".into(), "sku".into()]),
            _ => None,
        }
    }

    fn run(calls: &[(&str, &str)]) -> Vec<Pair> {
        let statements: Vec<Statement> = calls.iter().map(|(s, _)| interpret(s).unwrap()).collect();
        let params: Vec<Vec<Param>> = calls
            .iter()
            .zip(&statements)
            .map(|((_, p), s)| parse_params_for(p, &s.names).unwrap())
            .collect();
        let calls: Vec<Call<'_>> = statements
            .iter()
            .zip(&params)
            .map(|(statement, params)| Call { statement, params })
            .collect();
        pairs(&calls, "public", &keys, "version")
    }

    #[test]
    fn a_read_then_a_write_of_one_row() {
        let p = run(&[
            ("SELECT stock, version FROM items WHERE id = %s", "(7,)"),
            ("SELECT 1 FROM items WHERE id = %s", "(8,)"),
            (
                "UPDATE items SET stock = %s, version = %s WHERE id = %s",
                "(Int4(3), Int4(5), 7)",
            ),
        ]);
        assert_eq!(
            p,
            [Pair {
                resource: "public.items/7".into(),
                read: 0,
                write: 2,
                checked_version: Some("4".into()),
                protection: Protection::None,
                filter: Vec::new(),
            }]
        );
    }

    #[test]
    fn protections_and_pinned_versions() {
        let p = run(&[
            (
                "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE",
                "[1]",
            ),
            ("UPDATE accounts SET balance = $1 WHERE id = $2", "[90, 1]"),
        ]);
        assert_eq!(p[0].protection, Protection::ForUpdate);
        assert_eq!(p[0].checked_version, None);
        let p = run(&[
            ("SELECT balance, version FROM accounts WHERE id = %(id)s", "{'id': 1}"),
            (
                "UPDATE accounts SET balance = %(b)s, version = version + 1 WHERE id = %(id)s AND version = %(v)s",
                "{'b': Decimal('90.00'), 'id': 1, 'v': 3}",
            ),
        ]);
        assert_eq!(
            p[0].protection,
            Protection::VersionPredicate("version".into())
        );
        assert_eq!(p[0].checked_version.as_deref(), Some("3"));
    }

    #[test]
    fn composite_keys_and_rows_no_key_names() {
        let p = run(&[
            (
                "SELECT qty FROM stock WHERE sku = $1 AND region = $2",
                r#"["a", "eu"]"#,
            ),
            (
                "UPDATE stock SET qty = qty - 1 WHERE region = $1 AND sku = $2",
                r#"["eu", "a"]"#,
            ),
        ]);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].resource, "public.stock/eu,a",
            "key order, not predicate order"
        );
        // Read by other columns: paired through its filter (the change stream's row image
        // says whether the written row is one it read); a read of another table is not.
        let p = run(&[
            (
                "SELECT id, qty FROM items WHERE product_id = %s AND site = 'eu'",
                "(3,)",
            ),
            ("SELECT id FROM orders WHERE product_id = %s", "(3,)"),
            ("UPDATE items SET qty = %s WHERE id = %s", "(1, 9)"),
        ]);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].read, p[0].write), (0, 2));
        assert_eq!(p[0].resource, "public.items/9");
        assert_eq!(
            p[0].filter,
            [
                ("product_id".to_string(), "3".to_string()),
                ("site".to_string(), "eu".to_string())
            ]
        );
        // A read of the row by its key wins over a later read by a filter.
        let p = run(&[
            ("SELECT qty FROM items WHERE id = %s", "(9,)"),
            ("SELECT id FROM items WHERE product_id = %s", "(3,)"),
            ("UPDATE items SET qty = %s WHERE id = %s", "(1, 9)"),
        ]);
        assert_eq!((p[0].read, p[0].filter.len()), (0, 0));
        // An insert that names its key after a read by its values: no row read.
        let p = run(&[
            ("SELECT 1 FROM items WHERE product_id = %s", "(3,)"),
            (
                "INSERT INTO items (id, product_id) VALUES (%s, %s)",
                "(9, 3)",
            ),
        ]);
        assert_eq!(p, []);
        // Without parameters, no row at all.
        let p = run(&[
            ("SELECT qty FROM items WHERE id = %s", "()"),
            ("UPDATE items SET qty = %s WHERE id = %s", "()"),
        ]);
        assert_eq!(p, []);
    }
}
