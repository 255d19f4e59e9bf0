//! The OTLP/gRPC receiver on tonic: the `TraceService` and `LogsService` of
//! opentelemetry-proto, gzip and zstd accepted, messages limited to `max_request_bytes`
//! (compressed and decompressed).
//!
//! tonic refuses oversized, undecodable and wrongly compressed messages before our handler
//! runs; a layer in front of the services reads the status of those responses so they are
//! counted like any other rejection. A full sink answers UNAVAILABLE with a `RetryInfo`
//! detail, which OTLP exporters honour as the retry delay. This file holds the one mapping
//! from [`IngestError`] to gRPC status. With tokens, an interceptor refuses a call without
//! one (UNAUTHENTICATED) before its message is read (see [`crate::auth`]).

use crate::auth::{GrpcGuard, ReceiverAuth};
use crate::decoded::{RejectReason, Signal};
use crate::error::{DecodeError, IngestError, ServeError};
use crate::grpc_service::{OtlpService, Received};
use crate::listen::{self, ConnLimits, Gate, ListenerKind};
use crate::metrics::{Metrics, Transport};
use crate::receivers::{Receipt, Receivers};
use futures::Stream;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{Connected, TcpIncoming};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The largest HTTP/2 frame we accept (and advertise): 256 KiB, room for an SDK's batch.
const MAX_FRAME_SIZE: u32 = 256 << 10;
/// HTTP/2 pings: a peer that does not answer one within this is gone.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);

/// Serves the OTLP gRPC services on `listener` until `shutdown` resolves, then finishes the
/// calls in flight. Open to anyone (see [`serve_grpc_on`]).
pub async fn serve_grpc(
    listener: TcpListener,
    state: Receivers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_grpc_on(
        TcpIncoming::from(listener),
        state,
        ReceiverAuth::default(),
        ConnLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve_grpc`] on any stream of connections (TLS ones, say), refusing calls without one
/// of `auth.otlp`'s tokens (UNAUTHENTICATED) before their message is read, with the
/// connections bounded by `limits`: a cap on connections, `SETTINGS_MAX_CONCURRENT_STREAMS`
/// per connection (tonic advertises none otherwise, and every stream may buffer a
/// message), and a deadline for each call, message included.
pub async fn serve_grpc_on<I, IO, IE>(
    incoming: I,
    state: Receivers,
    auth: ReceiverAuth,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let gate = Gate::new(ListenerKind::OtlpGrpc, &limits);
    let incoming = listen::gated(incoming, gate, limits.header_read_timeout);
    let limit = state.config().max_request_bytes;
    let guard = GrpcGuard {
        tokens: auth.otlp,
        receivers: state.clone(),
    };
    let receiver = GrpcReceiver(state.clone());
    let traces = OtlpService::<ExportTraceServiceRequest, ExportTraceServiceResponse>::new(
        limit,
        state.clone(),
        {
            let r = receiver.clone();
            Arc::new(move |request| {
                let r = r.clone();
                Box::pin(async move { r.export_traces(request).await })
            })
        },
    );
    let logs = OtlpService::<ExportLogsServiceRequest, ExportLogsServiceResponse>::new(
        limit,
        state.clone(),
        {
            let r = receiver;
            Arc::new(move |request| {
                let r = r.clone();
                Box::pin(async move { r.export_logs(request).await })
            })
        },
    );
    let metrics = state.metrics().clone();
    tonic::transport::Server::builder()
        // HTTP/2's default 16 KiB frames cut a 512-span export (~150 KB) into ten frames,
        // read 8-16 KiB at a time: ~20 reads and task wake-ups per request. A client that
        // honours SETTINGS_MAX_FRAME_SIZE (tonic's does) sends it in one frame, read in a
        // few large reads; others are unaffected. The frame's buffer lives only while read.
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .timeout(limits.request_timeout)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .layer(tower::util::MapResponseLayer::new(
            move |response: http::Response<tonic::body::Body>| {
                count_transport_rejection(&metrics, &response);
                response
            },
        ))
        .add_service(InterceptedService::new(traces, guard.clone()))
        .add_service(InterceptedService::new(logs, guard))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Counts the refusals tonic makes on its own (they answer with the status in the
/// headers). Our handlers only ever fail with UNAVAILABLE, counted where they fail, so
/// every other code seen here is tonic's.
fn count_transport_rejection(metrics: &Metrics, response: &http::Response<tonic::body::Body>) {
    let Some(code) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    let message = response
        .headers()
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let reason = match Code::from(code) {
        // Frame length over the limit, or inflating past it.
        Code::OutOfRange | Code::ResourceExhausted => RejectReason::TooLarge,
        // A grpc-encoding we did not enable.
        Code::Unimplemented if message.contains("compressed") => RejectReason::BadEncoding,
        Code::Internal if message.contains("decompress") => RejectReason::BadEncoding,
        // tonic-prost reports a protobuf decode failure as INTERNAL.
        Code::Internal => RejectReason::MalformedProtobuf,
        _ => return,
    };
    metrics.add_rejected(reason, 1);
}

/// The one mapping from a refused request to its gRPC code (also the `code` of HTTP error
/// bodies). UNAVAILABLE is retryable per the OTLP spec; the rest are not.
pub(crate) fn grpc_code(e: &IngestError) -> Code {
    match e {
        IngestError::TooLarge { .. }
        | IngestError::TooLargeDecompressed { .. }
        | IngestError::Decode(DecodeError::OverBudget { .. }) => Code::ResourceExhausted,
        IngestError::UnsupportedContentType(_)
        | IngestError::UnsupportedEncoding(_)
        | IngestError::MethodNotAllowed(_) => Code::Unimplemented,
        IngestError::BadCompression { .. } | IngestError::Read(_) | IngestError::Decode(_) => {
            Code::InvalidArgument
        }
        IngestError::BodyTimeout(_) => Code::DeadlineExceeded,
        IngestError::Sink(_) | IngestError::Busy { .. } => Code::Unavailable,
        IngestError::Unauthenticated(_) => Code::Unauthenticated,
    }
}

#[derive(Clone)]
struct GrpcReceiver(Receivers);

impl GrpcReceiver {
    /// Delivers one message's events, which the codec decoded on the reactor as tonic read
    /// the message (where the pruned prost decode ran before). The wire reader takes about
    /// 0.7 µs a span, so a 512-span export holds the worker for ~0.35 ms, and a message at
    /// the size limit for a few ms (gRPC has no blocking-pool hand-off, unlike HTTP).
    async fn handle<M>(&self, signal: Signal, request: Received<M>) -> Result<Receipt, Status> {
        let r = &self.0;
        let Received {
            decoded, wire_len, ..
        } = request;
        r.metrics()
            .add_received_bytes(Transport::Grpc, wire_len as u64);
        let result = async {
            let _slot = r.slot().await?;
            r.deliver(signal, decoded).await
        }
        .await;
        result.map_err(|e| {
            r.count_failure(&e);
            tracing::debug!(reason = e.reason().as_str(), error = %e, "grpc request refused");
            let code = grpc_code(&e);
            let message = e.to_string();
            match e.retry_after() {
                // A `RetryInfo` in the status details: OTLP gRPC exporters read the delay
                // there, the gRPC counterpart of HTTP's `Retry-After`.
                Some(retry_after) => Status::with_error_details(
                    code,
                    message,
                    ErrorDetails::with_retry_info(Some(retry_after)),
                ),
                None => Status::new(code, message),
            }
        })
    }

    async fn export_traces(
        self,
        request: Received<ExportTraceServiceRequest>,
    ) -> Result<ExportTraceServiceResponse, Status> {
        let receipt = self.handle(Signal::Traces, request).await?;
        Ok(ExportTraceServiceResponse {
            partial_success: (receipt.rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: receipt.rejected as i64,
                error_message: receipt.message,
            }),
        })
    }

    async fn export_logs(
        self,
        request: Received<ExportLogsServiceRequest>,
    ) -> Result<ExportLogsServiceResponse, Status> {
        let receipt = self.handle(Signal::Logs, request).await?;
        Ok(ExportLogsServiceResponse {
            partial_success: (receipt.rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: receipt.rejected as i64,
                error_message: receipt.message,
            }),
        })
    }
}
