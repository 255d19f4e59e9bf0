//! The sink's inserts as SQL text, for `toctou migrate --print-sql`: the same tables,
//! columns and row values the sink sends in RowBinary, written as `FORMAT JSONEachRow`
//! with example rows, so the tests run them on 18.16 and on current ClickHouse (chdb has
//! no HTTP interface for RowBinary).
//!
//! Columns come from the row structs' `clickhouse::Row` derive, as the client's own
//! `INSERT INTO table(columns) FORMAT RowBinary` does, and values from the same structs'
//! `Serialize`: a column renamed or retyped in rows.rs changes this text too.

use super::rows::{seconds, EventRow, FindingRow, RiskRow};
use serde::Serialize;
use toctou_schema::{
    AuditAction, AuditEvent, AuditRef, CheckSource, Decision, Event, Finding, FindingKind, Phase,
    Severity, SpanEvent, UseOutcome, UseRef,
};

/// `INSERT INTO findings(...)`, `INSERT INTO events(...)` and `INSERT INTO risks(...)` with
/// example rows covering every column, set and unset.
pub fn example_statements() -> Vec<String> {
    let findings: Vec<FindingRow> = example_findings().iter().map(FindingRow::from).collect();
    let events: Vec<EventRow> = example_events().iter().filter_map(EventRow::of).collect();
    vec![
        insert_json("findings", &findings),
        insert_json("events", &events),
        insert_json("risks", &example_risks()),
    ]
}

/// `INSERT INTO table(columns) FORMAT JSONEachRow` and one JSON object a line.
fn insert_json<T: clickhouse::Row + Serialize>(table: &str, rows: &[T]) -> String {
    let columns: Vec<String> = T::COLUMN_NAMES
        .iter()
        .map(|c| format!("`{}`", c.replace('\\', "\\\\").replace('`', "\\`")))
        .collect();
    let mut sql = format!(
        "INSERT INTO {table}({}) FORMAT JSONEachRow",
        columns.join(",")
    );
    for row in rows {
        sql.push('\n');
        // A row struct of strings, numbers, options and vectors always serializes.
        sql.push_str(&serde_json::to_string(row).unwrap_or_default());
    }
    sql
}

const T0: u64 = 1_700_000_000_000_000_000;

fn example_findings() -> Vec<Finding> {
    let full = Finding {
        id: "0123456789abcdef0123456789abcdef".into(),
        kind: FindingKind::StaleCheck,
        severity: Severity::High,
        service: "shop".into(),
        operation: "reserve".into(),
        resource: "inventory/sku-1".into(),
        request_id: "req-a".into(),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        check_span_id: "b7ad6b7169203331".into(),
        check_time_ns: Some(T0),
        use_span_id: "00f067aa0ba902b7".into(),
        use_time_ns: Some(T0 + 20_000_000),
        race_window_ns: Some(20_000_000),
        checked_version: Some("1".into()),
        used_version: Some("2".into()),
        check_source: Some(CheckSource::Cache),
        idempotency_key: Some("evt-42".into()),
        policy: Some("policies/docs".into()),
        policy_version: Some("3".into()),
        intervening: vec![
            AuditRef {
                action: AuditAction::Update,
                resource: "inventory/sku-1".into(),
                version: Some("2".into()),
                request_id: Some("req-b".into()),
                actor: Some("system:serviceaccount:shop".into()),
                time_ns: T0 + 10_000_000,
            },
            AuditRef {
                action: AuditAction::Delete,
                resource: "inventory/sku-1".into(),
                version: None,
                request_id: None,
                actor: None,
                time_ns: T0 + 15_000_000,
            },
        ],
        prior_use: Some(UseRef {
            request_id: "req-0".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b8".into(),
            time_ns: T0 - 1_000,
        }),
        reason: "checked version 1, used version 2, written by req-b in between".into(),
        event_time_ns: T0 + 20_000_000,
        detected_at_ns: T0 + 320_000_000,
        inferred: None,
    };
    let sparse = Finding {
        id: "fedcba9876543210fedcba9876543210".into(),
        kind: FindingKind::UncheckedUse,
        severity: Severity::Medium,
        check_span_id: String::new(),
        check_time_ns: None,
        race_window_ns: None,
        checked_version: None,
        used_version: None,
        check_source: None,
        idempotency_key: None,
        policy: None,
        policy_version: None,
        intervening: Vec::new(),
        prior_use: None,
        ..full.clone()
    };
    vec![full, sparse]
}

/// Two risks of one endpoint, and the first one again a minute later (its requests since).
fn example_risks() -> Vec<RiskRow> {
    let at = T0 + 60_000_000_000;
    let lost_update = RiskRow {
        service: "shop".into(),
        endpoint: "/buy/{id}".into(),
        kind: "lost_update".into(),
        table_name: "public.items".into(),
        requests: 7,
        example_trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        read_statement: "SELECT stock, version FROM items WHERE id = %s".into(),
        write_statement: "UPDATE items SET stock = %s WHERE id = %s".into(),
        counted_at: seconds(at),
        counted_at_ns: at,
    };
    let check_then_insert = RiskRow {
        kind: "check_then_insert".into(),
        table_name: "public.orders".into(),
        requests: 1,
        read_statement: "SELECT 1 FROM orders WHERE item_id = %s".into(),
        write_statement: "INSERT INTO orders (item_id) VALUES (%s)".into(),
        ..lost_update.clone()
    };
    let later = at + 60_000_000_000;
    let again = RiskRow {
        requests: 2,
        counted_at: seconds(later),
        counted_at_ns: later,
        ..lost_update.clone()
    };
    vec![lost_update, check_then_insert, again]
}

fn example_events() -> Vec<Event> {
    let check = SpanEvent {
        phase: Phase::Check,
        resource: "inventory/sku-1".into(),
        version: Some("1".into()),
        request_id: "req-a".into(),
        trace_id: [0x0a; 16],
        span_id: [0xb7; 8],
        start_ns: T0 - 2_000_000,
        end_ns: T0,
        service: "shop".into(),
        operation: "reserve".into(),
        actor: "shop".into(),
        decision: Decision::Allow,
        source: Some(CheckSource::Cache),
        policy: Some("policies/docs".into()),
        policy_version: Some("3".into()),
        idempotency_key: Some("evt-42".into()),
        outcome: UseOutcome::default(),
        permission_denied: false,
    };
    let use_ = SpanEvent {
        phase: Phase::Use,
        version: None,
        span_id: [0x00; 8],
        start_ns: T0 + 20_000_000,
        end_ns: T0 + 22_000_000,
        source: None,
        policy: None,
        policy_version: None,
        idempotency_key: None,
        permission_denied: true,
        ..check.clone()
    };
    let audit = AuditEvent {
        action: AuditAction::Update,
        resource: "inventory/sku-1".into(),
        version: Some("2".into()),
        request_id: Some("req-b".into()),
        actor: Some("system:serviceaccount:shop".into()),
        time_ns: T0 + 10_000_000,
        service: "inventory-db".into(),
        source_id: Some("audit-1".into()),
        trace_id: [0; 16],
        span_id: [0; 8],
    };
    let unsourced = AuditEvent {
        request_id: None,
        actor: None,
        version: None,
        source_id: None,
        ..audit.clone()
    };
    vec![
        Event::Span(check),
        Event::Span(use_),
        Event::Audit(audit),
        Event::Audit(unsourced),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_name_the_row_structs_columns_and_hold_one_line_per_row() {
        let stmts = example_statements();
        assert_eq!(stmts.len(), 3);
        let findings = &stmts[0];
        let head = findings.lines().next().unwrap();
        assert!(
            head.starts_with("INSERT INTO findings(`id`,`kind`,"),
            "{head}"
        );
        assert!(head.contains("`intervening.action`"), "{head}");
        assert!(
            head.ends_with("`detected_at_ns`) FORMAT JSONEachRow"),
            "{head}"
        );
        assert_eq!(findings.lines().count(), 1 + 2);
        let events = &stmts[1];
        assert!(
            events.starts_with("INSERT INTO events(`type`,`service`,"),
            "{events}"
        );
        assert_eq!(events.lines().count(), 1 + 4);
        let risks = &stmts[2];
        assert!(
            risks.starts_with("INSERT INTO risks(`service`,`endpoint`,"),
            "{risks}"
        );
        assert_eq!(risks.lines().count(), 1 + 3);
        // Each row's keys are exactly the named columns, in order.
        for stmt in &stmts {
            let mut lines = stmt.lines();
            let head = lines.next().unwrap();
            let cols = &head[head.find('(').unwrap() + 1..head.rfind(')').unwrap()];
            let cols: Vec<String> = cols
                .split(',')
                .map(|c| c.trim_matches('`').to_owned())
                .collect();
            for line in lines {
                let row: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(line).expect("a JSON object");
                let mut keys: Vec<&String> = row.keys().collect();
                keys.sort();
                let mut want: Vec<&String> = cols.iter().collect();
                want.sort();
                assert_eq!(keys, want, "{line}");
            }
        }
        // The printed text is split on ';' by the tests and by scripts/chdb.
        assert!(stmts.iter().all(|s| !s.contains(';')));
    }
}
