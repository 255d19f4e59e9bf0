//! Change records held until the write that made them is known, and writes waiting for
//! their change record.
//!
//! A change of a row that some request read and then wrote waits here (at most the hold)
//! for that request's write span; the SDKs export spans seconds after they end, while the
//! change stream delivers a commit in milliseconds, or the other way round. Changes of one
//! row leave in commit order, each when it is attributed to a request's write or when the
//! hold runs out (a write by something that sent no span: another request, a job, a person).

use hashbrown::HashMap;
use std::collections::VecDeque;
use toctou_cdc::RowChange;
use toctou_schema::{AuditAction, AuditEvent, SpanId, TraceId};

/// A span of a pair: the read or the write.
#[derive(Clone, Debug)]
pub struct SpanRef {
    pub span_id: SpanId,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Its statement, as received, truncated.
    pub text: String,
}

/// What the write changed, as its own change record will show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A row by its key: the table (`schema.table`), the key's (column, value) pairs in key
    /// order, and the row's name as the change stream names it by default.
    Row {
        table: String,
        key: Vec<(String, String)>,
        name: String,
    },
    /// The rows with these column values, which the read found absent (`SELECT 1 FROM users
    /// WHERE email = %s`) and the write inserted; `resource` is the table and the tested
    /// values (`public.users[email=a@example.com]`).
    Absent {
        table: String,
        values: Vec<(String, String)>,
        resource: String,
    },
}

/// A read and a later write of what it read, by one request, waiting for the write's own
/// change record.
#[derive(Clone, Debug)]
pub struct PendingWrite {
    pub id: u64,
    pub trace: TraceId,
    pub request: String,
    pub service: String,
    pub read: SpanRef,
    pub write: SpanRef,
    pub target: Target,
    /// The version the read saw, from the write's own parameters.
    pub checked_version: Option<String>,
    /// For a read pinned by other columns than the key, those (column, value) pairs: the
    /// write's change must show them for the read to have read the row.
    pub read_filter: Vec<(String, String)>,
    /// Columns the write set to known values: its change record must show them.
    pub written: Vec<(String, String)>,
    /// `update`, `delete` or `create`: the use's operation.
    pub operation: &'static str,
    /// What the write's change record says.
    pub action: AuditAction,
    /// Wall time it was made.
    pub created_ns: u64,
    /// Its change record, once matched: (row queue, seq).
    pub own: Option<(String, u64)>,
    /// Other waiting writes that matched the same change as well (identical values, times
    /// that fit): which of them made it is then told by time alone.
    pub rivals: usize,
}

/// A change record held.
#[derive(Debug)]
pub struct Held {
    pub seq: u64,
    pub audit: AuditEvent,
    pub change: Option<RowChange>,
    pub arrived_ns: u64,
    /// When the row's previous change committed (0: none seen): its writer's statement
    /// ended after that (see `fits` in the stage).
    pub after_ns: u64,
    /// The waiting write it was attributed to.
    pub owner: Option<u64>,
}

/// Held change records per row, in commit order, and the order they arrived in.
#[derive(Default)]
pub struct Changes {
    pub queues: HashMap<String, VecDeque<Held>>,
    /// (arrival, row, seq) in arrival order: what the hold expires.
    expiry: VecDeque<(u64, String, u64)>,
    /// How many of `expiry`'s first entries had their settle (see the stage's `settle`).
    settled: usize,
    pub len: usize,
    next_seq: u64,
}

impl Changes {
    pub fn push(
        &mut self,
        row: &str,
        audit: AuditEvent,
        change: Option<RowChange>,
        after_ns: u64,
        now_ns: u64,
    ) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.queues
            .entry(row.to_string())
            .or_default()
            .push_back(Held {
                seq,
                audit,
                change,
                arrived_ns: now_ns,
                after_ns,
                owner: None,
            });
        self.expiry.push_back((now_ns, row.to_string(), seq));
        self.len += 1;
        seq
    }

    /// The row of the change that arrived first, if it arrived by `by` (`u64::MAX`: any).
    pub fn pop_expired(&mut self, by: u64) -> Option<String> {
        if self.expiry.front()?.0 > by {
            return None;
        }
        self.settled = self.settled.saturating_sub(1);
        self.expiry.pop_front().map(|(_, row, _)| row)
    }

    /// The (row, seq) of the next change, in arrival order, that arrived by `by` and has not
    /// had its settle yet.
    pub fn next_to_settle(&mut self, by: u64) -> Option<(String, u64)> {
        let (at, row, seq) = self.expiry.get(self.settled)?;
        if *at > by {
            return None;
        }
        self.settled += 1;
        Some((row.clone(), *seq))
    }

    /// Whether the row has changes held (a later one must wait behind them).
    pub fn holds(&self, row: &str) -> bool {
        self.queues.get(row).is_some_and(|q| !q.is_empty())
    }

    pub fn get(&self, row: &str, seq: u64) -> Option<&Held> {
        self.queues.get(row)?.iter().find(|h| h.seq == seq)
    }

    pub fn get_mut(&mut self, row: &str, seq: u64) -> Option<&mut Held> {
        self.queues.get_mut(row)?.iter_mut().find(|h| h.seq == seq)
    }

    /// The row's first held change, removed when `take` says so.
    pub fn pop_front_if(&mut self, row: &str, take: impl FnOnce(&Held) -> bool) -> Option<Held> {
        let q = self.queues.get_mut(row)?;
        if !take(q.front()?) {
            return None;
        }
        let h = q.pop_front();
        if q.is_empty() {
            self.queues.remove(row);
        }
        if h.is_some() {
            self.len -= 1;
        }
        h
    }
}

/// Two values as the database and a driver render them: equal text, the same boolean
/// (`t` and `true`), or the same number (`10.00` and `10.0`).
pub fn same_value(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let truth = |v: &str| match v {
        "t" | "true" | "True" | "TRUE" => Some(true),
        "f" | "false" | "False" | "FALSE" => Some(false),
        _ => None,
    };
    if let (Some(x), Some(y)) = (truth(a), truth(b)) {
        return x == y;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Whether a change's row shows every value the write set (columns it does not carry are
/// not held against it).
pub fn shows(columns: &[(String, String)], written: &[(String, String)]) -> bool {
    written.iter().all(|(col, v)| {
        columns
            .iter()
            .find(|(c, _)| c == col)
            .is_none_or(|(_, cv)| same_value(cv, v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_as_databases_and_drivers_render_them() {
        assert!(same_value("t", "true"));
        assert!(!same_value("f", "true"));
        assert!(same_value("10.00", "10.0"));
        assert!(same_value("sku-1", "sku-1"));
        assert!(!same_value("sku-1", "sku-2"));
        let row = vec![("stock".to_string(), "9".to_string())];
        assert!(shows(&row, &[("stock".into(), "9".into())]));
        assert!(!shows(&row, &[("stock".into(), "8".into())]));
        assert!(shows(&row, &[("other".into(), "8".into())]), "not carried");
    }
}
