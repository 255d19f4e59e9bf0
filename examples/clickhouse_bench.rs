//! The ClickHouse sink benchmark of issue 3, driven by `scripts/bench-clickhouse`.
//!
//! Owns the measuring half of that script (the script owns the server and `toctou run`):
//! - `sink`: rows per second through the real sink (`toctou-clickhouse`'s `rows` and
//!   `sink`), for one table and one batch size;
//! - `flood`: OTLP/HTTP spans as fast as `toctou run` takes them, until it pushes back
//!   (HTTP 503) steadily, so the script can read the process's peak RSS at that point;
//! - `latency`: a steady OTLP/HTTP span rate in which some uses have no check, and a poller
//!   that notes when each resulting `unchecked_use` finding becomes visible in ClickHouse.
//!
//! Not a test: it prints measurements, and fails only when the sink loses rows or the
//! server cannot be reached.

use toctou_clickhouse::sink;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use toctou_schema::{Event, Finding};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Rows per second through the sink into one table.
    Sink {
        /// ClickHouse HTTP URL; the schema must already be migrated.
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "toctou")]
        database: String,
        /// `events` or `findings`.
        #[arg(long)]
        table: String,
        /// The sink's rows per insert.
        #[arg(long)]
        batch_rows: usize,
        /// Rows sent in total.
        #[arg(long)]
        rows: usize,
        /// A scenario directory whose input.jsonl and expected.jsonl give the row templates.
        #[arg(long, default_value = "testdata/scenarios/stale_check_versions")]
        scenario: PathBuf,
    },
    /// Spans as fast as accepted until `refusals` answers in a row are 503.
    Flood {
        /// OTLP/HTTP base URL of `toctou run`, e.g. http://127.0.0.1:4318.
        #[arg(long)]
        otlp: String,
        #[arg(long, default_value_t = 500)]
        spans_per_request: usize,
        #[arg(long, default_value_t = 50)]
        refusals: usize,
        /// Give up after this long without steady push-back.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// A steady span rate; p50/p99 of use span sent → finding row visible.
    Latency {
        #[arg(long)]
        otlp: String,
        /// ClickHouse HTTP URL to poll.
        #[arg(long)]
        clickhouse: String,
        #[arg(long, default_value = "toctou")]
        database: String,
        /// Spans per second (checks and uses).
        #[arg(long, default_value_t = 10_000)]
        rate: usize,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// One use in this many has no check (and becomes an `unchecked_use` finding).
        #[arg(long, default_value_t = 50)]
        unchecked_every: usize,
        /// Checked-only traffic sent after the measured window (see `latency`).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        tail: Duration,
        /// How often ClickHouse is polled for new findings.
        #[arg(long, default_value = "25ms", value_parser = humantime::parse_duration)]
        poll: Duration,
    },
}

fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Sink {
            url,
            database,
            table,
            batch_rows,
            rows,
            scenario,
        } => sink_throughput(&url, &database, &table, batch_rows, rows, &scenario),
        Mode::Flood {
            otlp,
            spans_per_request,
            refusals,
            timeout,
        } => runtime()?.block_on(flood(&otlp, spans_per_request, refusals, timeout)),
        Mode::Latency {
            otlp,
            clickhouse,
            database,
            rate,
            duration,
            unchecked_every,
            tail,
            poll,
        } => runtime()?.block_on(latency(
            &otlp,
            &clickhouse,
            &database,
            rate,
            duration,
            unchecked_every,
            tail,
            poll,
        )),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

use toctou_schema::now_ns;

/// The client `toctou run` builds (`ClickhouseArgs::client`): no compression, no validation.
fn client(url: &str, database: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(url)
        .with_database(database)
        .with_compression(clickhouse::Compression::None)
        .with_validation(false)
}

fn sink_throughput(
    url: &str,
    database: &str,
    table: &str,
    batch_rows: usize,
    rows: usize,
    scenario: &std::path::Path,
) -> Result<()> {
    // Rows are built before the clock starts; the sink's own mapping to RowBinary rows
    // (done on the caller's side of the channel) is timed, as it is in `toctou run`.
    let (events, findings) = templates(scenario)?;
    let config = sink::SinkConfig {
        max_rows: batch_rows,
        ..sink::SinkConfig::default()
    };
    // `toctou run` hands the sink what one correlator batch produced: up to 1024 at a time.
    const CHUNK: usize = 1024;
    let sink = sink::Sink::spawn(client(url, database), config)?;
    let mut sent = 0usize;
    match table {
        "events" => {
            let all: Vec<Event> = (0..rows)
                .map(|i| vary_event(&events[i % events.len()], i as u64))
                .collect();
            let started_sending = Instant::now();
            for chunk in all.chunks(CHUNK) {
                ensure!(sink.events(chunk), "the sink thread ended early");
                sent += chunk.len();
            }
            report_sink(table, batch_rows, sent, sink, started_sending)
        }
        "findings" => {
            let all: Vec<Finding> = (0..rows)
                .map(|i| vary_finding(&findings[i % findings.len()], i as u64))
                .collect();
            let started_sending = Instant::now();
            for chunk in all.chunks(CHUNK) {
                ensure!(sink.findings(chunk), "the sink thread ended early");
                sent += chunk.len();
            }
            report_sink(table, batch_rows, sent, sink, started_sending)
        }
        other => {
            drop(sink);
            bail!("unknown table {other:?}: expected events or findings")
        }
    }
}

fn report_sink(
    table: &str,
    batch_rows: usize,
    sent: usize,
    sink: sink::Sink,
    started: Instant,
) -> Result<()> {
    let stats = sink.close();
    let secs = started.elapsed().as_secs_f64();
    let written = match table {
        "events" => stats.events_written,
        _ => stats.findings_written,
    };
    ensure!(
        written == sent as u64 && stats.rows_failed == 0,
        "the sink wrote {written} of {sent} rows ({stats:?})"
    );
    println!(
        "sink table={table} batch_rows={batch_rows} rows={sent} seconds={secs:.3} rows_per_s={:.0} retries={}",
        sent as f64 / secs,
        stats.retries
    );
    Ok(())
}

fn templates(scenario: &std::path::Path) -> Result<(Vec<Event>, Vec<Finding>)> {
    let input = scenario.join("input.jsonl");
    let events = toctou_collector::read_replay_file(&input)
        .with_context(|| format!("reading {}", input.display()))?
        .events;
    let expected = scenario.join("expected.jsonl");
    let text = std::fs::read_to_string(&expected)
        .with_context(|| format!("reading {}", expected.display()))?;
    let findings = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str::<Finding>)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", expected.display()))?;
    ensure!(
        !events.is_empty() && !findings.is_empty(),
        "{} has no events or no findings",
        scenario.display()
    );
    Ok((events, findings))
}

/// A distinct row per index (its own time, resource and identity), so the table holds what
/// a real stream would, and no two rows collapse into one when ClickHouse merges parts.
fn vary_event(template: &Event, i: u64) -> Event {
    let mut e = template.clone();
    match &mut e {
        Event::Span(s) => {
            s.start_ns += i * 1_000;
            s.end_ns += i * 1_000;
            s.resource = format!("inventory/sku-{}", i % 100_000);
            s.span_id = i.to_be_bytes();
        }
        Event::Audit(a) => {
            a.time_ns += i * 1_000;
            a.resource = format!("inventory/sku-{}", i % 100_000);
            a.span_id = i.to_be_bytes();
            a.source_id = Some(format!("bench-{i}"));
        }
        // Never stored: the templates are spans and audit records.
        Event::Db(_) => {}
    }
    e
}

fn vary_finding(template: &Finding, i: u64) -> Finding {
    let mut f = template.clone();
    f.id = format!(
        "{:032x}",
        u128::from(i) << 64 | u128::from(rand::random::<u64>())
    );
    f.event_time_ns += i * 1_000;
    f.detected_at_ns += i * 1_000;
    f.resource = format!("inventory/sku-{}", i % 100_000);
    f
}

fn hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
        .collect()
}

fn span(phase: &str, trace: &str, resource: &str, version: u64, start_ns: u64) -> Value {
    json!({
        "traceId": trace,
        "spanId": hex(16),
        "name": phase,
        "kind": 1,
        "startTimeUnixNano": start_ns.to_string(),
        "endTimeUnixNano": (start_ns + 1_000).to_string(),
        "attributes": [
            {"key": "toctou.phase", "value": {"stringValue": phase}},
            {"key": "toctou.resource", "value": {"stringValue": resource}},
            {"key": "toctou.resource.version", "value": {"intValue": version.to_string()}},
        ]
    })
}

/// One OTLP/HTTP JSON request of `pairs` check-and-use pairs on random resources, times
/// now; every `unchecked_every`-th pair (counted by `counter`) loses its check.
fn request(pairs: usize, unchecked_every: usize, counter: &mut usize) -> Value {
    let mut rng = rand::thread_rng();
    let now = now_ns();
    let mut spans = Vec::with_capacity(pairs * 2);
    for _ in 0..pairs {
        let trace = hex(32);
        let resource = format!("inventory/sku-{}", rng.gen_range(0..100_000));
        *counter += 1;
        if *counter % unchecked_every.max(1) != 0 {
            spans.push(span(
                "check",
                &trace,
                &resource,
                1,
                now.saturating_sub(2_000),
            ));
        }
        spans.push(span("use", &trace, &resource, 1, now));
    }
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "bench"}}]},
        "scopeSpans": [{"scope": {"name": "bench"}, "spans": spans}]
    }]})
}

async fn post(http: &reqwest::Client, otlp: &str, body: &Value) -> Result<reqwest::StatusCode> {
    Ok(http
        .post(format!("{otlp}/v1/traces"))
        .json(body)
        .send()
        .await?
        .status())
}

async fn flood(
    otlp: &str,
    spans_per_request: usize,
    refusals: usize,
    timeout: Duration,
) -> Result<()> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let (mut accepted, mut refused, mut in_a_row, mut counter) = (0usize, 0usize, 0usize, 0);
    let mut first_refusal: Option<f64> = None;
    while in_a_row < refusals {
        ensure!(
            started.elapsed() < timeout,
            "no steady push-back within {timeout:?} ({accepted} spans accepted)"
        );
        let body = request(spans_per_request / 2, 50, &mut counter);
        let status = post(&http, otlp, &body).await?;
        if status.is_success() {
            accepted += spans_per_request;
            in_a_row = 0;
        } else if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            first_refusal.get_or_insert(started.elapsed().as_secs_f64());
            refused += 1;
            in_a_row += 1;
            // A client backs off when refused; this one retries soon, like an exporter.
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            bail!("toctou run answered {status}");
        }
    }
    println!(
        "flood spans_accepted={accepted} requests_refused={refused} first_refusal_s={:.2} seconds={:.2}",
        first_refusal.unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn latency(
    otlp: &str,
    ch: &str,
    database: &str,
    rate: usize,
    duration: Duration,
    unchecked_every: usize,
    tail: Duration,
    poll: Duration,
) -> Result<()> {
    // 100 requests a second; each carries rate/100 spans (half checks, half uses).
    const TICK: Duration = Duration::from_millis(10);
    let pairs = (rate / 100 / 2).max(1);
    let http = reqwest::Client::new();
    let seen: Seen = Default::default();
    let poller = tokio::spawn(poll_findings(
        ch.to_owned(),
        database.to_owned(),
        poll,
        seen.clone(),
    ));
    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut sent, mut refused, mut counter) = (0usize, 0usize, 0usize);
    let mut inflight = tokio::task::JoinSet::new();
    // After the measured window the same traffic goes on, with every use checked, so the
    // last measured uses are passed by the watermark of steady input as the others were,
    // not by its idle advance (which waits a further allowed lateness).
    let mut expected = 0;
    while started.elapsed() < duration + tail {
        ticker.tick().await;
        let every = if started.elapsed() < duration {
            unchecked_every
        } else {
            if expected == 0 {
                expected = counter / unchecked_every.max(1);
            }
            usize::MAX
        };
        let body = request(pairs, every, &mut counter);
        let spans = pairs * 2 - pairs / every.max(1);
        let (http, otlp) = (http.clone(), otlp.to_owned());
        inflight.spawn(async move { (post(&http, &otlp, &body).await, spans) });
        // A bounded number of requests in flight, like an exporter's.
        while inflight.len() > 16 {
            if let Some(done) = inflight.join_next().await {
                let (status, spans) = done?;
                if status?.is_success() {
                    sent += spans;
                } else {
                    refused += 1;
                }
            }
        }
    }
    while let Some(done) = inflight.join_next().await {
        let (status, spans) = done?;
        if status?.is_success() {
            sent += spans;
        } else {
            refused += 1;
        }
    }
    let send_secs = started.elapsed().as_secs_f64();
    // The last findings need the watermark to pass them, the batch age and a poll.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && seen_count(&seen) < expected {
        ensure!(
            !poller.is_finished(),
            "polling clickhouse failed: {:?}",
            poller.await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    poller.abort();
    let mut lat: Vec<f64> = seen
        .lock()
        .map(|m| m.values().copied().collect())
        .unwrap_or_default();
    ensure!(!lat.is_empty(), "no finding became visible in ClickHouse");
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    println!(
        "latency spans_per_s={:.0} requests_refused={refused} findings_expected={expected} findings_seen={} p50_ms={:.0} p99_ms={:.0} max_ms={:.0}",
        sent as f64 / send_secs,
        lat.len(),
        q(0.50),
        q(0.99),
        lat[lat.len() - 1]
    );
    Ok(())
}

type Seen = std::sync::Arc<std::sync::Mutex<HashMap<String, f64>>>;

fn seen_count(seen: &Seen) -> usize {
    seen.lock().map(|m| m.len()).unwrap_or_default()
}

/// Polls `findings` for new `unchecked_use` rows and notes, per finding, the time from its
/// use span's start (set to the moment it was sent) to the poll that first saw it.
async fn poll_findings(ch: String, database: String, every: Duration, seen: Seen) -> Result<()> {
    let http = reqwest::Client::new();
    let since = now_ns();
    loop {
        let query = format!(
            "SELECT id, use_time_ns FROM {database}.findings WHERE kind = 'unchecked_use' \
             AND service = 'bench' AND use_time_ns >= {since} FORMAT TabSeparated"
        );
        let body = http.post(&ch).body(query).send().await?;
        ensure!(
            body.status().is_success(),
            "clickhouse answered {}",
            body.status()
        );
        let text = body.text().await?;
        let at = now_ns();
        if let Ok(mut map) = seen.lock() {
            for line in text.lines() {
                let mut cols = line.split('\t');
                if let (Some(id), Some(Ok(t))) = (cols.next(), cols.next().map(str::parse::<u64>)) {
                    map.entry(id.to_owned())
                        .or_insert_with(|| at.saturating_sub(t) as f64 / 1e6);
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}
