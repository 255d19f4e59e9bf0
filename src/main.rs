//! The `toctou` binary: one executable, one subcommand per way of running the pipeline.
//!
//! # Layout
//! - [`cli`]: flags shared by the subcommands (addresses, limits, correlator tuning).
//! - [`access`]: tokens, TLS and the loopback rule of every listener; [`tls`]: rustls.
//! - [`run`]: `toctou run`, the embedded default: receivers, correlator and findings API in
//!   one process with no external services.
//! - [`api`]: the HTTP API on :8686 (findings, `/metrics`, `/healthz`).
//! - [`store`]: the bounded in-memory findings store behind the API.
//! - [`output`]: findings as JSON lines to stdout or a file.
//! - [`replay`]: `toctou replay`, the same correlator offline over files.
//! - [`demo`]: `toctou demo`, racing workloads instrumented with the OpenTelemetry SDK.
//! - [`migrate`]: `toctou migrate`, the versioned ClickHouse schema and its retention.
//! - [`clickhouse`]: ClickHouse connection flags, migrations and retention.
//! - [`kafka`]: distributed mode: `toctou collector`, `toctou correlator`, `toctou kafka init`.
//! - [`alerts`]: `toctou alerts generate`, Grafana alert rules from the SLO file.
//! - [`loadgen`]: `toctou loadgen`, pre-encoded OTLP load at a fixed or maximal rate.
//!
//! Errors become `anyhow` with context here, at the edge; the library crates keep typed ones.

mod access;
mod alerts;
mod api;
mod cli;
mod clickhouse;
mod demo;
mod kafka;
mod loadgen;
mod migrate;
mod output;
mod replay;
mod run;
mod store;
mod tls;

use clap::{Parser, Subcommand};

/// mimalloc: the correlator frees the strings of every event it consumes, and glibc's
/// allocator made that a quarter of its time (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "toctou", version, about = "Finds time-of-check-to-time-of-use races in running systems", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole pipeline in one process, in memory: OTLP gRPC :4317, OTLP HTTP and the
    /// Kubernetes audit webhook :4318, findings API, page and /metrics :8686.
    Run(Box<run::RunArgs>),
    /// Run the correlator offline over OTLP JSON / JSON lines / Kubernetes audit files and
    /// print the findings as JSON lines (same input, same output).
    Replay(replay::ReplayArgs),
    /// Send racing demo workloads, instrumented with the OpenTelemetry SDK, to a running
    /// `toctou run`.
    Demo(demo::DemoArgs),
    /// Create or upgrade toctou's ClickHouse schema (idempotent; refuses a newer schema),
    /// and optionally drop partitions past their retention.
    Migrate(Box<migrate::MigrateArgs>),
    /// Distributed mode: the receivers of `run`, publishing events to a Kafka topic keyed by
    /// resource (stateless; run many behind a load balancer).
    Collector(Box<kafka::collector::CollectorArgs>),
    /// Distributed mode: a consumer-group member correlating its partitions of the Kafka
    /// topic, findings and events to ClickHouse.
    Correlator(Box<kafka::consumer::CorrelatorNodeArgs>),
    /// Kafka topic administration.
    #[command(subcommand)]
    Kafka(kafka::admin::KafkaCommand),
    /// Generate Grafana alert rules, notification policy, contact points and mute timings
    /// from the SLO file (alerts/slo.yaml).
    Alerts(alerts::AlertsArgs),
    /// Load generator: a realistic mix of checks, uses and audit records over OTLP HTTP or
    /// gRPC at a fixed or maximal rate; prints what the server accepted as JSON.
    Loadgen(Box<loadgen::LoadgenArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run(args) => run::main(*args),
        Command::Replay(args) => replay::main(args),
        Command::Demo(args) => demo::main(args),
        Command::Migrate(args) => migrate::main(*args),
        Command::Collector(args) => kafka::collector::main(*args),
        Command::Correlator(args) => kafka::consumer::main(*args),
        Command::Kafka(cmd) => kafka::admin::main(cmd),
        Command::Alerts(args) => alerts::main(args),
        Command::Loadgen(args) => loadgen::main(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr: stdout carries findings as JSON lines and must stay parseable.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TOCTOU_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
