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
fn transaction(i: usize, wrap: bool) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let w = |v: serde_json::Value| if wrap { enveloped(v) } else { v };
    let id = format!("{}:{}", 728 + i, 22_114_400 + i * 200);
    let named = i % 3 == 0;
    let mut records = vec![(
        None,
        w(json!({"status": "BEGIN", "id": id, "event_count": null, "data_collections": null, "ts_ms": 1_733_580_000_123_u64}))
            .to_string(),
    )];
    if named {
        records.push((
            None,
            w(json!({"op": "m", "ts_ms": 1, "source": {"connector": "postgresql", "db": "shop", "schema": "", "table": "",
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
        w(json!({"status": "END", "id": id, "event_count": 1 + usize::from(named),
            "data_collections": [{"data_collection": "public.inventory", "event_count": 1}], "ts_ms": 1_733_580_000_123_u64}))
            .to_string(),
    ));
    records
        .into_iter()
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
    for (name, wrap) in [
        ("without the schema envelope", false),
        ("with the schema envelope", true),
    ] {
        let records: Vec<(Option<Vec<u8>>, Vec<u8>)> =
            (0..n).flat_map(|i| transaction(i, wrap)).collect();
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
            assert_eq!(audits, n, "every change released, in order");
            rounds.push(start.elapsed().as_secs_f64());
        }
        rounds.sort_by(f64::total_cmp);
        let t = rounds[2];
        println!(
            "{name}: {:.0} change events/s on one core ({:.0} records a change, a change {:.0} bytes), median of 5 rounds of {n}",
            n as f64 / t,
            records.len() as f64 / n as f64,
            changes_bytes as f64 / n as f64,
        );
    }
}
