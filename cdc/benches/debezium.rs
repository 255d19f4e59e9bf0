//! Debezium change events into audit records, on one core, the way `--cdc-debezium-topics`
//! takes them: `toctou_cdc::debezium::Decoder` (parsing, the transactions' request ids and
//! commit order, the mapping) over PostgreSQL connector updates as the JSON converter writes
//! them with transaction metadata on (each transaction's BEGIN and END records read too, a
//! third of them naming their request with a message), with the schema envelope
//! (`schemas.enable=true`, Kafka Connect's default) and without. Target (issue 25): 200,000
//! change events per second per core.
//!
//! ```sh
//! cargo bench -p toctou-cdc --bench debezium
//! ```

use serde_json::json;
use std::hint::black_box;
use std::time::Instant;
use toctou_cdc::debezium::{Decoder, Outcome};
use toctou_cdc::Mapping;

/// The records of transaction `i` in the order a consumer of all the connector's topics may
/// read them: BEGIN, its message (one in three), its change, END.
fn transaction(i: usize, wrap: bool, metadata: bool) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let w = |v: serde_json::Value| if wrap { enveloped(v) } else { v };
    // Transaction metadata and messages carry schemas of their own, as Debezium 3.6 writes
    // them (smaller than a row's).
    let meta = |v: serde_json::Value| {
        if wrap {
            with_schema(transaction_schema(), v)
        } else {
            v
        }
    };
    let msg = |v: serde_json::Value| {
        if wrap {
            with_schema(message_schema(), v)
        } else {
            v
        }
    };
    let id = format!("{}:{}", 728 + i, 22_114_400 + i * 200);
    let named = i % 3 == 0;
    let mut records = vec![(
        None,
        meta(json!({"status": "BEGIN", "id": id, "event_count": null, "data_collections": null, "ts_ms": 1_733_580_000_123_u64}))
            .to_string(),
    )];
    if named {
        records.push((
            None,
            msg(json!({"op": "m", "ts_ms": 1, "source": {"connector": "postgresql", "db": "shop", "schema": "", "table": "",
                "txId": 728 + i, "lsn": 22_114_400 + i * 200, "ts_ms": 1}, "transaction": {"id": id, "total_order": 1, "data_collection_order": 1},
                "message": {"prefix": "toctou.request_id", "content": "cmVxLTQy"}}))
            .to_string(),
        ));
    }
    records.push((
        Some(format!("{{\"sku\":\"sku-{}\"}}", i % 10_000).into_bytes()),
        w(value(i)).to_string(),
    ));
    records.push((
        None,
        meta(json!({"status": "END", "id": id, "event_count": 1 + usize::from(named),
            "data_collections": [{"data_collection": "public.inventory", "event_count": 1}], "ts_ms": 1_733_580_000_123_u64}))
            .to_string(),
    ));
    records
        .into_iter()
        .filter(|(_, v)| metadata || !v.contains("\"status\""))
        .map(|(k, v)| (k, v.into_bytes()))
        .collect()
}

fn value(i: usize) -> serde_json::Value {
    json!({
        "before": null,
        "after": {"sku": format!("sku-{}", i % 10_000), "stock": 100 - (i % 100) as i64,
                  "price_cents": 1999, "name": "A thing people buy", "version": i as i64 + 1},
        "source": {
            "version": "3.6.1.Final", "connector": "postgresql", "name": "shop",
            "ts_ms": 1_733_580_000_123_u64 + i as u64, "ts_us": 1_733_580_000_123_456_u64 + i as u64,
            "ts_ns": 1_733_580_000_123_456_000_u64 + i as u64, "snapshot": "false", "db": "shop",
            "sequence": format!("[\"{}\",\"{}\"]", 22_114_272 + i * 200, 22_114_400 + i * 200),
            "schema": "public", "table": "inventory", "txId": 728 + i, "lsn": 22_114_400 + i * 200,
            "xmin": null
        },
        "transaction": {"id": format!("{}:{}", 728 + i, 22_114_400 + i * 200), "total_order": 1 + u64::from(i % 3 == 0), "data_collection_order": 1},
        "op": "u",
        "ts_ms": 1_733_580_000_200_u64 + i as u64,
    })
}

fn with_schema(schema: serde_json::Value, payload: serde_json::Value) -> serde_json::Value {
    json!({"schema": schema, "payload": payload})
}

/// `io.debezium.connector.common.TransactionMetadataValue`, as Debezium 3.6.1 writes it.
fn transaction_schema() -> serde_json::Value {
    json!({"type": "struct", "fields": [
        {"type": "string", "optional": false, "field": "status"},
        {"type": "string", "optional": false, "field": "id"},
        {"type": "int64", "optional": true, "field": "event_count"},
        {"type": "array", "items": {"type": "struct", "fields": [
            {"type": "string", "optional": false, "field": "data_collection"},
            {"type": "int64", "optional": false, "field": "event_count"}],
            "optional": true, "name": "event.collection", "version": 1}, "optional": true, "field": "data_collections"},
        {"type": "int64", "optional": false, "field": "ts_ms"}],
        "optional": false, "name": "io.debezium.connector.common.TransactionMetadataValue", "version": 1})
}

/// `io.debezium.connector.postgresql.MessageValue`, as Debezium 3.6.1 writes it.
fn message_schema() -> serde_json::Value {
    let field = |name: &str, ty: &str, optional: bool| json!({"type": ty, "optional": optional, "field": name});
    json!({"type": "struct", "fields": [
        field("op", "string", false), field("ts_ms", "int64", true),
        {"type": "struct", "fields": [
            field("version", "string", false), field("connector", "string", false), field("name", "string", false),
            field("ts_ms", "int64", false), field("snapshot", "string", true), field("db", "string", false),
            field("sequence", "string", true), field("ts_us", "int64", true), field("ts_ns", "int64", true),
            field("schema", "string", false), field("table", "string", false), field("txId", "int64", true),
            field("lsn", "int64", true), field("xmin", "int64", true)],
            "optional": false, "name": "io.debezium.connector.postgresql.Source", "version": 1, "field": "source"},
        {"type": "struct", "fields": [field("id", "string", false), field("total_order", "int64", false),
            field("data_collection_order", "int64", false)], "optional": true, "name": "event.block", "version": 1, "field": "transaction"},
        {"type": "struct", "fields": [field("prefix", "string", true), field("content", "bytes", true)],
            "optional": false, "name": "io.debezium.connector.postgresql.Message", "version": 1, "field": "message"}],
        "optional": false, "name": "io.debezium.connector.postgresql.MessageValue", "version": 1})
}

/// The envelope Kafka Connect's JsonConverter adds with `schemas.enable=true`.
fn enveloped(payload: serde_json::Value) -> serde_json::Value {
    let field = |name: &str, ty: &str, optional: bool| json!({"type": ty, "optional": optional, "field": name});
    let row = |name: &str| {
        json!({"type": "struct", "optional": true, "name": format!("shop.public.inventory.{name}"), "field": name, "fields": [
        field("sku", "string", false), field("stock", "int32", false), field("price_cents", "int64", false),
        field("name", "string", true), field("version", "int64", false)]})
    };
    json!({"schema": {"type": "struct", "optional": false, "name": "shop.public.inventory.Envelope", "version": 2, "fields": [
        row("before"), row("after"),
        {"type": "struct", "optional": false, "name": "io.debezium.connector.postgresql.Source", "field": "source", "fields": [
            field("version", "string", false), field("connector", "string", false), field("name", "string", false),
            field("ts_ms", "int64", false), field("snapshot", "string", true), field("db", "string", false),
            field("sequence", "string", true), field("schema", "string", false), field("table", "string", false),
            field("txId", "int64", true), field("lsn", "int64", true), field("xmin", "int64", true)]},
        field("op", "string", false), field("ts_ms", "int64", true)]},
        "payload": payload})
}

fn main() {
    let n = 200_000;
    for (name, wrap, metadata) in [
        ("transaction metadata, no schema envelope", false, true),
        ("transaction metadata, schema envelope", true, true),
        ("no transaction metadata, no schema envelope", false, false),
        ("no transaction metadata, schema envelope", true, false),
    ] {
        let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = (0..n)
            .flat_map(|i| transaction(i, wrap, metadata))
            .collect();
        let changes_bytes: usize = (0..n)
            .map(|i| {
                let v = value(i);
                (if wrap { enveloped(v) } else { v }).to_string().len()
            })
            .sum();
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let mut decoder = Decoder::new(
                Mapping::new("debezium"),
                toctou_cdc::transactions::DEFAULT_HOLD,
                toctou_cdc::transactions::DEFAULT_MAX_HELD,
            );
            let mut out = Vec::with_capacity(1024);
            let now = Instant::now();
            let start = Instant::now();
            let mut audits = 0;
            for (k, v) in &records {
                let outcome = decoder.push(k.as_deref(), Some(v), (), now, &mut out);
                debug_assert!(matches!(outcome, Outcome::Taken | Outcome::Skipped(_)));
                audits += out.len();
                black_box(out.drain(..).count());
            }
            // Without metadata, changes that named no request wait out the hold.
            decoder.expire(now + toctou_cdc::transactions::DEFAULT_HOLD, &mut out);
            audits += out.len();
            black_box(out.drain(..).count());
            assert_eq!(audits, n, "every change released");
            rounds.push(start.elapsed().as_secs_f64());
        }
        rounds.sort_by(f64::total_cmp);
        let t = rounds[2];
        println!(
            "{name}: {:.0} change events/s on one core ({:.2} records a change, a change {:.0} bytes), median of 5 rounds of {n}",
            n as f64 / t,
            records.len() as f64 / n as f64,
            changes_bytes as f64 / n as f64,
        );
    }
}
