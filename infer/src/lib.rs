//! Inference (issue 26): races in services that contain no toctou code, from the database
//! client spans OpenTelemetry's instrumentations already emit, decided with the database's
//! change stream as the truth of what was committed.
//!
//! The stage sits between the receivers and the engine in `toctou run`. It reads each
//! request's statements (`toctou_sql`), pairs a read of a row with a later write of it, waits
//! for the write's own change record, and then hands the engine what an instrumented service
//! would have sent: a check, a use, and the change records with the request that made them.
//! The engine decides as it does for toctou spans; findings come out with
//! [`toctou_schema::Inferred`] evidence.
//!
//! # Layout
//! - [`config`]: [`Config`], what the stage keeps and for how long.
//! - [`traces`]: one request's calls, read once per distinct statement text.
//! - [`changes`]: change records held until the write that made them is known, and writes
//!   waiting for their change record.
//! - [`recent`]: [`recent::Recent`], what is remembered past its moment, bounded.
//! - [`risks`]: unprotected read-then-write patterns by endpoint, for `GET /api/v1/risks`.
//! - [`stage`]: [`Inference`], the stage itself.
//! - [`stats`]: what it counted.

pub mod changes;
pub mod config;
pub mod recent;
pub mod risks;
pub mod stage;
pub mod stats;
pub mod traces;

pub use config::Config;
pub use risks::{RiskEntry, RiskReport};
pub use stage::Inference;
pub use stats::Stats;
