//! The demo's system of record: one embedded SQLite database (WAL), its audit table, and the
//! relay that turns committed audit rows into OTLP audit records in commit order.
//!
//! Writes go through one writer connection behind a mutex, in `BEGIN IMMEDIATE`
//! transactions: SQLite has one writer anyway. Most workloads start their use span under
//! the lock, which makes span order, commit order and audit time agree (the ground truth is
//! counted in commit order; toctou orders by event time); the accounts workload starts its
//! use span before taking the lock, as an application does, so that its wait for the lock
//! is part of the use and other requests commit inside it. Triggers on each
//! workload's tables insert the audit rows; just before the commit, under the same lock, the
//! transaction's rows get their commit time and are sent after it, so a record's time is
//! after the use span that caused it and before any read that can see the change.
//! Checks read through per-worker connections, outside any write lock, as a service would.

use super::telemetry::Service;
use anyhow::{bail, Context as _, Result};
use rusqlite::{params, Connection, OpenFlags, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use toctou_instrument::{audit, Action};

/// The audit table every workload's triggers write to (the outbox of a change-data-capture
/// relay). `committed_ns` is filled in just before the commit.
const AUDIT_SCHEMA: &str = "
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL CHECK (action IN ('create', 'update', 'delete', 'finalize', 'policy_change')),
    resource TEXT NOT NULL,
    version INTEGER,
    request_id TEXT,
    committed_ns INTEGER
);
";

/// How long a reader waits for a lock (a WAL checkpoint) before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Db {
    path: PathBuf,
    writer: Mutex<Writer>,
    /// Idle read connections. At most one per thread that reads at once (the workers and
    /// their webhook handlers), so bounded by the demo's own concurrency.
    readers: Mutex<Vec<Connection>>,
    relay: std::sync::Arc<Service>,
}

struct Writer {
    conn: Connection,
    /// The highest audit row already sent: the next commit sends the rows after it.
    sent: i64,
}

/// One committed audit row, as the relay sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub action: Action,
    pub resource: String,
    pub version: Option<i64>,
    pub request_id: Option<String>,
}

impl Db {
    /// Creates a new database at `path` with the audit table and `schemas` (each workload's
    /// tables and triggers). An existing file is refused: the ground truth is counted from
    /// the whole database, so it must hold this run only.
    pub fn create(path: &Path, schemas: &[&str], relay: std::sync::Arc<Service>) -> Result<Db> {
        if path.exists() {
            bail!(
                "{} already exists: the demo counts what happened from the whole database, so it \
                 needs a new file (remove it or pass another --db)",
                path.display()
            );
        }
        let conn = Connection::open(path)
            .with_context(|| format!("creating the SQLite database {}", path.display()))?;
        let journal: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .context("switching the database to WAL")?;
        if !journal.eq_ignore_ascii_case("wal") {
            bail!("SQLite refused WAL mode for {} ({journal})", path.display());
        }
        // A demo database: durability across power loss is not needed, commit speed is.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .context("setting synchronous")?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mut ddl = String::from(AUDIT_SCHEMA);
        for s in schemas {
            ddl.push_str(s);
        }
        conn.execute_batch(&ddl)
            .context("creating the demo's tables")?;
        Ok(Db {
            path: path.to_path_buf(),
            writer: Mutex::new(Writer { conn, sent: 0 }),
            readers: Mutex::new(Vec::new()),
            relay,
        })
    }

    /// Runs `f` on a read connection (a check's read), outside the write lock: it sees the
    /// last committed state, as a service reading its database does.
    pub fn read<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R> {
        let idle = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => self.reader()?,
        };
        let out = f(&conn).context("reading the demo database");
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        out
    }

    /// A new read-only connection.
    pub fn reader(&self) -> Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {} for reading", self.path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(conn)
    }

    /// Runs `f` in a write transaction and commits it, then sends its audit rows stamped
    /// with the commit time. `f` runs under the write lock: a use span started in it starts
    /// in commit order; one started before the call also spans the wait for the lock. On
    /// error nothing is committed and nothing is sent.
    pub fn write<R>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<R>) -> Result<R> {
        let mut w = self.lock();
        let sent = w.sent;
        let tx = w
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("beginning a write transaction")?;
        let out = f(&tx)?;
        let committed = SystemTime::now();
        let committed_ns = committed
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        tx.execute(
            "UPDATE audit SET committed_ns = ?1 WHERE id > ?2",
            params![committed_ns, sent],
        )
        .context("stamping the audit rows")?;
        let rows = audit_rows_after(&tx, sent).context("reading the audit rows")?;
        tx.commit().context("committing")?;
        if let Some(last) = rows.last() {
            w.sent = last.id;
        }
        // Still under the lock: records reach the exporter in commit order.
        for row in rows {
            let mut record = audit(&self.relay.logger, row.action, row.resource).at(committed);
            if let Some(v) = row.version {
                record = record.version(v);
            }
            if let Some(id) = row.request_id {
                record = record.request_id(id);
            }
            record.emit();
        }
        Ok(out)
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The audit rows after id `after`, in commit (id) order.
pub fn audit_rows_after(conn: &Connection, after: i64) -> Result<Vec<AuditRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, action, resource, version, request_id FROM audit WHERE id > ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([after], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<i64>>(3)?,
            r.get::<_, Option<String>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, action, resource, version, request_id) = row?;
        let action = match action.as_str() {
            "create" => Action::Create,
            "update" => Action::Update,
            "delete" => Action::Delete,
            "finalize" => Action::Finalize,
            "policy_change" => Action::PolicyChange,
            other => bail!("audit row {id} has an unknown action {other:?}"),
        };
        out.push(AuditRow {
            id,
            action,
            resource,
            version,
            request_id,
        });
    }
    Ok(out)
}

/// Removes the database and its WAL files (the default temporary database, at the end).
pub fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// An in-memory connection with the audit table and `schema`, for the ground-truth tests.
#[cfg(test)]
pub fn test_conn(schema: &str) -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(AUDIT_SCHEMA).unwrap();
    conn.execute_batch(schema).unwrap();
    conn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_rows_come_back_in_commit_order_with_typed_actions() {
        let conn = test_conn("");
        conn.execute_batch(
            "INSERT INTO audit (action, resource, version, request_id) VALUES
                ('create', 'claims/r/pod-1', 1, 'a'),
                ('finalize', 'claims/r/pod-1', 2, NULL),
                ('policy_change', 'policies/r/docs-acl', 5, 'admin');",
        )
        .unwrap();
        let rows = audit_rows_after(&conn, 1).unwrap();
        assert_eq!(
            rows,
            vec![
                AuditRow {
                    id: 2,
                    action: Action::Finalize,
                    resource: "claims/r/pod-1".into(),
                    version: Some(2),
                    request_id: None,
                },
                AuditRow {
                    id: 3,
                    action: Action::PolicyChange,
                    resource: "policies/r/docs-acl".into(),
                    version: Some(5),
                    request_id: Some("admin".into()),
                },
            ]
        );
    }

    #[test]
    fn an_unknown_action_is_refused_by_the_table() {
        let conn = test_conn("");
        let err = conn
            .execute(
                "INSERT INTO audit (action, resource) VALUES ('upsert', 'x/1')",
                [],
            )
            .unwrap_err();
        assert!(err.to_string().contains("CHECK"), "{err}");
    }
}
