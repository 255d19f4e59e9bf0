//! The OTLP/gRPC services, written out instead of opentelemetry-proto's generated servers,
//! for one reason: the generated ones decode every request in full with prost, into owned
//! strings for each of the ~23 attributes a span carries. Here the message is read into
//! events by the wire reader ([`crate::wire`]) that OTLP/HTTP protobuf uses, and goes to
//! prost (then the transforms) only when that reader does not take it (so a malformed
//! message still gets prost's error). Routing and the answer for an unknown method are
//! tonic's, as in the generated code.
//!
//! An uncompressed call (what SDKs send by default) skips tonic's decode buffer too: tonic
//! copies every frame into a buffer grown from 8 KiB, while an SDK batch arrives in one
//! HTTP/2 frame (we advertise 256 KiB frames), so [`Gather`] reads the message straight out
//! of that frame, or joins the frames once into a buffer sized from the message's prefix.
//! Its refusals (size limit, compressed flag, truncation) carry tonic's codes and texts.
//! gzip calls are gathered the same way and inflated here, every member of the body (tonic's
//! decoder reads only the first, and answered OK); zstd calls go through tonic's codec,
//! which inflates them within the limit.

use crate::decoded::Decoded;
use crate::error::{DecodeError, IngestError};
use crate::receivers::ConnShare;
use crate::receivers::{Held, Receivers};
use crate::transform::{decode_logs, decode_traces};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
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
    /// Refuses a message whose prost decoding would pass its budget (`crate::budget`).
    fn within_budget(raw: &[u8]) -> Result<(), DecodeError>;
    /// The events of a message prost decoded.
    fn transform(&self) -> Decoded;
}

impl OtlpRequest for ExportTraceServiceRequest {
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    fn read(raw: &[u8]) -> Option<Decoded> {
        crate::wire::traces(raw)
    }
    fn within_budget(raw: &[u8]) -> Result<(), DecodeError> {
        crate::budget::check_traces(raw)
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
    fn within_budget(raw: &[u8]) -> Result<(), DecodeError> {
        crate::budget::check_logs(raw)
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
    /// Whose receive budget an uncompressed message is gathered under.
    receivers: Receivers,
}

impl<Req, Resp> Clone for OtlpService<Req, Resp> {
    fn clone(&self) -> Self {
        OtlpService {
            export: self.export.clone(),
            max_decoding_message_size: self.max_decoding_message_size,
            receivers: self.receivers.clone(),
        }
    }
}

impl<Req, Resp> OtlpService<Req, Resp> {
    /// gzip and zstd accepted, gzip sent when the client accepts it, messages over
    /// `max_decoding_message_size` (compressed or not) refused by tonic.
    pub fn new(
        max_decoding_message_size: usize,
        receivers: Receivers,
        export: Export<Req, Resp>,
    ) -> Self {
        OtlpService {
            export,
            max_decoding_message_size,
            receivers,
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
    B::Data: Send,
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
        let limit = self.max_decoding_message_size;
        if let Some(gzip) = gathered_encoding(req.headers()) {
            let export = self.export.clone();
            let receivers = self.receivers.clone();
            // The connection's share of the receive budget (its `ConnectInfo`, see
            // `listen::Gated`); none when served some other way.
            let share = req.extensions().get::<ConnShare>().cloned();
            return Box::pin(async move {
                let body = req.into_body();
                Ok(plain_unary(export, limit, gzip, receivers, share, body).await)
            });
        }
        let method = Unary(self.export.clone());
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
        let decoded = decode::<M>(raw)?;
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

/// One message's events: the wire reader's, or prost's and the transforms' when the reader
/// leaves it. A message neither takes is refused with tonic-prost's error text and
/// INTERNAL code, one over its decode budget with RESOURCE_EXHAUSTED, which the rejection
/// counting in `grpc` recognises.
fn decode<M: OtlpRequest>(raw: &[u8]) -> Result<Decoded, Status> {
    Ok(match M::read(raw) {
        Some(decoded) => decoded,
        None => M::within_budget(raw)
            .map_err(|e| Status::resource_exhausted(e.to_string()))
            .and_then(|()| M::decode(raw).map_err(|e| Status::internal(e.to_string())))?
            .transform(),
    })
}

/// Whether the call's message is gathered here: `Some(false)` uncompressed (no
/// `grpc-encoding`, or `identity`), `Some(true)` gzip, which is inflated here so that
/// every member of a multi-member body is read (tonic's gzip decoder stops after the
/// first and answers OK); `None` leaves the call to tonic's codec (zstd).
fn gathered_encoding(headers: &http::HeaderMap) -> Option<bool> {
    match headers.get("grpc-encoding").map(|v| v.as_bytes()) {
        None | Some(b"identity") => Some(false),
        Some(b"gzip") => Some(true),
        Some(_) => None,
    }
}

/// A unary call over an uncompressed body: the message gathered without tonic's copy,
/// decoded, exported, and the answer (or the refusal, with its status in the headers as
/// tonic sends it) built here.
async fn plain_unary<Req, Resp, B>(
    export: Export<Req, Resp>,
    limit: usize,
    gzip: bool,
    receivers: Receivers,
    share: Option<ConnShare>,
    body: B,
) -> http::Response<tonic::body::Body>
where
    Req: OtlpRequest,
    Resp: prost::Message,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send,
    B::Data: Send,
{
    let answer = async {
        let mut held = receivers.budget(share.as_ref());
        let (message, compressed) =
            read_message(body, limit, gzip, &mut held)
                .await
                .map_err(|e| match e {
                    Gathering::Refused(status) => status,
                    Gathering::Busy(e) => {
                        receivers.count_failure(&e);
                        Status::unavailable(e.to_string())
                    }
                })?;
        let wire_len = message.len();
        let message = if compressed {
            // Counted by the status, as tonic's own refusals are (`grpc`).
            inflate(message, limit).await.map_err(|e| match e {
                IngestError::TooLargeDecompressed { .. } => {
                    Status::resource_exhausted(e.to_string())
                }
                _ => Status::internal(e.to_string()),
            })?
        } else {
            message
        };
        let received = Received {
            decoded: decode::<Req>(&message)?,
            wire_len,
            request: PhantomData,
        };
        // The frame goes back before the export waits for room in the correlator's queue.
        drop(message);
        drop(held);
        export(received).await
    }
    .await;
    match answer {
        Ok(response) => reply(&response),
        Err(status) => status.into_http(),
    }
}

/// A gzip message inflated (every member, at most `limit` bytes) off the reactor, as
/// OTLP/HTTP does it.
async fn inflate(message: Bytes, limit: usize) -> Result<Bytes, IngestError> {
    let inflating = move || crate::body::decompress(crate::body::Encoding::Gzip, message, limit);
    match tokio::task::spawn_blocking(inflating).await {
        Ok(inflated) => inflated,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(crate::error::SinkError::Closed.into()),
    }
}

/// Why gathering a message failed: tonic's refusals, or no room in the receive budget.
enum Gathering {
    Refused(Status),
    Busy(IngestError),
}

impl From<Status> for Gathering {
    fn from(status: Status) -> Self {
        Gathering::Refused(status)
    }
}

/// The one message of a unary call's body, without its 5-byte prefix; every byte it holds
/// is covered by `held` before it is buffered.
async fn read_message<B>(
    body: B,
    limit: usize,
    gzip: bool,
    held: &mut Held,
) -> Result<(Bytes, bool), Gathering>
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send,
    B::Data: Send,
{
    let mut body = std::pin::pin!(body);
    let mut gather = Gather::new(limit, gzip);
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            // As tonic: a client that cancels has simply ended its stream.
            Err(e) => match Status::from_error(e.into()) {
                status if status.code() == tonic::Code::Cancelled => break,
                status => return Err(status.into()),
            },
        };
        // Trailers carry nothing a unary OTLP export reads.
        let chunk = match frame.into_data() {
            Ok(mut data) => data.copy_to_bytes(data.remaining()),
            Err(_) => continue,
        };
        held.cover(gather.room_after(chunk.len()))
            .await
            .map_err(Gathering::Busy)?;
        gather.push(chunk)?;
    }
    let compressed = gather.compressed;
    Ok((gather.finish()?, compressed))
}

/// The gRPC message prefix: a compressed flag and a big-endian length.
const PREFIX: usize = 5;

/// Gathers a unary call's one length-prefixed message from its body's data frames. A
/// message that arrives in one frame is that frame, not copied; one spread over several is
/// joined once into a buffer sized from its prefix. Refuses, as soon as the prefix is in,
/// a compressed flag (the call named no encoding) and a length over the limit; and anything
/// after the message.
struct Gather {
    limit: usize,
    /// The only chunk so far.
    first: Option<Bytes>,
    /// The chunks so far, once there are two.
    joined: Option<BytesMut>,
    /// The message's length, once the prefix is in.
    declared: Option<usize>,
    /// Whether the call named gzip, so that a compressed message is allowed.
    gzip: bool,
    /// Whether the message's prefix says it is compressed.
    compressed: bool,
}

impl Gather {
    fn new(limit: usize, gzip: bool) -> Self {
        Gather {
            limit,
            first: None,
            joined: None,
            declared: None,
            gzip,
            compressed: false,
        }
    }

    fn gathered(&self) -> &[u8] {
        match (&self.joined, &self.first) {
            (Some(joined), _) => joined,
            (None, Some(first)) => first,
            (None, None) => &[],
        }
    }

    /// The bytes held once a chunk of `len` is pushed, the joining copy included.
    fn room_after(&self, len: usize) -> usize {
        match (&self.joined, &self.first) {
            (Some(joined), _) => joined.capacity().max(joined.len() + len),
            (None, Some(first)) => {
                let declared = self.declared.map_or(0, |n| PREFIX + n);
                first.len() + declared.max(first.len() + len)
            }
            (None, None) => len,
        }
    }

    fn push(&mut self, chunk: Bytes) -> Result<(), Status> {
        if chunk.is_empty() {
            return Ok(());
        }
        if let Some(joined) = &mut self.joined {
            joined.extend_from_slice(&chunk);
        } else if let Some(first) = self.first.take() {
            let mut room = first.len() + chunk.len();
            if let Some(len) = self.declared {
                room = room.max(PREFIX + len);
            }
            let mut joined = BytesMut::with_capacity(room);
            joined.extend_from_slice(&first);
            joined.extend_from_slice(&chunk);
            self.joined = Some(joined);
        } else {
            self.first = Some(chunk);
        }
        if self.declared.is_none() {
            self.declared = self.prefix()?;
            self.compressed = self.declared.is_some() && self.gathered()[0] == 1;
        }
        match self.declared {
            Some(len) if self.gathered().len() > PREFIX + len => Err(Status::internal(
                "protocol error: more than one message in a unary call",
            )),
            _ => Ok(()),
        }
    }

    /// The declared length, once the prefix is in: tonic's checks, in tonic's words.
    fn prefix(&self) -> Result<Option<usize>, Status> {
        let Some(prefix) = self.gathered().get(..PREFIX) else {
            return Ok(None);
        };
        match prefix[0] {
            0 => {}
            1 if self.gzip => {}
            // https://grpc.github.io/grpc/core/md_doc_compression.html: a set flag without
            // a grpc-encoding MUST fail with INTERNAL.
            1 => {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                ))
            }
            f => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
                )))
            }
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.limit {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.limit
            )));
        }
        Ok(Some(len))
    }

    /// The message, once the body has ended.
    fn finish(self) -> Result<Bytes, Status> {
        let Some(len) = self.declared else {
            return Err(if self.gathered().is_empty() {
                Status::internal("Missing request message.")
            } else {
                Status::internal("Unexpected EOF decoding stream.")
            });
        };
        let all = match (self.joined, self.first) {
            (Some(joined), _) => joined.freeze(),
            (None, Some(first)) => first,
            (None, None) => Bytes::new(),
        };
        if all.len() < PREFIX + len {
            return Err(Status::internal("Unexpected EOF decoding stream."));
        }
        Ok(all.slice(PREFIX..))
    }
}

/// The successful answer to a unary call: the message, uncompressed (a server may always
/// answer so), and `grpc-status: 0` in the trailers.
fn reply<M: prost::Message>(message: &M) -> http::Response<tonic::body::Body> {
    let len = message.encoded_len();
    let mut data = BytesMut::with_capacity(PREFIX + len);
    data.put_u8(0);
    data.put_u32(len as u32);
    message
        .encode(&mut data)
        .expect("the buffer is sized from encoded_len");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = Full::new(data.freeze()).with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(message.len() as u32).to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    fn gather(limit: usize, chunks: &[&[u8]]) -> Result<Bytes, Status> {
        let mut g = Gather::new(limit, false);
        for c in chunks {
            g.push(Bytes::copy_from_slice(c))?;
        }
        g.finish()
    }

    #[test]
    fn a_message_in_one_frame_is_that_frame_not_a_copy() {
        let frame = Bytes::from(framed(b"an export request"));
        let mut g = Gather::new(1024, false);
        g.push(frame.clone()).unwrap();
        let message = g.finish().unwrap();
        assert_eq!(&message[..], b"an export request");
        assert_eq!(message.as_ptr(), frame[PREFIX..].as_ptr());
    }

    #[test]
    fn a_message_over_several_frames_is_joined_once_in_a_buffer_of_its_size() {
        let whole = framed(&[7u8; 1000]);
        // The prefix itself split across frames, then uneven pieces.
        let pieces: Vec<&[u8]> = vec![&whole[..2], &whole[2..9], &whole[9..500], &whole[500..]];
        assert_eq!(&gather(1000, &pieces).unwrap()[..], &[7u8; 1000][..]);

        let mut g = Gather::new(1000, false);
        g.push(Bytes::copy_from_slice(&whole[..100])).unwrap();
        g.push(Bytes::copy_from_slice(&whole[100..200])).unwrap();
        let joined = g.joined.as_ref().unwrap();
        assert!(joined.capacity() >= whole.len(), "{}", joined.capacity());
        g.push(Bytes::copy_from_slice(&whole[200..])).unwrap();
        assert_eq!(g.finish().unwrap().len(), 1000);

        // Empty frames change nothing; an empty message is a message.
        assert_eq!(gather(10, &[&[], &framed(b"")[..], &[]]).unwrap().len(), 0);
    }

    #[test]
    fn refusals_carry_tonics_codes_and_words() {
        let refused = |limit, chunks: &[&[u8]]| gather(limit, chunks).unwrap_err();

        let e = refused(10, &[]);
        assert_eq!(
            (e.code(), e.message()),
            (Code::Internal, "Missing request message.")
        );
        for truncated in [&framed(b"abc")[..3], &framed(b"abc")[..7]] {
            let e = refused(10, &[truncated]);
            assert_eq!(e.code(), Code::Internal);
            assert_eq!(e.message(), "Unexpected EOF decoding stream.");
        }

        let mut compressed = framed(b"abc");
        compressed[0] = 1;
        let e = refused(10, &[&compressed]);
        assert_eq!(e.code(), Code::Internal);
        assert!(
            e.message().contains("compressed-flag but no grpc-encoding"),
            "{e}"
        );
        compressed[0] = 2;
        assert!(refused(10, &[&compressed])
            .message()
            .contains("invalid compression flag: 2"));

        // Over the limit: refused on the prefix alone, before the message is read.
        let big = framed(&[0u8; 11]);
        let mut g = Gather::new(10, false);
        let e = g.push(Bytes::copy_from_slice(&big[..PREFIX])).unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange);
        assert!(
            e.message()
                .contains("found 11 bytes, the limit is: 10 bytes"),
            "{e}"
        );
        assert_eq!(gather(11, &[&big]).unwrap().len(), 11);

        // A second message (or stray bytes) after the first.
        let mut two = framed(b"one");
        two.extend_from_slice(&framed(b"two"));
        let e = refused(10, &[&two]);
        assert_eq!(e.code(), Code::Internal);
        assert!(e.message().contains("more than one message"), "{e}");
        let e = refused(10, &[&framed(b"one"), &[0]]);
        assert!(e.message().contains("more than one message"), "{e}");
    }

    #[tokio::test]
    async fn the_reply_is_the_prefixed_message_then_status_ok() {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceResponse,
        };
        let message = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "three spans without a name".into(),
            }),
        };
        let response = reply(&message);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        let body = response.into_body().collect().await.unwrap();
        let trailers = body.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        let data = body.to_bytes();
        assert_eq!(data[0], 0);
        let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, data.len() - PREFIX);
        let back = <ExportTraceServiceResponse as prost::Message>::decode(&data[PREFIX..]).unwrap();
        assert_eq!(back, message);
    }
}
