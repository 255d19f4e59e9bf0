//! Audit records from a database's own change stream: every committed write, including those
//! of actors nothing instruments (batch jobs, admin consoles, a person with psql), in commit
//! order, so that a team adds check and use spans and nothing else (issue 25).
//!
//! # Layout
//! - [`change`]: a committed row change, whatever its source, and the one mapping that makes
//!   it an audit record (resource, version, action, request id, writer, time).
//! - [`debezium`]: Debezium change events (JSON, with or without the schema envelope) as
//!   row changes, and what is not a write, by reason.
//! - [`pgoutput`]: PostgreSQL's built-in logical decoding output, decoded.
//! - [`transactions`]: joins Debezium's row changes with their transactions' request ids,
//!   which arrive as separate records (from Kafka, on another topic).
//! - [`postgres`] (feature `postgres`, on by default): a PostgreSQL replication slot read
//!   over SQL, at least once: the slot moves only when the reader confirms.

pub mod change;
pub mod debezium;
pub mod pgoutput;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod transactions;

pub use change::{Mapping, MappingError, Op, RowChange, DEFAULT_VERSION_COLUMN, REQUEST_ID_PREFIX};
