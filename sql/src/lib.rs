//! Database client spans read as checks and uses (issue 26): what a statement reads or
//! writes, in which table, by which column values, and what protects it, from the query text
//! and parameters that OpenTelemetry's database instrumentations record.
//!
//! # Layout
//! - [`statement`]: one statement's text to a [`Statement`] (a real SQL parser, the
//!   PostgreSQL and MySQL dialects; driver placeholders `$1`, `?`, `%s`, `%(name)s`).
//! - [`params`]: parameter values as the instrumentations render them (a Python tuple repr
//!   with driver wrapper types, a JSON array, one attribute per index).
//! - [`cache`]: [`Interpreter`], each distinct text parsed once, bounded.
//! - [`pairs`]: checks and uses inferred from one request's statements: a read, then a write
//!   of the row it read, named as the change stream names rows.
//! - [`risks`]: unprotected read-then-write pairs among one request's statements.
//! - [`span`]: a database client span's attributes (current and older semantic
//!   conventions) to the call: system, text, parameters, status.

pub mod cache;
pub mod pairs;
pub mod params;
pub mod risks;
pub mod span;
pub mod statement;

pub use cache::{Interpreter, Reading, DEFAULT_CAPACITY};
pub use pairs::{pairs, row_key, value, Call, Pair};
pub use params::{parse_params, parse_params_for, Param, ParamError};
pub use risks::{read_then_write, Risk, RiskKind};
pub use span::{indexed_params, serialization_failure, DbCall};
pub use statement::{
    interpret, Condition, Operation, Protection, Statement, StatementError, TableName, ValueRef,
};
