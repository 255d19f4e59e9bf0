//! The rows of the `risks` table (schema/sql/0004_risks.sql): inference's risks, each row
//! the requests counted since that risk's previous row.
//!
//! Made by the writer from `toctou_infer`'s report, since only it knows the counts it wrote
//! before; this crate does not depend on the inference stage.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, clickhouse::Row)]
pub struct RiskRow {
    pub service: String,
    pub endpoint: String,
    /// `lost_update`, `check_then_insert` or `check_then_delete`.
    pub kind: String,
    /// The table as inference qualifies it (`public.items`).
    pub table_name: String,
    /// Requests counted since the risk's previous row: a delta, never the running total.
    pub requests: u64,
    pub example_trace_id: String,
    pub read_statement: String,
    pub write_statement: String,
    /// When the row was made (its interval's end), as [`super::seconds`] and exactly.
    pub counted_at: u32,
    pub counted_at_ns: u64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A row as `toctou run` writes it; the sink's tests send it too.
    pub(crate) fn risk() -> RiskRow {
        RiskRow {
            service: "shop".into(),
            endpoint: "/buy/{id}".into(),
            kind: "lost_update".into(),
            table_name: "public.items".into(),
            requests: 3,
            example_trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            read_statement: "SELECT stock FROM items WHERE id = %s".into(),
            write_statement: "UPDATE items SET stock = %s WHERE id = %s".into(),
            counted_at: 1_700_000_059,
            counted_at_ns: 1_700_000_059_999_999_999,
        }
    }

    #[test]
    fn the_row_names_the_tables_columns_in_order() {
        let columns = <RiskRow as clickhouse::Row>::COLUMN_NAMES;
        assert_eq!(
            columns,
            [
                "service",
                "endpoint",
                "kind",
                "table_name",
                "requests",
                "example_trace_id",
                "read_statement",
                "write_statement",
                "counted_at",
                "counted_at_ns"
            ]
        );
        let sql = include_str!("../../../schema/sql/0004_risks.sql");
        let body = &sql[sql.find("CREATE TABLE").unwrap()..sql.find("ENGINE").unwrap()];
        let declared: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().split_once(' '))
            .map(|(name, _)| name)
            .filter(|n| !n.is_empty() && *n != "CREATE" && *n != "(")
            .collect();
        assert_eq!(declared, columns, "the table's columns, in order");
    }
}
