//! A database's change stream as audit records, in `toctou run` and in `toctou collector`
//! (issue 25): the readers, their flags and their counts.
//!
//! - [`postgres`] (`--cdc-postgres`): a PostgreSQL replication slot (`toctou_cdc::postgres`);
//! - [`debezium`] (`--cdc-debezium-topics`): Debezium change events from Kafka topics.
//!
//! Both map row changes to audit records (`toctou_cdc::Mapping`) and hand them to a
//! [`CdcOutput`]: in `toctou run` the correlator, which answers once it has ingested them
//! and, with `--clickhouse-url`, the sink has written them (`Sink::barrier`); in `toctou
//! collector` the events topic, keyed by resource like every other event, which answers once
//! Kafka acknowledged them. Only then does a reader confirm its position (the slot's, the
//! consumer group's offsets): at least once. What a restart reads again, the engine drops by
//! the records' `source_id`. Debezium Server's HTTP sink is a receiver route
//! (`toctou_collector::debezium`), with the same mapping.

#[cfg(feature = "cli")]
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use toctou_cdc::{Mapping, RowChange};
use toctou_collector::{EventSink, SinkError};
use toctou_schema::Event;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub mod debezium;
pub mod postgres;

/// Where the change stream comes from and how it maps.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct CdcArgs {
    /// Read this PostgreSQL database's change stream (logical decoding with pgoutput;
    /// wal_level=logical, PostgreSQL 14+) as audit records, e.g.
    /// postgres://toctou:secret@db:5432/shop. The role needs REPLICATION (and a superuser once,
    /// for the publication FOR ALL TABLES, unless --cdc-publication names one that exists).
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "cdc-postgres",
            env = "TOCTOU_CDC_POSTGRES",
            hide_env_values = true
        )
    )]
    pub postgres: Option<String>,
    /// The logical replication slot (created when missing).
    #[cfg_attr(feature = "cli", arg(long = "cdc-slot", env = "TOCTOU_CDC_SLOT", default_value = toctou_cdc::postgres::DEFAULT_SLOT))]
    pub slot: String,
    /// The publication the slot reads (created FOR ALL TABLES when missing).
    #[cfg_attr(feature = "cli", arg(long = "cdc-publication", env = "TOCTOU_CDC_PUBLICATION", default_value = toctou_cdc::postgres::DEFAULT_PUBLICATION))]
    pub publication: String,
    /// The column holding a row's version; tables without it are versioned by commit position.
    #[cfg_attr(feature = "cli", arg(long = "cdc-version-column", env = "TOCTOU_CDC_VERSION_COLUMN", default_value = toctou_cdc::DEFAULT_VERSION_COLUMN))]
    pub version_column: String,
    /// A YAML file naming resources per table (`tables: {public.inventory: "inventory/{sku}"}`),
    /// so that the records match the resource names of existing spans.
    #[cfg_attr(feature = "cli", arg(long = "cdc-mapping", env = "TOCTOU_CDC_MAPPING"))]
    pub mapping: Option<PathBuf>,
    /// How long the reader waits when the slot had nothing new.
    #[cfg_attr(feature = "cli", arg(long = "cdc-poll-interval", env = "TOCTOU_CDC_POLL_INTERVAL", default_value = "200ms", value_parser = humantime::parse_duration))]
    pub poll_interval: Duration,
    /// Read Debezium change events (JSON, with or without the schema envelope) from these
    /// Kafka topics, comma-separated; a name starting with ^ is a regular expression, e.g.
    /// '^shop\..*' for every topic of the connector whose topic.prefix is shop, including
    /// shop.message (the request ids) and shop.transaction (transaction metadata).
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "cdc-debezium-topics",
            env = "TOCTOU_CDC_DEBEZIUM_TOPICS",
            value_delimiter = ','
        )
    )]
    pub debezium_topics: Vec<String>,
    /// The Kafka the Debezium topics are on (default: --kafka-bootstrap in `toctou
    /// collector`, 127.0.0.1:9092 in `toctou run`).
    #[cfg_attr(
        feature = "cli",
        arg(long = "cdc-debezium-bootstrap", env = "TOCTOU_CDC_DEBEZIUM_BOOTSTRAP")
    )]
    pub debezium_bootstrap: Option<String>,
    /// The consumer group reading the Debezium topics; its committed offsets are where a
    /// restart resumes.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "cdc-debezium-group",
            env = "TOCTOU_CDC_DEBEZIUM_GROUP",
            default_value = "toctou-cdc"
        )
    )]
    pub debezium_group: String,
    /// How long a change read from Kafka waits for the rest of its transaction (its
    /// toctou.request_id message is on another topic) once the transaction's END record has
    /// come, or, without transaction metadata, from its arrival. Above the 5 s in which a
    /// pattern's new topic is found, so that a new message topic's first records still name
    /// their changes.
    #[cfg_attr(feature = "cli", arg(long = "cdc-debezium-hold", env = "TOCTOU_CDC_DEBEZIUM_HOLD", default_value = "10s", value_parser = humantime::parse_duration))]
    pub debezium_hold: Duration,
}

/// Audit records of the change stream for the correlator, and how it says they are stored:
/// `None` at once (no ClickHouse), or the sink's barrier.
pub struct CdcBatch {
    pub events: Vec<Event>,
    /// The row changes behind `events`, one each, when the correlator asked for row images
    /// (inference, `--infer`); empty otherwise.
    pub changes: Vec<RowChange>,
    pub stored: oneshot::Sender<Option<oneshot::Receiver<bool>>>,
}

/// Where the readers' audit records go.
#[derive(Clone)]
pub enum CdcOutput {
    /// `toctou run`'s correlator, one batch at a time; with `row_images`, each record's row
    /// change comes along (inference matches writes to their changes by it).
    Correlator {
        tx: mpsc::Sender<CdcBatch>,
        row_images: bool,
    },
    /// `toctou collector`'s events topic (`KafkaSink`): keyed by resource, so the records
    /// reach the correlator that owns the resource's partition.
    Sink(Arc<dyn EventSink>),
}

/// What became of a batch handed to a [`CdcOutput`].
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Taken and stored: the reader may confirm its position.
    Stored,
    /// Not stored (ClickHouse refused it): read it again.
    NotStored,
    /// Shutting down.
    Closed,
}

impl CdcOutput {
    /// Whether the readers should keep each change's row image.
    pub fn row_images(&self) -> bool {
        matches!(
            self,
            CdcOutput::Correlator {
                row_images: true,
                ..
            }
        )
    }

    /// `changes`: the row changes behind `events`, one each, or none.
    pub async fn deliver(&self, events: Vec<Event>, changes: Vec<RowChange>) -> Delivery {
        match self {
            CdcOutput::Correlator { tx, .. } => {
                let (stored_tx, stored_rx) = oneshot::channel();
                let batch = CdcBatch {
                    events,
                    changes,
                    stored: stored_tx,
                };
                if tx.send(batch).await.is_err() {
                    return Delivery::Closed;
                }
                match stored_rx.await {
                    Ok(None) => Delivery::Stored,
                    Ok(Some(barrier)) => match barrier.await {
                        Ok(true) => Delivery::Stored,
                        _ => Delivery::NotStored,
                    },
                    Err(_) => Delivery::Closed,
                }
            }
            // Pushed back while Kafka is slow or away: the reader waits, its position
            // unconfirmed, as long as that lasts.
            CdcOutput::Sink(sink) => loop {
                match sink.submit(events.clone()).await {
                    Ok(()) => return Delivery::Stored,
                    Err(SinkError::Full { retry_after }) => {
                        tokio::time::sleep(retry_after.min(Duration::from_secs(1))).await
                    }
                    Err(SinkError::Closed) => return Delivery::Closed,
                }
            },
        }
    }
}

/// The reader's counts, for /metrics (its audit records are counted with every other
/// signal's, in `toctou_events_total{signal="cdc"}`).
#[derive(Debug, Default)]
pub struct CdcMetrics {
    pub transactions: AtomicU64,
    pub truncates: AtomicU64,
    pub read_errors: AtomicU64,
    /// Bytes of WAL past the slot's confirmed position, at the last look.
    pub lag_bytes: AtomicU64,
    /// Milliseconds from the commit of the newest transaction confirmed to its confirmation;
    /// 0 once the reader finds nothing new.
    pub lag_millis: AtomicU64,
    /// Debezium records read from Kafka.
    pub debezium_records: AtomicU64,
    /// Debezium changes waiting for their transaction's request id.
    pub debezium_held: AtomicU64,
    /// Debezium changes released without a request id, by why (`Released`).
    pub debezium_released: Mutex<toctou_cdc::transactions::Released>,
}

toctou_schema::families! {
    /// The change-stream reader's families.
    static FAMILIES: Families {
        transactions = counter("toctou_cdc_transactions_total", "Transactions read from the change stream and confirmed.", &[]);
        truncates = counter("toctou_cdc_truncates_total", "TRUNCATEs in the change stream (no row changes to report).", &[]);
        read_errors = counter("toctou_cdc_read_errors_total", "Failed reads of the change stream (connection, query, a record not stored), each retried.", &[]);
        lag_bytes = gauge("toctou_cdc_slot_lag_bytes", "WAL bytes the database keeps for the slot past its confirmed position.", &[]);
        lag_seconds = gauge("toctou_cdc_slot_lag_seconds", "Seconds from the commit of the newest transaction confirmed to its confirmation; 0 when caught up.", &[]);
        debezium_records = counter("toctou_cdc_debezium_records_total", "Debezium records read from Kafka (skipped and refused ones are in toctou_ignored_total and toctou_rejected_total).", &[]);
        debezium_held = gauge("toctou_cdc_debezium_held_changes", "Debezium changes waiting for their transaction's request id or its end.", &[]);
        debezium_released = counter("toctou_cdc_debezium_released_total", "Debezium changes released without a request id, by why: their transaction's END record (complete), --cdc-debezium-hold (timed_out), too many held (evicted).", &["why"]);
    }
}

/// Reads [`CdcMetrics`] into `toctou run`'s registry.
pub struct CdcCollector(pub Arc<CdcMetrics>);

impl prometheus::core::Collector for CdcCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        FAMILIES.descs()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let (f, m) = (&*FAMILIES, &self.0);
        let get = |a: &AtomicU64| a.load(Relaxed) as f64;
        vec![
            f.transactions.value(get(&m.transactions)),
            f.truncates.value(get(&m.truncates)),
            f.read_errors.value(get(&m.read_errors)),
            f.lag_bytes.value(get(&m.lag_bytes)),
            f.lag_seconds.value(get(&m.lag_millis) / 1e3),
            f.debezium_records.value(get(&m.debezium_records)),
            f.debezium_held.value(get(&m.debezium_held)),
            {
                let r = *m
                    .debezium_released
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                f.debezium_released.values([
                    (["complete"], r.complete as f64),
                    (["timed_out"], r.timed_out as f64),
                    (["evicted"], r.evicted as f64),
                ])
            },
        ]
    }
}

impl CdcArgs {
    /// Whether any change-stream reader is asked for.
    pub fn enabled(&self) -> bool {
        self.postgres.is_some() || !self.debezium_topics.is_empty()
    }

    /// The mapping these flags describe for records named `service` (their `source_id`s
    /// start with it), the file read and checked.
    pub fn mapping(&self, service: &str) -> anyhow::Result<Mapping> {
        let mapping = Mapping::new(service).with_version_column(&self.version_column);
        Ok(match &self.mapping {
            Some(path) => mapping.with_file(&path.to_string_lossy())?,
            None => mapping,
        })
    }

    /// Starts the readers these flags ask for, each handing its records to `output`.
    /// `bootstrap`: the Kafka of the Debezium topics unless `--cdc-debezium-bootstrap`.
    pub fn spawn(
        &self,
        bootstrap: &str,
        output: CdcOutput,
        counts: Arc<toctou_collector::Metrics>,
        metrics: Arc<CdcMetrics>,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let mut tasks = Vec::new();
        if let Some(url) = &self.postgres {
            tasks.push(tokio::spawn(postgres::read(
                url.clone(),
                self.clone(),
                self.mapping("postgres")?,
                output.clone(),
                counts.clone(),
                metrics.clone(),
            )));
        }
        if !self.debezium_topics.is_empty() {
            let bootstrap = self.debezium_bootstrap.as_deref().unwrap_or(bootstrap);
            tasks.push(tokio::spawn(debezium::read(
                bootstrap.to_string(),
                self.clone(),
                self.mapping(toctou_collector::debezium::SERVICE)?,
                output,
                counts,
                metrics,
            )));
        }
        Ok(tasks)
    }
}

/// Delivers a reader's audit records and counts them once delivered: `Ok(false)` when the
/// output has gone (shutdown); an error when they were not stored, so that the reader starts
/// again from its confirmed position (the engine drops what it already has).
async fn hand_over(
    output: &CdcOutput,
    events: Vec<Event>,
    changes: Vec<RowChange>,
    counts: &toctou_collector::Metrics,
) -> anyhow::Result<bool> {
    let n = events.len() as u64;
    match output.deliver(events, changes).await {
        Delivery::Stored => {
            counts.add_events(
                toctou_collector::Signal::Cdc,
                toctou_collector::EventPhase::Audit,
                n,
            );
            Ok(true)
        }
        Delivery::Closed => Ok(false),
        Delivery::NotStored => {
            anyhow::bail!(
                "ClickHouse did not store the change stream's records; reading them again"
            )
        }
    }
}

/// Runs `attempt` until it returns Ok (shutdown); its errors are counted, logged and retried
/// after a pause that grows to 10 s, so a database or broker restart delays audit records
/// and loses none.
async fn retrying<F, Fut>(what: &str, metrics: &CdcMetrics, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(()) => return,
            Err(err) => {
                metrics.read_errors.fetch_add(1, Relaxed);
                tracing::warn!(source = what, error = %format!("{err:#}"), retry_in = ?backoff, "a change-stream reader failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
