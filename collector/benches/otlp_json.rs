//! OTLP JSON: toctou's reader (`collector/src/json/`, serde mirrors of the messages with
//! lenient scalars and a metered decode budget) against the serde derives that
//! `opentelemetry-proto` generates with its `with-serde` feature, on the three things the
//! reader is kept for: what each accepts, the memory each holds on the decode-budget attack,
//! and speed on a legitimate body. The figures and the decision are in BENCHMARKS.md
//! ("OTLP JSON reader").
//!
//! ```sh
//! cargo bench -p toctou-collector --bench otlp_json
//! ```
//!
//! Memory is the peak of live heap bytes around one decode, from a counting global
//! allocator (so the benchmark runs on one thread and measures one thing at a time).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::hint::black_box;
use std::time::Instant;
use toctou_collector::fuzzing::{peak_of, PeakAlloc};
use toctou_collector::{logs_from_json, traces_from_json};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

const TRACE_JSON: &str = include_str!("../testdata/otlp/trace.json");
const LOGS_JSON: &str = include_str!("../testdata/otlp/logs.json");
const EVENTS_JSON: &str = include_str!("../testdata/otlp/events.json");

fn main() {
    conformance();
    memory();
    speed();
}

/// One input through both readers: what each made of it.
type Both<T> = (Result<T, String>, Result<T, String>);

fn both<T: serde::de::DeserializeOwned>(
    body: &[u8],
    ours: impl Fn(&[u8]) -> Result<T, toctou_collector::DecodeError>,
) -> Both<T> {
    (
        ours(body).map_err(|e| e.to_string()),
        serde_json::from_slice::<T>(body).map_err(|e| e.to_string()),
    )
}

fn verdict<T: PartialEq>(ours: &Result<T, String>, theirs: &Result<T, String>) -> String {
    let side = |r: &Result<T, String>| match r {
        Ok(_) => "accepted".to_string(),
        Err(e) => format!("refused ({})", short(e)),
    };
    let same = match (ours, theirs) {
        (Ok(a), Ok(b)) if a == b => ", same message",
        (Ok(_), Ok(_)) => ", DIFFERENT messages",
        _ => "",
    };
    format!(
        "toctou {}; opentelemetry-proto {}{same}",
        side(ours),
        side(theirs)
    )
}

fn short(e: &str) -> String {
    e.chars().take(90).collect()
}

/// Inputs the OTLP/JSON and proto3 JSON specifications allow (and the official examples),
/// plus one they do not: which reader takes them, and whether both build the same message.
fn conformance() {
    println!("## What each reader accepts\n");
    let span = |fields: &str| {
        format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{{fields}}}]}}]}}]}}"#)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("official trace example (opentelemetry-proto repo)", TRACE_JSON.into()),
        (
            "lowerCamelCase, int64 as strings, lower-case hex",
            span(r#""traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","startTimeUnixNano":"1544712660000000000","kind":2"#).into(),
        ),
        (
            "int64 as a JSON number",
            span(r#""startTimeUnixNano":1544712660000000000"#).into(),
        ),
        (
            "upper-case hex ids",
            span(r#""traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174""#).into(),
        ),
        (
            "proto field names (snake_case), which proto3 JSON parsers must accept",
            br#"{"resource_spans":[{"scope_spans":[{"spans":[{"trace_id":"5b8efff798038103d269b633813fc60c","start_time_unix_nano":"5"}]}]}]}"#.to_vec(),
        ),
        (
            "null for a default value (proto3 JSON: null is the default)",
            br#"{"resourceSpans":[{"resource":null,"scopeSpans":[{"spans":null}]}]}"#.to_vec(),
        ),
        ("null for a string field", span(r#""name":null"#).into()),
        (
            "enum by name (proto3 JSON allows it; OTLP/JSON senders MUST write integers)",
            span(r#""kind":"SPAN_KIND_CLIENT","status":{"code":"STATUS_CODE_ERROR"}"#).into(),
        ),
        (
            "unknown fields (OTLP/JSON receivers MUST ignore them)",
            span(r#""name":"x","futureField":{"a":[1,2]}"#).into(),
        ),
        ("empty request", b"{}".to_vec()),
        ("a top-level array (not a request)", b"[]".to_vec()),
    ];
    for (name, body) in &cases {
        let (ours, theirs) = both(body, traces_from_json);
        println!("- {name}: {}", verdict(&ours, &theirs));
    }
    for (name, body) in [
        ("official logs example", LOGS_JSON),
        ("official events example", EVENTS_JSON),
    ] {
        let (ours, theirs) = both(body.as_bytes(), logs_from_json);
        println!("- {name}: {}", verdict(&ours, &theirs));
    }
    println!();
}

/// `head`, `n` times `item` separated by commas, `tail`.
fn repeat(head: &str, item: &str, n: usize, tail: &str) -> Vec<u8> {
    format!("{head}{}{tail}", vec![item; n].join(",")).into_bytes()
}

/// The decode-budget attack of issue 30 in OTLP JSON: a body of `{}` spans (3 bytes each)
/// or `{}` attributes, each of which becomes a struct of a few hundred bytes.
fn memory() {
    println!("## Peak heap on the decode-budget attack (bytes held at once / body bytes)\n");
    for (what, head, tail) in [
        (
            "empty spans",
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":["#,
            "]}]}]}",
        ),
        (
            "empty attributes",
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":["#,
            "]}]}]}]}",
        ),
    ] {
        for mib in [1usize, 4, 20] {
            let body = repeat(head, "{}", mib * 1024 * 1024 / 3, tail);
            let (ours_peak, ours) = peak_of(|| traces_from_json(&body).map(|_| ()));
            let (theirs_peak, theirs) =
                peak_of(|| serde_json::from_slice::<ExportTraceServiceRequest>(&body).map(|_| ()));
            let mb = |b: usize| b as f64 / 1e6;
            println!(
                "- {what}, {mib} MiB body: toctou {:.1} MB ({:.1}x, {}); opentelemetry-proto {:.1} MB ({:.1}x, {})",
                mb(ours_peak),
                ours_peak as f64 / body.len() as f64,
                ours.map(|_| "accepted".to_string()).unwrap_or_else(|e| short(&e.to_string())),
                mb(theirs_peak),
                theirs_peak as f64 / body.len() as f64,
                theirs.map(|_| "accepted".to_string()).unwrap_or_else(|e| short(&e.to_string())),
            );
        }
    }
    println!();
}

/// A legitimate body as the SDKs' OTLP/JSON exporters write it: 2,000 toctou check spans
/// with five attributes each (the body of `collector/tests/decode_budget.rs`).
fn speed() {
    let item = r#"{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"check order","startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000000001000","kind":1,"attributes":[{"key":"toctou.phase","value":{"stringValue":"check"}},{"key":"toctou.resource","value":{"stringValue":"orders/1"}},{"key":"toctou.request_id","value":{"stringValue":"req-1"}},{"key":"toctou.outcome","value":{"stringValue":"allowed"}},{"key":"http.method","value":{"stringValue":"POST"}}]}"#;
    let spans = 2_000;
    let body = repeat(
        r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"orders"}}]},"scopeSpans":[{"spans":["#,
        item,
        spans,
        "]}]}]}",
    );
    let (ours, theirs) = both(&body, traces_from_json);
    assert_eq!(
        ours.unwrap(),
        theirs.unwrap(),
        "both readers build the same message"
    );
    println!(
        "## Speed on a legitimate body ({spans} spans, {} bytes), median of 9 rounds of 50 decodes\n",
        body.len()
    );
    let (ours_peak, _) = peak_of(|| traces_from_json(&body).unwrap());
    let (theirs_peak, _) =
        peak_of(|| serde_json::from_slice::<ExportTraceServiceRequest>(&body).unwrap());
    for (name, peak, decode) in [
        (
            "toctou",
            ours_peak,
            &(|| drop(black_box(traces_from_json(black_box(&body)).unwrap()))) as &dyn Fn(),
        ),
        ("opentelemetry-proto", theirs_peak, &|| {
            drop(black_box(
                serde_json::from_slice::<ExportTraceServiceRequest>(black_box(&body)).unwrap(),
            ))
        }),
    ] {
        let mut rounds: Vec<f64> = (0..9)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..50 {
                    decode();
                }
                start.elapsed().as_secs_f64() / 50.0
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        let t = rounds[4];
        println!(
            "- {name}: {:.0} MB/s, {:.0} spans/s, {:.2} ms per body, peak heap {:.1}x the body",
            body.len() as f64 / t / 1e6,
            spans as f64 / t,
            t * 1e3,
            peak as f64 / body.len() as f64,
        );
    }
}
