//! PostgreSQL as an audit source: logical decoding through a replication slot with the
//! built-in `pgoutput` plugin, read over plain SQL.
//!
//! Why `pgoutput` and not `wal2json`: it is built into every PostgreSQL since 10, it is what
//! managed services offer, and since 15.20 (and the other minor releases of that date) a role
//! with only the REPLICATION attribute may use no other plugin unless an administrator lists
//! it in `output_plugin_libraries` (its default is `pgoutput, test_decoding`). Logical
//! decoding messages (`pg_logical_emit_message`, how a transaction names its request) need
//! PostgreSQL 14 or later with `pgoutput`.
//!
//! Why SQL (`pg_logical_slot_peek_binary_changes`, then `pg_replication_slot_advance`) and
//! not the streaming replication protocol: the slot's position moves only when toctou says
//! so, after the changes read were correlated and stored. A restart reads again from the
//! last confirmed position: at least once, and the correlator drops what it has already seen
//! by the records' `source_id` (`postgres:<commit LSN>:<index>`). Each read decodes from the
//! confirmed position, so the reader confirms before it reads again.

use crate::change::{Op, RowChange};
use crate::pgoutput::{self, Message, Tuple, Value};
use std::collections::HashMap;
use thiserror::Error;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// Where the slot is and what to read.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: String,
    /// The logical replication slot (created with `pgoutput` when missing).
    pub slot: String,
    /// The publication the slot reads (created `FOR ALL TABLES` when missing).
    pub publication: String,
    /// Changes read at most per call (whole transactions: one larger is read whole).
    pub max_changes: u32,
    /// The column holding a row's version (`--cdc-version-column`).
    pub version_column: String,
    /// Keep each change's row image ([`RowChange::columns`]).
    pub row_images: bool,
}

pub const DEFAULT_SLOT: &str = "toctou";
pub const DEFAULT_PUBLICATION: &str = "toctou";
pub const DEFAULT_MAX_CHANGES: u32 = 10_000;

pub use crate::change::REQUEST_ID_PREFIX;

#[derive(Debug, Error)]
pub enum PostgresError {
    #[error("connecting to PostgreSQL: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("PostgreSQL has wal_level = {0}: logical decoding needs wal_level = logical (postgresql.conf, then a restart)")]
    WalLevel(String),
    #[error("{what}: {source}. {hint}")]
    Privilege {
        what: String,
        hint: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("replication slot {slot:?} uses the {plugin} plugin; toctou reads pgoutput (drop it or name another with --cdc-slot)")]
    SlotPlugin { slot: String, plugin: String },
    #[error("PostgreSQL query ({what}): {source}")]
    Query {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("decoding the slot's changes at {lsn}: {source}")]
    Decode {
        lsn: String,
        #[source]
        source: pgoutput::DecodeError,
    },
    #[error("a change at {lsn} names relation {relation}, which no Relation message described")]
    UnknownRelation { lsn: String, relation: u32 },
}

/// A table as the slot described it, with its key in key order.
#[derive(Debug)]
struct Table {
    schema: String,
    name: String,
    /// (column name, index in the row) of the primary key (else the replica identity).
    key: Vec<(String, usize)>,
    /// Index of the version column in the row.
    version: Option<usize>,
    /// Every column's name, in row order.
    columns: Vec<String>,
}

/// Whole transactions read from the slot and not yet confirmed.
#[derive(Debug, Default)]
pub struct Batch {
    pub changes: Vec<RowChange>,
    /// Where the slot moves to once these are stored ([`PostgresSource::confirm`]); `None`
    /// when nothing was read.
    pub end_lsn: Option<u64>,
    pub transactions: u64,
    /// `TRUNCATE`s: no row changes to report, counted and logged.
    pub truncates: u64,
}

/// How far the slot's confirmed position is behind the server's WAL.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lag {
    pub bytes: u64,
}

/// One slot, read through one connection.
pub struct PostgresSource {
    client: Client,
    config: PostgresConfig,
    tables: HashMap<u32, Table>,
}

impl PostgresSource {
    /// Connects, and creates the publication and the slot when missing (an error names the
    /// privilege when it cannot).
    pub async fn connect(config: PostgresConfig) -> Result<PostgresSource, PostgresError> {
        let (client, connection) = tokio_postgres::connect(&config.url, NoTls)
            .await
            .map_err(PostgresError::Connect)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection closed");
            }
        });
        let source = PostgresSource {
            client,
            config,
            tables: HashMap::new(),
        };
        source.prepare().await?;
        Ok(source)
    }

    async fn prepare(&self) -> Result<(), PostgresError> {
        let query = |what| move |source| PostgresError::Query { what, source };
        let level: String = self
            .client
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(query("SHOW wal_level"))?
            .get(0);
        if level != "logical" {
            return Err(PostgresError::WalLevel(level));
        }
        let c = &self.config;
        let publication = self
            .client
            .query_opt(
                "SELECT 1 FROM pg_publication WHERE pubname = $1",
                &[&c.publication],
            )
            .await
            .map_err(query("reading pg_publication"))?;
        if publication.is_none() {
            let sql = format!(
                "CREATE PUBLICATION {} FOR ALL TABLES",
                quote_ident(&c.publication)
            );
            self.client.batch_execute(&sql).await.map_err(|source| {
                privilege(
                    source,
                    format!("creating the publication ({sql})"),
                    "FOR ALL TABLES needs a superuser: have one run it, or create the publication \
                     FOR TABLE with the tables to watch and name it with --cdc-publication",
                    query("CREATE PUBLICATION"),
                )
            })?;
        }
        let slot = self
            .client
            .query_opt(
                "SELECT plugin FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()",
                &[&c.slot],
            )
            .await
            .map_err(query("reading pg_replication_slots"))?;
        match slot {
            Some(row) => {
                let plugin: String = row.get(0);
                if plugin != "pgoutput" {
                    return Err(PostgresError::SlotPlugin {
                        slot: c.slot.clone(),
                        plugin,
                    });
                }
            }
            None => {
                self.client
                    .query_one(
                        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                        &[&c.slot],
                    )
                    .await
                    .map_err(|source| {
                        privilege(
                            source,
                            format!("creating the replication slot {:?}", c.slot),
                            "a slot needs the REPLICATION attribute (ALTER ROLE ... REPLICATION) \
                             and a free max_replication_slots",
                            query("pg_create_logical_replication_slot"),
                        )
                    })?;
            }
        }
        Ok(())
    }

    /// Reads the next whole transactions after the confirmed position (at least one when
    /// any is committed, however large).
    pub async fn read(&mut self) -> Result<Batch, PostgresError> {
        let c = &self.config;
        let rows = self
            .client
            .query(
                "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_binary_changes(\
                 $1, NULL, $2, 'proto_version', '1', 'publication_names', $3, 'messages', 'true')",
                &[&c.slot, &(c.max_changes as i32), &c.publication],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "pg_logical_slot_peek_binary_changes",
                source,
            })?;
        let mut batch = Batch::default();
        let mut tx: Option<Transaction> = None;
        for row in &rows {
            let lsn: &str = row.get(0);
            let data: &[u8] = row.get(2);
            let message = pgoutput::decode(data).map_err(|source| PostgresError::Decode {
                lsn: lsn.to_string(),
                source,
            })?;
            match message {
                Message::Begin { xid, .. } => {
                    tx = Some(Transaction {
                        xid: xid.to_string(),
                        ..Default::default()
                    })
                }
                Message::Relation(r) => {
                    let key_order = self.key_order(r.id).await?;
                    let names: Vec<&str> = r.columns.iter().map(|c| c.name).collect();
                    let mut key: Vec<(String, usize)> = key_order
                        .iter()
                        .filter_map(|k| Some((k.clone(), names.iter().position(|n| n == k)?)))
                        .collect();
                    if key.is_empty() {
                        // No primary key: the replica identity's columns, in column order.
                        key = r
                            .columns
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| c.key)
                            .map(|(i, c)| (c.name.to_string(), i))
                            .collect();
                    }
                    let version = names.iter().position(|n| *n == c.version_column);
                    self.tables.insert(
                        r.id,
                        Table {
                            schema: r.namespace.to_string(),
                            name: r.name.to_string(),
                            key,
                            version,
                            columns: names.iter().map(|n| n.to_string()).collect(),
                        },
                    );
                }
                Message::Message {
                    transactional: true,
                    prefix,
                    content,
                    ..
                } if prefix == REQUEST_ID_PREFIX => {
                    if let Some(tx) = tx.as_mut() {
                        tx.request_id = Some(String::from_utf8_lossy(content).into_owned());
                    }
                }
                Message::Insert { relation, new } => {
                    self.change(&mut tx, lsn, relation, Op::Insert, &new)?
                }
                Message::Update { relation, new, .. } => {
                    self.change(&mut tx, lsn, relation, Op::Update, &new)?
                }
                Message::Delete { relation, old } => {
                    self.change(&mut tx, lsn, relation, Op::Delete, &old)?
                }
                Message::Truncate { relations } => {
                    batch.truncates += 1;
                    tracing::info!(
                        lsn,
                        relations = relations.len(),
                        "TRUNCATE in the change stream: no row changes to report"
                    );
                }
                Message::Commit {
                    commit_lsn,
                    end_lsn,
                    commit_time_us,
                } => {
                    let Some(tx) = tx.take() else { continue };
                    let time = pgoutput::unix_ns(commit_time_us);
                    for (index, mut change) in tx.changes.into_iter().enumerate() {
                        change.position = commit_lsn;
                        change.index = index as u32;
                        change.commit_time_ns = time;
                        change.request_id = tx.request_id.clone();
                        batch.changes.push(change);
                    }
                    batch.transactions += 1;
                    batch.end_lsn = Some(end_lsn);
                }
                Message::Message { .. } | Message::Origin | Message::Type => {}
            }
        }
        Ok(batch)
    }

    /// A row change of the current transaction, with its transaction-level fields filled at
    /// the commit.
    fn change(
        &self,
        tx: &mut Option<Transaction>,
        lsn: &str,
        relation: u32,
        op: Op,
        tuple: &Tuple<'_>,
    ) -> Result<(), PostgresError> {
        let table = self
            .tables
            .get(&relation)
            .ok_or_else(|| PostgresError::UnknownRelation {
                lsn: lsn.to_string(),
                relation,
            })?;
        let Some(tx) = tx.as_mut() else {
            return Ok(());
        };
        let text = |i: usize| match tuple.0.get(i) {
            Some(Value::Text(t)) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        };
        tx.changes.push(RowChange {
            op,
            schema: table.schema.clone(),
            table: table.name.clone(),
            key: table
                .key
                .iter()
                .map(|(name, i)| (name.clone(), text(*i).unwrap_or_default()))
                .collect(),
            row_version: match op {
                Op::Delete => None,
                _ => table.version.and_then(text),
            },
            position: 0,
            index: 0,
            tx: tx.xid.clone(),
            request_id: None,
            commit_time_ns: 0,
            columns: if self.config.row_images {
                table
                    .columns
                    .iter()
                    .enumerate()
                    .filter_map(|(i, name)| Some((name.clone(), text(i)?)))
                    .collect()
            } else {
                Vec::new()
            },
        });
        Ok(())
    }

    /// The primary key's columns of a relation, in key order (empty without one).
    async fn key_order(&self, relation: u32) -> Result<Vec<String>, PostgresError> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY k.ord",
                &[&relation],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "reading a primary key from pg_index",
                source,
            })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Moves the slot past `lsn` (a [`Batch::end_lsn`]): the server may recycle the WAL
    /// before it, and a restart reads from there.
    pub async fn confirm(&mut self, lsn: u64) -> Result<(), PostgresError> {
        self.client
            .query_one(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)::text",
                &[&self.config.slot, &pgoutput::lsn_text(lsn)],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "pg_replication_slot_advance",
                source,
            })?;
        Ok(())
    }

    /// The slot's confirmed position.
    pub async fn confirmed(&self) -> Result<Option<u64>, PostgresError> {
        let row = self
            .client
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.config.slot],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "reading the slot's position",
                source,
            })?;
        Ok(row.get::<_, Option<&str>>(0).and_then(pgoutput::parse_lsn))
    }

    /// Bytes of WAL written since the slot's confirmed position.
    pub async fn lag(&self) -> Result<Lag, PostgresError> {
        let row = self
            .client
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.config.slot],
            )
            .await
            .map_err(|source| PostgresError::Query {
                what: "reading the slot's lag",
                source,
            })?;
        Ok(Lag {
            bytes: row.get::<_, Option<i64>>(0).unwrap_or(0).max(0) as u64,
        })
    }
}

/// The changes of the transaction being read.
#[derive(Default)]
struct Transaction {
    xid: String,
    request_id: Option<String>,
    changes: Vec<RowChange>,
}

/// A privilege error, said with what to do about it; any other error as it is.
fn privilege(
    source: tokio_postgres::Error,
    what: String,
    hint: &'static str,
    other: impl FnOnce(tokio_postgres::Error) -> PostgresError,
) -> PostgresError {
    if source.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        PostgresError::Privilege { what, hint, source }
    } else {
        other(source)
    }
}

/// An SQL identifier, quoted.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("toctou"), "\"toctou\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
