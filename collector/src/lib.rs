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
//!   - [`debezium`]: Debezium Server's HTTP sink bodies, through `toctou_cdc::debezium`;
//!   - [`replay`]: files of any of these, one document or one per line;
//!   - [`decoded`]: what decoding yields, and the closed sets of ignore and reject reasons;
//!   - `wire`: OTLP protobuf bodies (HTTP and gRPC) read straight into events, borrowing
//!     what the transforms read from the bytes (prost decodes whatever it does not take);
//!   - [`budget`]: what decoding one request may allocate, checked before prost runs and
//!     while serde runs.
//! - Receiving:
//!   - [`sink`]: the [`EventSink`] trait and the bounded [`ChannelSink`];
//!   - [`receivers`]: [`Receivers`], the shared state, and the steps every transport takes
//!     (slot, decode, off the reactor when large over HTTP, deliver, count);
//!   - [`http`] (with `body` for content types, size limits and decompression) and
//!     [`grpc`]: the transports, each holding the one mapping of errors to its status codes.
//! - [`listen`]: connections per listener (a cap, the header read timeout, HTTP/2
//!   streams), for the receivers and any other HTTP listener of the process, and their
//!   counters' collector.
//! - [`auth`]: bearer tokens per route group, checked before a body is read.
//! - [`config`], [`metrics`], [`error`]: configuration with named defaults, the counters
//!   and the collector that reads them into a node's `prometheus` registry, and the error
//!   enums.
//!
//! A request is answered only after the sink accepted its events; a full sink makes the
//! client retry (503 + Retry-After, gRPC UNAVAILABLE) instead of queueing without bound.

mod attrs;
pub mod auth;
mod body;
pub mod budget;
pub mod config;
pub mod debezium;
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
mod peak_alloc;
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
pub use metrics::{EventPhase, Metrics, ReceiversCollector, Transport};
pub use receivers::{ConnShare, Receivers};
pub use replay::{decode_replay, read_replay_file, LocatedRejection, ReplayBatch};
pub use sink::{ChannelSink, EventSink, QueueBytes, DEFAULT_CHANNEL_WAIT, DEFAULT_RETRY_AFTER};
pub use transform::{decode_logs, decode_traces};

/// The crate-private decoding steps the fuzz targets (fuzz/) drive directly; not an API.
///
/// Why: the wire reader `wire` is only reachable through the HTTP receiver, where a
/// differential target cannot tell its result from prost's fallback; and the decode budget
/// is checked from outside, by the peak of a counting allocator (`peak_alloc`) around the
/// receiver's own decoding.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::peak_alloc::{allocation_bound, peak_of, PeakAlloc};
    pub use crate::wire::{logs as wire_logs, traces as wire_traces};

    /// What the HTTP receiver makes of a decompressed body: the signal's decoder for the
    /// format (`json`: OTLP JSON, else protobuf; the audit webhook takes JSON either way).
    pub fn decode_http(
        signal: crate::Signal,
        json: bool,
        raw: &[u8],
    ) -> Result<crate::Decoded, crate::IngestError> {
        let format = if json {
            crate::body::Format::Json
        } else {
            crate::body::Format::Protobuf
        };
        crate::http::decode(signal, format, raw)
    }

    /// An OTLP/JSON traces request whose one attribute nests `depth` kvlists: past the
    /// parser's recursion limit it must be an error, not a crash.
    pub fn nested_kvlists(depth: usize) -> Vec<u8> {
        let mut body = String::from(
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"key":"deep","value":"#,
        );
        for _ in 0..depth {
            body.push_str(r#"{"kvlistValue":{"values":[{"key":"k","value":"#);
        }
        body.push_str(r#"{"intValue":1}"#);
        for _ in 0..depth {
            body.push_str("}]}}");
        }
        body.push_str("}]}]}]}]}");
        body.into_bytes()
    }

    /// The attack of issue 30 on the prost fallback, as one traces request: `first` (a span
    /// the wire reader leaves to prost), then `n` empty spans (`0x12 0x00`), 2 bytes each.
    pub fn then_empty_spans(
        first: opentelemetry_proto::tonic::trace::v1::Span,
        n: usize,
    ) -> Vec<u8> {
        use prost::Message;
        let mut scope = opentelemetry_proto::tonic::trace::v1::ScopeSpans {
            spans: vec![first],
            ..Default::default()
        }
        .encode_to_vec();
        scope.extend(std::iter::repeat_n([0x12u8, 0x00], n).flatten());
        let mut resource_spans = vec![0x12];
        prost::encoding::encode_varint(scope.len() as u64, &mut resource_spans);
        resource_spans.extend_from_slice(&scope);
        let mut out = vec![0x0a];
        prost::encoding::encode_varint(resource_spans.len() as u64, &mut out);
        out.extend_from_slice(&resource_spans);
        out
    }
}
