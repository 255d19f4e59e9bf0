//! A committed row change, whatever stream it came from (PostgreSQL's logical decoding,
//! Debezium), and the one mapping that turns it into a toctou audit record
//! (schema/CONVENTIONS.md, "Audit records from your database"):
//!
//! - resource: `<schema>.<table>/<key values in key order, joined with ",">`, or the table's
//!   template from the mapping file (`inventory/{sku}`), so that existing spans' names match;
//! - version: the new row's value of the version column (`--cdc-version-column`, default
//!   `version`) when the table has one, else the commit position (`commit:<position>`,
//!   compared only with other change-stream versions);
//! - action: insert → `create`, update → `update`, delete → `delete`;
//! - request id: the transaction's `toctou.request_id` message, when it sent one; a change
//!   without one is a write by another request;
//! - actor: the transaction (`txid:<id>`), so that a finding names the writer even when it is
//!   no instrumented service at all;
//! - time: the commit time.

use serde::Deserialize;
use std::collections::HashMap;
use thiserror::Error;
use toctou_schema::{AuditAction, AuditEvent};

/// The prefix of the logical decoding message that names a transaction's request:
/// `SELECT pg_logical_emit_message(true, 'toctou.request_id', '<id>')` inside it.
pub const REQUEST_ID_PREFIX: &str = "toctou.request_id";

/// What a row change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn action(self) -> AuditAction {
        match self {
            Op::Insert => AuditAction::Create,
            Op::Update => AuditAction::Update,
            Op::Delete => AuditAction::Delete,
        }
    }
}

/// One committed row change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowChange {
    pub op: Op,
    /// The table's schema (MySQL: its database).
    pub schema: String,
    pub table: String,
    /// The primary key (replica identity) columns and their text values, in key order.
    pub key: Vec<(String, String)>,
    /// The new row's value of the version column, when the table has one (not on deletes).
    pub row_version: Option<String>,
    /// The transaction's commit position in the stream, ordered (PostgreSQL: the LSN).
    pub position: u64,
    /// The change's place in its transaction; with the position, its identity in the stream.
    pub index: u32,
    /// The transaction id.
    pub tx: String,
    /// The transaction's `toctou.request_id` message.
    pub request_id: Option<String>,
    pub commit_time_ns: u64,
    /// The new row's columns with a value, as text (the old row's for a delete), when the
    /// reader was asked for row images (inference matches a write to its change by them,
    /// issue 26); empty otherwise.
    pub columns: Vec<(String, String)>,
}

impl RowChange {
    /// `schema.table`.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The row's name without a mapping template: `<schema>.<table>/<key values in key
    /// order, joined with ",">`.
    pub fn default_name(&self) -> String {
        let mut name = String::with_capacity(self.schema.len() + self.table.len() + 24);
        name.push_str(&self.schema);
        name.push('.');
        name.push_str(&self.table);
        name.push('/');
        for (i, (_, value)) in self.key.iter().enumerate() {
            if i > 0 {
                name.push(',');
            }
            name.push_str(value);
        }
        name
    }
}

/// Where the mapping file is wrong.
#[derive(Debug, Error)]
pub enum MappingError {
    #[error("reading the CDC mapping file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CDC mapping file {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("CDC mapping file {path}: table {table:?}: {problem}")]
    Template {
        path: String,
        table: String,
        problem: String,
    },
}

/// The mapping file: per table (`schema.table`), a resource template naming primary key
/// columns in braces, for example
///
/// ```yaml
/// tables:
///   public.inventory: inventory/{sku}
///   shop.order_lines: orders/{order_id}/lines/{line}
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    #[serde(default)]
    tables: HashMap<String, String>,
}

/// A resource template, parsed: literal text and key column names in turn.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Column(String),
}

/// How row changes become audit records.
#[derive(Clone, Debug)]
pub struct Mapping {
    version_column: String,
    templates: HashMap<String, Vec<Part>>,
    service: String,
}

/// The version column when `--cdc-version-column` is not given.
pub const DEFAULT_VERSION_COLUMN: &str = "version";

impl Mapping {
    /// The default mapping: `schema.table/key` resources and the `version` column.
    /// `service` names the source in the records (`postgres`, or Debezium's server name).
    pub fn new(service: impl Into<String>) -> Mapping {
        Mapping {
            version_column: DEFAULT_VERSION_COLUMN.into(),
            templates: HashMap::new(),
            service: service.into(),
        }
    }

    pub fn with_version_column(mut self, column: impl Into<String>) -> Mapping {
        self.version_column = column.into();
        self
    }

    pub fn version_column(&self) -> &str {
        &self.version_column
    }

    /// Adds the templates of a mapping file.
    pub fn with_file(mut self, path: &str) -> Result<Mapping, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: path.into(),
            source,
        })?;
        self.templates = parse_file(path, &text)?;
        Ok(self)
    }

    /// The audit record of `change`.
    pub fn audit(&self, change: &RowChange) -> AuditEvent {
        AuditEvent {
            action: change.op.action(),
            resource: self.resource(change),
            version: Some(
                change
                    .row_version
                    .clone()
                    .unwrap_or_else(|| toctou_schema::commit_position_version(change.position)),
            ),
            request_id: change.request_id.clone(),
            actor: Some(format!("txid:{}", change.tx)),
            time_ns: change.commit_time_ns,
            service: self.service.clone(),
            source_id: Some(format!(
                "{}:{}:{}",
                self.service, change.position, change.index
            )),
            trace_id: Default::default(),
            span_id: Default::default(),
        }
    }

    /// The key columns the mapping file's template names for `schema.table`, in template
    /// order: how records without a key (Debezium Server's HTTP sink) find theirs.
    pub fn key_columns(&self, schema: &str, table: &str) -> Option<Vec<String>> {
        let parts = self.templates.get(&format!("{schema}.{table}"))?;
        Some(
            parts
                .iter()
                .filter_map(|p| match p {
                    Part::Column(c) => Some(c.clone()),
                    Part::Text(_) => None,
                })
                .collect(),
        )
    }

    /// The resource name of `change`: its table's template, or `schema.table/k1,k2`. A
    /// template naming a column the key lacks falls back to the default name rather than
    /// inventing a value (the file is checked for this at load only as far as it can be:
    /// the key's columns are known when the first change arrives).
    pub fn resource(&self, change: &RowChange) -> String {
        if !self.templates.is_empty() {
            let table = format!("{}.{}", change.schema, change.table);
            if let Some(parts) = self.templates.get(&table) {
                if let Some(name) = render(parts, &change.key) {
                    return name;
                }
            }
        }
        change.default_name()
    }
}

fn render(parts: &[Part], key: &[(String, String)]) -> Option<String> {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Column(c) => out.push_str(&key.iter().find(|(k, _)| k == c)?.1),
        }
    }
    Some(out)
}

fn parse_file(path: &str, text: &str) -> Result<HashMap<String, Vec<Part>>, MappingError> {
    let file: MappingFile = serde_yaml::from_str(text).map_err(|source| MappingError::Parse {
        path: path.into(),
        source,
    })?;
    file.tables
        .into_iter()
        .map(|(table, template)| {
            let problem = |problem: &str| MappingError::Template {
                path: path.into(),
                table: table.clone(),
                problem: problem.into(),
            };
            if table.split('.').count() != 2 {
                return Err(problem("name tables as schema.table"));
            }
            let parts = parse_template(&template).map_err(|p| problem(&p))?;
            Ok((table, parts))
        })
        .collect()
}

fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if rest[..open].contains('}') {
            return Err(format!("unopened '}}' in {template:?}"));
        }
        if open > 0 {
            parts.push(Part::Text(rest[..open].into()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
        let column = &rest[open + 1..open + close];
        if column.is_empty() || column.contains('{') {
            return Err(format!("empty or nested column name in {template:?}"));
        }
        parts.push(Part::Column(column.into()));
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unopened '}}' in {template:?}"));
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.into()));
    }
    if !parts.iter().any(|p| matches!(p, Part::Column(_))) {
        return Err(format!(
            "{template:?} names no key column: every row would be one resource"
        ));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(op: Op, key: &[(&str, &str)], row_version: Option<&str>) -> RowChange {
        RowChange {
            columns: Vec::new(),
            op,
            schema: "public".into(),
            table: "inventory".into(),
            key: key
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            row_version: row_version.map(Into::into),
            position: 0x1516FE0,
            index: 3,
            tx: "728".into(),
            request_id: Some("req-42".into()),
            commit_time_ns: 946_684_800_000_001_000,
        }
    }

    #[test]
    fn the_default_mapping() {
        let m = Mapping::new("postgres");
        let a = m.audit(&change(Op::Update, &[("sku", "sku-1")], Some("7")));
        assert_eq!(a.action, AuditAction::Update);
        assert_eq!(a.resource, "public.inventory/sku-1");
        assert_eq!(a.version.as_deref(), Some("7"));
        assert_eq!(a.request_id.as_deref(), Some("req-42"));
        assert_eq!(a.actor.as_deref(), Some("txid:728"));
        assert_eq!(a.time_ns, 946_684_800_000_001_000);
        assert_eq!(a.service, "postgres");
        assert_eq!(a.source_id.as_deref(), Some("postgres:22114272:3"));
        // No version column: the commit position.
        let a = m.audit(&change(Op::Delete, &[("a", "1"), ("b", "x,y")], None));
        assert_eq!(a.action, AuditAction::Delete);
        assert_eq!(a.resource, "public.inventory/1,x,y");
        assert_eq!(a.version.as_deref(), Some("commit:22114272"));
        let v = toctou_schema::Version(a.version.as_deref().unwrap());
        assert_eq!(v.as_int(), None, "never an application version");
        assert!(v
            .partial_order(&toctou_schema::Version("commit:22114273"))
            .is_some_and(|o| o.is_lt()));
        assert_eq!(v.partial_order(&toctou_schema::Version("22114273")), None);
        assert_eq!(Op::Insert.action(), AuditAction::Create);
    }

    #[test]
    fn templates_rename_tables() {
        let mut m = Mapping::new("postgres");
        m.templates = parse_file(
            "m.yaml",
            "tables:\n  public.inventory: inventory/{sku}\n  public.lines: o/{order}/l/{line}\n",
        )
        .unwrap();
        assert_eq!(
            m.resource(&change(Op::Insert, &[("sku", "sku-1")], None)),
            "inventory/sku-1"
        );
        let mut lines = change(Op::Insert, &[("line", "2"), ("order", "9")], None);
        lines.table = "lines".into();
        assert_eq!(m.resource(&lines), "o/9/l/2");
        // A template naming a column the key lacks: the default name, not a guess.
        assert_eq!(
            m.resource(&change(Op::Insert, &[("id", "5")], None)),
            "public.inventory/5"
        );
    }

    #[test]
    fn bad_mapping_files_say_what_is_wrong() {
        for (text, needle) in [
            ("tables:\n  inventory: inv/{sku}\n", "schema.table"),
            ("tables:\n  public.inventory: inv/{sku\n", "unclosed"),
            ("tables:\n  public.inventory: inv/{}\n", "empty"),
            (
                "tables:\n  public.inventory: inventory\n",
                "names no key column",
            ),
            ("tables:\n  public.inventory: inv}/{sku}\n", "unopened"),
            ("table:\n  public.inventory: inv/{sku}\n", "unknown field"),
        ] {
            let err = parse_file("m.yaml", text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.starts_with("CDC mapping file m.yaml"), "{err}");
        }
        let err = Mapping::new("p")
            .with_file("/nonexistent/m.yaml")
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/m.yaml"), "{err}");
    }
}
