//! `toctou loadgen`: a load generator that saturates an OTLP server (toctou, or any other:
//! the benchmark points it at Rotel and the OpenTelemetry Collector too) with a realistic
//! mix of check spans, use spans and audit records, at a fixed rate or as fast as the
//! server answers, over many connections; it prints what the server accepted.
//!
//! - [`mix`]: the requests, encoded once and stamped per send (ids, keys, times);
//! - [`send`]: the HTTP and gRPC clients and what each connection counts.
//!
//! The report is one JSON object on stdout (the benchmark script reads it), a summary on
//! stderr. Only requests started inside the measured window count, so the warm-up and the
//! requests still in flight at the end do not skew the rate.

pub mod mix;
pub mod send;

use anyhow::{Context, Result};
#[cfg(feature = "cli")]
use clap::Args;
use mix::{Expected, Mix, MixConfig};
use send::{Client, Protocol, Tally};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct LoadgenArgs {
    /// Base URL of the server's OTLP port (its HTTP port for --protocol http, gRPC port for
    /// grpc).
    #[cfg_attr(feature = "cli", arg(long, default_value = "http://127.0.0.1:4318"))]
    pub endpoint: String,
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value = "http"))]
    pub protocol: Protocol,
    /// Concurrent connections, each sending one request at a time.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub connections: usize,
    /// Spans per second to offer, all connections together (the audit records of their
    /// rounds go with them, about 12% more items); 0 sends as fast as the server answers.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 0))]
    pub rate: u64,
    /// How long to measure, after the warm-up.
    #[cfg_attr(feature = "cli", arg(long, default_value = "20s", value_parser = humantime::parse_duration))]
    pub duration: Duration,
    /// Load sent before measuring (not counted).
    #[cfg_attr(feature = "cli", arg(long, default_value = "2s", value_parser = humantime::parse_duration))]
    pub warmup: Duration,
    /// Spans per traces request (as an SDK's batch processor exports).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 512))]
    pub spans_per_request: usize,
    /// Distinct request templates cycled through.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 16))]
    pub templates: usize,
    /// Distinct resources checked and used.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 100_000))]
    pub resources: u32,
    /// Threads of the generator (default: the CPUs it may run on).
    #[cfg_attr(feature = "cli", arg(long))]
    pub threads: Option<usize>,
    /// Bearer token sent with every request, for receivers with ingest tokens (prefer the
    /// variable: a command line is visible to every user of the host).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_TOKEN", hide_env_values = true)
    )]
    pub token: Option<crate::Secret>,
}

pub fn main(args: LoadgenArgs) -> Result<()> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.spans_per_request >= 2,
        "--spans-per-request must be at least 2 (a check and a use)"
    );
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(run(&args))?;
    eprintln!(
        "loadgen: {:.0} spans/s + {:.0} log records/s accepted over {} {:?} connections; \
         {} errors; latency p50 {:.1} ms p99 {:.1} ms",
        report["spans_per_s"].as_f64().unwrap_or(0.0),
        report["logs_per_s"].as_f64().unwrap_or(0.0),
        args.connections,
        args.protocol,
        report["errors_total"],
        report["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        report["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
    );
    println!("{report}");
    Ok(())
}

/// Sends for warm-up + duration and returns the report.
pub async fn run(args: &LoadgenArgs) -> Result<serde_json::Value> {
    let mix = Arc::new(Mix::build(&MixConfig {
        spans_per_request: args.spans_per_request,
        templates: args.templates,
        resources: args.resources.max(2),
        seed: 7,
    }));
    let per_round =
        mix.rounds.iter().map(|r| r.traces.items).sum::<u64>() as f64 / mix.rounds.len() as f64;
    // A round's due time: offered rate in rounds, shared by every connection.
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(per_round / args.rate as f64));
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(
            Client::connect(args.protocol, &args.endpoint, args.token.as_ref())
                .await
                .with_context(|| format!("connecting to {}", args.endpoint))?,
        );
    }
    // Round numbers start at a random point so that a second run against the same server
    // is new traffic, not redeliveries of the first.
    let base = rand::random::<u64>() >> 8;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut tasks = Vec::new();
    for mut client in clients {
        let (mix, next) = (mix.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut races = Expected::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if let Some(interval) = interval {
                    let due = start + interval.mul_f64(n as f64);
                    if due >= end {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent_at = Instant::now();
                if sent_at >= end {
                    break;
                }
                let counting = sent_at >= measure_from;
                let i = (n % mix.rounds.len() as u64) as usize;
                let round = &mix.rounds[i];
                // Both requests of a round carry the same clock: the audit records happen
                // between the checks and uses they go with.
                let now_ns = toctou_schema::now_ns();
                let mut scratch = Tally::default();
                let target = if counting { &mut tally } else { &mut scratch };
                for template in [&round.traces, &round.logs] {
                    if template.items == 0 {
                        continue;
                    }
                    let mut body = Vec::with_capacity(template.encoded_len());
                    template.render(base + n, now_ns, &mut body);
                    let before = target.spans_accepted;
                    client.send(template, body, target).await;
                    if counting
                        && template.signal == mix::Signal::Traces
                        && target.spans_accepted > before
                    {
                        let e = mix.expected[i];
                        races.stale_check += e.stale_check;
                        races.duplicate_use += e.duplicate_use;
                        races.unchecked_use += e.unchecked_use;
                    }
                }
            }
            (tally, races)
        }));
    }
    let mut total = Tally::default();
    let mut races = Expected::default();
    for task in tasks {
        let (tally, r) = task.await.context("a sender task failed")?;
        total.merge(tally);
        races.stale_check += r.stale_check;
        races.duplicate_use += r.duplicate_use;
        races.unchecked_use += r.unchecked_use;
    }
    Ok(report(args, &mut total, races))
}

fn report(args: &LoadgenArgs, t: &mut Tally, races: Expected) -> serde_json::Value {
    let secs = args.duration.as_secs_f64();
    t.latencies_us.sort_unstable();
    let q = |p: f64| -> f64 {
        if t.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((t.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, t.latencies_us.len());
        f64::from(t.latencies_us[i - 1]) / 1000.0
    };
    let errors_total: u64 = t.errors.values().sum();
    serde_json::json!({
        "protocol": format!("{:?}", args.protocol).to_lowercase(),
        "endpoint": args.endpoint,
        "connections": args.connections,
        "offered_spans_per_s": args.rate,
        "seconds": secs,
        "requests_ok": t.requests_ok,
        "spans_accepted": t.spans_accepted,
        "logs_accepted": t.logs_accepted,
        "items_rejected": t.items_rejected,
        "items_pushed_back": t.items_pushed_back,
        "spans_per_s": t.spans_accepted as f64 / secs,
        "logs_per_s": t.logs_accepted as f64 / secs,
        "items_per_s": (t.spans_accepted + t.logs_accepted) as f64 / secs,
        "errors_total": errors_total,
        "errors": t.errors,
        "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0)},
        "races_sent": {
            "stale_check": races.stale_check,
            "duplicate_use": races.duplicate_use,
            "unchecked_use": races.unchecked_use,
        },
    })
}
