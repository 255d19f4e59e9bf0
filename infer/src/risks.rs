//! Risks: endpoints whose requests read a table and then write it with nothing protecting
//! the pair (`toctou_sql::read_then_write`). Counted per (service, endpoint, kind, table),
//! with an example request. They say an endpoint *can* race, never that it did: without
//! parameters or without a change stream, this is all inference can say.

use hashbrown::HashMap;
use serde::Serialize;
use toctou_sql::RiskKind;

/// One endpoint's unprotected pattern on one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RiskEntry {
    pub service: String,
    /// The root span's `http.route` (or its name); `unknown` when no root span arrived.
    pub endpoint: String,
    /// `lost_update`, `check_then_insert` or `check_then_delete`.
    pub kind: &'static str,
    pub table: String,
    /// Requests seen with it.
    pub requests: u64,
    /// One of them (lowercase hex trace id) and its statements, as received (truncated).
    pub example_trace_id: String,
    pub read_statement: String,
    pub write_statement: String,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

/// The risks found so far, most requests first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RiskReport {
    pub risks: Vec<RiskEntry>,
    /// Entries not kept (past the bound) since the start.
    pub dropped: u64,
    /// Wall time the report was made (Unix nanoseconds); 0 when not set.
    pub published_ns: u64,
}

#[derive(Default)]
pub struct Risks {
    entries: HashMap<(String, String, RiskKind, String), RiskEntry>,
    dropped: u64,
}

/// One risk of one request, as the stage found it.
pub struct Seen<'a> {
    pub service: &'a str,
    pub endpoint: &'a str,
    pub kind: RiskKind,
    pub table: &'a str,
    pub trace_id: &'a str,
    pub read: &'a str,
    pub write: &'a str,
    pub at_ns: u64,
}

impl Risks {
    pub fn add(&mut self, s: Seen<'_>, max: usize) {
        let key = (
            s.service.to_string(),
            s.endpoint.to_string(),
            s.kind,
            s.table.to_string(),
        );
        if let Some(e) = self.entries.get_mut(&key) {
            e.requests += 1;
            e.last_seen_ns = e.last_seen_ns.max(s.at_ns);
            return;
        }
        if self.entries.len() >= max {
            self.dropped += 1;
            return;
        }
        self.entries.insert(
            key,
            RiskEntry {
                service: s.service.to_string(),
                endpoint: s.endpoint.to_string(),
                kind: s.kind.as_str(),
                table: s.table.to_string(),
                requests: 1,
                example_trace_id: s.trace_id.to_string(),
                read_statement: s.read.to_string(),
                write_statement: s.write.to_string(),
                first_seen_ns: s.at_ns,
                last_seen_ns: s.at_ns,
            },
        );
    }

    pub fn report(&self) -> RiskReport {
        let mut risks: Vec<RiskEntry> = self.entries.values().cloned().collect();
        risks.sort_by(|a, b| {
            b.requests.cmp(&a.requests).then_with(|| {
                (&a.service, &a.endpoint, a.kind, &a.table).cmp(&(
                    &b.service,
                    &b.endpoint,
                    b.kind,
                    &b.table,
                ))
            })
        });
        RiskReport {
            risks,
            dropped: self.dropped,
            published_ns: 0,
        }
    }
}
