//! A database client span's attributes, as the OpenTelemetry instrumentations write them,
//! to the call toctou reads: the system, the statement's text and its parameters. Current
//! semantic conventions and the older ones still emitted are both taken:
//!
//! | what | current | older, or one instrumentation's |
//! |---|---|---|
//! | system | `db.system.name` | `db.system` |
//! | text | `db.query.text` | `db.statement` |
//! | parameters | `db.query.parameter.<key>`, one each | `db.statement.parameters` (Python's dbapi/psycopg: a tuple repr), `pgx.query.parameters` (otelpgx), `db.postgresql.values` (Node's pg: a JSON array) |
//! | schema | `db.namespace` | `db.name` |
//! | status | `db.response.status_code` (SQLSTATE) | `error.type` |

use crate::params::{parse_params_for, Param, ParamError};

/// The parts of a database client span that toctou reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbCall<'a> {
    pub system: Option<&'a str>,
    pub text: Option<&'a str>,
    pub namespace: Option<&'a str>,
    /// The SQLSTATE, or the error type, of a failed call.
    pub status: Option<&'a str>,
    /// The parameters as rendered in one attribute (`db.statement.parameters` and the like).
    rendered: Option<&'a str>,
    /// `db.query.parameter.<key>` attributes: (key, value).
    indexed: Vec<(&'a str, &'a str)>,
}

impl<'a> DbCall<'a> {
    /// Reads the attributes of one span; `None` when it is no database call with a statement.
    pub fn from_attributes(
        attributes: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Option<DbCall<'a>> {
        let mut call = DbCall::default();
        let mut legacy_system = None;
        let mut legacy_text = None;
        let mut legacy_namespace = None;
        for (key, value) in attributes {
            match key {
                "db.system.name" => call.system = Some(value),
                "db.system" => legacy_system = Some(value),
                "db.query.text" => call.text = Some(value),
                "db.statement" => legacy_text = Some(value),
                "db.namespace" => call.namespace = Some(value),
                "db.name" => legacy_namespace = Some(value),
                "db.response.status_code" => call.status = Some(value),
                "error.type" if call.status.is_none() => call.status = Some(value),
                "db.statement.parameters" | "pgx.query.parameters" | "db.postgresql.values" => {
                    call.rendered = Some(value)
                }
                _ => {
                    if let Some(k) = key.strip_prefix("db.query.parameter.") {
                        call.indexed.push((k, value));
                    }
                }
            }
        }
        call.system = call.system.or(legacy_system);
        call.text = call.text.or(legacy_text);
        call.namespace = call.namespace.or(legacy_namespace);
        (call.system.is_some() && call.text.is_some()).then_some(call)
    }

    /// Whether the call failed with a serialization failure or a deadlock (SQLSTATE 40001,
    /// 40P01): the database prevented a race.
    pub fn serialization_failure(&self) -> bool {
        self.status.is_some_and(serialization_failure)
    }

    /// The parameters, in order: from the one attribute that renders them all, else from
    /// `db.query.parameter.<n>` (numeric keys in order; named keys in the order given).
    /// Empty when the instrumentation recorded none (capturing them is opt-in). `names`:
    /// the statement's named placeholders (`Statement::names`), which order a dict.
    pub fn params(&self, names: &[String]) -> Result<Vec<Param>, ParamError> {
        if let Some(rendered) = self.rendered {
            return parse_params_for(rendered, names);
        }
        Ok(indexed_params(&self.indexed))
    }
}

/// Whether a failed call's status says the database refused it to keep transactions
/// serializable: SQLSTATE 40001 (serialization failure) or 40P01 (deadlock), or the driver's
/// exception type for them as `error.type` records it (psycopg's `SerializationFailure`,
/// `DeadlockDetected`).
pub fn serialization_failure(status: &str) -> bool {
    matches!(
        status,
        "40001" | "40P01" | "SerializationFailure" | "DeadlockDetected"
    )
}

/// Parameters sent one attribute each (`db.query.parameter.<key>`): numeric keys in order,
/// named keys in the order given.
pub fn indexed_params<K: AsRef<str>, V: AsRef<str>>(indexed: &[(K, V)]) -> Vec<Param> {
    let mut indexed: Vec<(&str, &str)> = indexed
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    if indexed.iter().all(|(k, _)| k.parse::<usize>().is_ok()) {
        indexed.sort_by_key(|(k, _)| k.parse::<usize>().unwrap_or(usize::MAX));
    }
    indexed
        .into_iter()
        .map(|(_, v)| Param::Text(v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_and_older_conventions() {
        let call = DbCall::from_attributes([
            ("db.system.name", "postgresql"),
            ("db.query.text", "SELECT v FROM t WHERE id = $1 AND k = $2"),
            ("db.query.parameter.1", "b"),
            ("db.query.parameter.0", "7"),
            ("db.namespace", "shop"),
        ])
        .unwrap();
        assert_eq!(call.system, Some("postgresql"));
        assert_eq!(
            call.params(&[]).unwrap(),
            [Param::Text("7".into()), Param::Text("b".into())]
        );
        // opentelemetry-instrumentation-psycopg with capture_parameters.
        let call = DbCall::from_attributes([
            ("db.system", "postgresql"),
            ("db.statement", "UPDATE t SET v = %s WHERE id = %s"),
            ("db.statement.parameters", "(Int4(3), 'sku-1')"),
            ("db.name", "shop"),
        ])
        .unwrap();
        assert_eq!(call.text, Some("UPDATE t SET v = %s WHERE id = %s"));
        assert_eq!(call.namespace, Some("shop"));
        assert_eq!(
            call.params(&[]).unwrap(),
            [Param::Text("3".into()), Param::Text("sku-1".into())]
        );
        // Node's pg: a JSON array.
        let call = DbCall::from_attributes([
            ("db.system", "postgresql"),
            ("db.statement", "SELECT 1 FROM users WHERE email = $1"),
            ("db.postgresql.values", r#"["a@example.com"]"#),
        ])
        .unwrap();
        assert_eq!(
            call.params(&[]).unwrap(),
            [Param::Text("a@example.com".into())]
        );
    }

    #[test]
    fn not_a_database_call_or_no_statement() {
        assert!(DbCall::from_attributes([("http.route", "/buy")]).is_none());
        assert!(DbCall::from_attributes([("db.system", "redis")]).is_none());
        let call = DbCall::from_attributes([
            ("db.system", "postgresql"),
            ("db.statement", "UPDATE t SET v = 1"),
            ("db.response.status_code", "40001"),
        ])
        .unwrap();
        assert!(call.serialization_failure());
        assert_eq!(call.params(&[]).unwrap(), [], "parameters are opt-in");
    }
}
