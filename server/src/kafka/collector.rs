//! `toctou collector`: the receivers of `toctou run` (same flags, same push-back), publishing
//! to Kafka through [`KafkaSink`] instead of correlating in process; stateless, so any number
//! run behind a load balancer. Its own port serves `/metrics` (receivers and producer) and
//! `/healthz`.

use super::metrics::{ProducerCollector, ProducerMetrics};
use super::producer::{KafkaSink, ProducerConfig, DEFAULT_INFLIGHT_WAIT};
use super::{admin, KafkaArgs};
use crate::access::{receivers_and_api, AccessArgs, ApiAccess};
use crate::cdc::{CdcCollector, CdcMetrics, CdcOutput};
use crate::cli::{bind, ReceiverArgs};
use anyhow::{Context, Result};
use axum::Router;
#[cfg(feature = "cli")]
use clap::Args;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use toctou_collector::{Receivers, ReceiversCollector};
use tokio::sync::watch;

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct CollectorArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub kafka: KafkaArgs,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub receivers: ReceiverArgs,
    /// /metrics and /healthz listen address.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_API_ADDR", default_value = "127.0.0.1:8686")
    )]
    pub api_addr: SocketAddr,
    /// Metrics tokens, TLS and the loopback rule (server/src/access.rs).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub access: AccessArgs,
    /// Bytes in flight to Kafka at most; beyond it requests are pushed back.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_KAFKA_MAX_INFLIGHT_BYTES", default_value_t = super::producer::DEFAULT_MAX_INFLIGHT_BYTES))]
    pub kafka_max_inflight_bytes: usize,
    /// How long a message may take to be acknowledged before its request fails (librdkafka
    /// retries within it).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_KAFKA_DELIVERY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration))]
    pub kafka_delivery_timeout: Duration,
    /// How long the producer waits to fill a batch.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_KAFKA_LINGER", default_value = "5ms", value_parser = humantime::parse_duration))]
    pub kafka_linger: Duration,
    /// A database's change stream as audit records, published to the events topic keyed by
    /// resource like every other event (--cdc-postgres on one collector only: a slot has one
    /// reader at a time; --cdc-debezium-topics likewise, see server/src/cdc/debezium.rs).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub cdc: crate::cdc::CdcArgs,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub shutdown: crate::shutdown::ShutdownArgs,
}

pub fn main(args: CollectorArgs) -> Result<()> {
    crate::shutdown::run_node(None, run(args, crate::shutdown::shutdown_signal()))
}

pub async fn run(
    args: CollectorArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let (receiver_access, api_access) =
        receivers_and_api(&args.receivers, &args.access, "metrics", args.api_addr)?;
    let receiver_config = args.receivers.to_config()?;
    let kafka = args.kafka.clone();
    let partitions = tokio::task::spawn_blocking(move || admin::partition_count(&kafka))
        .await
        .context("checking the topic")??;
    let producer_config = ProducerConfig {
        max_inflight_bytes: args.kafka_max_inflight_bytes.max(1),
        inflight_wait: DEFAULT_INFLIGHT_WAIT,
        delivery_timeout: args.kafka_delivery_timeout,
        linger: args.kafka_linger,
    };
    let sink = Arc::new(
        KafkaSink::new(&args.kafka, partitions, producer_config)
            .with_context(|| format!("creating the kafka producer for {}", args.kafka.bootstrap))?,
    );
    let producer_metrics = sink.metrics();

    let (grpc, http) = args.receivers.bind().await?;
    let api = bind(args.api_addr, "API").await?;
    let receivers = Receivers::new(sink.clone(), receiver_config)
        .with_debezium(args.cdc.mapping(toctou_collector::debezium::SERVICE)?);
    let cdc_metrics = args.cdc.enabled().then(|| Arc::new(CdcMetrics::default()));
    let cdc_tasks = match &cdc_metrics {
        Some(metrics) => args.cdc.spawn(
            &args.kafka.bootstrap,
            CdcOutput::Sink(sink.clone()),
            receivers.metrics().clone(),
            metrics.clone(),
        )?,
        None => Vec::new(),
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tracing::info!(
        otlp_grpc = %grpc.local_addr()?, otlp_http = %http.local_addr()?, api = %api.local_addr()?,
        topic = %args.kafka.topic, partitions,
        "toctou collector listening"
    );
    let grpc_task = tokio::spawn(receiver_access.clone().serve_grpc(
        grpc,
        receivers.clone(),
        stopped(stop_rx.clone()),
    ));
    let http_task =
        tokio::spawn(receiver_access.serve_http(http, receivers.clone(), stopped(stop_rx.clone())));
    let router = metrics_router(
        receivers.clone(),
        producer_metrics.clone(),
        cdc_metrics,
        api_access.clone(),
    );
    let api_task =
        tokio::spawn(async move { api_access.serve(api, router, stopped(stop_rx)).await });
    drop(receivers);

    shutdown.await;
    let timeout = args.shutdown.shutdown_timeout;
    let deadline = args.shutdown.deadline();
    tracing::info!(timeout = %humantime::format_duration(timeout), "shutting down: no new requests, waiting for kafka's acknowledgements");
    // What the readers handed over and Kafka did not acknowledge stays unconfirmed.
    for c in cdc_tasks {
        c.abort();
    }
    let _ = stop_tx.send(true);
    // A request is answered 200 only once Kafka acknowledged its messages, so once the
    // servers have answered every request in flight, everything acknowledged is in Kafka;
    // the flush only settles messages whose requests already failed.
    let inflight = producer_metrics;
    let stopping = async {
        let (g, h, a) = tokio::join!(grpc_task, http_task, api_task);
        g.context("gRPC server task")?.context("gRPC server")?;
        h.context("HTTP server task")?.context("HTTP server")?;
        a.context("API server task")?.context("API server")?;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        tokio::task::spawn_blocking(move || sink.flush(left))
            .await
            .context("flushing the producer")
    };
    if tokio::time::timeout_at(deadline.into(), stopping)
        .await
        .is_err()
    {
        anyhow::bail!(
            "shutdown did not finish within --shutdown-timeout {}: {} requests still waiting for Kafka's acknowledgement (their clients get no 200 and send again)",
            humantime::format_duration(timeout),
            inflight.inflight_batches.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    Ok(())
}

/// /metrics (the receivers' and the producer's families besides every listener's) behind
/// the API tokens, /healthz open for probes.
fn metrics_router(
    receivers: Receivers,
    producer: Arc<ProducerMetrics>,
    cdc: Option<Arc<CdcMetrics>>,
    access: ApiAccess,
) -> Router {
    let registry = crate::metrics::registry(&access);
    crate::metrics::register(&registry, ReceiversCollector(receivers.metrics().clone()));
    crate::metrics::register(&registry, ProducerCollector(producer));
    if let Some(cdc) = cdc {
        crate::metrics::register(&registry, CdcCollector(cdc));
    }
    access.metrics_router(registry)
}
