//! Debezium change events (JSON, with or without the `schema`/`payload` envelope) as row
//! changes: the PostgreSQL and MySQL connectors' `source` blocks, the Kafka record key for
//! the primary key, and what is not a write (snapshot reads, tombstones, truncates,
//! heartbeats, schema changes, transaction metadata), each said by a [`Skip`] reason.
//!
//! A change event's Kafka key holds the primary key's columns in key order
//! (`{"id": 1001}`, or with its envelope). Without a key (Debezium Server's HTTP sink posts
//! the value only), the key columns are those the mapping file names for the table, else a
//! column named `id`.

use crate::change::{Mapping, Op, RowChange};
use crate::transactions::Assembler;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::time::{Duration, Instant};
use thiserror::Error;
use toctou_schema::AuditEvent;

/// What one Debezium record is.
#[derive(Debug, PartialEq)]
pub enum Record {
    Change(RowChange),
    /// A logical decoding message (PostgreSQL connector, `op: "m"`): how a transaction
    /// names its request.
    Message {
        tx: Option<String>,
        prefix: String,
        content: Vec<u8>,
    },
    /// A transaction-metadata END record (`provide.transaction.metadata`): how many events
    /// the transaction had, so that its changes need not wait for a message any longer.
    TransactionEnd {
        tx: String,
        events: u64,
    },
    Skip(Skip),
}

/// Records that are not row writes, by reason (counted as `toctou_cdc_skipped_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// A null value: Kafka compaction's delete marker after a delete event.
    Tombstone,
    /// `op: "r"`: a snapshot read, not a write.
    Snapshot,
    /// `op: "t"`: no row changes to report.
    Truncate,
    /// Heartbeat and transaction-metadata (BEGIN/END) records.
    Heartbeat,
    Transaction,
    /// DDL: the schema-change topic's records.
    SchemaChange,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Tombstone => "tombstone",
            Skip::Snapshot => "snapshot",
            Skip::Truncate => "truncate",
            Skip::Heartbeat => "heartbeat",
            Skip::Transaction => "transaction",
            Skip::SchemaChange => "schema_change",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    Malformed,
    UnknownOp,
    NoKey,
}

#[derive(Debug, Error, PartialEq)]
pub enum DebeziumError {
    #[error("malformed Debezium record: {0}")]
    Malformed(String),
    #[error("unknown Debezium op {0:?}")]
    UnknownOp(String),
    #[error("Debezium record of {table} has no key column value ({what})")]
    NoKey { table: String, what: String },
}

/// A change event's payload, the fields toctou reads; or, with Kafka Connect's schema
/// envelope, `schema` (skipped unread) and `payload` (read in a second step, from its bytes).
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    op: Option<Text<'a>>,
    // The rows' columns stay unparsed JSON until one is read (the key's, the version): a
    // parsed map of every column cost an allocation per column.
    #[serde(borrow)]
    before: Option<Columns<'a>>,
    #[serde(borrow)]
    after: Option<Columns<'a>>,
    #[serde(borrow)]
    source: Option<Source<'a>>,
    #[serde(borrow)]
    transaction: Option<Transaction<'a>>,
    message: Option<LogicalMessage>,
    ts_ms: Option<u64>,
    // Transaction metadata records carry these instead of `op`.
    #[serde(borrow)]
    status: Option<Text<'a>>,
    #[serde(borrow)]
    id: Option<Text<'a>>,
    event_count: Option<u64>,
    // Schema-change records.
    #[serde(rename = "ddl")]
    ddl: Option<IgnoredAny>,
    #[serde(rename = "tableChanges")]
    table_changes: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Source<'a> {
    #[serde(borrow)]
    db: Option<Text<'a>>,
    #[serde(borrow)]
    schema: Option<Text<'a>>,
    #[serde(borrow)]
    table: Option<Text<'a>>,
    ts_ms: Option<u64>,
    ts_us: Option<u64>,
    ts_ns: Option<u64>,
    #[serde(borrow)]
    snapshot: Option<&'a RawValue>,
    // PostgreSQL.
    #[serde(rename = "txId", borrow)]
    tx_id: Option<&'a RawValue>,
    lsn: Option<u64>,
    // MySQL.
    #[serde(borrow)]
    file: Option<Text<'a>>,
    pos: Option<u64>,
    row: Option<u64>,
    #[serde(borrow)]
    gtid: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Transaction<'a> {
    #[serde(borrow)]
    id: Option<Text<'a>>,
    data_collection_order: Option<u64>,
    total_order: Option<u64>,
}

/// A JSON string, borrowed from the record unless it has escapes.
#[derive(Clone, Debug, PartialEq)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(Visit(std::marker::PhantomData))
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A row: its columns in document order, each value unparsed.
type Columns<'a> = Ordered<Text<'a>, &'a RawValue>;

impl<'a> Columns<'a> {
    fn get(&self, column: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(c, _)| **c == *column).map(|(_, v)| *v)
    }
}

/// The Kafka Connect schema of an envelope (`value.converter.schemas.enable`, Kafka
/// Connect's default): read only for the row images, to tell a text column from the other
/// types Debezium renders as JSON strings (decimals as base64 bytes, times as ISO strings).
#[derive(Deserialize)]
struct ConnectSchema<'a> {
    #[serde(borrow, default)]
    fields: Vec<ConnectField<'a>>,
}

#[derive(Deserialize)]
struct ConnectField<'a> {
    #[serde(borrow)]
    field: Option<Text<'a>>,
    #[serde(rename = "type", borrow)]
    kind: Option<Text<'a>>,
    /// The logical type (`io.debezium.time.ZonedTimestamp`, ...), if any.
    #[serde(borrow)]
    name: Option<Text<'a>>,
    #[serde(borrow, default)]
    fields: Vec<ConnectField<'a>>,
}

/// The columns of a row image whose JSON strings are text as a driver renders it: of type
/// `string` with no logical type, or a UUID, JSON or enum.
fn text_columns<'a>(schema: &ConnectSchema<'a>, row: &str) -> Vec<Text<'a>> {
    let Some(image) = schema
        .fields
        .iter()
        .find(|f| f.field.as_deref() == Some(row))
    else {
        return Vec::new();
    };
    image
        .fields
        .iter()
        .filter(|c| {
            c.kind.as_deref() == Some("string")
                && c.name.as_deref().is_none_or(|n| {
                    matches!(
                        n,
                        "io.debezium.data.Uuid" | "io.debezium.data.Json" | "io.debezium.data.Enum"
                    )
                })
        })
        .filter_map(|c| c.field.clone())
        .collect()
}

/// A row image as (column, value) text, for inference's matching of writes to their changes:
/// numbers and booleans as written; strings of the `text` columns when the envelope's schema
/// says which (`None`: no schema, every string, as with the connector's
/// `decimal.handling.mode=string` that deploy/debezium sets: precise decimals would be base64
/// bytes no driver renders); nulls, structs and arrays left out (a column left out is not
/// held against a write).
fn image(row: &Columns<'_>, text: Option<&[Text<'_>]>) -> Vec<(String, String)> {
    row.0
        .iter()
        .filter(|(column, value)| match value.get().as_bytes().first() {
            Some(b'"') => text.is_none_or(|t| t.contains(column)),
            Some(b'-' | b'0'..=b'9' | b't' | b'f') => true,
            _ => false,
        })
        .map(|(column, value)| (column.to_string(), raw_text(value)))
        .collect()
}

#[derive(Deserialize)]
struct LogicalMessage {
    prefix: String,
    content: Option<String>,
}

/// The key columns of tables whose records come without a Kafka key, from the mapping file.
pub type KeyColumns<'a> = &'a dyn Fn(&str, &str) -> Option<Vec<String>>;

/// One Debezium record: its Kafka key (absent over HTTP) and value (absent: a tombstone).
/// `version_column` is the row column holding its version (`--cdc-version-column`).
pub fn parse(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    version_column: &str,
    key_columns: KeyColumns<'_>,
) -> Result<Record, DebeziumError> {
    parse_record(key, value, version_column, key_columns, false)
}

/// [`parse`], with the change's row image when `row_images` (see [`image`]).
fn parse_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    version_column: &str,
    key_columns: KeyColumns<'_>,
    row_images: bool,
) -> Result<Record, DebeziumError> {
    let Some(value) = value.filter(|v| !v.is_empty() && v.trim_ascii() != b"null") else {
        return Ok(Record::Skip(Skip::Tombstone));
    };
    let mut p: Payload = serde_json::from_slice(value).map_err(|e| malformed(&e))?;
    let mut schema_of_payload = None;
    if let (Some(schema), Some(payload)) = (p.schema, p.payload) {
        if payload.get() == "null" {
            return Ok(Record::Skip(Skip::Tombstone));
        }
        schema_of_payload = Some(schema);
        p = serde_json::from_str(payload.get()).map_err(|e| malformed(&e))?;
    }
    let Some(op) = p.op.as_deref() else {
        if let Some(status) = p.status.as_deref() {
            return Ok(match (status, &p.id, p.event_count) {
                ("END", Some(id), Some(events)) => Record::TransactionEnd {
                    tx: transaction_tx(id).to_string(),
                    events,
                },
                _ => Record::Skip(Skip::Transaction),
            });
        }
        if p.ddl.is_some() || p.table_changes.is_some() {
            return Ok(Record::Skip(Skip::SchemaChange));
        }
        // Heartbeats carry only a timestamp (and the key names the server).
        if p.ts_ms.is_some() && p.source.is_none() {
            return Ok(Record::Skip(Skip::Heartbeat));
        }
        return Err(DebeziumError::Malformed(
            "no \"op\": not a change event".into(),
        ));
    };
    let op = match op {
        "c" => Op::Insert,
        "u" => Op::Update,
        "d" => Op::Delete,
        "r" => return Ok(Record::Skip(Skip::Snapshot)),
        "t" => return Ok(Record::Skip(Skip::Truncate)),
        "m" => {
            let m = p
                .message
                .ok_or_else(|| DebeziumError::Malformed("op \"m\" without \"message\"".into()))?;
            let content = match m.content {
                Some(c) => base64_decode(&c).ok_or_else(|| {
                    DebeziumError::Malformed("message content is not base64".into())
                })?,
                None => Vec::new(),
            };
            return Ok(Record::Message {
                tx: p.source.as_ref().and_then(tx_id),
                prefix: m.prefix,
                content,
            });
        }
        other => return Err(DebeziumError::UnknownOp(other.into())),
    };
    let source = p
        .source
        .ok_or_else(|| DebeziumError::Malformed("no \"source\" block".into()))?;
    if source.snapshot.is_some_and(|s| {
        matches!(
            s.get(),
            "true"
                | "\"true\""
                | "\"last\""
                | "\"first\""
                | "\"first_in_data_collection\""
                | "\"last_in_data_collection\""
        )
    }) {
        return Ok(Record::Skip(Skip::Snapshot));
    }
    let schema = source
        .schema
        .as_deref()
        .or(source.db.as_deref())
        .ok_or_else(|| DebeziumError::Malformed("source has neither schema nor db".into()))?
        .to_string();
    let table = source
        .table
        .as_deref()
        .ok_or_else(|| DebeziumError::Malformed("source has no table".into()))?
        .to_string();
    let row = match op {
        Op::Delete => p.before.as_ref(),
        _ => p.after.as_ref(),
    }
    .ok_or_else(|| {
        DebeziumError::Malformed(format!(
            "op {:?} without its {} row",
            p.op.as_deref().unwrap_or_default(),
            if op == Op::Delete { "before" } else { "after" }
        ))
    })?;
    let key = match key.filter(|k| !k.is_empty()) {
        Some(k) => key_from_record(k)?,
        None => {
            let columns = key_columns(&schema, &table).unwrap_or_else(|| vec!["id".into()]);
            columns
                .into_iter()
                .map(|c| {
                    let v = row
                        .get(&c)
                        .map(raw_text)
                        .ok_or_else(|| DebeziumError::NoKey {
                            table: format!("{schema}.{table}"),
                            what: format!(
                                "column {c:?} not in the row; name the key in the mapping file"
                            ),
                        })?;
                    Ok((c, v))
                })
                .collect::<Result<_, _>>()?
        }
    };
    if key.is_empty() {
        return Err(DebeziumError::NoKey {
            table: format!("{schema}.{table}"),
            what: "the record key has no columns".into(),
        });
    }
    let row_version = match op {
        Op::Delete => None,
        _ => row
            .get(version_column)
            .filter(|v| v.get() != "null")
            .map(raw_text),
    };
    let position = position(&source).unwrap_or(0);
    let index = p
        .transaction
        .as_ref()
        .and_then(|t| t.total_order.or(t.data_collection_order))
        .or(source.row)
        .unwrap_or(0) as u32;
    // The source's own id first: a logical decoding message carries only that one.
    let tx = tx_id(&source)
        .or_else(|| {
            p.transaction
                .as_ref()
                .and_then(|t| t.id.as_deref())
                .map(|id| transaction_tx(id).to_string())
        })
        .unwrap_or_else(|| position.to_string());
    let commit_time_ns = source
        .ts_ns
        .or(source.ts_us.map(|us| us.saturating_mul(1_000)))
        .or(source.ts_ms.map(|ms| ms.saturating_mul(1_000_000)))
        .unwrap_or(0);
    let columns = if row_images {
        let text = schema_of_payload
            .and_then(|s| serde_json::from_str::<ConnectSchema>(s.get()).ok())
            .map(|s| text_columns(&s, if op == Op::Delete { "before" } else { "after" }));
        image(row, text.as_deref())
    } else {
        Vec::new()
    };
    Ok(Record::Change(RowChange {
        columns,
        op,
        schema,
        table,
        key,
        row_version,
        position,
        index,
        tx,
        request_id: None,
        commit_time_ns,
    }))
}

/// What one record came to in a [`Decoder`].
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// A row change, or a record that names a transaction's request or closes it: taken
    /// (its audit record may still be held, see [`crate::transactions`]).
    Taken,
    Skipped(Skip),
    Rejected(DebeziumError),
}

/// A stream of Debezium records to audit records: parsing, the transactions' request ids,
/// and the mapping. `T` tags each record with where it came from (a Kafka offset, say).
pub struct Decoder<T> {
    mapping: Mapping,
    transactions: Assembler<T>,
    /// Keep each change's row image (see [`Decoder::keep_row_images`]).
    row_images: bool,
    /// The changes behind the audit records handed out, in their order, when kept.
    changes: Vec<RowChange>,
}

impl<T> Decoder<T> {
    /// `hold` as [`Assembler::new`] takes it: zero for records in stream order.
    pub fn new(mapping: Mapping, hold: Duration, max_held: usize) -> Self {
        Decoder {
            mapping,
            transactions: Assembler::new(hold, max_held),
            row_images: false,
            changes: Vec::new(),
        }
    }

    /// Keeps each change with its row image, for inference: every audit record handed out
    /// has its change in [`Decoder::take_changes`], in the same order.
    pub fn keep_row_images(mut self) -> Self {
        self.row_images = true;
        self
    }

    /// The changes behind the audit records handed out since the last call, in their order
    /// (none unless [`Decoder::keep_row_images`]).
    pub fn take_changes(&mut self) -> Vec<RowChange> {
        std::mem::take(&mut self.changes)
    }

    /// Takes one record; the audit records ready to go are appended to `out`.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        tag: T,
        now: Instant,
        out: &mut Vec<(AuditEvent, T)>,
    ) -> Outcome {
        let mapping = &self.mapping;
        let key_columns = |schema: &str, table: &str| mapping.key_columns(schema, table);
        let record = match parse_record(
            key,
            value,
            mapping.version_column(),
            &key_columns,
            self.row_images,
        ) {
            Ok(Record::Skip(skip)) => return Outcome::Skipped(skip),
            Ok(record) => record,
            Err(e) => return Outcome::Rejected(e),
        };
        let mut changes = Vec::new();
        self.transactions.push(record, tag, now, &mut changes);
        self.map(changes, out);
        Outcome::Taken
    }

    /// Releases what has been held for too long.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<(AuditEvent, T)>) {
        let mut changes = Vec::new();
        self.transactions.expire(now, &mut changes);
        self.map(changes, out);
    }

    pub fn transactions(&self) -> &Assembler<T> {
        &self.transactions
    }

    fn map(&mut self, changes: Vec<(RowChange, T)>, out: &mut Vec<(AuditEvent, T)>) {
        for (c, tag) in changes {
            out.push((self.mapping.audit(&c), tag));
            if self.row_images {
                self.changes.push(c);
            }
        }
    }
}

impl DebeziumError {
    /// The error's kind, a label value of the rejection counts.
    pub fn kind(&self) -> RejectKind {
        match self {
            DebeziumError::Malformed(_) => RejectKind::Malformed,
            DebeziumError::UnknownOp(_) => RejectKind::UnknownOp,
            DebeziumError::NoKey { .. } => RejectKind::NoKey,
        }
    }
}

fn malformed(e: &serde_json::Error) -> DebeziumError {
    DebeziumError::Malformed(e.to_string())
}

/// The key columns and values of a Kafka record key, in its order (a `serde_json::Map` would
/// sort them).
fn key_from_record(key: &[u8]) -> Result<Vec<(String, String)>, DebeziumError> {
    let not_an_object = |e: serde_json::Error| {
        DebeziumError::Malformed(format!("a record key is a JSON object of key columns: {e}"))
    };
    let entries: Ordered<String, Box<RawValue>> =
        serde_json::from_slice(key).map_err(not_an_object)?;
    let payload = entries.0.iter().find(|(k, _)| k == "payload");
    let entries: Ordered<String, Value> = match payload {
        Some((_, payload)) if entries.0.iter().any(|(k, _)| k == "schema") => {
            serde_json::from_str(payload.get()).map_err(not_an_object)?
        }
        _ => serde_json::from_slice(key).map_err(not_an_object)?,
    };
    Ok(entries.0.into_iter().map(|(k, v)| (k, text(&v))).collect())
}

/// A JSON object's entries in document order.
struct Ordered<K, V>(Vec<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Ordered<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<K, V> {
            type Value = Ordered<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered<K, V>, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// A column value as text: strings as they are, anything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// [`text`] of an unparsed value: a string unescaped, `null` empty, anything else as written.
fn raw_text(v: &RawValue) -> String {
    let raw = v.get();
    match raw.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_string()),
        _ if raw == "null" => String::new(),
        _ => raw.to_string(),
    }
}

fn tx_id(source: &Source) -> Option<String> {
    match source.tx_id {
        Some(v) if v.get() != "null" => Some(raw_text(v)),
        _ => None,
    }
    .or_else(|| source.gtid.as_deref().map(str::to_string))
}

/// The transaction id in a transaction-metadata id: PostgreSQL's are `<txId>:<lsn>`, the
/// `txId` of the source blocks; others (MySQL's GTIDs) are taken whole.
fn transaction_tx(id: &str) -> &str {
    match id.split_once(':') {
        Some((tx, lsn))
            if tx.bytes().all(|b| b.is_ascii_digit())
                && lsn.bytes().all(|b| b.is_ascii_digit()) =>
        {
            tx
        }
        _ => id,
    }
}

/// The change's place in the stream as an ordered integer: PostgreSQL's LSN; MySQL's binlog
/// file number in the high 32 bits and the position in the low.
fn position(source: &Source) -> Option<u64> {
    if let Some(lsn) = source.lsn {
        return Some(lsn);
    }
    let file = source.file.as_deref()?;
    let number: u64 = file.rsplit('.').next()?.parse().ok()?;
    Some((number << 32) | (source.pos? & 0xFFFF_FFFF))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_keys(_: &str, _: &str) -> Option<Vec<String>> {
        None
    }

    fn parse_json(key: Option<Value>, value: Value) -> Result<Record, DebeziumError> {
        let key = key.map(|k| k.to_string().into_bytes());
        let value = value.to_string().into_bytes();
        parse(key.as_deref(), Some(&value), "version", &no_keys)
    }

    /// A PostgreSQL connector update, as Debezium 3 writes it with the JSON converter's
    /// schemas off.
    fn pg_update() -> Value {
        json!({
            "before": null,
            "after": {"sku": "sku-1", "stock": 4, "version": 8},
            "source": {
                "version": "3.6.1.Final", "connector": "postgresql", "name": "shop",
                "ts_ms": 1733580000123_u64, "ts_us": 1733580000123456_u64,
                "ts_ns": 1733580000123456000_u64, "snapshot": "false", "db": "shop",
                "sequence": "[\"22114272\",\"22114400\"]", "schema": "public",
                "table": "inventory", "txId": 728, "lsn": 22114400, "xmin": null
            },
            "transaction": null,
            "op": "u",
            "ts_ms": 1733580000200_u64
        })
    }

    #[test]
    fn a_postgres_update_with_its_key() {
        let Record::Change(c) = parse_json(Some(json!({"sku": "sku-1"})), pg_update()).unwrap()
        else {
            panic!("a change")
        };
        assert_eq!(c.op, Op::Update);
        assert_eq!(
            (c.schema.as_str(), c.table.as_str()),
            ("public", "inventory")
        );
        assert_eq!(c.key, [("sku".to_string(), "sku-1".to_string())]);
        assert_eq!(c.row_version.as_deref(), Some("8"));
        assert_eq!(c.position, 22114400);
        assert_eq!(c.tx, "728");
        assert_eq!(c.commit_time_ns, 1733580000123456000);
        assert_eq!(c.request_id, None);
    }

    #[test]
    fn the_schema_envelope_and_a_key_in_key_order() {
        let mut value = pg_update();
        value["op"] = json!("d");
        value["before"] = json!({"region": "eu", "id": 7, "stock": 1});
        value["after"] = Value::Null;
        // Key order is the key's, not sorted: (region, id) here.
        let key = r#"{"schema": {"type": "struct"}, "payload": {"region": "eu", "id": 7}}"#;
        let value = json!({"schema": {"type": "struct"}, "payload": value});
        let value = value.to_string().into_bytes();
        let Record::Change(c) =
            parse(Some(key.as_bytes()), Some(&value), "version", &no_keys).unwrap()
        else {
            panic!("a change")
        };
        assert_eq!(c.op, Op::Delete);
        assert_eq!(c.key[0], ("region".to_string(), "eu".to_string()));
        assert_eq!(c.key[1], ("id".to_string(), "7".to_string()));
        assert_eq!(c.row_version, None);
    }

    /// An insert as the PostgreSQL connector writes it with Kafka Connect's JSON converter
    /// defaults (schemas on, decimals precise).
    fn users_insert() -> Value {
        let row = |f: &[(&str, &str, Option<&str>)]| -> Value {
            f.iter()
                .map(|(field, kind, name)| {
                    let mut v = json!({"type": kind, "optional": true, "field": field});
                    if let Some(n) = name {
                        v["name"] = json!(n);
                    }
                    v
                })
                .collect()
        };
        let columns = row(&[
            ("id", "int32", None),
            ("email", "string", None),
            (
                "credit",
                "bytes",
                Some("org.apache.kafka.connect.data.Decimal"),
            ),
            ("created", "string", Some("io.debezium.time.ZonedTimestamp")),
            ("token", "string", Some("io.debezium.data.Uuid")),
            ("verified", "boolean", None),
            ("nickname", "string", None),
        ]);
        let mut payload = pg_update();
        payload["op"] = json!("c");
        payload["source"]["table"] = json!("users");
        payload["after"] = json!({
            "id": 17, "email": "a@example.com", "credit": "A+g=",
            "created": "2026-12-07T23:01:02.123456Z",
            "token": "0b7e7dd4-9f4c-4bb4-9a57-1f43f1b8e0a5", "verified": true,
            "nickname": null
        });
        json!({
            "schema": {"type": "struct", "name": "shop.public.users.Envelope", "fields": [
                {"type": "struct", "field": "before", "optional": true, "fields": columns},
                {"type": "struct", "field": "after", "optional": true, "fields": columns},
                {"type": "string", "field": "op"}
            ]},
            "payload": payload
        })
    }

    #[test]
    fn row_images_keep_what_compares_as_text() {
        let value = users_insert().to_string().into_bytes();
        let keys = |_: &str, _: &str| Some(vec!["id".to_string()]);
        let image = |v: &[u8]| {
            let Record::Change(mut c) =
                parse_record(None, Some(v), "version", &keys, true).unwrap()
            else {
                panic!("a change")
            };
            // In document order; `json!` sorted this one's.
            c.columns.sort();
            c.columns
        };
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .collect()
        };
        // Base64 decimals and ISO times are not what a driver renders: left out, as nulls.
        assert_eq!(
            image(&value),
            pairs(&[
                ("email", "a@example.com"),
                ("id", "17"),
                ("token", "0b7e7dd4-9f4c-4bb4-9a57-1f43f1b8e0a5"),
                ("verified", "true"),
            ])
        );
        // Without the schema, every string (decimals as strings, the connector's setting).
        let mut bare = users_insert()["payload"].clone();
        bare["after"]["credit"] = json!("10.00");
        assert_eq!(
            image(&bare.to_string().into_bytes()),
            pairs(&[
                ("created", "2026-12-07T23:01:02.123456Z"),
                ("credit", "10.00"),
                ("email", "a@example.com"),
                ("id", "17"),
                ("token", "0b7e7dd4-9f4c-4bb4-9a57-1f43f1b8e0a5"),
                ("verified", "true"),
            ])
        );
        // Not asked for: none.
        let Record::Change(c) = parse(None, Some(&value), "version", &keys).unwrap() else {
            panic!("a change")
        };
        assert_eq!(c.columns, []);
    }

    #[test]
    fn mysql_positions_and_no_key_over_http() {
        let value = json!({
            "before": null, "after": {"id": 1004, "email": "a@b.c"},
            "source": {"version": "3.6.1.Final", "connector": "mysql", "name": "dbserver1",
                "ts_ms": 1733580000000_u64, "snapshot": "false", "db": "inventory",
                "table": "customers", "server_id": 223344, "gtid": null,
                "file": "mysql-bin.000003", "pos": 154, "row": 0, "thread": 7},
            "op": "c", "ts_ms": 1733580000100_u64
        });
        let Record::Change(c) = parse_json(None, value).unwrap() else {
            panic!("a change")
        };
        assert_eq!(c.schema, "inventory");
        assert_eq!(c.key, [("id".to_string(), "1004".to_string())]);
        assert_eq!(c.position, (3 << 32) | 154);
        assert_eq!(c.commit_time_ns, 1_733_580_000_000_000_000);
        // Without a key and without `id`, the mapping file must name the key.
        let value = json!({"after": {"sku": "x"}, "op": "c",
            "source": {"db": "shop", "table": "stock", "ts_ms": 1}});
        let err = parse_json(None, value.clone()).unwrap_err();
        assert!(err.to_string().contains("mapping file"), "{err}");
        let keys = |_: &str, t: &str| (t == "stock").then(|| vec!["sku".to_string()]);
        let bytes = value.to_string().into_bytes();
        let Record::Change(c) = parse(None, Some(&bytes), "version", &keys).unwrap() else {
            panic!("a change")
        };
        assert_eq!(c.key, [("sku".to_string(), "x".to_string())]);
    }

    #[test]
    fn what_is_not_a_write_is_skipped_by_reason() {
        assert_eq!(
            parse(None, None, "version", &no_keys).unwrap(),
            Record::Skip(Skip::Tombstone)
        );
        assert_eq!(
            parse(None, Some(b"null"), "version", &no_keys).unwrap(),
            Record::Skip(Skip::Tombstone)
        );
        let mut read = pg_update();
        read["op"] = json!("r");
        assert_eq!(
            parse_json(None, read).unwrap(),
            Record::Skip(Skip::Snapshot)
        );
        let mut truncate = pg_update();
        truncate["op"] = json!("t");
        assert_eq!(
            parse_json(None, truncate).unwrap(),
            Record::Skip(Skip::Truncate)
        );
        assert_eq!(
            parse_json(None, json!({"status": "BEGIN", "id": "571:53195829", "event_count": null, "data_collections": null, "ts_ms": 1})).unwrap(),
            Record::Skip(Skip::Transaction)
        );
        assert_eq!(
            parse_json(None, json!({"status": "END", "id": "571:53195829", "event_count": 3, "data_collections": [], "ts_ms": 1})).unwrap(),
            Record::TransactionEnd { tx: "571".into(), events: 3 },
            "PostgreSQL's metadata ids are <txId>:<lsn>; the txId is what the changes carry"
        );
        assert_eq!(
            parse_json(None, json!({"status": "END", "id": "3e11fa47-71ca-11e1-9e33-c80aa9429562:23", "event_count": 1, "ts_ms": 1})).unwrap(),
            Record::TransactionEnd { tx: "3e11fa47-71ca-11e1-9e33-c80aa9429562:23".into(), events: 1 },
            "a MySQL GTID is the id whole"
        );
        let mut with_metadata = pg_update();
        with_metadata["transaction"] =
            json!({"id": "728:22114400", "total_order": 2, "data_collection_order": 1});
        let Record::Change(c) = parse_json(Some(json!({"sku": "sku-1"})), with_metadata).unwrap()
        else {
            panic!("a change")
        };
        assert_eq!(
            (c.tx.as_str(), c.index),
            ("728", 2),
            "the source's txId, as a message names it"
        );
        assert_eq!(
            parse_json(None, json!({"ts_ms": 1733580000000_u64})).unwrap(),
            Record::Skip(Skip::Heartbeat)
        );
        assert_eq!(
            parse_json(None, json!({"source": {"server": "s"}, "databaseName": "inventory", "ddl": "ALTER TABLE t ADD c int", "tableChanges": []})).unwrap(),
            Record::Skip(Skip::SchemaChange)
        );
    }

    #[test]
    fn logical_decoding_messages_name_their_transaction() {
        let value = json!({
            "op": "m", "ts_ms": 1,
            "source": {"connector": "postgresql", "db": "shop", "schema": "", "table": "",
                "txId": 728, "lsn": 22114300, "ts_ms": 1},
            "message": {"prefix": "toctou.request_id", "content": "cmVxLTQy"}
        });
        assert_eq!(
            parse_json(None, value).unwrap(),
            Record::Message {
                tx: Some("728".into()),
                prefix: "toctou.request_id".into(),
                content: b"req-42".to_vec(),
            }
        );
    }

    #[test]
    fn bad_records_are_errors_that_say_why() {
        for (value, needle) in [
            (b"{".to_vec(), "malformed"),
            (b"[1]".to_vec(), "malformed"),
            (
                json!({"op": "x", "source": {}}).to_string().into_bytes(),
                "unknown Debezium op",
            ),
            (
                json!({"op": "c", "after": {"id": 1}})
                    .to_string()
                    .into_bytes(),
                "no \"source\"",
            ),
            (
                json!({"op": "u", "source": {"db": "d", "table": "t"}})
                    .to_string()
                    .into_bytes(),
                "without its after row",
            ),
            (
                json!({"source": {"db": "d"}}).to_string().into_bytes(),
                "not a change event",
            ),
        ] {
            let err = parse(None, Some(&value), "version", &no_keys)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(needle),
                "{}: {err}",
                String::from_utf8_lossy(&value)
            );
        }
        let err = parse(
            Some(b"[1,2]"),
            Some(pg_update().to_string().as_bytes()),
            "version",
            &no_keys,
        )
        .unwrap_err();
        assert!(err.to_string().contains("record key"), "{err}");
    }
}
