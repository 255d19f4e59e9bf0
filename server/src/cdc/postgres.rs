//! `--cdc-postgres`: whole transactions from the slot (`toctou_cdc::postgres`), each batch
//! delivered before the slot's position is confirmed.

use super::{hand_over, retrying, CdcArgs, CdcMetrics, CdcOutput};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use toctou_cdc::postgres::{PostgresConfig, PostgresSource};
use toctou_cdc::Mapping;
use toctou_schema::Event;

/// Reads the slot until the output closes (shutdown).
pub async fn read(
    url: String,
    args: CdcArgs,
    mapping: Mapping,
    output: CdcOutput,
    counts: Arc<toctou_collector::Metrics>,
    metrics: Arc<CdcMetrics>,
) {
    let config = PostgresConfig {
        url,
        slot: args.slot.clone(),
        publication: args.publication.clone(),
        max_changes: toctou_cdc::postgres::DEFAULT_MAX_CHANGES,
        version_column: args.version_column.clone(),
        row_images: output.row_images(),
    };
    let what = format!("PostgreSQL slot {}", config.slot);
    retrying(&what, &metrics, || {
        read_until_error(&config, &args, &mapping, &output, &counts, &metrics)
    })
    .await
}

/// Ok once the output has gone (shutdown).
async fn read_until_error(
    config: &PostgresConfig,
    args: &CdcArgs,
    mapping: &Mapping,
    output: &CdcOutput,
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
            let changes = if output.row_images() {
                batch.changes
            } else {
                Vec::new()
            };
            if !hand_over(output, events, changes, counts).await? {
                return Ok(());
            }
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
