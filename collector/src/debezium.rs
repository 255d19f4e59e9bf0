//! `POST /v1/cdc/debezium`: Debezium Server's HTTP sink, whose change events become audit
//! records exactly as those read from Kafka (`toctou_cdc::debezium`).
//!
//! Debezium Server posts one record per request, its value only (no key: the key columns
//! come from the mapping file's template for the table, else a column named `id`), in the
//! stream's order, so a transaction's `toctou.request_id` message arrives before the changes
//! it names when it was sent first in the transaction, and nothing is held back here. A body
//! may also hold several records, one JSON document after another (JSON lines), read one at
//! a time without collecting them (`crate::documents`).
//!
//! A record that is not a change event is counted by reason and answered 200 with its
//! rejection: the sink retries only a failed request, and a record it can never deliver
//! would stop it.

use crate::decoded::{Decoded, IgnoreReason, RejectReason, Rejection, MAX_LISTED_ERRORS};
use crate::documents::{documents, Bad};
use crate::error::{DecodeError, IngestError};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use toctou_cdc::debezium::{Decoder, Outcome};
use toctou_cdc::Mapping;
use toctou_schema::Event;

/// The mapping's service name for records that came through this route.
pub const SERVICE: &str = "debezium";

/// The route's decoder, shared by its requests: the request ids of transactions that sent
/// one (bounded, see `toctou_cdc::transactions`).
pub struct DebeziumHttp {
    decoder: Mutex<Decoder<()>>,
}

impl Default for DebeziumHttp {
    fn default() -> Self {
        DebeziumHttp::new(Mapping::new(SERVICE))
    }
}

impl DebeziumHttp {
    pub fn new(mapping: Mapping) -> Self {
        DebeziumHttp {
            // Records in stream order: nothing waits for a message still to come.
            decoder: Mutex::new(Decoder::new(mapping, Duration::ZERO, 1)),
        }
    }

    /// The records of one body.
    pub fn decode(&self, raw: &[u8]) -> Result<Decoded, IngestError> {
        let mut decoded = Decoded::default();
        let mut out = Vec::new();
        let now = Instant::now();
        let mut decoder = self.decoder.lock().unwrap_or_else(|p| p.into_inner());
        // The crate's one reader of several JSON documents in a row.
        for (i, record) in documents(raw).enumerate() {
            let record = match record {
                Ok(doc) => doc,
                // A body that is not JSON from its start is a bad request, as before any
                // record was read; later, the error is placed at its line.
                Err(Bad::NotJson { error, .. }) if i == 0 => {
                    return Err(DecodeError::Json(error).into())
                }
                Err(bad) => return Err(bad.into_error().into()),
            };
            match decoder.push(None, Some(record.raw), (), now, &mut out) {
                Outcome::Taken => {}
                Outcome::Skipped(skip) => decoded.ignored.add(IgnoreReason::of_skip(skip)),
                Outcome::Rejected(e) => {
                    let reason = RejectReason::of_debezium(e.kind());
                    if decoded.rejected.len() < MAX_LISTED_ERRORS {
                        decoded
                            .rejected
                            .push(Rejection::new(reason, format!("record {}: {e}", i + 1)));
                    } else {
                        decoded.rejected_unlisted.add(reason);
                    }
                }
            }
        }
        decoded.events = out.into_iter().map(|(a, ())| Event::Audit(a)).collect();
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toctou_schema::AuditAction;

    fn update(tx: u64, sku: &str, version: u64) -> String {
        serde_json::json!({
            "before": null,
            "after": {"id": sku, "stock": 3, "version": version},
            "source": {"connector": "postgresql", "db": "shop", "schema": "public",
                "table": "inventory", "txId": tx, "lsn": 1000 + tx, "ts_us": 1_733_580_000_123_456_u64},
            "op": "u", "ts_ms": 1
        })
        .to_string()
    }

    #[test]
    fn records_one_per_body_or_several_in_stream_order() {
        let http = DebeziumHttp::default();
        let message = r#"{"op":"m","ts_ms":1,"source":{"txId":7,"lsn":1006,"ts_ms":1},"message":{"prefix":"toctou.request_id","content":"cmVxLTc="}}"#;
        let d = http.decode(message.as_bytes()).unwrap();
        assert!(d.events.is_empty());
        let body = format!(
            "{}\n{}\nnull\n",
            update(7, "sku-1", 4),
            update(8, "sku-2", 9)
        );
        let d = http.decode(body.as_bytes()).unwrap();
        let audits: Vec<_> = d
            .events
            .iter()
            .map(|e| match e {
                Event::Audit(a) => (
                    a.resource.as_str(),
                    a.version.as_deref(),
                    a.request_id.as_deref(),
                    a.action,
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            audits,
            [
                (
                    "public.inventory/sku-1",
                    Some("4"),
                    Some("req-7"),
                    AuditAction::Update
                ),
                (
                    "public.inventory/sku-2",
                    Some("9"),
                    None,
                    AuditAction::Update
                ),
            ]
        );
        assert_eq!(d.ignored.get(IgnoreReason::CdcTombstone), 1);
    }

    #[test]
    fn bad_records_are_rejected_by_reason_and_the_rest_taken() {
        let http = DebeziumHttp::default();
        let body = format!(
            "{}\n{}\n{}\n",
            r#"{"op":"x","source":{}}"#,
            r#"{"op":"u","after":{"sku":"a"},"source":{"schema":"public","table":"t","lsn":1}}"#,
            update(9, "sku-3", 1)
        );
        let d = http.decode(body.as_bytes()).unwrap();
        assert_eq!(d.events.len(), 1);
        let reasons: Vec<_> = d.rejected.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [RejectReason::BadAttribute, RejectReason::MissingResource]
        );
        assert!(
            d.rejected[1].message.contains("record 2"),
            "{:?}",
            d.rejected
        );
        assert!(matches!(
            http.decode(b"{\"op\": "),
            Err(IngestError::Decode(DecodeError::Json(_)))
        ));
    }
}
