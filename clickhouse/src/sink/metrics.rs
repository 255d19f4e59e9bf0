//! The ClickHouse sink's counters and [`SinkCollector`], which reads them into a node's
//! `prometheus` registry for `/metrics`.
//!
//! Plain atomics: the sink thread and the correlator write them, API requests read them, and
//! none of them may wait on another for it. Labels are closed sets (three tables, three
//! results), so the series count is fixed.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// The tables the sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Findings,
    Events,
    Risks,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Findings, Table::Events, Table::Risks];

    pub fn name(self) -> &'static str {
        match self {
            Table::Findings => "findings",
            Table::Events => "events",
            Table::Risks => "risks",
        }
    }
}

/// What became of one insert attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchResult {
    Ok,
    /// Failed with a transient error; the same rows are sent again.
    Retried,
    /// Failed and given up: the rows are dropped.
    Failed,
}

impl BatchResult {
    pub const ALL: [BatchResult; 3] = [BatchResult::Ok, BatchResult::Retried, BatchResult::Failed];

    pub fn name(self) -> &'static str {
        match self {
            BatchResult::Ok => "ok",
            BatchResult::Retried => "retried",
            BatchResult::Failed => "failed",
        }
    }
}

/// Shared by the sink (which counts) and its collector (which reads).
#[derive(Debug, Default)]
pub struct SinkMetrics {
    rows: [AtomicU64; Table::ALL.len()],
    batches: [[AtomicU64; BatchResult::ALL.len()]; Table::ALL.len()],
    dropped: [AtomicU64; Table::ALL.len()],
    retries: AtomicU64,
    backlog: AtomicU64,
}

impl SinkMetrics {
    /// Rows handed to the sink and not yet written or given up.
    pub(crate) fn queued(&self, rows: usize) {
        self.backlog.fetch_add(rows as u64, Relaxed);
    }

    /// Rows leaving the backlog: written, dropped, or never accepted by the channel.
    pub(crate) fn dequeued(&self, rows: usize) {
        // Saturating: a gauge that wrapped to 2^64 would be worse than one briefly low.
        let _ = self
            .backlog
            .fetch_update(Relaxed, Relaxed, |b| Some(b.saturating_sub(rows as u64)));
    }

    pub(crate) fn batch(&self, table: Table, result: BatchResult, rows: usize) {
        self.batches[table as usize][result as usize].fetch_add(1, Relaxed);
        match result {
            BatchResult::Ok => {
                self.rows[table as usize].fetch_add(rows as u64, Relaxed);
            }
            BatchResult::Retried => {
                self.retries.fetch_add(1, Relaxed);
            }
            BatchResult::Failed => {
                self.dropped[table as usize].fetch_add(rows as u64, Relaxed);
            }
        }
    }

    pub fn rows_written(&self, table: Table) -> u64 {
        self.rows[table as usize].load(Relaxed)
    }

    pub fn batches(&self, table: Table, result: BatchResult) -> u64 {
        self.batches[table as usize][result as usize].load(Relaxed)
    }

    pub fn rows_dropped(&self, table: Table) -> u64 {
        self.dropped[table as usize].load(Relaxed)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }

    pub fn backlog_rows(&self) -> u64 {
        self.backlog.load(Relaxed)
    }
}

toctou_schema::families! {
    /// The `toctou_sink_*` families, each declared once.
    static FAMILIES: Families {
        rows = counter("toctou_sink_rows_total", "Rows written to ClickHouse.", &["table"]);
        batches = counter("toctou_sink_batches_total", "ClickHouse insert attempts by outcome (retried: failed and sent again; failed: given up).", &["table", "result"]);
        backlog = gauge("toctou_sink_backlog_rows", "Rows waiting in the sink's channel and buffers.", &[]);
        retries = counter("toctou_sink_retries_total", "ClickHouse inserts retried after a transient error.", &[]);
        dropped = counter("toctou_sink_dropped_rows_total", "Rows given up on (a non-retryable error, or still failing at the shutdown deadline).", &["table"]);
    }
}

/// Reads [`SinkMetrics`] into a node's registry when /metrics is asked for.
pub struct SinkCollector(pub Arc<SinkMetrics>);

impl Collector for SinkCollector {
    fn desc(&self) -> Vec<&Desc> {
        FAMILIES.descs()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (f, m) = (&*FAMILIES, &self.0);
        let rows = Table::ALL.map(|t| ([t.name()], m.rows_written(t) as f64));
        let batches = Table::ALL
            .into_iter()
            .flat_map(|t| BatchResult::ALL.map(|r| ([t.name(), r.name()], m.batches(t, r) as f64)));
        let dropped = Table::ALL.map(|t| ([t.name()], m.rows_dropped(t) as f64));
        vec![
            f.rows.values(rows),
            f.batches.values(batches),
            f.backlog.value(m.backlog_rows() as f64),
            f.retries.value(m.retries() as f64),
            f.dropped.values(dropped),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_rendered_with_its_help_and_type() {
        let m = SinkMetrics::default();
        m.queued(7);
        m.batch(Table::Findings, BatchResult::Retried, 3);
        m.batch(Table::Findings, BatchResult::Ok, 3);
        m.batch(Table::Events, BatchResult::Failed, 4);
        m.dequeued(3);
        m.dequeued(4);
        m.dequeued(1); // more than queued: the gauge stops at zero
        let out = toctou_schema::metrics::encode_one(SinkCollector(Arc::new(m)));
        for line in [
            "toctou_sink_rows_total{table=\"findings\"} 3",
            "toctou_sink_rows_total{table=\"events\"} 0",
            "toctou_sink_batches_total{table=\"findings\",result=\"ok\"} 1",
            "toctou_sink_batches_total{table=\"findings\",result=\"retried\"} 1",
            "toctou_sink_batches_total{table=\"events\",result=\"failed\"} 1",
            "toctou_sink_backlog_rows 0",
            "toctou_sink_retries_total 1",
            "toctou_sink_dropped_rows_total{table=\"events\"} 4",
            "toctou_sink_dropped_rows_total{table=\"findings\"} 0",
            "toctou_sink_rows_total{table=\"risks\"} 0",
            "toctou_sink_dropped_rows_total{table=\"risks\"} 0",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "{line} missing from:\n{out}"
            );
        }
        // Every family declared, whether or not a line above names it.
        for desc in FAMILIES.descs() {
            let name = &desc.fq_name;
            assert!(out.contains(&format!("# TYPE {name} ")), "{name}:\n{out}");
            assert!(out.contains(&format!("# HELP {name} ")), "{name}:\n{out}");
        }
    }
}
