//! The change-stream lag benchmark of issue 25, driven by `scripts/bench-cdc` (which owns
//! PostgreSQL and `toctou run --cdc-postgres`): writes row changes to PostgreSQL at a steady
//! rate, in transactions of `--batch` rows, and samples the reader's slot lag from
//! `/metrics` while it does (`toctou_cdc_slot_lag_seconds`: commit of the newest transaction
//! confirmed to its confirmation; `toctou_cdc_slot_lag_bytes`: WAL the database keeps for the
//! slot). At the end it waits until every change was read and prints the quantiles of the
//! lag samples, the rate reached and the time the reader took to catch up.
//!
//! Not a test: it prints measurements, and fails only when changes go missing.

use anyhow::{ensure, Context, Result};
use clap::Parser;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

#[derive(Parser)]
struct Cli {
    /// PostgreSQL URL (the same database `toctou run --cdc-postgres` reads).
    #[arg(long)]
    postgres: String,
    /// `/metrics` URL of that `toctou run`.
    #[arg(long)]
    metrics: String,
    /// The table written (created with `rows` rows; in the slot's publication).
    #[arg(long, default_value = "bench_cdc")]
    table: String,
    /// Row changes per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Rows per transaction.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    #[arg(long, default_value_t = 10_000)]
    rows: u64,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
}

async fn metric(client: &reqwest::Client, url: &str, series: &str) -> Result<f64> {
    let text = client.get(url).send().await?.text().await?;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .with_context(|| format!("no {series} on {url}"))?
        .trim()
        .parse()
        .context("a number")
}

const EVENTS: &str = "toctou_events_total{signal=\"cdc\",phase=\"audit\"}";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let (db, conn) = tokio_postgres::connect(&cli.postgres, NoTls).await?;
    tokio::spawn(conn);
    let http = reqwest::Client::new();
    let before = metric(&http, &cli.metrics, EVENTS).await?;

    // The sampler: the reader's lag every 200 ms until the reader has caught up.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (http, url, stop) = (http.clone(), cli.metrics.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seconds = Vec::new();
            let mut bytes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                match (
                    metric(&http, &url, "toctou_cdc_slot_lag_seconds").await,
                    metric(&http, &url, "toctou_cdc_slot_lag_bytes").await,
                ) {
                    (Ok(s), Ok(b)) => {
                        seconds.push(s);
                        bytes.push(b);
                    }
                    _ => return (seconds, bytes),
                }
            }
            (seconds, bytes)
        })
    };

    let interval = Duration::from_secs_f64(cli.batch as f64 / cli.rate as f64);
    let start = Instant::now();
    let mut next = start;
    let mut written = 0u64;
    let mut first = 0u64;
    let update = format!(
        "UPDATE {} SET n = n + 1, version = version + 1 WHERE id >= $1::bigint AND id < $1::bigint + $2::bigint",
        cli.table
    );
    while start.elapsed() < cli.duration {
        let n = db
            .execute(&update, &[&(first as i64), &(cli.batch as i64)])
            .await?;
        written += n;
        first = (first + cli.batch) % cli.rows.saturating_sub(cli.batch).max(1);
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    let wrote_for = start.elapsed();
    let done = Instant::now();
    loop {
        let read = metric(&http, &cli.metrics, EVENTS).await? - before;
        if read >= written as f64 {
            break;
        }
        ensure!(
            done.elapsed() < Duration::from_secs(120),
            "only {read} of {written} changes read 120 s after the writer stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = done.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut seconds, mut bytes) = sampler.await?;
    seconds.sort_by(f64::total_cmp);
    bytes.sort_by(f64::total_cmp);
    let q = |v: &[f64], p: f64| {
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "rate={:.0} changes_per_s written={written} lag_p50_s={:.3} lag_p99_s={:.3} lag_max_s={:.3} lag_bytes_p99={:.0} caught_up_s={:.3} samples={}",
        written as f64 / wrote_for.as_secs_f64(),
        q(&seconds, 0.5),
        q(&seconds, 0.99),
        seconds.last().copied().unwrap_or(0.0),
        q(&bytes, 0.99),
        caught_up.as_secs_f64(),
        seconds.len()
    );
    Ok(())
}
