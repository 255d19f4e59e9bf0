//! `toctou migrate`: brings a ClickHouse database to this binary's schema version, and
//! optionally drops the daily partitions past each table's retention.

use crate::cli::ClickhouseArgs;
use anyhow::{Context, Result};
#[cfg(feature = "cli")]
use clap::Args;
use std::time::Duration;
use toctou_clickhouse::{migrations, retention};

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct MigrateArgs {
    #[cfg_attr(feature = "cli", command(flatten))]
    pub clickhouse: ClickhouseArgs,
    /// After migrating, drop the daily partitions older than each table's retention.
    #[cfg_attr(feature = "cli", arg(long))]
    pub apply_retention: bool,
    /// How long `events` keeps its rows (whole days are dropped).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_RETENTION_EVENTS", default_value = "7days", value_parser = humantime::parse_duration))]
    pub retention_events: Duration,
    /// How long `findings`, `findings_lookup` and `risks` keep their rows.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_RETENTION_FINDINGS", default_value = "90days", value_parser = humantime::parse_duration))]
    pub retention_findings: Duration,
    /// How long the per-minute rollups keep their rows.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_RETENTION_ROLLUPS", default_value = "400days", value_parser = humantime::parse_duration))]
    pub retention_rollups: Duration,
    /// Print every statement this command can send (binds filled with examples) and the
    /// sink's inserts (as JSONEachRow, with example rows), one per `;`, and exit without
    /// connecting: for checking them against other ClickHouse engines.
    #[cfg_attr(feature = "cli", arg(long))]
    pub print_sql: bool,
}

pub fn main(args: MigrateArgs) -> Result<()> {
    if args.print_sql {
        let client = args.clickhouse.config().client();
        let mut all = migrations::all_statements(&client);
        all.extend(retention::all_statements(&client));
        all.extend(toctou_clickhouse::inserts::example_statements());
        for stmt in all {
            println!("{stmt};\n");
        }
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: MigrateArgs) -> Result<()> {
    let ch = &args.clickhouse.config();
    ch.require_url()?;
    let report = migrations::migrate(&ch.server_client(), &ch.client(), &ch.database)
        .await
        .with_context(|| format!("migrating {} at {}", ch.database, ch.shown_url()))?;
    if report.applied.is_empty() {
        println!(
            "schema of {} is up to date at version {}",
            ch.database, report.version
        );
    } else {
        let applied: Vec<String> = report.applied.iter().map(u32::to_string).collect();
        println!(
            "applied migrations {} to {}; schema version {}",
            applied.join(", "),
            ch.database,
            report.version
        );
    }
    if args.apply_retention {
        let keep = retention::Retention {
            events: args.retention_events,
            findings: args.retention_findings,
            rollups: args.retention_rollups,
        };
        let now_secs = toctou_schema::now_ns() / 1_000_000_000;
        let dropped = retention::apply(&ch.client(), &keep, now_secs)
            .await
            .with_context(|| format!("applying retention to {}", ch.database))?;
        println!("dropped {} expired partitions", dropped.len());
    }
    Ok(())
}
