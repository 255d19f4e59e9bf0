//! The decode budget as a property (issue 30): whatever a body holds, decoding it as the
//! HTTP receiver does never holds more heap at once than `allocation_bound(len)`, a fixed
//! multiple of its length, measured by a counting global allocator around the decoding.
//! The inputs: the attacks of issue 30 (millions of tiny items for prost, OTLP JSON and the
//! audit webhook) at several sizes, legitimate requests (which must still decode), and
//! seeded mutations of both. fuzz/ asserts the same on whatever libFuzzer finds.
//!
//! One test in this binary: the allocator counts the whole process, so nothing else may
//! allocate while it measures.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use toctou_collector::fuzzing::{
    allocation_bound, decode_http, peak_of, then_empty_spans, PeakAlloc,
};
use toctou_collector::{DecodeError, IngestError, RejectReason, Signal};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fn s(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

/// A toctou check span with the attributes an instrumented service sends.
fn span(i: usize) -> Span {
    Span {
        trace_id: vec![1; 16],
        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
        name: "check order".into(),
        start_time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
        end_time_unix_nano: 1_700_000_000_000_001_000 + i as u64,
        attributes: vec![
            s("toctou.phase", "check"),
            s("toctou.resource", &format!("orders/{i}")),
            s("toctou.request_id", &format!("req-{i}")),
            s("toctou.outcome", "allowed"),
            s("toctou.principal", "alice"),
            s("http.method", "POST"),
            s("http.route", "/orders/{id}"),
            s("net.peer.name", "10.0.0.1"),
        ],
        ..Default::default()
    }
}

/// A span whose `toctou.phase` is an array: the wire reader leaves the whole request to
/// prost (and the transform rejects this one span).
fn odd_span() -> Span {
    let mut odd = span(0);
    odd.attributes[0].value = Some(AnyValue {
        value: Some(any_value::Value::ArrayValue(ArrayValue {
            values: vec![AnyValue {
                value: Some(any_value::Value::StringValue("check".into())),
            }],
        })),
    });
    odd
}

/// `n` spans, the first `odd_span` when `prost` (so prost decodes them all).
fn legit_protobuf(n: usize, prost: bool) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![s("service.name", "orders")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| if prost && i == 0 { odd_span() } else { span(i) })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// `odd_span`, which hands the request to prost, then `n` empty spans `0x12 0x00`.
fn empty_spans(n: usize) -> Vec<u8> {
    then_empty_spans(odd_span(), n)
}

fn repeat(head: &str, item: &str, n: usize, tail: &str) -> Vec<u8> {
    let mut out = head.as_bytes().to_vec();
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.as_bytes());
    }
    out.extend_from_slice(tail.as_bytes());
    out
}

fn json_spans(n: usize) -> Vec<u8> {
    repeat(
        r#"{"resourceSpans":[{"scopeSpans":[{"spans":["#,
        "{}",
        n,
        "]}]}]}",
    )
}

fn legit_json(n: usize) -> Vec<u8> {
    let item = r#"{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"check order","startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000000001000","attributes":[{"key":"toctou.phase","value":{"stringValue":"check"}},{"key":"toctou.resource","value":{"stringValue":"orders/1"}},{"key":"toctou.request_id","value":{"stringValue":"req-1"}},{"key":"toctou.outcome","value":{"stringValue":"allowed"}},{"key":"http.method","value":{"stringValue":"POST"}}]}"#;
    repeat(
        r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"orders"}}]},"scopeSpans":[{"spans":["#,
        item,
        n,
        "]}]}]}",
    )
}

fn event_list(n: usize) -> Vec<u8> {
    repeat(
        r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":["#,
        "{}",
        n,
        "]}",
    )
}

fn legit_event(i: usize) -> String {
    format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a-{i}","stage":"ResponseComplete","verb":"update","user":{{"username":"alice"}},"objectRef":{{"resource":"configmaps","namespace":"default","name":"cm-{i}","apiVersion":"v1"}},"responseStatus":{{"code":200}},"responseObject":{{"metadata":{{"name":"cm-{i}","resourceVersion":"{i}"}}}},"stageTimestamp":"2024-01-01T00:00:00.000000Z"}}"#
    )
}

fn legit_event_list(n: usize) -> Vec<u8> {
    let items: Vec<String> = (0..n).map(legit_event).collect();
    format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}}"#,
        items.join(",")
    )
    .into_bytes()
}

fn json_lines(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(legit_event(i).as_bytes());
        out.push(b'\n');
    }
    out
}

/// One good audit event, then `n` lines of an `Event` with nothing in it (each rejected).
fn event_lines(n: usize) -> Vec<u8> {
    let mut out = legit_event(0).into_bytes();
    out.push(b'\n');
    for _ in 0..n {
        out.extend_from_slice(br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1"}"#);
        out.push(b'\n');
    }
    out
}

/// A deterministic generator (xorshift), so a failure names its input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `raw` with a few bytes changed, dropped or repeated.
fn mutate(raw: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = raw.to_vec();
    for _ in 0..1 + rng.below(4) {
        if out.is_empty() {
            break;
        }
        let at = rng.below(out.len());
        match rng.below(3) {
            0 => out[at] = rng.next() as u8,
            1 => {
                out.remove(at);
            }
            _ => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                let piece = out[at..end].to_vec();
                for _ in 0..rng.below(64) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
        }
    }
    out
}

/// Decodes `raw` as the HTTP receiver does and checks the peak against the bound.
fn measure(name: &str, signal: Signal, json: bool, raw: &[u8]) -> Result<(), IngestError> {
    let (peak, result) = peak_of(|| decode_http(signal, json, raw));
    if !name.contains("mutation") {
        println!(
            "{name}: {} bytes, peak {peak} bytes ({:.1}x), {}",
            raw.len(),
            peak as f64 / raw.len() as f64,
            match &result {
                Ok(d) => format!("{} events", d.events.len()),
                Err(e) => e.to_string(),
            }
        );
    }
    let bound = allocation_bound(raw.len());
    assert!(
        peak <= bound,
        "{name}: {} bytes of input held {peak} bytes at once, over the bound of {bound} ({:.1}x)",
        raw.len(),
        peak as f64 / raw.len() as f64
    );
    result.map(drop)
}

fn over_budget(e: &Option<IngestError>) -> bool {
    matches!(e, Some(IngestError::Decode(DecodeError::OverBudget { .. })))
}

#[test]
fn no_input_allocates_more_than_a_multiple_of_its_length() {
    // The attacks: refused as too large once past the floor, never over the bound.
    for n in [10, 1_000, 100_000, 1_000_000] {
        let attacks: [(&str, Signal, bool, Vec<u8>); 4] = [
            ("empty spans (prost)", Signal::Traces, false, empty_spans(n)),
            ("{} spans (OTLP JSON)", Signal::Traces, true, json_spans(n)),
            (
                "{} items (EventList)",
                Signal::K8sAudit,
                true,
                event_list(n),
            ),
            (
                "empty Event lines (JSON lines)",
                Signal::K8sAudit,
                true,
                event_lines(n.min(100_000)),
            ),
        ];
        for (name, signal, json, raw) in attacks {
            let r = measure(name, signal, json, &raw);
            // JSON lines are decoded one at a time: only their count is kept.
            if n >= 100_000 && !name.contains("JSON lines") {
                let e = r.err();
                assert!(over_budget(&e), "{name} x{n}: {e:?}");
                assert_eq!(e.unwrap().reason(), RejectReason::TooLarge);
            }
        }
    }
    // Legitimate requests decode, whichever path they take.
    let legit: [(&str, Signal, bool, Vec<u8>); 5] = [
        (
            "spans (wire reader)",
            Signal::Traces,
            false,
            legit_protobuf(1_000, false),
        ),
        (
            "spans, one odd (prost)",
            Signal::Traces,
            false,
            legit_protobuf(1_000, true),
        ),
        ("spans (OTLP JSON)", Signal::Traces, true, legit_json(1_000)),
        ("EventList", Signal::K8sAudit, true, legit_event_list(1_000)),
        ("JSON lines", Signal::K8sAudit, true, json_lines(1_000)),
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (name, signal, json, raw) in &legit {
        measure(name, *signal, *json, raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Mutations: any outcome, within the bound.
        for i in 0..60 {
            let m = mutate(raw, &mut rng);
            let _ = measure(&format!("{name}, mutation {i}"), *signal, *json, &m);
        }
    }
}
