//! toctou's receivers: they turn wire formats (OTLP over gRPC and HTTP, protobuf and JSON,
//! and the Kubernetes audit webhook) into [`toctou_schema::Event`]s and hand them to an
//! [`EventSink`].
//!
//! # Layout
//! - Decoding, pure functions with no I/O:
//!   - [`transform`]: OTLP spans and log records (the prost types) to events, one file per
//!     signal, reading attributes through `attrs` (the only attribute extraction there is);
//!   - [`json`]: OTLP JSON into the same prost types, so JSON and protobuf share every rule;
//!   - [`k8s`]: Kubernetes audit `Event`/`EventList`, or JSON lines of `Event`s, to audit
//!     events (`timestamp` parses their RFC 3339 times);
//!   - `documents`: the one reader of inputs of several JSON documents (pretty or one per
//!     line), placing each document and error by line: replay files and webhook bodies;
//!   - [`replay`]: files of any of these, one document or one per line;
//!   - [`decoded`]: what decoding yields, and the closed sets of ignore and reject reasons;
//!   - `wire`: OTLP protobuf bodies (HTTP and gRPC) read straight into events, borrowing
//!     what the transforms read from the bytes (prost decodes whatever it does not take).
//! - Receiving:
//!   - [`sink`]: the [`EventSink`] trait and the bounded [`ChannelSink`];
//!   - [`receivers`]: [`Receivers`], the shared state, and the steps every transport takes
//!     (slot, decode, off the reactor when large over HTTP, deliver, count);
//!   - [`http`] (with `body` for content types, size limits and decompression) and
//!     [`grpc`]: the transports, each holding the one mapping of errors to its status codes.
//! - [`listen`]: connections per listener (a cap, the header read timeout, HTTP/2
//!   streams), for the receivers and any other HTTP listener of the process.
//! - [`auth`]: bearer tokens per route group, checked before a body is read.
//! - [`config`], [`metrics`], [`error`]: configuration with named defaults, the counters in
//!   Prometheus text form, and the error enums.
//!
//! A request is answered only after the sink accepted its events; a full sink makes the
//! client retry (503 + Retry-After, gRPC UNAVAILABLE) instead of queueing without bound.

mod attrs;
pub mod auth;
mod body;
pub mod config;
pub mod decoded;
mod documents;
pub mod error;
pub mod grpc;
mod grpc_service;
pub mod http;
pub mod json;
pub mod k8s;
pub mod listen;
pub mod metrics;
pub mod receivers;
pub mod replay;
pub mod sink;
mod timestamp;
pub mod transform;
mod wire;

pub use auth::{ReceiverAuth, TokenError, Tokens};
pub use config::{
    ReceiverConfig, DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_SUBMIT_TIMEOUT,
};
pub use decoded::{
    Decoded, IgnoreReason, IgnoredCounts, RejectReason, RejectedCounts, Rejection, Signal,
};
pub use error::{ConfigError, DecodeError, IngestError, ServeError, SinkError};
pub use grpc::{serve_grpc, serve_grpc_on};
pub use http::{http_router, secured_http_router, serve_http, serve_http_on};
pub use json::{logs_from_json, traces_from_json};
pub use k8s::decode_k8s_audit;
pub use listen::ConnLimits;
pub use metrics::{EventPhase, Metrics, Transport};
pub use receivers::Receivers;
pub use replay::{decode_replay, read_replay_file, LocatedRejection, ReplayBatch};
pub use sink::{ChannelSink, EventSink, DEFAULT_CHANNEL_WAIT, DEFAULT_RETRY_AFTER};
pub use transform::{decode_logs, decode_traces};

/// The crate-private decoding steps the fuzz targets (fuzz/) drive directly; not an API.
///
/// Why: the wire reader `wire` is only reachable through the HTTP receiver, where a
/// differential target cannot tell its result from prost's fallback.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::wire::{logs as wire_logs, traces as wire_traces};
}
