//! `--cdc-postgres`: a PostgreSQL database's change stream as `toctou run`'s audit records
//! (issue 25). The reader takes whole transactions from the slot (`toctou_cdc::postgres`),
//! maps each row change to an audit record (`toctou_cdc::Mapping`), hands them to the
//! correlator, and confirms the slot's position only once the correlator has ingested them
//! and, with `--clickhouse-url`, the sink has written them (`Sink::barrier`): at least once.
//! What a restart reads again, the engine drops by the records' `source_id`.

#[cfg(feature = "cli")]
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use toctou_cdc::postgres::{PostgresConfig, PostgresSource};
use toctou_cdc::Mapping;
use toctou_schema::Event;
use tokio::sync::{mpsc, oneshot};

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
}

/// Audit records of the change stream for the correlator, and how it says they are stored:
/// `None` at once (no ClickHouse), or the sink's barrier.
pub struct CdcBatch {
    pub events: Vec<Event>,
    pub stored: oneshot::Sender<Option<oneshot::Receiver<bool>>>,
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
}

toctou_schema::families! {
    /// The change-stream reader's families.
    static FAMILIES: Families {
        transactions = counter("toctou_cdc_transactions_total", "Transactions read from the change stream and confirmed.", &[]);
        truncates = counter("toctou_cdc_truncates_total", "TRUNCATEs in the change stream (no row changes to report).", &[]);
        read_errors = counter("toctou_cdc_read_errors_total", "Failed reads of the change stream (connection, query, a record not stored), each retried.", &[]);
        lag_bytes = gauge("toctou_cdc_slot_lag_bytes", "WAL bytes the database keeps for the slot past its confirmed position.", &[]);
        lag_seconds = gauge("toctou_cdc_slot_lag_seconds", "Seconds from the commit of the newest transaction confirmed to its confirmation; 0 when caught up.", &[]);
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
        ]
    }
}

impl CdcArgs {
    /// The mapping these flags describe, the file read and checked.
    pub fn mapping(&self) -> anyhow::Result<Mapping> {
        let mapping = Mapping::new("postgres").with_version_column(&self.version_column);
        Ok(match &self.mapping {
            Some(path) => mapping.with_file(&path.to_string_lossy())?,
            None => mapping,
        })
    }
}

/// Reads the slot until `tx` closes; connection and query errors are logged and retried
/// (after a pause that grows to 10 s), so a database restart delays audit records and loses
/// none.
pub async fn read_postgres(
    url: String,
    args: CdcArgs,
    mapping: Mapping,
    tx: mpsc::Sender<CdcBatch>,
    events: Arc<toctou_collector::Metrics>,
    metrics: Arc<CdcMetrics>,
) {
    let config = PostgresConfig {
        url,
        slot: args.slot.clone(),
        publication: args.publication.clone(),
        max_changes: toctou_cdc::postgres::DEFAULT_MAX_CHANGES,
        version_column: args.version_column.clone(),
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match read_until_error(&config, &args, &mapping, &tx, &events, &metrics).await {
            Ok(()) => return,
            Err(err) => {
                metrics.read_errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, retry_in = ?backoff, slot = %config.slot, "reading the PostgreSQL change stream failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Ok once the correlator has gone (shutdown).
async fn read_until_error(
    config: &PostgresConfig,
    args: &CdcArgs,
    mapping: &Mapping,
    tx: &mpsc::Sender<CdcBatch>,
    counts: &toctou_collector::Metrics,
    metrics: &CdcMetrics,
) -> anyhow::Result<()> {
    let mut source = PostgresSource::connect(config.clone()).await?;
    tracing::info!(slot = %config.slot, publication = %config.publication, "reading the PostgreSQL change stream");
    loop {
        let batch = source.read().await?;
        metrics.truncates.fetch_add(batch.truncates, Relaxed);
        let Some(end) = batch.end_lsn else {
            metrics.lag_bytes.store(source.lag().await?.bytes, Relaxed);
            tokio::time::sleep(args.poll_interval).await;
            continue;
        };
        let newest_commit = batch.changes.last().map(|c| c.commit_time_ns);
        tracing::debug!(
            changes = batch.changes.len(),
            transactions = batch.transactions,
            end = %toctou_cdc::pgoutput::lsn_text(end),
            "read from the slot"
        );
        if !batch.changes.is_empty() {
            let events: Vec<Event> = batch
                .changes
                .iter()
                .map(|c| Event::Audit(mapping.audit(c)))
                .collect();
            let (stored_tx, stored_rx) = oneshot::channel();
            if tx
                .send(CdcBatch {
                    events,
                    stored: stored_tx,
                })
                .await
                .is_err()
            {
                return Ok(());
            }
            let stored = match stored_rx.await {
                Ok(None) => true,
                Ok(Some(barrier)) => barrier.await.unwrap_or(false),
                Err(_) => return Ok(()),
            };
            if !stored {
                // Not confirmed: read again (the engine drops what it already has).
                anyhow::bail!(
                    "ClickHouse did not store the change stream's records; reading them again"
                );
            }
            counts.add_events(
                toctou_collector::Signal::Cdc,
                toctou_collector::EventPhase::Audit,
                batch.changes.len() as u64,
            );
        }
        source.confirm(end).await?;
        tracing::debug!(end = %toctou_cdc::pgoutput::lsn_text(end), "confirmed");
        metrics.transactions.fetch_add(batch.transactions, Relaxed);
        if let Some(commit) = newest_commit {
            let lag = toctou_schema::now_ns().saturating_sub(commit) / 1_000_000;
            metrics.lag_millis.store(lag, Relaxed);
        }
        metrics.lag_bytes.store(source.lag().await?.bytes, Relaxed);
    }
}
