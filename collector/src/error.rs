//! The collector's error types, one per boundary: decoding (pure), the sink, a request as a
//! whole (what a receiver answers with), configuration, and serving.
//!
//! Each request-level error knows its [`RejectReason`], so counting is uniform; the mapping
//! to an HTTP status lives in `http.rs` and to a gRPC status in `grpc.rs`, one place each.

use crate::decoded::RejectReason;
use std::path::PathBuf;
use std::time::Duration;

/// Input that cannot be decoded at all (as opposed to single items refused inside a good
/// request, which are [`crate::Rejection`]s).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("malformed json: {0}")]
    Json(#[from] serde_json::Error),
    /// Malformed JSON in an input of several documents; the position is on the enclosing
    /// [`DecodeError::AtLine`] or [`DecodeError::InFile`].
    #[error("malformed json: {0}")]
    JsonInFile(String),
    /// Decoding would allocate more than the input's budget (`crate::budget`).
    #[error("decoding the body would allocate more than {budget} bytes ({factor} times its size)", factor = crate::budget::BUDGET_FACTOR)]
    OverBudget { budget: usize },
    /// Valid JSON that is none of the documents we take.
    #[error("unrecognized document: {0}")]
    UnknownDocument(String),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A problem in an input of several documents (JSON lines on the audit webhook), located
    /// by line (and column for JSON syntax).
    #[error("line {line}{}: {source}", column.map(|c| format!(", column {c}")).unwrap_or_default())]
    AtLine {
        line: usize,
        column: Option<usize>,
        #[source]
        source: Box<DecodeError>,
    },
    /// A problem in a replay file, located by line (and column for JSON syntax).
    #[error("{}:{line}{}: {source}", path.display(), column.map(|c| format!(":{c}")).unwrap_or_default())]
    InFile {
        path: PathBuf,
        line: usize,
        column: Option<usize>,
        #[source]
        source: Box<DecodeError>,
    },
}

impl DecodeError {
    pub fn reason(&self) -> RejectReason {
        match self {
            DecodeError::Protobuf(_) => RejectReason::MalformedProtobuf,
            DecodeError::OverBudget { .. } => RejectReason::TooLarge,
            DecodeError::Json(_)
            | DecodeError::JsonInFile(_)
            | DecodeError::UnknownDocument(_)
            | DecodeError::Read { .. } => RejectReason::MalformedJson,
            DecodeError::AtLine { source, .. } | DecodeError::InFile { source, .. } => {
                source.reason()
            }
        }
    }
}

/// Why a sink did not take a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Push back: the sender should retry after the given time (OTLP 503 + Retry-After,
    /// gRPC UNAVAILABLE).
    #[error("sink is full, retry after {retry_after:?}")]
    Full { retry_after: Duration },
    /// The consumer is gone, e.g. during shutdown.
    #[error("sink is closed")]
    Closed,
}

/// Why a whole request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("decompressed body exceeds the limit of {limit} bytes")]
    TooLargeDecompressed { limit: usize },
    #[error("unsupported content type {0:?}")]
    UnsupportedContentType(String),
    #[error("unsupported content encoding {0:?}")]
    UnsupportedEncoding(String),
    #[error("cannot decompress {encoding} body: {message}")]
    BadCompression {
        encoding: &'static str,
        message: String,
    },
    #[error("cannot read request body: {0}")]
    Read(String),
    #[error("method {0} not allowed, use POST")]
    MethodNotAllowed(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Push back for want of room in the receivers themselves; `what` says which room.
    #[error("{what}, retry after {retry_after:?}")]
    Busy { what: String, retry_after: Duration },
    /// The body did not arrive in time (slow client).
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    /// A credential that can be checked only with the body (a webhook signature) is wrong.
    #[error("{0}")]
    Unauthenticated(crate::auth::Refusal),
}

impl IngestError {
    /// When the client should retry, for a push-back.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Sink(SinkError::Full { retry_after })
            | IngestError::Busy { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn reason(&self) -> RejectReason {
        match self {
            IngestError::TooLarge { .. } | IngestError::TooLargeDecompressed { .. } => {
                RejectReason::TooLarge
            }
            IngestError::UnsupportedContentType(_) => RejectReason::UnsupportedContentType,
            IngestError::UnsupportedEncoding(_) | IngestError::BadCompression { .. } => {
                RejectReason::BadEncoding
            }
            IngestError::Read(_) | IngestError::BodyTimeout(_) => RejectReason::ReadError,
            IngestError::MethodNotAllowed(_) => RejectReason::MethodNotAllowed,
            IngestError::Decode(e) => e.reason(),
            IngestError::Sink(SinkError::Full { .. }) | IngestError::Busy { .. } => {
                RejectReason::Backpressure
            }
            IngestError::Sink(SinkError::Closed) => RejectReason::SinkClosed,
            IngestError::Unauthenticated(_) => RejectReason::Unauthenticated,
        }
    }
}

/// A [`crate::ReceiverConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be greater than zero")]
    Zero { field: &'static str },
    #[error("max_request_bytes {0} exceeds the largest supported body of {max} bytes", max = u32::MAX)]
    TooLarge(usize),
    #[error("invalid duration {0:?}: expected a number and a unit (ms, s, m, h), e.g. \"5s\"")]
    Duration(String),
    #[error("max_receive_bytes {max_receive_bytes} must be at least twice max_request_bytes {max_request_bytes}")]
    ReceiveBudget {
        max_receive_bytes: usize,
        max_request_bytes: usize,
    },
    #[error("max_connection_receive_bytes {max_connection_receive_bytes} must be at least max_request_bytes {max_request_bytes}")]
    ConnectionShare {
        max_connection_receive_bytes: usize,
        max_request_bytes: usize,
    },
}

/// A server that could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("http server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error("grpc server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
}
