//! Running a node and stopping it within a deadline on SIGTERM or SIGINT, for `toctou run`
//! and the distributed-mode nodes: the runtime a node runs on ([`run_node`]), the signals,
//! the `--shutdown-timeout` flag, where a stopping process is, and the error that says what
//! was left unflushed when the deadline passed.
//!
//! The order (STYLE.md, habit 7): stop accepting (the listeners close, so new connections
//! are refused), let the requests in flight finish (each is answered only once its events
//! are queued, or pushed back), drain the queue into the engine, flush the engine (end of
//! input, as `toctou replay` ends), write the findings output and flush the sinks. A
//! process that cannot finish by the deadline exits non-zero naming what it did not flush,
//! rather than hang, or exit 0 with acknowledged data lost.

use anyhow::{Context, Result};
#[cfg(feature = "cli")]
use clap::Args;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Runs a node's future to its end on a multi-threaded runtime (`worker_threads` where the
/// node wants fewer than one per core). Past the shutdown deadline a task may still be
/// stuck (a sink retrying, a request waiting on Kafka or blocked on a client): the process
/// exits anyway, with the node's error saying what was not flushed.
pub fn run_node(
    worker_threads: Option<usize>,
    node: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    let runtime = builder
        .enable_all()
        .thread_name("toctou-io")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(node);
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct ShutdownArgs {
    /// On SIGTERM or SIGINT: how long stopping may take (requests in flight, draining the
    /// queue, flushing findings and sinks); past it the process exits non-zero, saying what
    /// was not flushed.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration))]
    pub shutdown_timeout: Duration,
}

impl ShutdownArgs {
    /// The deadline of a shutdown starting now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.shutdown_timeout
    }
}

/// When a sink flushing at shutdown must give up retrying: a little before the process's
/// deadline, so that the process still has time to count and report what it gave up.
pub fn sink_deadline(deadline: Instant, timeout: Duration) -> Instant {
    let margin = (timeout / 10).min(Duration::from_secs(1));
    deadline.checked_sub(margin).unwrap_or(deadline)
}

/// What a stopping process is doing, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the requests in flight to be answered.
    Requests = 0,
    /// Feeding the queued batches to the engine (and their events to the sinks).
    Draining = 1,
    /// Deciding what the engine still holds and writing those findings.
    Flushing = 2,
    /// Waiting for the sinks to write what they were handed.
    Sinks = 3,
    Done = 4,
}

impl Stage {
    fn describe(self) -> &'static str {
        match self {
            Stage::Requests => "waiting for requests in flight",
            Stage::Draining => "draining the queue into the correlator",
            Stage::Flushing => "flushing the correlator's pending state",
            Stage::Sinks => "flushing the sinks",
            Stage::Done => "exiting",
        }
    }
}

/// The stage, shared between the thread that stops and the one that keeps the deadline.
#[derive(Debug, Default)]
pub struct Progress(AtomicU8);

impl Progress {
    pub fn set(&self, stage: Stage) {
        self.0.store(stage as u8, Relaxed);
    }

    pub fn get(&self) -> Stage {
        match self.0.load(Relaxed) {
            0 => Stage::Requests,
            1 => Stage::Draining,
            2 => Stage::Flushing,
            3 => Stage::Sinks,
            _ => Stage::Done,
        }
    }
}

/// The deadline passed: what was not flushed. The process's error, so its message is what
/// an operator reads last.
#[derive(Debug)]
pub struct Unflushed {
    pub timeout: Duration,
    pub stage: Stage,
    /// Request batches accepted but not yet correlated.
    pub queued_batches: usize,
    /// Rows handed to the ClickHouse sink and not written (None: no ClickHouse sink).
    pub sink_backlog_rows: Option<u64>,
}

impl fmt::Display for Unflushed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shutdown did not finish within --shutdown-timeout {} (still {}); not flushed: {} accepted request batches not correlated",
            humantime::format_duration(self.timeout),
            self.stage.describe(),
            self.queued_batches
        )?;
        if let Some(rows) = self.sink_backlog_rows {
            write!(f, ", {rows} rows not written to ClickHouse")?;
        }
        if self.stage == Stage::Requests {
            write!(f, ", requests in flight unanswered")?;
        }
        Ok(())
    }
}

impl std::error::Error for Unflushed {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_what_was_not_flushed() {
        let e = Unflushed {
            timeout: Duration::from_secs(30),
            stage: Stage::Sinks,
            queued_batches: 0,
            sink_backlog_rows: Some(1200),
        };
        assert_eq!(
            e.to_string(),
            "shutdown did not finish within --shutdown-timeout 30s (still flushing the sinks); \
             not flushed: 0 accepted request batches not correlated, 1200 rows not written to ClickHouse"
        );
        let p = Progress::default();
        assert_eq!(p.get(), Stage::Requests);
        p.set(Stage::Flushing);
        assert_eq!(p.get(), Stage::Flushing);
    }

    #[test]
    fn sinks_give_up_before_the_process_does() {
        let now = Instant::now();
        let d = now + Duration::from_secs(30);
        assert_eq!(
            sink_deadline(d, Duration::from_secs(30)),
            d - Duration::from_secs(1)
        );
        let short = now + Duration::from_secs(2);
        assert_eq!(
            sink_deadline(short, Duration::from_secs(2)),
            short - Duration::from_millis(200)
        );
    }
}
