//! The shared vocabulary of toctou: what the collector produces and the correlator consumes.
//!
//! # Layout
//! - [`clock`]: wall-clock time in the events' unit (nanoseconds since the epoch).
//! - [`conventions`]: the attribute names applications put on their spans and log records
//!   (written up for humans in `schema/CONVENTIONS.md`).
//! - [`event`]: the normalized events, one per check span, use span or audit record, whatever
//!   wire format they arrived in.
//! - [`finding`]: what the correlator reports, with the evidence and a deterministic id.
//! - `metrics` (feature `metrics`): metric families as the stages declare them for the
//!   `prometheus` crate, and the text every node's /metrics encodes from its registry.
//! - `testing` (feature `test-util`): event builders for tests and benchmarks.
//!
//! Nothing here does I/O; every other crate depends on this one and on nothing else of ours.

pub mod clock;
pub mod conventions;
pub mod event;
pub mod finding;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use clock::now_ns;
pub use event::{
    commit_position_version, hex_id, resource_type, write_hex, AuditAction, AuditEvent,
    CheckSource, DbParams, DbSpanEvent, DbStatement, Decision, Event, Phase, SpanEvent, SpanId,
    TraceId, UseOutcome, Version, COMMIT_POSITION_PREFIX,
};
pub use finding::{finding_id, AuditRef, Finding, FindingKind, Inferred, Severity, UseRef};
