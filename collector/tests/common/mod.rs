//! Shared by the black-box tests: real HTTP and gRPC servers on 127.0.0.1:0 in front of a
//! `ChannelSink`, and builders for toctou-attributed OTLP messages.

#![allow(dead_code)] // each test binary uses a different part

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use toctou_collector::{
    serve_grpc, serve_http, ChannelSink, ReceiverConfig, Receivers, ServeError,
};
use toctou_schema::Event;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const PROTOBUF: &str = "application/x-protobuf";
pub const JSON: &str = "application/json";

/// POSTs `body` as is, with the given content type and (optional) content encoding.
pub async fn post(
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(e) = encoding {
        req = req.header("content-encoding", e);
    }
    req.send().await.unwrap()
}

/// `google.rpc.Status`, to read protobuf error bodies.
#[allow(unused_imports)]
pub use tonic_types::pb::Status as RpcStatus;

/// How long the sink waits for room in the channel before answering Full.
pub const SINK_WAIT: Duration = Duration::from_millis(50);

pub struct Harness {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub receivers: Receivers,
    pub rx: mpsc::Receiver<Vec<Event>>,
    /// Lets a test fill the channel to make the sink push back.
    pub tx: mpsc::Sender<Vec<Event>>,
    stop: Vec<oneshot::Sender<()>>,
    servers: Vec<JoinHandle<Result<(), ServeError>>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with(ReceiverConfig::default(), 16).await
    }

    pub async fn with(config: ReceiverConfig, capacity: usize) -> Harness {
        let (tx, rx) = mpsc::channel(capacity);
        config.validate().unwrap();
        let sink = Arc::new(ChannelSink::new(tx.clone()).with_wait(SINK_WAIT));
        let receivers = Receivers::new(sink, config);
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = http_listener.local_addr().unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let (stop_http, http_stopped) = oneshot::channel::<()>();
        let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
        let servers = vec![
            tokio::spawn(serve_http(http_listener, receivers.clone(), async {
                let _ = http_stopped.await;
            })),
            tokio::spawn(serve_grpc(grpc_listener, receivers.clone(), async {
                let _ = grpc_stopped.await;
            })),
        ];
        Harness {
            http,
            grpc,
            receivers,
            rx,
            tx,
            stop: vec![stop_http, stop_grpc],
            servers,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The next batch the sink took; fails the test after a few seconds without one.
    pub async fn next_batch(&mut self) -> Vec<Event> {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("no batch reached the sink")
            .expect("channel closed")
    }

    /// Asserts nothing reached the sink.
    pub fn assert_no_batch(&mut self) {
        assert!(self.rx.try_recv().is_err(), "unexpected batch in the sink");
    }

    /// Stops both servers and checks they shut down cleanly.
    pub async fn shutdown(mut self) {
        for s in self.stop.drain(..) {
            let _ = s.send(());
        }
        for server in self.servers.drain(..) {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("server did not stop")
                .unwrap()
                .unwrap();
        }
    }
}

pub fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel)
}

pub fn read(rel: &str) -> Vec<u8> {
    std::fs::read(testdata(rel)).unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

pub fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

pub fn s(key: &str, v: &str) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

pub const TRACE_ID: [u8; 16] = [
    0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c,
];

pub fn span(span_id: u8, start: u64, attributes: Vec<KeyValue>) -> Span {
    Span {
        trace_id: TRACE_ID.to_vec(),
        span_id: vec![span_id; 8],
        name: "toctou".into(),
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000,
        attributes,
        ..Default::default()
    }
}

pub fn traces(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn logs(service: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![s("service.name", service)],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A check and a use of `inventory/sku-42` by request `order-1`, and a span that is not
/// toctou's.
pub fn check_and_use() -> ExportTraceServiceRequest {
    traces(
        "shop",
        vec![
            span(
                1,
                1_000_000,
                vec![
                    s("toctou.phase", "check"),
                    s("toctou.resource", "inventory/sku-42"),
                    kv("toctou.resource.version", Value::IntValue(7)),
                    s("toctou.request_id", "order-1"),
                ],
            ),
            Span {
                // A child: a root span with a route would go to inference.
                parent_span_id: vec![1; 8],
                ..span(2, 1_500_000, vec![s("http.route", "/orders")])
            },
            span(
                3,
                2_000_000,
                vec![
                    s("toctou.phase", "use"),
                    s("toctou.resource", "inventory/sku-42"),
                    kv("toctou.resource.version", Value::IntValue(7)),
                    s("toctou.request_id", "order-1"),
                    s("toctou.operation", "reserve"),
                ],
            ),
        ],
    )
}

/// Two good spans and two that claim a phase but break the conventions.
pub fn partly_bad() -> ExportTraceServiceRequest {
    traces(
        "shop",
        vec![
            span(
                1,
                10,
                vec![s("toctou.phase", "check"), s("toctou.resource", "r")],
            ),
            span(2, 20, vec![s("toctou.phase", "use")]),
            span(
                3,
                30,
                vec![s("toctou.phase", "verify"), s("toctou.resource", "r")],
            ),
            span(
                4,
                40,
                vec![s("toctou.phase", "use"), s("toctou.resource", "r")],
            ),
        ],
    )
}
