//! What joins two stages that do not import each other: the demo traffic `toctou run --demo`
//! sends to itself, and the `toctou run` that `toctou demo` starts when nothing answers.

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;
use toctou_demo::{DemoArgs, RunSpec, StartRun};
use toctou_server::run::{self, DemoTraffic, RunArgs};

/// `--demo`: the demo's workloads against this process's OTLP/gRPC receiver.
pub fn demo_traffic() -> DemoTraffic {
    Box::new(|grpc, duration| {
        // With ingest tokens the demo sends TOCTOU_TOKEN (this process keeps only digests).
        let token = std::env::var("TOCTOU_TOKEN")
            .ok()
            .and_then(|t| t.parse().ok());
        toctou_demo::run_workloads(DemoArgs::against(grpc, duration, token), None)
    })
}

/// `toctou run`'s own flags, parsed the way its command line is: new flags and their
/// defaults (and `TOCTOU_*` variables) apply to the embedded server too.
#[derive(Parser)]
struct EmbeddedRun {
    #[command(flatten)]
    run: RunArgs,
}

/// The `toctou run` the demo embeds: its addresses and timing as flags, findings to a file
/// rather than stdout (which carries the demo's report).
pub fn embedded_run() -> StartRun {
    Arc::new(|spec: RunSpec, stop| {
        let pair_ttl = humantime::format_duration(spec.pair_ttl).to_string();
        let lateness = humantime::format_duration(spec.allowed_lateness).to_string();
        let args = EmbeddedRun::try_parse_from([
            "toctou-run".to_string(),
            format!("--otlp-grpc-addr={}", spec.grpc),
            format!("--otlp-http-addr={}", spec.http),
            format!("--api-addr={}", spec.api),
            format!("--findings-file={}", spec.findings_file.display()),
            format!("--pair-ttl={pair_ttl}"),
            format!("--allowed-lateness={lateness}"),
        ])
        .context("building the embedded toctou run's flags")?
        .run;
        Ok(tokio::spawn(run::run(args, None, stop)))
    })
}
