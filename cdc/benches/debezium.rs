//! Debezium change events into audit records, on one core: `toctou_cdc::debezium::parse` and
//! the mapping, over PostgreSQL connector updates as the JSON converter writes them, with its
//! schema envelope (`schemas.enable=true`, Kafka Connect's default) and without. Target
//! (issue 25): 200,000 change events per second per core.
//!
//! ```sh
//! cargo bench -p toctou-cdc --bench debezium
//! ```

use serde_json::json;
use std::hint::black_box;
use std::time::Instant;
use toctou_cdc::debezium::{parse, Record};
use toctou_cdc::Mapping;

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
        "transaction": null,
        "op": "u",
        "ts_ms": 1_733_580_000_200_u64 + i as u64,
    })
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
    let key = |i: usize| format!("{{\"sku\":\"sku-{}\"}}", i % 10_000).into_bytes();
    let no_keys = |_: &str, _: &str| None;
    let mapping = Mapping::new("debezium");
    for (name, wrap) in [
        ("without the schema envelope", false),
        ("with the schema envelope", true),
    ] {
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
            .map(|i| {
                let v = value(i);
                let v = if wrap { enveloped(v) } else { v };
                (key(i), v.to_string().into_bytes())
            })
            .collect();
        let bytes: usize = records.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let mut audits = 0;
            for (k, v) in &records {
                if let Record::Change(c) = parse(Some(k), Some(v), "version", &no_keys).unwrap() {
                    black_box(mapping.audit(&c));
                    audits += 1;
                }
            }
            assert_eq!(audits, n);
            rounds.push(start.elapsed().as_secs_f64());
        }
        rounds.sort_by(f64::total_cmp);
        let t = rounds[2];
        println!(
            "{name}: {:.0} change events/s on one core ({:.0} bytes each, {:.0} MB/s), median of 5 rounds of {n}",
            n as f64 / t,
            bytes as f64 / n as f64,
            bytes as f64 / t / 1e6
        );
    }
}
