//! Sending rounds over OTLP/HTTP (protobuf) or OTLP/gRPC, one client per connection, and
//! what each connection counts: accepted items, refusals by status, request latency.
//!
//! The gRPC client sends the template's bytes as the message as they are (`RawCodec`): no
//! protobuf encoding per request on the generator's core.

use super::mix::{Signal, Template};
use crate::Secret;
use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::{Duration, Instant};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// How to reach the server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Protocol {
    /// OTLP/HTTP, protobuf bodies (`/v1/traces`, `/v1/logs`).
    Http,
    /// OTLP/gRPC (`TraceService/Export`, `LogsService/Export`).
    Grpc,
}

/// What one connection saw.
#[derive(Default, Debug)]
pub struct Tally {
    pub requests_ok: u64,
    pub spans_accepted: u64,
    pub logs_accepted: u64,
    /// Items the server answered as rejected in a partial success.
    pub items_rejected: u64,
    /// Failed requests by status (`http 503`, `grpc Unavailable`, `transport`).
    pub errors: BTreeMap<String, u64>,
    /// Items of the requests the server refused with a retryable push-back (HTTP 429/503,
    /// gRPC UNAVAILABLE/RESOURCE_EXHAUSTED): what an SDK would send again. The soak compares
    /// them with the server's `toctou_rejected_total{reason="backpressure"}`.
    pub items_pushed_back: u64,
    /// Round trip of every answered request, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.requests_ok += other.requests_ok;
        self.spans_accepted += other.spans_accepted;
        self.logs_accepted += other.logs_accepted;
        self.items_rejected += other.items_rejected;
        self.items_pushed_back += other.items_pushed_back;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        self.latencies_us.extend(other.latencies_us);
    }

    fn error(&mut self, what: String) {
        *self.errors.entry(what).or_insert(0) += 1;
    }

    fn accepted(&mut self, signal: Signal, items: u64, rejected: u64, took: Duration) {
        self.requests_ok += 1;
        let ok = items.saturating_sub(rejected);
        match signal {
            Signal::Traces => self.spans_accepted += ok,
            Signal::Logs => self.logs_accepted += ok,
        }
        self.items_rejected += rejected;
        self.latencies_us
            .push(took.as_micros().min(u128::from(u32::MAX)) as u32);
    }
}

/// One connection to the server.
pub enum Client {
    Http {
        client: reqwest::Client,
        traces_url: String,
        logs_url: String,
    },
    /// With the `authorization` value sent as metadata on every call, when there is one.
    Grpc(
        tonic::client::Grpc<Channel>,
        Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    ),
}

impl Client {
    /// `endpoint` is `http://host:port` (the OTLP/HTTP or the OTLP/gRPC port); `token`, when
    /// given, goes with every request as `Authorization: Bearer`.
    pub async fn connect(
        protocol: Protocol,
        endpoint: &str,
        token: Option<&Secret>,
    ) -> anyhow::Result<Client> {
        let base = endpoint.trim_end_matches('/');
        Ok(match protocol {
            Protocol::Http => Client::Http {
                // One pooled connection: each generator task is one client connection.
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(30))
                    .default_headers(authorization(token)?)
                    .build()?,
                traces_url: format!("{base}/v1/traces"),
                logs_url: format!("{base}/v1/logs"),
            },
            Protocol::Grpc => {
                let channel = Endpoint::from_shared(base.to_string())?
                    .timeout(Duration::from_secs(30))
                    .tcp_nodelay(true)
                    // A 512-span request is ~150 KB: with HTTP/2's default 64 KiB windows
                    // every request would wait on window updates (and delayed ACKs).
                    .initial_stream_window_size(Some(8 << 20))
                    .initial_connection_window_size(Some(16 << 20))
                    .connect()
                    .await?;
                // The server's default limit is 4 MiB; a batch of 512 is well under it.
                let auth = match token {
                    None => None,
                    Some(t) => {
                        let mut value: tonic::metadata::MetadataValue<_> = t.bearer().parse()?;
                        value.set_sensitive(true);
                        Some(value)
                    }
                };
                Client::Grpc(tonic::client::Grpc::new(channel), auth)
            }
        })
    }

    /// Sends one rendered request of `template` and counts the answer.
    pub async fn send(&mut self, template: &Template, body: Vec<u8>, tally: &mut Tally) {
        let started = Instant::now();
        match self {
            Client::Http {
                client,
                traces_url,
                logs_url,
            } => {
                let url = match template.signal {
                    Signal::Traces => traces_url.as_str(),
                    Signal::Logs => logs_url.as_str(),
                };
                let answer = client
                    .post(url)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await;
                let response = match answer {
                    Ok(r) => r,
                    Err(err) => {
                        tally.error(format!("transport: {}", short(&err)));
                        return;
                    }
                };
                let status = response.status();
                let bytes = response.bytes().await.unwrap_or_default();
                if !status.is_success() {
                    if matches!(status.as_u16(), 429 | 503) {
                        tally.items_pushed_back += template.items;
                    }
                    tally.error(format!("http {}", status.as_u16()));
                    return;
                }
                let rejected = rejected_in(template.signal, &bytes);
                tally.accepted(template.signal, template.items, rejected, started.elapsed());
            }
            Client::Grpc(grpc, auth) => {
                let auth = auth.as_ref();
                let request = |body: Bytes| {
                    let mut request = tonic::Request::new(body);
                    if let Some(value) = auth {
                        request
                            .metadata_mut()
                            .insert("authorization", value.clone());
                    }
                    request
                };
                if let Err(err) = grpc.ready().await {
                    tally.error(format!("transport: {}", short(&err)));
                    return;
                }
                let body = Bytes::from(body);
                let rejected = match template.signal {
                    Signal::Traces => grpc
                        .unary(
                            request(body),
                            PathAndQuery::from_static(TRACES_PATH),
                            RawCodec::<ExportTraceServiceResponse>::default(),
                        )
                        .await
                        .map(|r| {
                            r.into_inner()
                                .partial_success
                                .map_or(0, |p| p.rejected_spans.max(0) as u64)
                        }),
                    Signal::Logs => grpc
                        .unary(
                            request(body),
                            PathAndQuery::from_static(LOGS_PATH),
                            RawCodec::<ExportLogsServiceResponse>::default(),
                        )
                        .await
                        .map(|r| {
                            r.into_inner()
                                .partial_success
                                .map_or(0, |p| p.rejected_log_records.max(0) as u64)
                        }),
                };
                match rejected {
                    Ok(n) => tally.accepted(template.signal, template.items, n, started.elapsed()),
                    Err(status) => {
                        if matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                        ) {
                            tally.items_pushed_back += template.items;
                        }
                        tally.error(format!("grpc {:?}", status.code()))
                    }
                }
            }
        }
    }
}

/// Rejected items of an OTLP/HTTP protobuf answer; an empty or non-protobuf body (some
/// servers answer `{}` in JSON) counts as none rejected.
fn rejected_in(signal: Signal, body: &[u8]) -> u64 {
    match signal {
        Signal::Traces => ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| p.rejected_spans.max(0) as u64),
        Signal::Logs => ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| p.rejected_log_records.max(0) as u64),
    }
}

/// Error text without the chain of causes that make every line unique.
fn short(err: &dyn std::error::Error) -> String {
    let mut root: &dyn std::error::Error = err;
    while let Some(next) = root.source() {
        root = next;
    }
    let s = root.to_string();
    s.chars().take(60).collect()
}

/// A gRPC codec sending pre-encoded message bytes as they are and decoding the answer
/// with prost.
pub struct RawCodec<M>(PhantomData<M>);

impl<M> Default for RawCodec<M> {
    fn default() -> Self {
        RawCodec(PhantomData)
    }
}

impl<M: Message + Default + Send + 'static> Codec for RawCodec<M> {
    type Encode = Bytes;
    type Decode = M;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder<M>;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

pub struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

pub struct ProstDecoder<M>(PhantomData<M>);

impl<M: Message + Default> Decoder for ProstDecoder<M> {
    type Item = M;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<M>, Status> {
        M::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the answer: {e}")))
    }
}

/// The HTTP client's default headers: the bearer token, marked sensitive (kept out of
/// reqwest's and hyper's debug output).
fn authorization(token: Option<&Secret>) -> anyhow::Result<reqwest::header::HeaderMap> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&t.bearer())?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::mix::{Mix, MixConfig};
    use std::sync::Arc;
    use toctou_collector::{ChannelSink, ReceiverConfig, Receivers};
    use toctou_schema::Event;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// Sends a round of the mix over each protocol to the collector's real servers: every
    /// span and record is counted accepted and arrives as an event, and the raw gRPC codec's
    /// bytes are a valid OTLP request to a prost-based server.
    #[tokio::test]
    async fn a_round_reaches_the_real_receivers_over_http_and_grpc() {
        let (tx, mut rx) = mpsc::channel::<Vec<Event>>(64);
        let receivers = Receivers::new(Arc::new(ChannelSink::new(tx)), ReceiverConfig::default());
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        tokio::spawn(toctou_collector::serve_http(
            http,
            receivers.clone(),
            std::future::pending(),
        ));
        tokio::spawn(toctou_collector::serve_grpc(
            grpc,
            receivers,
            std::future::pending(),
        ));

        let mix = Mix::build(&MixConfig::default());
        let round = &mix.rounds[0];
        let items = round.traces.items + round.logs.items;
        for (protocol, addr, n) in [
            (Protocol::Http, http_addr, 1u64),
            (Protocol::Grpc, grpc_addr, 2),
        ] {
            let mut client = Client::connect(protocol, &format!("http://{addr}"), None)
                .await
                .unwrap();
            let mut tally = Tally::default();
            for template in [&round.traces, &round.logs] {
                let mut body = Vec::new();
                template.render(n, toctou_schema::now_ns(), &mut body);
                client.send(template, body, &mut tally).await;
            }
            assert!(tally.errors.is_empty(), "{protocol:?}: {:?}", tally.errors);
            assert_eq!(tally.requests_ok, 2);
            assert_eq!(tally.spans_accepted, round.traces.items);
            assert_eq!(tally.logs_accepted, round.logs.items);
            assert_eq!(tally.items_rejected, 0);
            let mut got = 0;
            while got < items {
                got += rx.recv().await.expect("events").len() as u64;
            }
            assert_eq!(got, items, "{protocol:?}");
        }
    }

    /// A refusal is counted by its status, not as accepted.
    #[tokio::test]
    async fn refusals_are_counted_by_status() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mix = Mix::build(&MixConfig::default());
        let mut client = Client::connect(Protocol::Http, &format!("http://{addr}"), None)
            .await
            .unwrap();
        let mut tally = Tally::default();
        let mut body = Vec::new();
        mix.rounds[0]
            .traces
            .render(1, toctou_schema::now_ns(), &mut body);
        client.send(&mix.rounds[0].traces, body, &mut tally).await;
        assert_eq!(tally.spans_accepted, 0);
        assert_eq!(tally.errors.get("http 503"), Some(&1));
    }

    /// With ingest tokens on the receivers: the loadgen's token is taken over both
    /// protocols, and without it every request is refused and counted by its status.
    #[tokio::test]
    async fn the_token_goes_with_every_request() {
        let (tx, mut rx) = mpsc::channel::<Vec<Event>>(64);
        let receivers = Receivers::new(Arc::new(ChannelSink::new(tx)), ReceiverConfig::default());
        let token: Secret = "loadgen-token-0123456789".parse().unwrap();
        let tokens = toctou_collector::Tokens::parse("loadgen-token-0123456789", "t").unwrap();
        let auth = toctou_collector::ReceiverAuth {
            otlp: Some(tokens.clone()),
            audit: Some(tokens),
        };
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
        tokio::spawn(toctou_collector::serve_http_on(
            http,
            receivers.clone(),
            auth.clone(),
            std::future::pending(),
        ));
        tokio::spawn(toctou_collector::serve_grpc_on(
            tonic::transport::server::TcpIncoming::from(grpc),
            receivers,
            auth,
            toctou_collector::ConnLimits::default(),
            std::future::pending(),
        ));
        let mix = Mix::build(&MixConfig::default());
        let template = &mix.rounds[0].traces;
        for (protocol, addr, refusal) in [
            (Protocol::Http, http_addr, "http 401"),
            (Protocol::Grpc, grpc_addr, "grpc Unauthenticated"),
        ] {
            let endpoint = format!("http://{addr}");
            let mut without = Client::connect(protocol, &endpoint, None).await.unwrap();
            let mut with = Client::connect(protocol, &endpoint, Some(&token))
                .await
                .unwrap();
            let mut refused = Tally::default();
            let mut body = Vec::new();
            template.render(1, toctou_schema::now_ns(), &mut body);
            without.send(template, body.clone(), &mut refused).await;
            assert_eq!(
                refused.errors.get(refusal),
                Some(&1),
                "{:?}",
                refused.errors
            );
            assert_eq!(refused.spans_accepted, 0);
            let mut accepted = Tally::default();
            with.send(template, body, &mut accepted).await;
            assert!(accepted.errors.is_empty(), "{:?}", accepted.errors);
            assert_eq!(accepted.spans_accepted, template.items);
            let mut got = 0;
            while got < template.items {
                got += rx.recv().await.expect("events").len() as u64;
            }
        }
    }
}
