//! `toctou correlator`: a member of a Kafka consumer group that runs one correlator engine
//! per assigned partition and writes findings and events to ClickHouse through the sink of
//! `toctou run`.
//!
//! One thread polls the consumer and owns the partitions' engines (one owner, as in `toctou
//! run`; the mutex around them is only ever contended by librdkafka's rebalance callbacks,
//! which run on this same thread inside `poll`). Each engine has its own watermark, so an
//! idle partition never holds back another: its engine advances on wall-clock ticks alone.
//!
//! Offsets: every `--commit-interval` the thread takes, per partition, the point the ledger
//! allows (see `offsets`) together with how many rows it had handed to the sink, and commits
//! the newest such point once the sink has written at least that many rows, so a committed
//! offset never runs ahead of what ClickHouse durably holds. On revocation it waits (up to
//! `--revoke-deadline`) for the sink to write everything handed to it, commits the
//! partition's current point, and drops the engine; the next owner rebuilds from there.
//! Nothing is flushed early on revocation: expiring pending checks would report false
//! orphans.

use super::codec::{self, CodecError};
use super::metrics::{ConsumerMetrics, DecodeFailure};
use super::offsets::{CommitPoint, Ledger, Replay};
use super::{admin, KafkaArgs};
use crate::clickhouse::sink::{Sink, SinkConfig, SinkMetrics, Table};
use crate::clickhouse::{migrations, ClickhouseArgs};
use anyhow::{Context, Result};
use axum::routing::get;
use axum::Router;
use clap::Args;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use toctou_correlator::{Engine, Stats};
use toctou_schema::Finding;

/// How often engines advance idle watermarks and publish stats (as in `toctou run`).
const TICK: Duration = Duration::from_millis(100);
/// Commit points waiting for the sink; beyond it the oldest is dropped (a newer one covers it).
const MAX_PENDING_POINTS: usize = 64;
/// How long the consumer's metadata calls (committed offsets) may take.
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct CorrelatorNodeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The consumer group all correlators of one deployment share.
    #[arg(
        long = "kafka-group",
        env = "TOCTOU_KAFKA_GROUP",
        default_value = "toctou-correlator"
    )]
    pub group: String,
    /// /metrics and /healthz listen address.
    #[arg(long, env = "TOCTOU_API_ADDR", default_value = "127.0.0.1:8687")]
    pub api_addr: SocketAddr,
    /// How often offsets are committed (as far as ClickHouse has caught up).
    #[arg(long, env = "TOCTOU_COMMIT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub commit_interval: Duration,
    /// How long the group waits for a silent member before giving its partitions away
    /// (the broker accepts 6s to 30m by default).
    #[arg(long, env = "TOCTOU_KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,
    /// On revocation, how long to wait for ClickHouse to take the partition's findings
    /// before committing the last point it did take.
    #[arg(long, env = "TOCTOU_REVOKE_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub revoke_deadline: Duration,
    #[command(flatten)]
    pub correlator: crate::cli::CorrelatorArgs,
    /// Where findings and events are written (required).
    #[command(flatten)]
    pub clickhouse: ClickhouseArgs,
    /// Do not apply the schema migrations at start-up.
    #[arg(long, env = "TOCTOU_NO_MIGRATE")]
    pub no_migrate: bool,
    /// Rows per insert at most.
    #[arg(long, env = "TOCTOU_CLICKHOUSE_BATCH_ROWS", default_value_t = crate::clickhouse::sink::DEFAULT_MAX_ROWS)]
    pub clickhouse_batch_rows: usize,
    /// The age of the oldest buffered row that triggers an insert.
    #[arg(long, env = "TOCTOU_CLICKHOUSE_BATCH_AGE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub clickhouse_batch_age: Duration,
}

pub fn main(args: CorrelatorNodeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("toctou-io")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args, crate::run::shutdown_signal()))
}

pub async fn run(
    args: CorrelatorNodeArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let config = args.correlator.to_config();
    Engine::new(config.clone()).context("invalid correlator flags")?;
    let ch = &args.clickhouse;
    ch.require_url()
        .context("toctou correlator writes findings to ClickHouse")?;
    let kafka = args.kafka.clone();
    let partitions = tokio::task::spawn_blocking(move || admin::partition_count(&kafka))
        .await
        .context("checking the topic")??;
    if !args.no_migrate {
        let report = migrations::migrate(&ch.server_client(), &ch.client(), &ch.database)
            .await
            .with_context(|| format!("migrating {} at {}", ch.database, ch.shown_url()))?;
        tracing::info!(url = %ch.shown_url(), version = report.version, "clickhouse schema ready");
    }
    let sink_config = SinkConfig {
        max_rows: args.clickhouse_batch_rows.max(1),
        max_age: args.clickhouse_batch_age,
        ..SinkConfig::default()
    };
    let sink =
        Sink::spawn(ch.client(), sink_config).context("starting the clickhouse sink thread")?;
    let sink_metrics = sink.metrics();
    let metrics = Arc::new(ConsumerMetrics::default());
    let stats = Arc::new(Mutex::new(Stats::default()));
    let context = GroupContext {
        state: Mutex::new(Partitions {
            parts: HashMap::new(),
            config,
            topic: args.kafka.topic.clone(),
            sink: Some(sink),
            sink_metrics: sink_metrics.clone(),
            handed: Rows::default(),
            pending: VecDeque::new(),
            metrics: metrics.clone(),
            revoke_deadline: args.revoke_deadline,
            out: Vec::new(),
        }),
    };
    let session_ms = args.session_timeout.as_millis().max(1000);
    let consumer: BaseConsumer<GroupContext> = args
        .kafka
        .client_config()
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_ms.to_string())
        .set("heartbeat.interval.ms", (session_ms / 4).to_string())
        // Eager: a revocation hands over whole partitions, which is what the engines are.
        .set("partition.assignment.strategy", "roundrobin")
        .create_with_context(context)
        .with_context(|| format!("creating the kafka consumer for {}", args.kafka.bootstrap))?;
    consumer
        .subscribe(&[&args.kafka.topic])
        .with_context(|| format!("subscribing to {:?}", args.kafka.topic))?;

    let api = super::collector::bind(args.api_addr, "API").await?;
    tracing::info!(
        api = %api.local_addr()?, topic = %args.kafka.topic, partitions, group = %args.group,
        "toctou correlator consuming"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        let stats = stats.clone();
        let commit_interval = args.commit_interval;
        std::thread::Builder::new()
            .name("toctou-correlator".into())
            .spawn(move || consume(consumer, stop, stats, commit_interval))
            .context("starting the correlator thread")?
    };
    let (stop_api_tx, stop_api_rx) = tokio::sync::oneshot::channel::<()>();
    let router = metrics_router(metrics, stats, sink_metrics);
    let api_task = tokio::spawn(async move {
        axum::serve(api, router)
            .with_graceful_shutdown(async move {
                let _ = stop_api_rx.await;
            })
            .await
    });

    shutdown.await;
    tracing::info!("shutting down: committing what clickhouse holds and leaving the group");
    stop.store(true, Relaxed);
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("joining the correlator thread")?
        .map_err(|_| anyhow::anyhow!("the correlator thread panicked"))?;
    let _ = stop_api_tx.send(());
    api_task
        .await
        .context("API server task")?
        .context("API server")?;
    Ok(())
}

fn metrics_router(
    consumer: Arc<ConsumerMetrics>,
    stats: Arc<Mutex<Stats>>,
    sink: Arc<SinkMetrics>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let (consumer, stats, sink) = (consumer.clone(), stats.clone(), sink.clone());
                async move {
                    let mut out = String::new();
                    consumer.render_prometheus(&mut out);
                    lock(&stats).render_prometheus(&mut out);
                    sink.render_prometheus(&mut out);
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        out,
                    )
                }
            }),
        )
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The poll loop. Returns once `stop` is set and the partitions are committed.
fn consume(
    consumer: BaseConsumer<GroupContext>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    commit_interval: Duration,
) {
    let mut last_tick = Instant::now();
    let mut last_commit = Instant::now();
    while !stop.load(Relaxed) {
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(message)) => {
                let mut state = lock(&consumer.context().state);
                state.on_message(message.partition(), message.offset(), message.payload());
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "kafka consumer error (the client retries)");
            }
            None => {}
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            let mut state = lock(&consumer.context().state);
            state.tick();
            *lock(&stats) = state.stats();
        }
        if last_commit.elapsed() >= commit_interval {
            last_commit = Instant::now();
            let mut state = lock(&consumer.context().state);
            state.take_point();
            state.commit_written(&consumer, CommitMode::Async);
        }
    }
    // Shutdown: like a revocation of everything, then leave the group.
    let sink = {
        let mut state = lock(&consumer.context().state);
        let owned: Vec<i32> = state.parts.keys().copied().collect();
        state.revoke(&consumer, &owned);
        state.sink.take()
    };
    drop(consumer);
    if let Some(sink) = sink {
        let stats = sink.close();
        tracing::info!(
            findings = stats.findings_written,
            events = stats.events_written,
            failed = stats.rows_failed,
            "clickhouse sink flushed"
        );
    }
}

/// Rows handed to the sink so far, per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Rows {
    findings: u64,
    events: u64,
}

/// Commit points taken at one instant, with the rows handed to the sink by then.
struct Pending {
    handed: Rows,
    points: Vec<(i32, CommitPoint)>,
}

/// One assigned partition.
struct Part {
    engine: Engine,
    ledger: Ledger,
    replay: Replay,
}

/// Everything the poll loop and the rebalance callbacks share.
struct Partitions {
    parts: HashMap<i32, Part>,
    config: toctou_correlator::Config,
    topic: String,
    /// `None` only after shutdown took it.
    sink: Option<Sink>,
    sink_metrics: Arc<SinkMetrics>,
    handed: Rows,
    pending: VecDeque<Pending>,
    metrics: Arc<ConsumerMetrics>,
    revoke_deadline: Duration,
    out: Vec<Finding>,
}

impl Partitions {
    fn on_message(&mut self, partition: i32, offset: i64, payload: Option<&[u8]>) {
        let Some(part) = self.parts.get_mut(&partition) else {
            // Revoked between the fetch and now: the next owner reads it.
            return;
        };
        self.metrics.consumed_messages.fetch_add(1, Relaxed);
        let replaying = matches!(part.replay, Replay::Until(p) if offset <= p.last_read);
        if replaying {
            self.metrics.replayed_messages.fetch_add(1, Relaxed);
        }
        match codec::decode(payload.unwrap_or_default()) {
            Ok(batch) => {
                let newest = batch.events.iter().map(|e| e.event_time_ns()).max();
                part.ledger.record(offset, newest.unwrap_or(0));
                self.metrics
                    .consumed_events
                    .fetch_add(batch.events.len() as u64, Relaxed);
                // Events the predecessor had read are in ClickHouse already (its commit
                // waited for them); a broadcast copy is stored by its original.
                if !replaying && !batch.broadcast_copy {
                    if let Some(sink) = &self.sink {
                        sink.events(&batch.events);
                        self.handed.events += batch.events.len() as u64;
                    }
                }
                let now = crate::cli::now_ns();
                for event in batch.events {
                    part.engine.ingest(event, now, &mut self.out);
                }
            }
            Err(err) => {
                let why = match err {
                    CodecError::UnknownVersion(_) => DecodeFailure::UnknownVersion,
                    _ => DecodeFailure::Malformed,
                };
                part.ledger.record(offset, 0);
                // A re-read message was counted by the owner that read it first.
                if !replaying {
                    self.metrics.decode_failed(why);
                    tracing::warn!(partition, offset, error = %err, "skipping a message that cannot be decoded");
                }
            }
        }
        publish(
            part,
            &mut self.out,
            self.sink.as_ref(),
            &mut self.handed,
            &self.metrics,
        );
        if part.replay.done_after(offset) {
            finish_replay(
                part,
                &mut self.out,
                self.sink.as_ref(),
                &mut self.handed,
                &self.metrics,
            );
        }
    }

    fn tick(&mut self) {
        let now = crate::cli::now_ns();
        for part in self.parts.values_mut() {
            part.engine.tick(now, &mut self.out);
            publish(
                part,
                &mut self.out,
                self.sink.as_ref(),
                &mut self.handed,
                &self.metrics,
            );
        }
    }

    fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for part in self.parts.values() {
            total.add(part.engine.stats());
        }
        total
    }

    /// Takes the current commit point of every partition that is not replaying.
    fn take_point(&mut self) {
        let mut points = Vec::new();
        for (&p, part) in self.parts.iter_mut() {
            if let Some(point) = current_point(part) {
                points.push((p, point));
            }
        }
        if points.is_empty() {
            return;
        }
        if self.pending.len() >= MAX_PENDING_POINTS {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            handed: self.handed,
            points,
        });
    }

    fn written(&self) -> Rows {
        let m = &self.sink_metrics;
        Rows {
            findings: m.rows_written(Table::Findings) + m.rows_dropped(Table::Findings),
            events: m.rows_written(Table::Events) + m.rows_dropped(Table::Events),
        }
    }

    /// Commits the newest pending points the sink has caught up with.
    fn commit_written(&mut self, consumer: &BaseConsumer<GroupContext>, mode: CommitMode) {
        let written = self.written();
        let mut newest = None;
        while let Some(front) = self.pending.front() {
            if front.handed.findings > written.findings || front.handed.events > written.events {
                break;
            }
            newest = self.pending.pop_front();
        }
        if let Some(p) = newest {
            self.commit(consumer, &p.points, mode);
        }
    }

    fn commit(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        points: &[(i32, CommitPoint)],
        mode: CommitMode,
    ) {
        let mut tpl = TopicPartitionList::new();
        for (p, point) in points {
            if !self.parts.contains_key(p) {
                continue;
            }
            if tpl
                .add_partition_offset(&self.topic, *p, Offset::Offset(point.offset))
                .is_err()
            {
                continue;
            }
            if let Some(mut elem) = tpl.find_partition(&self.topic, *p) {
                elem.set_metadata(point.metadata());
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                self.metrics.commits_ok.fetch_add(1, Relaxed);
            }
            Err(err) => {
                self.metrics.commits_failed.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, "committing offsets failed (retried at the next interval)");
            }
        }
    }

    /// Hands `revoked` over: waits for the sink, commits, drops the engines.
    fn revoke(&mut self, consumer: &BaseConsumer<GroupContext>, revoked: &[i32]) {
        let mut points = Vec::new();
        for p in revoked {
            if let Some(part) = self.parts.get_mut(p) {
                if let Some(point) = current_point(part) {
                    points.push((*p, point));
                }
            }
        }
        let target = self.handed;
        let deadline = Instant::now() + self.revoke_deadline;
        let caught_up = loop {
            let w = self.written();
            if w.findings >= target.findings && w.events >= target.events {
                break true;
            }
            if Instant::now() >= deadline || self.sink.is_none() {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if caught_up {
            self.commit(consumer, &points, CommitMode::Sync);
        } else {
            tracing::warn!(
                deadline = ?self.revoke_deadline,
                "clickhouse has not taken every finding of the revoked partitions; committing the last point it did"
            );
            self.commit_written(consumer, CommitMode::Sync);
        }
        for p in revoked {
            if self.parts.remove(p).is_some() {
                self.metrics.assigned_partitions.fetch_sub(1, Relaxed);
            }
        }
        for pending in self.pending.iter_mut() {
            pending.points.retain(|(p, _)| !revoked.contains(p));
        }
        tracing::info!(partitions = ?revoked, "partitions revoked");
    }

    fn assign(&mut self, consumer: &BaseConsumer<GroupContext>, assigned: &[i32]) {
        let mut tpl = TopicPartitionList::new();
        for p in assigned {
            tpl.add_partition(&self.topic, *p);
        }
        let committed = match consumer.committed_offsets(tpl, KAFKA_CALL_TIMEOUT) {
            Ok(list) => list,
            Err(err) => {
                // Without the metadata a rebuild could report what its predecessor's partial
                // state would wrongly conclude; better to say so loudly than to guess.
                tracing::error!(error = %err, "cannot read committed offsets; partitions start without rebuild information");
                TopicPartitionList::new()
            }
        };
        for p in assigned {
            let point = committed
                .find_partition(&self.topic, *p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => CommitPoint::parse(o, e.metadata()),
                    _ => None,
                });
            let engine = match Engine::new(self.config.clone()) {
                Ok(e) => e,
                Err(err) => {
                    tracing::error!(error = %err, "invalid correlator config");
                    continue;
                }
            };
            let mut part = Part {
                engine,
                ledger: Ledger::new(),
                replay: Replay::from_commit(point),
            };
            if let Some(point) = point {
                if point.last_read < point.offset {
                    // Nothing to re-read: only the watermark carries over.
                    finish_replay(
                        &mut part,
                        &mut self.out,
                        self.sink.as_ref(),
                        &mut self.handed,
                        &self.metrics,
                    );
                }
            }
            tracing::info!(partition = p, from = ?point, "partition assigned");
            self.parts.insert(*p, part);
            self.metrics.assigned_partitions.fetch_add(1, Relaxed);
        }
    }
}

/// The partition's commit point now, unless it is still re-reading its predecessor's part
/// (a point taken then would carry a watermark behind the one already committed).
fn current_point(part: &mut Part) -> Option<CommitPoint> {
    if part.replay != Replay::Live {
        return None;
    }
    let oldest = part.engine.oldest_state_ns();
    part.ledger.commit_point(oldest, part.engine.watermark_ns())
}

/// Hands the findings in `out` to the sink, holding back those a rebuilding engine decided
/// before its predecessor's committed watermark.
fn publish(
    part: &Part,
    out: &mut Vec<Finding>,
    sink: Option<&Sink>,
    handed: &mut Rows,
    metrics: &ConsumerMetrics,
) {
    if out.is_empty() {
        return;
    }
    let before = out.len();
    out.retain(|f| part.replay.reports(f.event_time_ns));
    metrics
        .held_back_findings
        .fetch_add((before - out.len()) as u64, Relaxed);
    if let Some(sink) = sink {
        sink.findings(out);
        handed.findings += out.len() as u64;
    }
    out.clear();
}

/// The re-read has reached the predecessor's last offset: the watermark moves to the
/// committed one (deciding, silently, what the predecessor had decided) and reporting starts.
fn finish_replay(
    part: &mut Part,
    out: &mut Vec<Finding>,
    sink: Option<&Sink>,
    handed: &mut Rows,
    metrics: &ConsumerMetrics,
) {
    let Replay::Until(point) = part.replay else {
        return;
    };
    part.engine
        .advance_watermark(point.watermark_ns, crate::cli::now_ns(), out);
    publish(part, out, sink, handed, metrics);
    part.replay = Replay::Live;
    tracing::info!(watermark_ns = point.watermark_ns, "partition rebuilt");
}

/// The consumer context: librdkafka calls the rebalance hooks on the polling thread.
pub struct GroupContext {
    state: Mutex<Partitions>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut state = lock(&self.state);
            let revoked: Vec<i32> = tpl
                .elements()
                .iter()
                .filter(|e| e.topic() == state.topic)
                .map(|e| e.partition())
                .collect();
            state.metrics.rebalances.fetch_add(1, Relaxed);
            state.revoke(consumer, &revoked);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut state = lock(&self.state);
                let assigned: Vec<i32> = tpl
                    .elements()
                    .iter()
                    .filter(|e| e.topic() == state.topic)
                    .map(|e| e.partition())
                    .collect();
                state.metrics.rebalances.fetch_add(1, Relaxed);
                state.assign(consumer, &assigned);
            }
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}
