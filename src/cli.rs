//! Flags shared by several subcommands, and their mapping onto library configs.
//!
//! Every address and limit is a flag with an environment variable of the same name
//! (`TOCTOU_...`), so a container can be configured without a command line.

use clap::Args;
use std::time::Duration;

/// Correlator tuning, shared by `run` and `replay` so that a replay reproduces a run.
#[derive(Args, Debug, Clone)]
pub struct CorrelatorArgs {
    /// How late (in event time) an event may arrive and still be joined as if in order.
    #[arg(long, env = "TOCTOU_ALLOWED_LATENESS", default_value = "2s", value_parser = humantime::parse_duration)]
    pub allowed_lateness: Duration,
    /// How long a check waits for its use (and a create for its finalize).
    #[arg(long, env = "TOCTOU_PAIR_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub pair_ttl: Duration,
    /// Most pending checks held; beyond it the oldest expire early (counted).
    #[arg(long, env = "TOCTOU_MAX_PENDING", default_value_t = 1_000_000)]
    pub max_pending: usize,
    /// How long an idempotency key is remembered to catch duplicate uses.
    #[arg(long, env = "TOCTOU_KEY_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub key_ttl: Duration,
}

impl CorrelatorArgs {
    pub fn to_config(&self) -> toctou_correlator::Config {
        toctou_correlator::Config {
            allowed_lateness: self.allowed_lateness,
            pair_ttl: self.pair_ttl,
            max_pending: self.max_pending,
            key_ttl: self.key_ttl,
            ..toctou_correlator::Config::default()
        }
    }
}

/// Nanoseconds since the Unix epoch, the unit of every event time.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
