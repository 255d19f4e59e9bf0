//! toctou's correlator: joins check spans, use spans and audit records per request and
//! resource version, in event time, and reports time-of-check-to-time-of-use races.
//!
//! What it decides is specified in `docs/CORRELATOR.md`; this crate is that contract in
//! code. The [`Engine`] is single-owner and lock-free: the binary runs one per shard (shard
//! by resource) and feeds it [`toctou_schema::Event`]s, wall-clock ticks and, at the end,
//! a flush. It never reads a clock itself, so a replay is reproducible.
//!
//! # Layout
//! - [`config`]: [`Config`], its named defaults and [`Config::validate`].
//! - [`metrics`]: [`Stats`], every metric in one place, and [`StatsCollector`], which reads
//!   them into a node's `prometheus` registry; `metrics::histogram`: the fixed-bucket
//!   histograms (race window, detection latency).
//! - `engine`: the event-time loop: watermark, reorder buffer, timers.
//! - `decide`: what a use is (precedence of the finding kinds), what an audit record changes.
//! - `waiting`: successful uses waiting for their write to be seen before they are judged.
//! - `checks`: pending checks and tombstones, supersession, expiry, orphans.
//! - `resources`: per-resource audit history and the stale-check rule.
//! - `creates`: pending creates, duplicate and partial creates.
//! - `policies`: policy histories and the `authz_drift` rule.
//! - `keys`: idempotency keys.
//! - `dedupe`: identities seen, to drop redeliveries.
//! - `report`: findings with their evidence and deterministic ids.
//! - Storage underneath: `item` (the compact form of an event), `buffer` (reorder buffer),
//!   `timer` (deadline queues), `table` (slab plus hash index), `intern` and `symbols`
//!   (refcounted names), `compact` (short strings without allocation).
//!
//! # Memory and speed
//! A pending check costs about 157 bytes all told (a 104-byte record, its hash index entry
//! and expiry timer, its share of the interned resource names); a buffered event about 178.
//! `benches/memory.rs` measures both, `benches/throughput.rs` the events per second on a
//! realistic mix. Every structure is bounded by a [`Config`] limit, and every early
//! eviction is counted in `toctou_evicted_total{state}`.

mod buffer;
mod checks;
mod compact;
pub mod config;
mod creates;
mod decide;
mod dedupe;
mod engine;
mod intern;
mod item;
mod keys;
pub mod metrics;
mod policies;
mod report;
mod resources;
mod symbols;
mod table;
mod timer;
mod waiting;

#[cfg(test)]
mod testkit;

pub use config::{Config, ConfigError};
pub use engine::{Engine, Input};
pub use metrics::{EvictedState, Histogram, Stats, StatsCollector};
