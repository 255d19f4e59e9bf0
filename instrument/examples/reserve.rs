//! Reserve one unit of stock with `toctou-instrument`: a check span around the read, a use
//! span around the write, and an audit record for the committed write, all sent to
//! `toctou run` over OTLP/gRPC.

use std::collections::HashMap;
use std::sync::Mutex;

use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{LogExporter, SpanExporter, WithExportConfig};
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use toctou_instrument::{audit, check, Action, Source};

const TOCTOU_OTLP_GRPC: &str = "http://127.0.0.1:4317";

/// Stand-in for the system of record: SKU -> (quantity, integer version).
struct Db(Mutex<HashMap<String, (u32, u64)>>);

impl Db {
    /// SELECT qty, version FROM stock WHERE sku = $1
    fn read(&self, sku: &str) -> (u32, u64) {
        self.0.lock().unwrap()[sku]
    }

    /// UPDATE stock SET qty = qty - 1, version = version + 1 WHERE sku = $1 AND version = $2
    /// Returns the version after the write, or None when the version had moved on.
    fn take_one_if_version(&self, sku: &str, expected: u64) -> Option<u64> {
        let mut rows = self.0.lock().unwrap();
        let row = rows.get_mut(sku)?;
        if row.1 != expected || row.0 == 0 {
            return None;
        }
        *row = (row.0 - 1, row.1 + 1);
        Some(row.1)
    }
}

fn reserve(tracer: &SdkTracer, audit_log: &SdkLogger, db: &Db, order_id: &str, sku: &str) -> bool {
    // Check: started right before the read, decided right after it (its end is the check's
    // event time).
    let pending = check(tracer, sku)
        .request_id(order_id)
        .source(Source::Primary);
    let (qty, seen) = db.read(sku);
    let checked = pending.version(seen).decide(qty > 0);
    if !checked.is_allowed() {
        return false;
    }

    // Use: started right before the write (its start is the use's event time); same
    // resource and request id as the check. The write is conditioned on `seen`, so `seen`
    // is the version it acts on (its pre-image).
    let reserving = checked.use_("reserve").version(seen);
    match db.take_one_if_version(sku, seen) {
        Some(after) => {
            reserving.ok();
            // The audit record of the committed write; its time is taken as the commit time.
            audit(audit_log, Action::Update, sku)
                .version(after)
                .request_id(order_id)
                .actor("inventory")
                .emit();
            true
        }
        // Our own precondition caught the race: a prevented race, not a finding.
        None => {
            reserving.conflict();
            false
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let resource = Resource::builder().with_service_name("inventory").build();
    let spans = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(TOCTOU_OTLP_GRPC)
        .build()?;
    let tracer_provider = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_batch_exporter(spans)
        .build();
    let logs = LogExporter::builder()
        .with_tonic()
        .with_endpoint(TOCTOU_OTLP_GRPC)
        .build()?;
    let logger_provider = SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(logs)
        .build();

    let tracer = tracer_provider.tracer("inventory");
    let audit_log = logger_provider.logger("inventory.audit");
    let db = Db(Mutex::new(HashMap::from([(
        "inventory/sku-42".to_string(),
        (3, 7),
    )])));

    let ok = reserve(&tracer, &audit_log, &db, "order-1234", "inventory/sku-42");
    println!("order-1234 reserved: {ok}");

    // Flush before exit: batched spans and records still in memory are lost otherwise.
    tracer_provider.shutdown()?;
    logger_provider.shutdown()?;
    Ok(())
}
