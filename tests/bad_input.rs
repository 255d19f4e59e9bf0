//! Bad input, one case per row, against a real `toctou run`: every case gets its status and a
//! message that says what was wrong, `toctou_rejected_total{reason}` goes up by exactly one,
//! and a good request right after still works. The bases are real data (the official OTLP
//! example and a golden scenario), corrupted one way each. RELIABILITY.md "Input" is this table.

mod common;

use common::gzip;

use bytes::{BufMut, Bytes};
use common::{metric, testdata, Toctou};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use prost::Message;
use std::marker::PhantomData;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Status;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";
const LIMIT: usize = 20 * 1024 * 1024;
/// `MAX_VALUE_BYTES` in collector/src/attrs.rs (schema/CONVENTIONS.md).
const MAX_VALUE_BYTES: usize = 4096;
const DEPTH: usize = 100_000;
const GOOD: &str = "toctou_events_total{signal=\"traces\",phase=\"check\"}";

/// The golden stale_check scenario's first traces request: a check span (real data).
fn scenario() -> ExportTraceServiceRequest {
    let text = std::fs::read_to_string(testdata(
        "testdata/scenarios/stale_check_versions/input.jsonl",
    ))
    .unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("\"check\""))
        .expect("a check in the scenario");
    toctou_collector::traces_from_json(line.as_bytes()).unwrap()
}

fn official_example_json() -> Vec<u8> {
    std::fs::read(testdata("collector/testdata/otlp/trace.json")).unwrap()
}

fn attrs(req: &mut ExportTraceServiceRequest) -> &mut Vec<KeyValue> {
    &mut req.resource_spans[0].scope_spans[0].spans[0].attributes
}

fn set(req: &mut ExportTraceServiceRequest, key: &str, value: &str) {
    let a = attrs(req);
    a.retain(|kv| kv.key != key);
    a.push(KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    });
}

/// The scenario request twice: the first span broken by `corrupt`, the second intact.
fn one_bad_one_good(corrupt: impl Fn(&mut ExportTraceServiceRequest)) -> Vec<u8> {
    let good = scenario();
    let mut bad = good.clone();
    corrupt(&mut bad);
    let mut req = bad;
    let mut second = good.resource_spans[0].clone();
    second.scope_spans[0].spans[0].span_id = vec![0x42; 8];
    req.resource_spans.push(second);
    req.encode_to_vec()
}

/// The attack of issue 30 on prost: the scenario's span with an array `toctou.phase` (the
/// zero-copy reader leaves such a request to prost), then a million empty spans (2 MB).
fn empty_spans_for_prost() -> Vec<u8> {
    let mut odd = scenario().resource_spans[0].scope_spans[0].spans[0].clone();
    odd.attributes.retain(|kv| kv.key != "toctou.phase");
    odd.attributes.push(KeyValue {
        key: "toctou.phase".into(),
        value: Some(AnyValue {
            value: Some(Value::ArrayValue(Default::default())),
        }),
        ..Default::default()
    });
    toctou_collector::fuzzing::then_empty_spans(odd, 1_000_000)
}

/// `head`, a million `{}` items, `tail`: the attack of issue 30 on the serde decoders.
fn empty_items(head: &str, tail: &str) -> Vec<u8> {
    let mut out = head.as_bytes().to_vec();
    out.extend_from_slice(&vec!["{}"; 1_000_000].join(",").into_bytes());
    out.extend_from_slice(tail.as_bytes());
    out
}

/// A traces request whose first span carries the attribute `key` with an AnyValue nesting
/// `depth` kvlists, built from the inside out (prost's encoder would recurse as deep).
fn deeply_nested(key: &str, depth: usize) -> Vec<u8> {
    fn prefix(rev: &mut Vec<u8>, tag: u8, len: usize) {
        let mut head = vec![tag];
        prost::encoding::encode_varint(len as u64, &mut head);
        rev.extend(head.iter().rev());
    }
    let mut rev: Vec<u8> = vec![0x01, 0x18]; // AnyValue { int_value: 1 }, reversed
    for _ in 0..depth {
        let n = rev.len();
        prefix(&mut rev, 0x12, n); // KeyValue.value
        rev.extend(b"\x0A\x01k".iter().rev()); // KeyValue.key = "k"
        let n = rev.len();
        prefix(&mut rev, 0x0A, n); // KeyValueList.values
        let n = rev.len();
        prefix(&mut rev, 0x32, n); // AnyValue.kvlist_value
    }
    let n = rev.len();
    prefix(&mut rev, 0x12, n); // KeyValue.value
    rev.reverse();
    let mut attribute = vec![0x0A, key.len() as u8];
    attribute.extend(key.as_bytes());
    attribute.extend(rev);
    // Appended to the span as one more attributes field (9); the rest re-wrapped around it.
    let req = scenario();
    let mut span = req.resource_spans[0].scope_spans[0].spans[0].encode_to_vec();
    prost::encoding::bytes::encode(9, &attribute, &mut span);
    let mut scope = Vec::new();
    prost::encoding::bytes::encode(2, &span, &mut scope);
    let mut resource_spans = req.resource_spans[0]
        .resource
        .as_ref()
        .map(|r| {
            let mut b = Vec::new();
            prost::encoding::message::encode(1, r, &mut b);
            b
        })
        .unwrap_or_default();
    prost::encoding::bytes::encode(2, &scope, &mut resource_spans);
    let mut out = Vec::new();
    prost::encoding::bytes::encode(1, &resource_spans, &mut out);
    out
}

/// `google.rpc.Status`, the body of an OTLP/HTTP protobuf error answer.
use tonic_types::pb::Status as RpcStatus;

/// What a case expects: the status, words of the message, and the reason counted.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    encoding: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    message: &'static str,
    reason: Option<&'static str>,
    /// Events the request still delivers (a partial success, or nothing wrong at all).
    accepted: u64,
    /// Sent as headers only, declaring this `Content-Length`: the server answers from the
    /// header without reading, and a client still sending a body would race its close.
    declared_length: Option<usize>,
}

fn case(name: &'static str, content_type: &'static str, body: Vec<u8>) -> Case {
    Case {
        name,
        method: "POST",
        path: "/v1/traces",
        content_type,
        encoding: None,
        body,
        status: 400,
        message: "",
        reason: None,
        accepted: 0,
        declared_length: None,
    }
}

impl Case {
    fn encoded(mut self, encoding: &'static str) -> Self {
        self.encoding = Some(encoding);
        self
    }
    fn expect(mut self, status: u16, reason: &'static str, message: &'static str) -> Self {
        self.status = status;
        self.reason = Some(reason);
        self.message = message;
        self
    }
    fn accepting(mut self, n: u64) -> Self {
        self.accepted = n;
        self
    }
}

fn http_cases() -> Vec<Case> {
    let good = scenario().encode_to_vec();
    let mut truncated = one_bad_one_good(|_| {});
    truncated.truncate(truncated.len() - 7);
    let mut bad_utf8 = one_bad_one_good(|r| set(r, "toctou.resource", "inventory/sku-\u{7f}"));
    let at = bad_utf8.iter().position(|b| *b == 0x7f).unwrap();
    bad_utf8[at] = 0xFF;
    let json = official_example_json();
    let mut json_bad_utf8 = json.clone();
    let at = json_bad_utf8.windows(4).position(|w| w == b"name").unwrap();
    json_bad_utf8[at + 8] = 0xFF; // inside the span name's string value
    let zeroes = vec![0u8; 64 * 1024 * 1024];
    let huge_json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"startTimeUnixNano":"{}"}}]}}]}}]}}"#,
        "9".repeat(1 << 20) + "x"
    );
    vec![
        Case {
            declared_length: Some(LIMIT + 1),
            ..case("body over 20 MiB (declared)", PROTOBUF, Vec::new()).expect(
                413,
                "too_large",
                "request body exceeds the limit of 20971520 bytes",
            )
        },
        case(
            "gzip bomb (64 MiB of zeroes in 64 KiB)",
            PROTOBUF,
            gzip(&zeroes),
        )
        .encoded("gzip")
        .expect(413, "too_large", "decompressed body exceeds the limit"),
        case(
            "zstd bomb (64 MiB of zeroes)",
            PROTOBUF,
            zstd::encode_all(&zeroes[..], 19).unwrap(),
        )
        .encoded("zstd")
        .expect(413, "too_large", "decompressed body exceeds the limit"),
        case(
            "a million empty spans for prost (2 MB)",
            PROTOBUF,
            gzip(&empty_spans_for_prost()),
        )
        .encoded("gzip")
        .expect(
            413,
            "too_large",
            "decoding the body would allocate more than",
        ),
        case(
            "a million {} spans in OTLP JSON (3 MB)",
            JSON,
            empty_items(r#"{"resourceSpans":[{"scopeSpans":[{"spans":["#, "]}]}]}"),
        )
        .expect(
            413,
            "too_large",
            "decoding the body would allocate more than",
        ),
        Case {
            path: "/v1/k8s-audit",
            ..case(
                "audit webhook: an EventList of a million {} items (3 MB)",
                JSON,
                empty_items(
                    r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":["#,
                    "]}",
                ),
            )
            .expect(
                413,
                "too_large",
                "decoding the body would allocate more than",
            )
        },
        case("corrupt gzip", PROTOBUF, good[..40].to_vec())
            .encoded("gzip")
            .expect(400, "bad_encoding", "cannot decompress gzip body"),
        case("unknown content encoding", PROTOBUF, good.clone())
            .encoded("br")
            .expect(415, "bad_encoding", "unsupported content encoding \"br\""),
        case("wrong content type", "text/plain", good.clone()).expect(
            415,
            "unsupported_content_type",
            "unsupported content type \"text/plain\"",
        ),
        case("truncated protobuf", PROTOBUF, truncated).expect(
            400,
            "malformed_protobuf",
            "malformed protobuf: failed to decode Protobuf message",
        ),
        case("invalid UTF-8 in toctou.resource", PROTOBUF, bad_utf8).expect(
            400,
            "malformed_protobuf",
            "not UTF-8",
        ),
        case(
            "100k-deep kvlist in toctou.resource (protobuf)",
            PROTOBUF,
            deeply_nested("toctou.resource", DEPTH),
        )
        .expect(400, "malformed_protobuf", "recursion limit reached"),
        case(
            "100k-deep kvlist in an unread attribute (protobuf): skipped",
            PROTOBUF,
            deeply_nested("app.payload", DEPTH),
        )
        .expect(200, "", "")
        .accepting(1),
        case(
            "100k-deep kvlist in an attribute (JSON)",
            JSON,
            toctou_collector::fuzzing::nested_kvlists(DEPTH),
        )
        .expect(400, "malformed_json", "recursion limit exceeded"),
        case("empty JSON body", JSON, Vec::new()).expect(
            400,
            "malformed_json",
            "EOF while parsing",
        ),
        case("JSON array instead of a request", JSON, b"[]".to_vec()).expect(
            400,
            "malformed_json",
            "expected a JSON object at the top level",
        ),
        case(
            "JSON of the wrong shape",
            JSON,
            br#"{"resourceSpans":{"scopeSpans":5}}"#.to_vec(),
        )
        .expect(
            400,
            "malformed_json",
            "invalid type: map, expected a sequence",
        ),
        case("truncated JSON", JSON, json[..json.len() / 2].to_vec()).expect(
            400,
            "malformed_json",
            "EOF while parsing",
        ),
        case("invalid UTF-8 in JSON", JSON, json_bad_utf8).expect(
            400,
            "malformed_json",
            "malformed json: ",
        ),
        case(
            "1 MiB number of the wrong spelling (JSON): message cut",
            JSON,
            huge_json.into_bytes(),
        )
        .expect(400, "malformed_json", "bytes cut]"),
        case(
            "toctou.resource over 4 KiB: that span refused",
            PROTOBUF,
            one_bad_one_good(|r| set(r, "toctou.resource", &"r".repeat(MAX_VALUE_BYTES + 1))),
        )
        .expect(
            200,
            "attribute_too_long",
            "toctou.resource is 4097 bytes long, over the limit of 4096 bytes",
        )
        .accepting(1),
        case(
            "service.name over 4 KiB: its resource's spans refused",
            PROTOBUF,
            one_bad_one_good(|r| {
                r.resource_spans[0].resource.as_mut().unwrap().attributes = vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue("s".repeat(5000))),
                    }),
                    ..Default::default()
                }]
            }),
        )
        .expect(
            200,
            "attribute_too_long",
            "service.name is 5000 bytes long, over the limit of 4096 bytes",
        )
        .accepting(1),
        case(
            "1 MiB toctou.phase: refused, quoted in part",
            PROTOBUF,
            one_bad_one_good(|r| set(r, "toctou.phase", &"c".repeat(1 << 20))),
        )
        .expect(
            200,
            "bad_attribute",
            "... (1048576 bytes), expected one of check, use",
        )
        .accepting(1),
        Case {
            method: "GET",
            ..case("GET on a receiver", PROTOBUF, Vec::new()).expect(
                405,
                "method_not_allowed",
                "method GET not allowed, use POST",
            )
        },
        Case {
            path: "/v1/k8s-audit",
            ..case(
                "audit webhook: JSON that is no audit event",
                JSON,
                br#"{"kind":"Pod","apiVersion":"v1"}"#.to_vec(),
            )
            .expect(400, "malformed_json", "is not a kubernetes audit Event")
        },
    ]
}

/// A POST of headers only, declaring `length` bytes of body: (status, content type, body).
async fn headers_only(
    toctou: &Toctou,
    path: &str,
    content_type: &str,
    length: usize,
) -> (u16, String, Bytes) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(toctou.http).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\n\
         content-length: {length}\r\nconnection: close\r\n\r\n",
        toctou.http
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete answer");
    let head = String::from_utf8_lossy(&answer[..split]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or("")
        .to_string();
    (
        status,
        content_type,
        Bytes::from(answer[split + 4..].to_vec()),
    )
}

/// A good request works after each bad one: the process and its counters are intact.
async fn still_works(toctou: &Toctou, client: &reqwest::Client, what: &str) {
    let before = toctou.metric(GOOD).await;
    let resp = client
        .post(toctou.http_url("/v1/traces"))
        .header("content-type", PROTOBUF)
        .body(scenario().encode_to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("after {what}: {e}"));
    assert_eq!(resp.status(), 200, "after {what}");
    assert_eq!(toctou.metric(GOOD).await, before + 1.0, "after {what}");
}

fn rejected(text: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("toctou_rejected_total{{reason=\"{reason}\"}}"),
    )
}

/// Every reason's count, to check that only the expected one moved.
fn all_rejected(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("toctou_rejected_total{reason=\""))
        .map(|l| {
            let (reason, rest) = l.split_once("\"}").unwrap();
            (reason.to_string(), rest.trim().parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_http_input_gets_its_status_message_and_one_count() {
    let toctou = Toctou::start(&[]);
    let client = reqwest::Client::new();
    for c in http_cases() {
        let before_text = toctou.metrics().await;
        let before_good = metric(&before_text, GOOD);
        let (status, content_type, body) = match c.declared_length {
            Some(n) => headers_only(&toctou, c.path, c.content_type, n).await,
            None => {
                let mut req = client
                    .request(c.method.parse().unwrap(), toctou.http_url(c.path))
                    .header("content-type", c.content_type)
                    .body(c.body);
                if let Some(e) = c.encoding {
                    req = req.header("content-encoding", e);
                }
                let resp = req
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", c.name));
                let status = resp.status().as_u16();
                let content_type = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                (status, content_type, resp.bytes().await.unwrap())
            }
        };
        let text = match (status, content_type.as_str()) {
            (200, PROTOBUF) => ExportTraceServiceResponse::decode(body.clone())
                .ok()
                .and_then(|r| r.partial_success)
                .map(|p| p.error_message)
                .unwrap_or_default(),
            (_, PROTOBUF) => RpcStatus::decode(body.clone())
                .map(|s| s.message)
                .unwrap_or_else(|e| format!("not a google.rpc.Status: {e}")),
            _ => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let m = v.get("message").or_else(|| {
                        v.pointer("/partialSuccess/errorMessage")
                            .or_else(|| v.pointer("/errors/0"))
                    })?;
                    m.as_str().map(str::to_owned)
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
        };
        assert_eq!(status, c.status, "{}: {text}", c.name);
        assert!(text.contains(c.message), "{}: {text:?}", c.name);
        assert!(
            body.len() < 2048,
            "{}: a {} byte answer",
            c.name,
            body.len()
        );
        let after_text = toctou.metrics().await;
        let mut expected = all_rejected(&before_text);
        if let Some(reason) = c.reason.filter(|r| !r.is_empty()) {
            assert_eq!(
                rejected(&after_text, reason),
                rejected(&before_text, reason) + 1.0,
                "{}: {reason}",
                c.name
            );
            for (r, n) in expected.iter_mut() {
                if r == reason {
                    *n += 1.0;
                }
            }
        }
        assert_eq!(
            all_rejected(&after_text),
            expected,
            "{}: other reasons",
            c.name
        );
        assert_eq!(
            metric(&after_text, GOOD),
            before_good + c.accepted as f64,
            "{}: events delivered",
            c.name
        );
        still_works(&toctou, &client, c.name).await;
    }
    assert!(toctou.log().lines().all(|l| !l.contains("panicked")));
}

/// Sends pre-encoded bytes as the message (whatever they hold), optionally compressed.
#[derive(Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder(PhantomData)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct ResponseDecoder(PhantomData<ExportTraceServiceResponse>);

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// (name, compression, message, expected code, words of the message, reason counted).
type GrpcCase = (
    &'static str,
    Option<tonic::codec::CompressionEncoding>,
    Vec<u8>,
    tonic::Code,
    &'static str,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_grpc_message_gets_its_code_and_one_count() {
    use tonic::codec::CompressionEncoding::{Gzip, Zstd};
    use tonic::Code;
    let toctou = Toctou::start(&[]);
    let http = reqwest::Client::new();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", toctou.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut truncated = one_bad_one_good(|_| {});
    truncated.truncate(truncated.len() - 7);
    let zeroes = vec![0u8; 64 * 1024 * 1024];
    let cases: Vec<GrpcCase> = vec![
        (
            "truncated protobuf",
            None,
            truncated,
            Code::Internal,
            "failed to decode Protobuf message",
            "malformed_protobuf",
        ),
        (
            "message over 20 MiB",
            None,
            vec![0x0A; LIMIT + 1],
            Code::OutOfRange,
            "decoded message length too large",
            "too_large",
        ),
        (
            "gzip bomb",
            Some(Gzip),
            zeroes.clone(),
            Code::ResourceExhausted,
            "decompressed body exceeds the limit",
            "too_large",
        ),
        (
            "zstd bomb",
            Some(Zstd),
            zeroes,
            Code::ResourceExhausted,
            "exceeded while decompressing",
            "too_large",
        ),
        (
            "a million empty spans for prost (2 MB)",
            None,
            empty_spans_for_prost(),
            Code::ResourceExhausted,
            "decoding the body would allocate more than",
            "too_large",
        ),
        (
            "100k-deep kvlist in toctou.resource",
            None,
            deeply_nested("toctou.resource", DEPTH),
            Code::Internal,
            "recursion limit reached",
            "malformed_protobuf",
        ),
    ];
    for (name, compression, message, code, words, reason) in cases {
        let before = toctou.metrics().await;
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        if let Some(c) = compression {
            grpc = grpc.send_compressed(c);
        }
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                tonic::Request::new(Bytes::from(message)),
                PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                ),
                RawCodec,
            )
            .await
            .expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(status.message().contains(words), "{name}: {status:?}");
        let after = toctou.metrics().await;
        assert_eq!(
            rejected(&after, reason),
            rejected(&before, reason) + 1.0,
            "{name}: {reason}"
        );
        still_works(&toctou, &http, name).await;
    }

    // A value over the limit refuses its span only: a partial success.
    let before = toctou.metrics().await;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let answer = grpc
        .unary(
            tonic::Request::new(Bytes::from(one_bad_one_good(|r| {
                set(r, "toctou.request_id", &"q".repeat(MAX_VALUE_BYTES + 1))
            }))),
            PathAndQuery::from_static(
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            ),
            RawCodec,
        )
        .await
        .expect("a partial success")
        .into_inner();
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial
            .error_message
            .contains("toctou.request_id is 4097 bytes long, over the limit of 4096 bytes"),
        "{}",
        partial.error_message
    );
    let after = toctou.metrics().await;
    assert_eq!(
        rejected(&after, "attribute_too_long"),
        rejected(&before, "attribute_too_long") + 1.0
    );
    assert_eq!(metric(&after, GOOD), metric(&before, GOOD) + 1.0);

    // gzip of several members (what concatenated gzip streams are): every member is read,
    // as over HTTP; tonic's decoder stopped after the first and answered OK.
    let message = one_bad_one_good(|_| {});
    let (a, b) = message.split_at(message.len() / 2);
    let body = [gzip(a), gzip(b)].concat();
    let mut framed = vec![1u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    let before = toctou.metrics().await;
    let request = axum::http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            toctou.grpc
        ))
        .header("content-type", "application/grpc")
        .header("grpc-encoding", "gzip")
        .header("te", "trailers")
        .body(tonic::body::Body::new(axum::body::Body::from(framed)))
        .unwrap();
    let mut channel = channel;
    std::future::poll_fn(|cx| tonic::codegen::Service::poll_ready(&mut channel, cx))
        .await
        .unwrap();
    let response = tonic::codegen::Service::call(&mut channel, request)
        .await
        .expect("an answer");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("grpc-status").is_none(),
        "refused: {:?}",
        response.headers()
    );
    drop(response);
    let after = toctou.metrics().await;
    assert_eq!(
        metric(&after, GOOD),
        metric(&before, GOOD) + 2.0,
        "both members read"
    );
}
