//! The distributed-mode benchmark of issue 4, driven by `scripts/bench-kafka` (which owns the
//! servers and the toctou processes). The same load goes to `toctou run` and to `toctou
//! collector`; this program only sends and measures:
//! - `throughput`: check-and-use pairs as fast as the receiver takes them (retrying 503s),
//!   until the correlator's `/metrics` has counted a stale_check for every pair; events per
//!   second from the first send to the last count;
//! - `latency`: a steady rate of pairs for a while; then, from ClickHouse, the quantiles of
//!   `detected_at_ns - event_time_ns` over the findings (the use's time as the client
//!   stamped it to the moment the correlator decided), so both paths are measured by the
//!   same clock at the same points.
//!
//! Not a test: it prints measurements, and fails only when findings go missing.

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Throughput {
        /// OTLP/HTTP base URL of `toctou run` or `toctou collector`.
        #[arg(long)]
        otlp: String,
        /// /metrics URL of the correlating process.
        #[arg(long)]
        metrics: String,
        /// Check-and-use pairs in total.
        #[arg(long, default_value_t = 200_000)]
        pairs: u64,
        /// Pairs per request.
        #[arg(long, default_value_t = 250)]
        batch: u64,
        /// Requests in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: u64,
    },
    Latency {
        #[arg(long)]
        otlp: String,
        /// ClickHouse URL and database the correlating process writes findings to.
        #[arg(long)]
        clickhouse: String,
        #[arg(long)]
        database: String,
        /// Pairs per second.
        #[arg(long, default_value_t = 2_000)]
        rate: u64,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

use toctou_schema::now_ns;

fn span(phase: &str, trace: &str, span_id: &str, resource: &str, version: u64, t: u64) -> Value {
    json!({
        "traceId": trace,
        "spanId": span_id,
        "name": phase,
        "kind": 1,
        "startTimeUnixNano": t.to_string(),
        "endTimeUnixNano": (t + 1_000).to_string(),
        "attributes": [
            {"key": "toctou.phase", "value": {"stringValue": phase}},
            {"key": "toctou.resource", "value": {"stringValue": resource}},
            {"key": "toctou.resource.version", "value": {"intValue": version.to_string()}},
        ]
    })
}

/// Pairs `first..first+n`, each a check on version 1 and a use on version 2 (a stale_check
/// each), on distinct resources named `{prefix}/sku-{i}`, timed now.
fn request(prefix: &str, first: u64, n: u64) -> String {
    let now = now_ns();
    let mut spans = Vec::with_capacity(2 * n as usize);
    for i in first..first + n {
        let trace = format!("{:032x}", i + 1);
        let resource = format!("{prefix}/sku-{i}");
        spans.push(span(
            "check",
            &trace,
            &format!("{:016x}", 2 * i + 1),
            &resource,
            1,
            now - 2_000,
        ));
        spans.push(span(
            "use",
            &trace,
            &format!("{:016x}", 2 * i + 2),
            &resource,
            2,
            now,
        ));
    }
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "bench"}}]},
        "scopeSpans": [{"scope": {"name": "bench"}, "spans": spans}]
    }]})
    .to_string()
}

async fn post(http: &reqwest::Client, otlp: &str, body: String) -> Result<()> {
    loop {
        let status = http
            .post(format!("{otlp}/v1/traces"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?
            .status();
        if status.is_success() {
            return Ok(());
        }
        if status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
            bail!("{otlp} answered {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stale_checks(http: &reqwest::Client, metrics: &str) -> Result<u64> {
    let text = http.get(metrics).send().await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("toctou_findings_total{kind=\"stale_check\"} "))
        .map(|v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
        .unwrap_or(0))
}

async fn throughput(
    otlp: String,
    metrics: String,
    pairs: u64,
    batch: u64,
    concurrency: u64,
) -> Result<()> {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, otlp, next) = (http.clone(), otlp.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= pairs {
                    return Ok::<_, anyhow::Error>(());
                }
                let n = batch.min(pairs - first);
                let body =
                    tokio::task::spawn_blocking(move || request("throughput", first, n)).await?;
                post(&http, &otlp, body).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let sent_s = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = stale_checks(&http, &metrics).await?;
        if n >= pairs {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {n} of {pairs} stale_checks after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_s = started.elapsed().as_secs_f64();
    println!(
        "throughput events={} sent_s={sent_s:.2} correlated_s={total_s:.2} events_per_s={:.0}",
        2 * pairs,
        2.0 * pairs as f64 / total_s
    );
    Ok(())
}

async fn latency(
    otlp: String,
    clickhouse: String,
    database: String,
    rate: u64,
    duration: Duration,
) -> Result<()> {
    const TICK: Duration = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let http = reqwest::Client::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut next = 0u64;
    let mut inflight = tokio::task::JoinSet::new();
    while started.elapsed() < duration {
        ticker.tick().await;
        let body = request("latency", next, per_tick);
        next += per_tick;
        let (http, otlp) = (http.clone(), otlp.clone());
        inflight.spawn(async move { post(&http, &otlp, body).await });
    }
    while let Some(r) = inflight.join_next().await {
        r??;
    }
    let sent = next;
    let query = |q: String| {
        let (http, clickhouse, database) = (http.clone(), clickhouse.clone(), database.clone());
        async move {
            let resp = http
                .post(format!("{clickhouse}/?database={database}"))
                .body(q)
                .send()
                .await?;
            let status = resp.status();
            let body = resp.text().await?;
            ensure!(status.is_success(), "{status}: {body}");
            Ok::<_, anyhow::Error>(body)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n: u64 = query(
            "SELECT count() FROM findings FINAL WHERE kind = 'stale_check' AND startsWith(resource, 'latency/')"
                .to_string(),
        )
        .await?
        .trim()
        .parse()
        .context("count")?;
        if n >= sent {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {n} of {sent} findings stored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let q = query(
        "SELECT quantilesExact(0.5, 0.9, 0.99)(toInt64(detected_at_ns) - toInt64(event_time_ns)) FROM findings FINAL \
         WHERE kind = 'stale_check' AND startsWith(resource, 'latency/')"
            .into(),
    )
    .await?;
    let ms: Vec<f64> = q
        .trim()
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|v| v.trim().parse::<f64>().unwrap_or(f64::NAN) / 1e6)
        .collect();
    println!(
        "latency pairs={sent} rate={rate}/s p50_ms={:.1} p90_ms={:.1} p99_ms={:.1}",
        ms[0], ms[1], ms[2]
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Throughput {
            otlp,
            metrics,
            pairs,
            batch,
            concurrency,
        } => throughput(otlp, metrics, pairs, batch, concurrency).await,
        Mode::Latency {
            otlp,
            clickhouse,
            database,
            rate,
            duration,
        } => latency(otlp, clickhouse, database, rate, duration).await,
    }
}
