//! Inference's risks as rows of ClickHouse's `risks` table (schema/sql/0004_risks.sql): what
//! `toctou run` writes of them, and the counts it wrote before.
//!
//! The stage counts each risk's requests since the process started. A row holds the requests
//! counted since the risk's previous row instead, so that a sum over any time range is right
//! and a restart (which starts every count again from zero) neither loses nor repeats any.
//! Rows are made at most once a minute, plus once at shutdown, from the report the correlator
//! thread publishes anyway (every second, off its hot path): the table grows by at most one
//! row per risk and minute, whatever the traffic.

use std::collections::HashMap;
use std::time::Duration;
use toctou_clickhouse::rows::{seconds, RiskRow};
use toctou_infer::{RiskEntry, RiskReport};

/// How often the risks' rows are made, at most.
pub const EVERY: Duration = Duration::from_secs(60);

/// A risk's identity: (service, endpoint, kind, table), as the stage counts it.
type Key = (String, String, &'static str, String);

fn key(e: &RiskEntry) -> Key {
    (
        e.service.clone(),
        e.endpoint.clone(),
        e.kind,
        e.table.clone(),
    )
}

/// The count of each risk at its last row, and when rows were last made.
pub struct RiskRows {
    /// Only the risks of the last report are kept: at most the stage's `max_risks`.
    written: HashMap<Key, u64>,
    made_ns: u64,
}

impl RiskRows {
    /// Starts counting at `now_ns`: the first rows are made a minute later (or at shutdown).
    pub fn new(now_ns: u64) -> RiskRows {
        RiskRows {
            written: HashMap::new(),
            made_ns: now_ns,
        }
    }

    /// Whether a minute has passed since rows were last made.
    pub fn due(&self, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.made_ns) >= EVERY.as_nanos() as u64
    }

    /// The rows of `report` at `now_ns`: one for each risk counted since its last row, with
    /// the requests since; remembers the counts. None when nothing was counted.
    pub fn rows(&mut self, report: &RiskReport, now_ns: u64) -> Vec<RiskRow> {
        self.made_ns = now_ns;
        let mut rows = Vec::new();
        let mut written = HashMap::with_capacity(report.risks.len());
        for e in &report.risks {
            let key = key(e);
            // A count below the one written means the risk was counted again from zero.
            let requests = match self.written.remove(&key) {
                Some(before) if before <= e.requests => e.requests - before,
                _ => e.requests,
            };
            if requests > 0 {
                rows.push(RiskRow {
                    service: e.service.clone(),
                    endpoint: e.endpoint.clone(),
                    kind: e.kind.to_string(),
                    table_name: e.table.clone(),
                    requests,
                    example_trace_id: e.example_trace_id.clone(),
                    read_statement: e.read_statement.clone(),
                    write_statement: e.write_statement.clone(),
                    counted_at: seconds(now_ns),
                    counted_at_ns: now_ns,
                });
            }
            written.insert(key, e.requests);
        }
        // Risks missing from this report are forgotten with the old map: the stage never
        // drops one it counts, and one it dropped would be counted again from zero.
        self.written = written;
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000_000_000;

    fn entry(endpoint: &str, kind: &'static str, requests: u64) -> RiskEntry {
        RiskEntry {
            service: "shop".into(),
            endpoint: endpoint.into(),
            kind,
            table: "public.items".into(),
            requests,
            example_trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            read_statement: "SELECT stock FROM items WHERE id = %s".into(),
            write_statement: "UPDATE items SET stock = %s WHERE id = %s".into(),
            first_seen_ns: 1,
            last_seen_ns: 2,
        }
    }

    fn report(risks: Vec<RiskEntry>) -> RiskReport {
        RiskReport {
            risks,
            dropped: 0,
            published_ns: 0,
        }
    }

    fn counts(rows: &[RiskRow]) -> Vec<(&str, &str, u64)> {
        rows.iter()
            .map(|r| (r.endpoint.as_str(), r.kind.as_str(), r.requests))
            .collect()
    }

    #[test]
    fn each_row_holds_the_requests_since_the_risks_previous_row() {
        let t0 = 1_700_000_000 * 1_000_000_000;
        let mut rows = RiskRows::new(t0);
        assert!(!rows.due(t0 + MINUTE - 1));
        assert!(rows.due(t0 + MINUTE));

        let first = rows.rows(
            &report(vec![
                entry("/buy", "lost_update", 5),
                entry("/buy", "check_then_insert", 1),
            ]),
            t0 + MINUTE,
        );
        assert_eq!(
            counts(&first),
            [("/buy", "lost_update", 5), ("/buy", "check_then_insert", 1)]
        );
        assert_eq!(first[0].counted_at_ns, t0 + MINUTE);
        assert_eq!(
            u64::from(first[0].counted_at),
            (t0 + MINUTE) / 1_000_000_000
        );
        assert_eq!(first[0].table_name, "public.items");
        assert!(!rows.due(t0 + MINUTE + 1), "made just now");

        // A minute on: only what grew, by what it grew; a new risk in full.
        let second = rows.rows(
            &report(vec![
                entry("/buy", "lost_update", 12),
                entry("/buy", "check_then_insert", 1),
                entry("/sell", "lost_update", 2),
            ]),
            t0 + 2 * MINUTE,
        );
        assert_eq!(
            counts(&second),
            [("/buy", "lost_update", 7), ("/sell", "lost_update", 2)]
        );
        // Nothing new: no rows.
        let same = report(vec![
            entry("/buy", "lost_update", 12),
            entry("/buy", "check_then_insert", 1),
            entry("/sell", "lost_update", 2),
        ]);
        assert_eq!(rows.rows(&same, t0 + 3 * MINUTE), []);
        // The rows of every write add up to the stage's counts.
        let total: u64 = first.iter().chain(&second).map(|r| r.requests).sum();
        assert_eq!(total, same.risks.iter().map(|e| e.requests).sum::<u64>());
    }

    #[test]
    fn a_risk_counted_again_from_zero_is_written_in_full() {
        let mut rows = RiskRows::new(0);
        rows.rows(&report(vec![entry("/a", "lost_update", 3)]), MINUTE);
        let lower = rows.rows(&report(vec![entry("/a", "lost_update", 2)]), 2 * MINUTE);
        assert_eq!(counts(&lower), [("/a", "lost_update", 2)]);
        // Gone from a report (only the last report's risks are remembered), then back.
        rows.rows(&report(vec![entry("/b", "lost_update", 1)]), 3 * MINUTE);
        assert_eq!(rows.written.len(), 1);
        let back = rows.rows(&report(vec![entry("/a", "lost_update", 4)]), 4 * MINUTE);
        assert_eq!(counts(&back), [("/a", "lost_update", 4)]);
    }
}
