//! `toctou correlator`: a member of a Kafka consumer group that runs one correlator engine
//! per assigned partition and writes findings and events to ClickHouse through the sink of
//! `toctou run`. This file is the subcommand (flags, start-up checks, the poll loop, the
//! metrics port); `partitions` owns the per-partition state and the handover.
//!
//! One thread polls the consumer and owns the partitions' engines (one owner, as in `toctou
//! run`; the mutex around them is only ever contended by librdkafka's rebalance callbacks,
//! which run on this same thread inside `poll`). Each engine has its own watermark, so an
//! idle partition never holds back another: its engine advances on wall-clock ticks alone,
//! but only as far as the partition is known read to its end (`ends` asks the broker for
//! every partition's end a few times a second): while records wait to be read, silence is
//! lag, not idleness (`catchup`).
//!
//! Offsets: every `--commit-interval` the thread takes, per partition, the point the ledger
//! allows (see `offsets`) together with how many rows it had handed to the sink, and commits
//! the newest such point once the sink has written at least that many rows, so a committed
//! offset never runs ahead of what ClickHouse durably holds. On revocation it waits (up to
//! `--revoke-deadline`) for the sink to write everything handed to it, commits the
//! partition's current point, and drops the engine; the next owner rebuilds from there.
//! Nothing is flushed early on revocation: expiring pending checks would report false
//! orphans.

use super::ends::EndProbe;
use super::group::GroupContext;
use super::metrics::{ConsumerCollector, ConsumerMetrics};
use super::partitions::{lock, Partitions};
use super::{admin, KafkaArgs};
use crate::cli::ClickhouseArgs;
use anyhow::{Context, Result};
use axum::Router;
#[cfg(feature = "cli")]
use clap::Args;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use toctou_clickhouse::migrations;
use toctou_clickhouse::sink::{Sink, SinkCollector, SinkConfig, SinkMetrics};
use toctou_correlator::{Engine, Stats, StatsCollector};

/// How often engines advance idle watermarks and publish stats (as in `toctou run`).
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct CorrelatorNodeArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub kafka: KafkaArgs,
    /// The consumer group all correlators of one deployment share.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "kafka-group",
            env = "TOCTOU_KAFKA_GROUP",
            default_value = "toctou-correlator"
        )
    )]
    pub group: String,
    /// /metrics and /healthz listen address.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_API_ADDR", default_value = "127.0.0.1:8687")
    )]
    pub api_addr: SocketAddr,
    /// Metrics tokens, TLS and the loopback rule (server/src/access.rs).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub access: crate::access::AccessArgs,
    /// How often offsets are committed (as far as ClickHouse has caught up).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_COMMIT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration))]
    pub commit_interval: Duration,
    /// How long the group waits for a silent member before giving its partitions away
    /// (the broker accepts 6s to 30m by default).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration))]
    pub session_timeout: Duration,
    /// On revocation, how long to wait for ClickHouse to take the partition's findings
    /// before committing the last point it did take.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_REVOKE_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration))]
    pub revoke_deadline: Duration,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub correlator: crate::cli::CorrelatorArgs,
    /// Where findings and events are written (required).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub clickhouse: ClickhouseArgs,
    /// Do not apply the schema migrations at start-up.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_NO_MIGRATE"))]
    pub no_migrate: bool,
    /// Rows per insert at most.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_CLICKHOUSE_BATCH_ROWS", default_value_t = toctou_clickhouse::sink::DEFAULT_MAX_ROWS))]
    pub clickhouse_batch_rows: usize,
    /// The age of the oldest buffered row that triggers an insert.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_CLICKHOUSE_BATCH_AGE", default_value = "1s", value_parser = humantime::parse_duration))]
    pub clickhouse_batch_age: Duration,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub shutdown: crate::shutdown::ShutdownArgs,
}

pub fn main(args: CorrelatorNodeArgs) -> Result<()> {
    // One I/O thread: the work is on the poll thread.
    crate::shutdown::run_node(Some(1), run(args, crate::shutdown::shutdown_signal()))
}

pub async fn run(
    args: CorrelatorNodeArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    // Before Kafka or ClickHouse are asked anything: a refusal needs neither.
    let access = crate::access::ApiAccess::from_args(&args.access)?;
    crate::access::refuse_open_listeners(
        &[access.exposure("metrics", args.api_addr)],
        args.access.allow_unauthenticated,
    )?;
    let config = args.correlator.to_config();
    Engine::new(config.clone()).context("invalid correlator flags")?;
    let ch = &args.clickhouse.config();
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
    let sink_metrics_for_exit = sink_metrics.clone();
    let metrics = Arc::new(ConsumerMetrics::default());
    let stats = Arc::new(Mutex::new(Stats::default()));
    let context = GroupContext {
        state: Mutex::new(Partitions::new(
            config,
            args.kafka.topic.clone(),
            sink,
            metrics.clone(),
            args.revoke_deadline,
        )),
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
        // For the consumer-lag gauge (GroupContext::stats).
        .set("statistics.interval.ms", "5000")
        .create_with_context(context)
        .with_context(|| format!("creating the kafka consumer for {}", args.kafka.bootstrap))?;
    consumer
        .subscribe(&[&args.kafka.topic])
        .with_context(|| format!("subscribing to {:?}", args.kafka.topic))?;

    let api = crate::cli::bind(args.api_addr, "API").await?;
    tracing::info!(
        api = %api.local_addr()?, topic = %args.kafka.topic, partitions, group = %args.group,
        "toctou correlator consuming"
    );
    let ends = EndProbe::spawn(&args.kafka, partitions).with_context(|| {
        format!(
            "creating the kafka client that asks {} for the partitions' ends",
            args.kafka.bootstrap
        )
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    // Set (to when the sink must give up) before `stop`.
    let give_up_at = Arc::new(OnceLock::new());
    let thread = {
        let stop = stop.clone();
        let stats = stats.clone();
        let give_up_at = give_up_at.clone();
        let commit_interval = args.commit_interval;
        std::thread::Builder::new()
            .name("toctou-correlator".into())
            .spawn(move || consume(consumer, &ends, stop, &give_up_at, stats, commit_interval))
            .context("starting the correlator thread")?
    };
    let (stop_api_tx, stop_api_rx) = tokio::sync::oneshot::channel::<()>();
    let router = metrics_router(metrics, stats, sink_metrics, access.clone());
    let api_task = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop_api_rx.await;
        };
        access.serve(api, router, stopped).await
    });

    shutdown.await;
    let timeout = args.shutdown.shutdown_timeout;
    let deadline = args.shutdown.deadline();
    tracing::info!(timeout = %humantime::format_duration(timeout), "shutting down: committing what clickhouse holds and leaving the group");
    let _ = give_up_at.set(crate::shutdown::sink_deadline(deadline, timeout));
    stop.store(true, Relaxed);
    // Nothing is flushed early (see the module doc): what ClickHouse does not hold by the
    // deadline stays uncommitted, and the partitions' next owner re-reads it.
    let joined = tokio::time::timeout_at(
        deadline.into(),
        tokio::task::spawn_blocking(move || thread.join()),
    )
    .await;
    let stats = match joined {
        Ok(joined) => joined
            .context("joining the correlator thread")?
            .map_err(|_| anyhow::anyhow!("the correlator thread panicked"))?,
        Err(_) => anyhow::bail!(
            "shutdown did not finish within --shutdown-timeout {}: {} rows not written to ClickHouse; the offsets behind them stay uncommitted and the next owner re-reads them",
            humantime::format_duration(timeout),
            sink_metrics_for_exit.backlog_rows()
        ),
    };
    if let Some(stats) = stats.filter(|s| s.rows_failed > 0) {
        anyhow::bail!(
            "{} rows could not be written to ClickHouse by the shutdown deadline; the offsets behind them stay uncommitted and the next owner re-reads them",
            stats.rows_failed
        );
    }
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
    access: crate::access::ApiAccess,
) -> Router {
    let registry = crate::metrics::registry(&access);
    crate::metrics::register(&registry, ConsumerCollector(consumer));
    crate::metrics::register(&registry, StatsCollector::new(move || lock(&stats).clone()));
    crate::metrics::register(&registry, SinkCollector(sink));
    access.metrics_router(registry)
}

/// Pauses every assigned partition while the sink is nearly full and resumes them once it
/// drained, so that the loop keeps polling (and stays in the group, whose
/// `max.poll.interval.ms` a send blocked on a ClickHouse outage would exceed) instead of
/// blocking. Returns whether consumption is now paused.
fn flow_control(consumer: &BaseConsumer<GroupContext>, paused: bool) -> bool {
    let state = lock(&consumer.context().state);
    let want = if paused {
        !state.sink_relieved()
    } else {
        state.sink_congested()
    };
    if !want && !paused {
        return false;
    }
    // Re-applied on every pass while paused: partitions assigned in a rebalance meanwhile
    // start unpaused.
    let assignment = match consumer.assignment() {
        Ok(tpl) => tpl,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the assignment to pause or resume it");
            return paused;
        }
    };
    let result = if want {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    if let Err(err) = result {
        tracing::warn!(error = %err, "cannot pause or resume the partitions");
        return paused;
    }
    if want != paused {
        state.metrics.paused.store(want as i64, Relaxed);
        if want {
            state.metrics.pauses.fetch_add(1, Relaxed);
            tracing::warn!("clickhouse sink nearly full: consumption paused until it drains");
        } else {
            tracing::info!("clickhouse sink drained: consumption resumed");
        }
    }
    want
}

/// The poll loop. Returns once `stop` is set and the partitions are committed, with what
/// the sink wrote; it gives up retrying at `give_up_at` (when set).
fn consume(
    consumer: BaseConsumer<GroupContext>,
    ends: &EndProbe,
    stop: Arc<AtomicBool>,
    give_up_at: &OnceLock<Instant>,
    stats: Arc<Mutex<Stats>>,
    commit_interval: Duration,
) -> Option<toctou_clickhouse::sink::SinkStats> {
    let mut last_tick = Instant::now();
    let mut last_commit = Instant::now();
    let mut paused = false;
    while !stop.load(Relaxed) {
        paused = flow_control(&consumer, paused);
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
        // While paused, engines do not tick either: an idle watermark advancing on the wall
        // clock would decide findings into the full sink, and the poll loop would block.
        // Rows gathered before the pause are handed over all the same: the pause leaves a
        // quarter of the sink's channel free, and nothing more is gathered while paused.
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            let mut state = lock(&consumer.context().state);
            if !paused {
                state.tick(ends.latest().as_ref());
            }
            state.hand_over();
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
    let sink = lock(&consumer.context().state).release_all(&consumer);
    drop(consumer);
    sink.map(|sink| {
        let stats = match give_up_at.get() {
            Some(deadline) => sink.close_by(*deadline),
            None => sink.close(),
        };
        tracing::info!(
            findings = stats.findings_written,
            events = stats.events_written,
            failed = stats.rows_failed,
            "clickhouse sink flushed"
        );
        stats
    })
}
