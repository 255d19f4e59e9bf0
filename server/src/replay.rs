//! `toctou replay FILE...`: the correlator of `toctou run`, offline, over files.
//!
//! Events are fed in file order, with the event time standing in for the wall clock, and the
//! end of input expires everything still pending. Nothing depends on the machine or the
//! moment, so the same files give the same findings, byte for byte.

use crate::cli::CorrelatorArgs;
use crate::findings::{FindingsSink, JsonLines};
use anyhow::{Context, Result};
#[cfg(feature = "cli")]
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toctou_correlator::Engine;

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct ReplayArgs {
    /// OTLP JSON requests (traces or logs), JSON lines of them, or Kubernetes audit
    /// Event/EventList files; read in the order given.
    #[cfg_attr(feature = "cli", arg(required = true))]
    pub files: Vec<PathBuf>,
    /// Write the findings (JSON lines) to this file instead of stdout.
    #[cfg_attr(feature = "cli", arg(long))]
    pub output: Option<PathBuf>,
    #[cfg_attr(feature = "cli", command(flatten))]
    pub correlator: CorrelatorArgs,
}

pub fn main(args: ReplayArgs) -> Result<()> {
    let mut engine =
        Engine::new(args.correlator.to_config()).context("invalid correlator flags")?;
    if let Some(path) = &args.output {
        // Replay output is a fresh result, not a log to extend.
        std::fs::File::create(path)
            .with_context(|| format!("creating output file {}", path.display()))?;
    }
    let mut writer = JsonLines::open(args.output.as_deref())?;
    let mut findings = Vec::new();
    let mut clock = 0u64;
    let mut events = 0usize;
    for path in &args.files {
        let batch = toctou_collector::read_replay_file(path).context("replay input")?;
        for event in batch.events {
            events += 1;
            // The wall clock of a replay is the event-time high-water mark: it advances an
            // idle watermark exactly as far as the data itself does.
            clock = clock.max(event.event_time_ns());
            engine.ingest(event, clock, &mut findings);
        }
    }
    engine.flush(clock, &mut findings);

    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    // The one output of a replay: an error fails it (run and the correlator log one and go on).
    writer.publish(&findings).context("writing findings")?;
    for f in &findings {
        *by_kind.entry(f.kind.as_str()).or_default() += 1;
    }
    let summary: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}={n}")).collect();
    let stats = engine.stats();
    tracing::info!(
        events,
        findings = findings.len(),
        by_kind = %summary.join(" "),
        pairs = stats.pairs,
        indeterminate = stats.indeterminate,
        "replay done"
    );
    Ok(())
}
