//! The `toctou` binary: one executable, one subcommand per way of running the pipeline.
//!
//! The binary parses flags and dispatches; the work is in the crates (see the README's
//! "Where things are"): `toctou-server` (the nodes `run`, `collector`, `correlator`, and
//! `replay`, `migrate`, `kafka init`), `toctou-demo` (`demo`, `loadgen`) and
//! `toctou-alerts` (`alerts generate`). [`wiring`] joins the demo and the server, which do
//! not import each other.
//!
//! Errors become `anyhow` with context here, at the edge.

mod wiring;

use clap::{Parser, Subcommand};
use toctou_server::{kafka, migrate, replay, run};

/// mimalloc: the correlator frees the strings of every event it consumes, and glibc's
/// allocator made that a quarter of its time (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (include/mimalloc.h of the
/// libmimalloc-sys in Cargo.lock; its Rust bindings do not name this option).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// How long freed memory stays with the process before mimalloc returns it to the OS.
/// With mimalloc's 1 s, a receiver at a steady moderate rate kept giving back and faulting in
/// again the pages of request-sized buffers (at 10k spans/s over 16 connections, each
/// connection sends a request every ~0.8 s): 12% of `toctou run`'s samples at 10k spans/s
/// were `clear_page_erms`, and 4,700-7,400 page faults in 20 s fell to ~950 with 10 s.
/// 60 s is the default dedupe window, the longest that most state lives: pages freed by
/// expiring state are wanted again by new state within it. With 10 s, 370-1,460 faults in
/// 20 s at 10k spans/s (each of transparent huge pages, zeroed 2 MiB at a time) fell to
/// 19-28, and CPU per million spans from 4.75 to 4.22 s on average over four A/B rounds
/// (bench/HISTORY.md, issue 7). Memory freed after a burst still goes back a minute later.
const PURGE_DELAY_MS: std::ffi::c_long = 60_000;

unsafe extern "C" {
    fn mi_option_set_default(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// Sets the allocator's defaults; `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn tune_allocator() {
    // SAFETY: sets a plain integer in mimalloc's option table; any value is valid, and the
    // option is read at each purge decision, so setting it after allocations began is fine.
    unsafe { mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}
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
    Demo(toctou_demo::DemoArgs),
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
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// Load generator: a realistic mix of checks, uses and audit records over OTLP HTTP or
    /// gRPC at a fixed or maximal rate; prints what the server accepted as JSON.
    Loadgen(Box<toctou_demo::loadgen::LoadgenArgs>),
}

/// `toctou alerts`: the `toctou-alerts` crate.
#[derive(Subcommand, Debug)]
enum AlertsCommand {
    /// Write the Grafana alerting provisioning files generated from an SLO file.
    Generate {
        /// The SLO file (see alerts/slo.yaml).
        #[arg(long, default_value = "alerts/slo.yaml")]
        slo: String,
        /// Directory the files are written to (created if missing).
        #[arg(long, default_value = "alerts/grafana")]
        out: std::path::PathBuf,
        /// Write nothing; fail if a file in --out differs from what would be written.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run(args) => run::main(*args, wiring::demo_traffic()),
        Command::Replay(args) => replay::main(args),
        Command::Demo(args) => toctou_demo::main(args, wiring::embedded_run()),
        Command::Migrate(args) => migrate::main(*args),
        Command::Collector(args) => kafka::collector::main(*args),
        Command::Correlator(args) => kafka::consumer::main(*args),
        Command::Kafka(cmd) => kafka::admin::main(cmd),
        Command::Alerts(AlertsCommand::Generate { slo, out, check }) => {
            toctou_alerts::generate(&slo, &out, check)
        }
        Command::Loadgen(args) => toctou_demo::loadgen::main(*args),
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_reaches_mimalloc() {
        super::tune_allocator();
        // SAFETY: reads an integer option.
        let delay = unsafe { super::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // The environment may override the default; without it, ours holds.
        match std::env::var("MIMALLOC_PURGE_DELAY") {
            Ok(_) => {}
            Err(_) => assert_eq!(delay, super::PURGE_DELAY_MS),
        }
    }
}
