//! toctou's nodes, composed from the stage crates: `toctou run` (receivers, correlator and
//! findings API in one process), and the distributed mode's `toctou collector` and
//! `toctou correlator` around a Kafka topic; with the API, page and findings store they
//! serve, the access rules of every listener, and shutdown.
//!
//! # Layout
//! - [`cli`]: flags shared by the nodes (addresses, limits, correlator tuning, ClickHouse).
//! - [`access`]: tokens, TLS and the loopback rule of every listener; [`tls`]: rustls.
//! - [`run`]: `toctou run`, the embedded default: receivers, correlator and findings API in
//!   one process with no external services.
//! - [`infer`]: `toctou run`'s inference flags and what the stage shares; [`risk_rows`]: its
//!   risks as the rows of ClickHouse's `risks` table, a delta a minute.
//! - [`shutdown`]: the runtime every node runs on, its signals and its shutdown stages
//!   within a deadline.
//! - [`cdc`]: `--cdc-postgres`, a database's change stream as audit records, confirmed only
//!   once stored.
//! - [`api`]: the HTTP API on :8686 (findings, `/metrics`, `/healthz`); [`page`]: the
//!   built-in page it serves.
//! - [`metrics`]: one `prometheus` registry per node, the collectors of the stages it runs,
//!   and the `/metrics` handler that encodes it; the families of `toctou run`'s own state.
//! - [`store`]: the bounded in-memory findings store behind the API.
//! - [`findings`]: where decided findings go, one path for every node: the
//!   [`findings::FindingsSink`] trait, with the store, JSON lines and ClickHouse behind it.
//! - [`replay`]: `toctou replay`, the same correlator offline over files.
//! - [`migrate`]: `toctou migrate`, the versioned ClickHouse schema and its retention.
//! - [`kafka`]: distributed mode: `toctou collector`, `toctou correlator`, `toctou kafka init`.
//!
//! Every node's settings are plain structs (`RunArgs`, `ReceiverArgs`, ...) that a program can
//! fill itself; with the `cli` feature, which the `toctou` binary turns on, they also derive
//! clap's flags, so each flag, its environment variable and its default are declared once,
//! on the field they fill.
//!
//! Errors are `anyhow` with context: each node is an application whose errors end at the
//! binary's edge; the stage crates below keep typed ones.

pub mod access;
pub mod api;
pub mod cdc;
pub mod cli;
pub mod findings;
pub mod infer;
pub mod kafka;
pub mod metrics;
pub mod migrate;
pub mod page;
pub mod replay;
pub mod risk_rows;
pub mod run;
pub mod shutdown;
pub mod store;
pub mod tls;
