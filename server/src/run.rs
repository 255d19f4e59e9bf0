//! `toctou run`: the whole pipeline in one process, in memory, with no external services.
//!
//! Receivers (OTLP gRPC, OTLP HTTP + audit webhook) decode requests into events and hand
//! them to a bounded channel; one correlator thread owns the engine (one owner, no lock on
//! the hot path) and publishes findings to the store, the JSON lines output and metrics.
//! When the channel is full the receivers push back (HTTP 503, gRPC UNAVAILABLE) instead of
//! queueing without bound.

use crate::access::{receivers_and_api, AccessArgs};
use crate::api::{self, Shared};
use crate::cli::ClickhouseArgs;
use crate::cli::{bind, CorrelatorArgs, ReceiverArgs};
use crate::findings::{self, FindingsSink, JsonLines, StoreSink};
use crate::infer::{InferArgs, InferShared};
use crate::risk_rows::RiskRows;
use crate::store::FindingStore;
use anyhow::{Context, Result};
#[cfg(feature = "cli")]
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use toctou_clickhouse::migrations;
use toctou_clickhouse::sink::{self, Sink, SinkConfig};
use toctou_collector::{ChannelSink, QueueBytes, Receivers};
use toctou_correlator::Engine;
use toctou_infer::Inference;
use toctou_schema::now_ns;
use toctou_schema::{Event, Finding};
use tokio::sync::{mpsc, watch};

use crate::cdc::{CdcArgs, CdcBatch, CdcMetrics, CdcOutput};
use crate::shutdown::{run_node, shutdown_signal, Progress, ShutdownArgs, Stage, Unflushed};

/// How often the correlator advances an idle watermark and publishes its stats.
const TICK: Duration = Duration::from_millis(100);
/// Decoded events waiting for the correlator, in bytes: at the decoding budget a 20 MiB
/// request may decode to hundreds of megabytes, and 1,024 of them queued would not fit
/// any machine; at this bound the receivers push back instead (503 / UNAVAILABLE).
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 256 << 20;

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct RunArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub receivers: ReceiverArgs,
    /// Findings API, page, /metrics and /healthz listen address.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_API_ADDR", default_value = "127.0.0.1:8686")
    )]
    pub api_addr: SocketAddr,
    /// API tokens, TLS and the loopback rule (server/src/access.rs).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub access: AccessArgs,
    /// Findings kept in memory for the API (oldest dropped first, counted).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_FINDINGS", default_value_t = crate::store::DEFAULT_MAX_FINDINGS))]
    pub max_findings: usize,
    /// Bytes of findings kept in memory for the API, strings and evidence counted (oldest
    /// dropped first, counted).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_FINDINGS_BYTES", default_value_t = crate::store::DEFAULT_MAX_FINDINGS_BYTES))]
    pub max_findings_bytes: usize,
    /// Append findings as JSON lines to this file instead of stdout.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_FINDINGS_FILE"))]
    pub findings_file: Option<PathBuf>,
    /// Decoded request batches waiting for the correlator; beyond it receivers push back.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_QUEUE_CAPACITY", default_value_t = 1024)
    )]
    pub queue_capacity: usize,
    /// Bytes of decoded events waiting for the correlator (strings counted); beyond it
    /// receivers push back, as at --queue-capacity.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_QUEUED_BYTES", default_value_t = DEFAULT_MAX_QUEUED_BYTES))]
    pub max_queued_bytes: usize,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub correlator: CorrelatorArgs,
    /// A database's change stream as audit records (--cdc-postgres, --cdc-debezium-topics).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub cdc: CdcArgs,
    /// Checks and uses inferred from database client spans (--infer, --infer-hold).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub infer: InferArgs,
    /// Where findings, events and inference's risks are also written, when
    /// `--clickhouse-url` is set.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub clickhouse: ClickhouseArgs,
    /// With --clickhouse-url: do not apply the schema migrations at start-up.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_NO_MIGRATE"))]
    pub no_migrate: bool,
    /// With --clickhouse-url: rows per insert at most.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_CLICKHOUSE_BATCH_ROWS", default_value_t = sink::DEFAULT_MAX_ROWS))]
    pub clickhouse_batch_rows: usize,
    /// With --clickhouse-url: the age of the oldest buffered row that triggers an insert.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_CLICKHOUSE_BATCH_AGE", default_value = "1s", value_parser = humantime::parse_duration))]
    pub clickhouse_batch_age: Duration,
    /// Also run the demo workloads against this process, so findings appear at once.
    #[cfg_attr(feature = "cli", arg(long))]
    pub demo: bool,
    /// With --demo: how long the demo traffic runs.
    #[cfg_attr(feature = "cli", arg(long, default_value = "30s", value_parser = humantime::parse_duration))]
    pub demo_duration: Duration,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub shutdown: ShutdownArgs,
}

/// The demo traffic of `--demo`: given this process's OTLP/gRPC address once it listens,
/// the `--demo-duration` and the ingest token, sends it. The binary provides it (the demo's
/// crate and the server's do not import each other).
pub type DemoTraffic =
    Box<dyn FnOnce(SocketAddr, Duration) -> futures::future::BoxFuture<'static, Result<()>> + Send>;

pub fn main(args: RunArgs, demo: DemoTraffic) -> Result<()> {
    run_node(None, run(args, Some(demo), shutdown_signal()))
}

/// The Kafka of `--cdc-debezium-topics` when `--cdc-debezium-bootstrap` is not given.
const DEFAULT_CDC_BOOTSTRAP: &str = "127.0.0.1:9092";

/// Runs until `shutdown` resolves. Binding happens first so that a port in use fails fast
/// with the address in the message. `demo` is what `--demo` sends (refused without one).
pub async fn run(
    args: RunArgs,
    demo: Option<DemoTraffic>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let (receiver_access, api_access) =
        receivers_and_api(&args.receivers, &args.access, "API", args.api_addr)?;
    if args.demo && receiver_access.tls.is_some() {
        anyhow::bail!("--demo sends in plain text: it cannot be used with --tls-cert");
    }
    let demo = match (args.demo, demo) {
        (true, Some(demo)) => Some(demo),
        (true, None) => anyhow::bail!("--demo: this build has no demo traffic"),
        (false, _) => None,
    };
    let engine = Engine::new(args.correlator.to_config()).context("invalid correlator flags")?;
    let inference = args.infer.enabled.then(|| {
        Inference::new(
            args.infer
                .config(args.cdc.enabled(), &args.cdc.version_column),
        )
    });
    let writer = JsonLines::open(args.findings_file.as_deref())?;
    let debezium_mapping = args.cdc.mapping(toctou_collector::debezium::SERVICE)?;
    let sink = start_sink(&args).await?;

    let (grpc, http) = args.receivers.bind().await?;
    let api_listener = bind(args.api_addr, "API").await?;

    let (tx, rx) = mpsc::channel::<Vec<Event>>(args.queue_capacity.max(1));
    // Only to count what is still queued should the shutdown deadline pass.
    let queue_probe = tx.clone();
    if args.max_queued_bytes == 0 {
        anyhow::bail!("--max-queued-bytes must be greater than zero");
    }
    let queue_bytes = QueueBytes::new(args.max_queued_bytes);
    let receivers = Receivers::new(
        Arc::new(ChannelSink::new(tx).with_queue_bytes(queue_bytes.clone())),
        args.receivers.to_config()?,
    )
    .with_debezium(debezium_mapping);

    let shared = Arc::new(Shared {
        store: RwLock::new(FindingStore::bounded(
            args.max_findings,
            args.max_findings_bytes,
        )),
        stats: Mutex::new(engine.stats().clone()),
        receivers: receivers.clone(),
        started_ns: now_ns(),
        sink: sink.as_ref().map(Sink::metrics),
        cdc: args.cdc.enabled().then(|| Arc::new(CdcMetrics::default())),
        access: api_access,
        queue: queue_probe.downgrade(),
        queue_bytes,
        inference: inference.as_ref().map(|_| Arc::new(InferShared::default())),
    });

    // Sent the shutdown deadline once the servers are done, so every request they accepted
    // is in the queue: the channel alone cannot say so, as `Shared` (which the correlator
    // holds) keeps a sender alive for the metrics.
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<std::time::Instant>();
    let progress = Arc::new(Progress::default());
    // One change-stream batch at a time: the reader waits for each to be stored anyway.
    let (cdc_tx, cdc_rx) = mpsc::channel::<CdcBatch>(1);
    let cdc_tasks = match &shared.cdc {
        Some(metrics) => args.cdc.spawn(
            DEFAULT_CDC_BOOTSTRAP,
            CdcOutput::Correlator {
                tx: cdc_tx,
                row_images: inference.is_some(),
            },
            shared.receivers.metrics().clone(),
            metrics.clone(),
        )?,
        None => {
            drop(cdc_tx);
            Vec::new()
        }
    };
    let correlator = {
        let shared = shared.clone();
        let progress = progress.clone();
        let timeout = args.shutdown.shutdown_timeout;
        std::thread::Builder::new()
            .name("toctou-correlator".into())
            .spawn(move || {
                correlate(
                    Stages { engine, inference },
                    rx,
                    cdc_rx,
                    drained_rx,
                    shared,
                    writer,
                    sink,
                    &progress,
                    timeout,
                )
            })
            .context("starting the correlator thread")?
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tracing::info!(
        otlp_grpc = %grpc.local_addr()?, otlp_http = %http.local_addr()?, api = %api_listener.local_addr()?,
        "toctou run listening"
    );
    // The demo sends to the bound address: the configured one may be port 0.
    let grpc_addr = grpc.local_addr()?;
    let grpc_task = tokio::spawn(receiver_access.clone().serve_grpc(
        grpc,
        receivers.clone(),
        stopped(stop_rx.clone()),
    ));
    let http_task =
        tokio::spawn(receiver_access.serve_http(http, receivers.clone(), stopped(stop_rx.clone())));
    let api_task = tokio::spawn(api::serve(
        api_listener,
        shared.clone(),
        crate::metrics::run_registry(&shared),
        stopped(stop_rx.clone()),
    ));
    drop(receivers);

    let demo_task = demo.map(|demo| {
        let traffic = demo(grpc_addr, args.demo_duration);
        tokio::spawn(async move {
            if let Err(err) = traffic.await {
                tracing::error!(error = %format!("{err:#}"), "demo traffic failed");
            }
        })
    });

    shutdown.await;
    let timeout = args.shutdown.shutdown_timeout;
    let deadline = args.shutdown.deadline();
    tracing::info!(timeout = %humantime::format_duration(timeout), "shutting down: no new requests, draining the correlator");
    if let Some(d) = demo_task {
        d.abort();
    }
    // What it read and did not see stored stays unconfirmed: the next start reads it again.
    for c in cdc_tasks {
        c.abort();
    }
    let _ = stop_tx.send(true);
    let stopping = async {
        // The listeners close at once; requests in flight are answered.
        let (g, h, a) = tokio::join!(grpc_task, http_task, api_task);
        g.context("gRPC server task")?.context("gRPC server")?;
        h.context("HTTP server task")?.context("HTTP server")?;
        a.context("API server task")?.context("API server")?;
        // No request is in flight any more: the correlator drains the queue, flushes the
        // engine and the sinks, and ends.
        let _ = drained_tx.send(deadline);
        tokio::task::spawn_blocking(move || correlator.join())
            .await
            .context("joining the correlator")?
            .map_err(|_| anyhow::anyhow!("the correlator thread panicked"))
    };
    let sink_stats = match tokio::time::timeout_at(deadline.into(), stopping).await {
        Ok(stopped) => stopped?,
        Err(_) => {
            return Err(Unflushed {
                timeout,
                stage: progress.get(),
                queued_batches: queue_probe.max_capacity() - queue_probe.capacity(),
                sink_backlog_rows: shared.sink.as_ref().map(|m| m.backlog_rows()),
            }
            .into())
        }
    };
    if let Some(stats) = sink_stats.filter(|s| s.rows_failed > 0) {
        anyhow::bail!(
            "{} rows (findings, events and risks) could not be written to ClickHouse by the shutdown deadline ({} written)",
            stats.rows_failed,
            stats.findings_written + stats.events_written + stats.risks_written
        );
    }
    tracing::info!(
        seconds = (timeout
            .saturating_sub(deadline.saturating_duration_since(std::time::Instant::now())))
        .as_secs_f64(),
        "stopped: everything accepted was correlated and flushed"
    );
    Ok(())
}

/// With `--clickhouse-url`: migrates (unless `--no-migrate`) and starts the sink thread.
async fn start_sink(args: &RunArgs) -> Result<Option<Sink>> {
    let ch = &args.clickhouse.config();
    if ch.url.is_none() {
        return Ok(None);
    }
    if !args.no_migrate {
        let report = migrations::migrate(&ch.server_client(), &ch.client(), &ch.database)
            .await
            .with_context(|| format!("migrating {} at {}", ch.database, ch.shown_url()))?;
        tracing::info!(url = %ch.shown_url(), database = %ch.database, version = report.version, applied = ?report.applied, "clickhouse schema ready");
    }
    let config = SinkConfig {
        max_rows: args.clickhouse_batch_rows.max(1),
        max_age: args.clickhouse_batch_age,
        ..SinkConfig::default()
    };
    let sink = Sink::spawn(ch.client(), config).context("starting the clickhouse sink thread")?;
    Ok(Some(sink))
}

/// The correlator loop: the only owner of the engine. Runs on its own thread (with a
/// single-threaded runtime for its timer) so that a burst of correlation never delays the
/// receivers' reactor. Returns what the ClickHouse sink wrote, if there is one.
#[allow(clippy::too_many_arguments)]
fn correlate(
    mut stages: Stages,
    mut rx: mpsc::Receiver<Vec<Event>>,
    mut cdc: mpsc::Receiver<CdcBatch>,
    mut servers_done: tokio::sync::oneshot::Receiver<std::time::Instant>,
    shared: Arc<Shared>,
    mut writer: JsonLines,
    sink: Option<Sink>,
    progress: &Progress,
    timeout: Duration,
) -> Option<sink::SinkStats> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the correlator's runtime");
            return None;
        }
    };
    let mut out = Vec::new();
    let mut deadline = None;
    let mut feed = sink.as_ref().map(|sink| SinkFeed {
        sink,
        pending: sink::Handover::default(),
        risks: RiskRows::new(now_ns()),
    });
    runtime.block_on(async {
        let mut cdc_open = true;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let ticked = tokio::select! {
                // The tick first: under a steady flood of batches it must still run, since it
                // publishes stats and advances the watermark.
                biased;
                _ = ticker.tick() => {
                    stages.tick(now_ns(), &mut out, feed.as_mut());
                    *shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = stages.engine.stats().clone();
                    stages.share(&shared, false, feed.as_mut());
                    true
                }
                batch = rx.recv() => match batch {
                    Some(batch) => {
                        ingest(&mut stages, batch, &shared.queue_bytes, &mut out, feed.as_mut());
                        false
                    }
                    None => break,
                },
                batch = cdc.recv(), if cdc_open => {
                    match batch {
                        Some(batch) => ingest_cdc(&mut stages, batch, &mut out, feed.as_mut()),
                        None => cdc_open = false,
                    }
                    false
                }
                done = &mut servers_done => {
                    deadline = done.ok();
                    progress.set(Stage::Draining);
                    while let Ok(batch) = rx.try_recv() {
                        ingest(&mut stages, batch, &shared.queue_bytes, &mut out, feed.as_mut());
                    }
                    break;
                }
            };
            stages.annotate(&mut out);
            publish(&mut out, &shared, &mut writer, feed.as_mut());
            if let Some(feed) = feed.as_mut().filter(|_| ticked) {
                feed.hand_over();
            }
        }
    });
    // Input is closed for good: this process keeps its state in memory only, so whatever
    // it does not decide now is lost. End of input, as `toctou replay` ends (and as
    // docs/CORRELATOR.md specifies): the buffer drains and every timer fires, so a check
    // still waiting for its use is reported as the replay of the same accepted requests
    // reports it. (Distributed mode does not do this: there a partition's next owner
    // rebuilds the state from Kafka, and early orphans would be false.)
    progress.set(Stage::Flushing);
    stages.flush(now_ns(), &mut out, feed.as_mut());
    stages.annotate(&mut out);
    stages.share(&shared, true, feed.as_mut());
    publish(&mut out, &shared, &mut writer, feed.as_mut());
    if let Some(feed) = feed.as_mut() {
        feed.hand_over();
    }
    *shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = stages.engine.stats().clone();
    if let Err(err) = writer.flush() {
        tracing::error!(error = %err, "flushing the findings output at shutdown failed");
    }
    progress.set(Stage::Sinks);
    let stats = sink.map(|sink| {
        let stats = match deadline {
            Some(deadline) => sink.close_by(crate::shutdown::sink_deadline(deadline, timeout)),
            None => sink.close(),
        };
        tracing::info!(
            findings = stats.findings_written,
            events = stats.events_written,
            risks = stats.risks_written,
            failed = stats.rows_failed,
            retries = stats.retries,
            "clickhouse sink flushed"
        );
        stats
    });
    progress.set(Stage::Done);
    stats
}

/// The ClickHouse sink and the rows gathered for it since the last hand-over (see
/// [`sink::Handover`] for why they are gathered), with the risks' counts already written.
struct SinkFeed<'a> {
    sink: &'a Sink,
    pending: sink::Handover,
    risks: RiskRows,
}

/// Findings are gathered with the events and handed over with them when due.
impl FindingsSink for SinkFeed<'_> {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    fn publish(&mut self, findings: &[toctou_schema::Finding]) -> std::io::Result<()> {
        self.pending.add_findings(findings);
        self.hand_over_if_due();
        Ok(())
    }
}

impl SinkFeed<'_> {
    /// Blocks while ClickHouse is behind and the sink's channel is full: the push-back.
    fn hand_over(&mut self) {
        self.sink.hand_over(&mut self.pending);
    }

    fn hand_over_if_due(&mut self) {
        if self.pending.due() {
            self.hand_over();
        }
    }
}

/// The correlator thread's stages: inference (with `--infer`), then the engine.
struct Stages {
    engine: Engine,
    inference: Option<Inference>,
}

/// How often the correlator thread publishes inference's risks (a copy of every entry).
const RISKS_EVERY_NS: u64 = 1_000_000_000;

impl Stages {
    /// One event from the receivers: a database call to inference, anything else to the
    /// engine (a toctou span also tells inference its request is instrumented).
    fn ingest(&mut self, event: Event, now: u64, derived: &mut Vec<Event>, out: &mut Vec<Finding>) {
        match (&mut self.inference, event) {
            (Some(inference), Event::Db(d)) => inference.on_db(d, now, derived),
            (None, Event::Db(_)) => {}
            (inference, event) => {
                if let (Some(inference), Event::Span(s)) = (inference, &event) {
                    inference.on_toctou_span(s.trace_id);
                }
                self.engine.ingest(event, now, out)
            }
        }
    }

    /// What inference made, to the engine (and its checks and uses to ClickHouse's events:
    /// the change records are stored as they arrive).
    fn derived(
        &mut self,
        derived: &mut Vec<Event>,
        now: u64,
        out: &mut Vec<Finding>,
        feed: Option<&mut SinkFeed>,
    ) {
        if derived.is_empty() {
            return;
        }
        if let Some(feed) = feed {
            for span in derived.iter().filter(|e| matches!(e, Event::Span(_))) {
                feed.pending.add_events(std::slice::from_ref(span));
            }
            feed.hand_over_if_due();
        }
        for event in derived.drain(..) {
            self.engine.ingest(event, now, out);
        }
    }

    fn tick(&mut self, now: u64, out: &mut Vec<Finding>, feed: Option<&mut SinkFeed>) {
        if let Some(inference) = &mut self.inference {
            let mut derived = Vec::new();
            inference.tick(now, &mut derived);
            self.derived(&mut derived, now, out, feed);
        }
        self.engine.tick(now, out);
    }

    fn flush(&mut self, now: u64, out: &mut Vec<Finding>, feed: Option<&mut SinkFeed>) {
        if let Some(inference) = &mut self.inference {
            let mut derived = Vec::new();
            inference.flush(&mut derived);
            self.derived(&mut derived, now, out, feed);
        }
        self.engine.flush(now, out);
    }

    fn annotate(&self, out: &mut [Finding]) {
        if let Some(inference) = &self.inference {
            inference.annotate(out);
        }
    }

    /// Publishes inference's counts (every tick) and risks (every second, or `now`), and
    /// with ClickHouse gathers the risks' rows (every minute, or `now`: [`RiskRows`]).
    fn share(&mut self, shared: &Shared, now: bool, feed: Option<&mut SinkFeed>) {
        let (Some(inference), Some(to)) = (&self.inference, &shared.inference) else {
            return;
        };
        *to.stats.lock().unwrap_or_else(|e| e.into_inner()) = inference.stats();
        let mut risks = to.risks.lock().unwrap_or_else(|e| e.into_inner());
        let at = now_ns();
        if now || at.saturating_sub(risks.published_ns) >= RISKS_EVERY_NS {
            *risks = inference.risks();
            risks.published_ns = at;
            if let Some(feed) = feed.filter(|f| now || f.risks.due(at)) {
                feed.pending.add_risks(feed.risks.rows(&risks, at));
            }
        }
    }
}

/// One batch taken off the queue: to the ClickHouse feed and the stages, then its bytes
/// given back to the queue's bound. The sink gets the events before the engine consumes
/// them; handing them over blocks while ClickHouse is behind, which is what makes ingest
/// push back.
fn ingest(
    stages: &mut Stages,
    batch: Vec<Event>,
    queue_bytes: &QueueBytes,
    out: &mut Vec<Finding>,
    mut feed: Option<&mut SinkFeed>,
) {
    let charge = queue_bytes.charge(&batch);
    if let Some(feed) = feed.as_deref_mut() {
        feed.pending.add_events(&batch);
        feed.hand_over_if_due();
    }
    let now = now_ns();
    let mut derived = Vec::new();
    for event in batch {
        stages.ingest(event, now, &mut derived, out);
    }
    stages.derived(&mut derived, now, out, feed);
    queue_bytes.give_back(charge);
}

/// A batch of the change stream: to the ClickHouse feed and the stages, then handed to the
/// sink at once with a barrier behind it, which the reader waits for before it confirms the
/// slot's position (`crate::cdc`). With inference, its records go through it: they reach the
/// engine once the request that made each is known, or the hold ran out.
fn ingest_cdc(
    stages: &mut Stages,
    batch: CdcBatch,
    out: &mut Vec<Finding>,
    mut feed: Option<&mut SinkFeed>,
) {
    let CdcBatch {
        events,
        changes,
        stored,
    } = batch;
    let barrier = feed.as_deref_mut().map(|feed| {
        feed.pending.add_events(&events);
        feed.hand_over();
        feed.sink.barrier()
    });
    let now = now_ns();
    match &mut stages.inference {
        Some(inference) => {
            let mut derived = Vec::new();
            let mut changes = changes.into_iter();
            for event in events {
                match event {
                    Event::Audit(a) => inference.on_change(a, changes.next(), now, &mut derived),
                    other => derived.push(other),
                }
            }
            stages.derived(&mut derived, now, out, feed);
        }
        None => {
            for event in events {
                stages.engine.ingest(event, now, out);
            }
        }
    }
    let _ = stored.send(barrier);
}

/// The findings decided since the last call, to the store, the JSON lines and (with
/// `--clickhouse-url`) ClickHouse.
fn publish(
    out: &mut Vec<Finding>,
    shared: &Shared,
    writer: &mut JsonLines,
    feed: Option<&mut SinkFeed>,
) {
    let mut store = StoreSink(&shared.store);
    match feed {
        Some(feed) => findings::publish(out, &mut [feed, writer, &mut store]),
        None => findings::publish(out, &mut [writer, &mut store]),
    }
}
