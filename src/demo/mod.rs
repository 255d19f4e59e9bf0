//! `toctou demo`: racing workloads, instrumented with the OpenTelemetry SDK, sent over OTLP
//! to a running `toctou run`; then what really happened set against what toctou found.
//!
//! The workloads (in [`workloads`]) race for real on shared in-process state; the telemetry
//! (in [`telemetry`]) is exported by the same SDK exporters an application would use.

mod telemetry;
mod workloads;

use anyhow::{Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use telemetry::{Service, Transport};
use workloads::{Load, Store, Truth};

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// OTLP endpoint of `toctou run`: gRPC by default, the HTTP base URL with --transport http.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    pub endpoint: String,
    #[arg(long, value_enum, default_value = "grpc")]
    pub transport: Transport,
    /// The findings API of the same `toctou run`, to compare what it found.
    #[arg(long, default_value = "http://127.0.0.1:8686")]
    pub api: String,
    /// How long the workloads run.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent workers per workload.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Longest wait between a check and its use: wider windows race more often.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub race_window: Duration,
    /// Pause between two requests of one worker (lower it to generate more load).
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub pause: Duration,
    /// The server's --pair-ttl and --allowed-lateness: how long to wait before the final
    /// comparison, since orphans and partial creates are only decided after the pair TTL.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub pair_ttl: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub allowed_lateness: Duration,
    /// Do not wait for the TTL-decided kinds before printing the comparison.
    #[arg(long)]
    pub no_settle: bool,
}

impl DemoArgs {
    /// The demo that `toctou run --demo` starts against its own gRPC receiver.
    pub fn against(grpc: SocketAddr, duration: Duration) -> DemoArgs {
        DemoArgs {
            endpoint: format!("http://{grpc}"),
            transport: Transport::Grpc,
            api: String::new(),
            duration,
            concurrency: 4,
            race_window: Duration::from_millis(20),
            pause: Duration::from_millis(20),
            pair_ttl: Duration::from_secs(30),
            allowed_lateness: Duration::from_secs(2),
            no_settle: true,
        }
    }
}

pub fn main(args: DemoArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_workloads(args))
}

/// Runs every workload concurrently for `args.duration`, flushes the telemetry, and (when
/// an API address is given) compares the ground truth with toctou's findings.
pub async fn run_workloads(args: DemoArgs) -> Result<()> {
    let started_ns = crate::cli::now_ns();
    let svc = |name: &str| -> Result<Arc<Service>> {
        Ok(Arc::new(Service::new(
            name,
            args.transport,
            &args.endpoint,
        )?))
    };
    let services = [
        svc("inventory-api")?,
        svc("inventory-db")?,
        svc("payments-webhook")?,
        svc("payments-db")?,
        svc("docs-api")?,
        svc("iam")?,
        svc("docs-db")?,
        svc("claims-controller-a")?,
        svc("claims-controller-b")?,
        svc("claims-api")?,
        svc("pricing-api")?,
        svc("pricing-db")?,
    ];
    let [inventory_api, inventory_db, payments_api, payments_db, docs_api, iam, docs_db, claims_a, claims_b, claims_api, pricing_api, pricing_db] =
        services.clone();
    let truth = Arc::new(Truth::default());
    let load = Load {
        workers: args.concurrency.max(1),
        race_window: args.race_window,
        pause: args.pause,
        until: Instant::now() + args.duration,
    };
    tracing::info!(
        duration = ?args.duration, endpoint = %args.endpoint, transport = ?args.transport,
        "demo traffic started"
    );
    tokio::join!(
        workloads::inventory(
            inventory_api,
            Arc::new(Store::new(inventory_db)),
            truth.clone(),
            load
        ),
        workloads::payments(
            payments_api,
            Arc::new(Store::new(payments_db)),
            truth.clone(),
            load
        ),
        workloads::authz(
            docs_api,
            iam,
            Arc::new(Store::new(docs_db)),
            truth.clone(),
            load
        ),
        workloads::claims(
            [claims_a, claims_b],
            Arc::new(Store::new(claims_api)),
            truth.clone(),
            load
        ),
        workloads::cache(
            pricing_api,
            Arc::new(Store::new(pricing_db)),
            truth.clone(),
            load
        ),
    );
    // The SDK's flush blocks until the exporters answer: keep it off the reactor.
    tokio::task::spawn_blocking(move || {
        for s in &services {
            s.shutdown();
        }
    })
    .await
    .context("flushing telemetry")?;
    tracing::info!("demo traffic done; telemetry flushed");

    if args.api.is_empty() {
        return Ok(());
    }
    let settle = if args.no_settle {
        args.allowed_lateness + Duration::from_secs(1)
    } else {
        // Orphans leave the tombstones one pair TTL after they expire from pending.
        args.pair_ttl * 2 + args.allowed_lateness + Duration::from_secs(2)
    };
    tracing::info!(wait = ?settle, "waiting for the correlator to decide");
    tokio::time::sleep(settle).await;
    let found = fetch_counts(&args.api, started_ns).await?;
    print_comparison(&truth, &found, !args.no_settle);
    Ok(())
}

async fn fetch_counts(api: &str, since_ns: u64) -> Result<BTreeMap<String, u64>> {
    let url = format!(
        "{}/api/v1/findings?since={since_ns}&limit=100000000",
        api.trim_end_matches('/')
    );
    let body: serde_json::Value = reqwest::get(&url)
        .await
        .with_context(|| format!("querying {url}"))?
        .error_for_status()
        .with_context(|| format!("querying {url}"))?
        .json()
        .await
        .context("reading the findings response")?;
    let mut counts = BTreeMap::new();
    for f in body["findings"].as_array().into_iter().flatten() {
        if let Some(kind) = f["kind"].as_str() {
            *counts.entry(kind.to_string()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

fn print_comparison(truth: &Truth, found: &BTreeMap<String, u64>, settled: bool) {
    let rows = [
        ("stale_check", &truth.stale_check),
        ("duplicate_use", &truth.duplicate_use),
        ("unchecked_use", &truth.unchecked_use),
        ("authz_drift", &truth.authz_drift),
        ("partial_create", &truth.partial_create),
        ("orphan_check", &truth.orphan_check),
    ];
    println!("{:<16} {:>10} {:>10}", "kind", "happened", "found");
    for (kind, happened) in rows {
        let ttl_decided = matches!(kind, "partial_create" | "orphan_check");
        let found = found.get(kind).copied().unwrap_or(0);
        let note = if ttl_decided && !settled {
            "  (decided after the pair TTL)"
        } else {
            ""
        };
        println!(
            "{kind:<16} {:>10} {found:>10}{note}",
            happened.load(Ordering::Relaxed)
        );
    }
    println!(
        "races prevented by compare-and-swap: {}; units oversold: {}",
        truth.prevented.load(Ordering::Relaxed),
        truth.oversold.load(Ordering::Relaxed)
    );
}
