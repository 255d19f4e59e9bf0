//! The OTLP/gRPC services, written out instead of opentelemetry-proto's generated servers,
//! for one reason: the generated ones decode every request in full with prost, into owned
//! strings for each of the ~23 attributes a span carries. Here the message is read into
//! events by the wire reader ([`crate::wire`]) that OTLP/HTTP protobuf uses, and goes to
//! prost (then the transforms) only when that reader does not take it (so a malformed
//! message still gets prost's error). Routing, compression, the message size limit and the
//! answer for an unknown method are tonic's, as in the generated code.

use crate::decoded::Decoded;
use crate::transform::{decode_logs, decode_traces};
use bytes::Buf;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// A request message as decoded into events, with the size it had on the wire (for the
/// received-bytes metric).
pub(crate) struct Received<M> {
    pub decoded: Decoded,
    pub wire_len: usize,
    request: PhantomData<M>,
}

/// The two OTLP export requests: where they are routed and how they are decoded.
pub(crate) trait OtlpRequest: prost::Message + Default + Send + 'static {
    const SERVICE: &'static str;
    const PATH: &'static str;
    /// The wire reader's events; `None` when it leaves the message to prost.
    fn read(raw: &[u8]) -> Option<Decoded>;
    /// The events of a message prost decoded.
    fn transform(&self) -> Decoded;
}

impl OtlpRequest for ExportTraceServiceRequest {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    fn read(raw: &[u8]) -> Option<Decoded> {
        crate::wire::traces(raw)
    }
    fn transform(&self) -> Decoded {
        decode_traces(self)
    }
}

impl OtlpRequest for ExportLogsServiceRequest {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    fn read(raw: &[u8]) -> Option<Decoded> {
        crate::wire::logs(raw)
    }
    fn transform(&self) -> Decoded {
        decode_logs(self)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the service does with a decoded request.
pub(crate) type Export<Req, Resp> =
    Arc<dyn Fn(Received<Req>) -> BoxFuture<Result<Resp, Status>> + Send + Sync>;

/// One OTLP export service (traces or logs) as a tower service for tonic's router.
pub(crate) struct OtlpService<Req, Resp> {
    export: Export<Req, Resp>,
    max_decoding_message_size: usize,
}

impl<Req, Resp> Clone for OtlpService<Req, Resp> {
    fn clone(&self) -> Self {
        OtlpService {
            export: self.export.clone(),
            max_decoding_message_size: self.max_decoding_message_size,
        }
    }
}

impl<Req, Resp> OtlpService<Req, Resp> {
    /// gzip and zstd accepted, gzip sent when the client accepts it, messages over
    /// `max_decoding_message_size` (compressed or not) refused by tonic.
    pub fn new(max_decoding_message_size: usize, export: Export<Req, Resp>) -> Self {
        OtlpService {
            export,
            max_decoding_message_size,
        }
    }
}

impl<Req: OtlpRequest, Resp> NamedService for OtlpService<Req, Resp> {
    const NAME: &'static str = Req::SERVICE;
}

impl<Req, Resp, B> tower::Service<http::Request<B>> for OtlpService<Req, Resp>
where
    Req: OtlpRequest,
    Resp: prost::Message + Send + 'static,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != Req::PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = Unary(self.export.clone());
        let limit = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(PrunedCodec::<Req, Resp>(PhantomData))
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(method, req).await)
        })
    }
}

/// The unary handler tonic calls with the decoded request.
struct Unary<Req, Resp>(Export<Req, Resp>);

impl<Req, Resp> tower::Service<Request<Received<Req>>> for Unary<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Response<Resp>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<Resp>, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Received<Req>>) -> Self::Future {
        let answer = (self.0)(request.into_inner());
        Box::pin(async move { answer.await.map(Response::new) })
    }
}

struct PrunedCodec<Req, Resp>(PhantomData<(Req, Resp)>);

impl<Req, Resp> Codec for PrunedCodec<Req, Resp>
where
    Req: OtlpRequest,
    Resp: prost::Message + Send + 'static,
{
    type Encode = Resp;
    type Decode = Received<Req>;
    type Encoder = ProstEncoder<Resp>;
    type Decoder = PrunedDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        PrunedDecoder(PhantomData)
    }
}

struct ProstEncoder<M>(PhantomData<M>);

impl<M: prost::Message> Encoder for ProstEncoder<M> {
    type Item = M;
    type Error = Status;

    fn encode(&mut self, item: M, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // EncodeBuf grows as needed, so encoding cannot run out of room.
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

struct PrunedDecoder<M>(PhantomData<M>);

impl<M: OtlpRequest> Decoder for PrunedDecoder<M> {
    type Item = Received<M>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Received<M>>, Status> {
        let wire_len = buf.remaining();
        // tonic hands over one contiguous buffer; should it ever not, copy it once.
        let copy;
        let raw = if buf.chunk().len() == wire_len {
            buf.chunk()
        } else {
            copy = buf.copy_to_bytes(wire_len);
            &copy[..]
        };
        // The same error text (and INTERNAL code) as tonic-prost, which the rejection
        // counting in `grpc` recognises.
        let decoded = match M::read(raw) {
            Some(decoded) => decoded,
            None => M::decode(raw)
                .map_err(|e| Status::internal(e.to_string()))?
                .transform(),
        };
        if buf.remaining() > 0 {
            buf.advance(wire_len);
        }
        Ok(Some(Received {
            decoded,
            wire_len,
            request: PhantomData,
        }))
    }
}
