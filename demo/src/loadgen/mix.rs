//! The load generator's input: a realistic mix of check spans, use spans and audit log
//! records, encoded to OTLP protobuf once, up front, and stamped per send.
//!
//! A *round* is what one application instance and its system of record export together: a
//! traces request of `spans_per_request` spans (256 check/use pairs of one service, as an
//! SDK's batch processor sends 512 spans) and a logs request holding the audit records of
//! the writes made in the meantime. Sending must be cheap, or the generator measures itself:
//! each round is a copy of a pre-encoded template with fixed-width fields patched in place
//! (no protobuf encoding per send):
//! - the last 8 bytes of every trace id are the round number, so every round is a new set
//!   of requests (the correlator drops a redelivered span id pair);
//! - 16-character slots in strings (idempotency keys, the request id of an audit record)
//!   hold the round number in hex, the same digits the trace id shows as a request id;
//! - every time (fixed64) is `now - WINDOW + offset`, so event time follows the clock and
//!   the correlator's watermark moves as in production;
//! - every resource version is 16 decimal digits: the send's clock in milliseconds (10
//!   digits) before the template's own 6. Versions thus grow from round to round as a real
//!   resource's do. (Replayed unchanged, each template wrote the same versions every cycle, and
//!   a stale check then had every earlier write of its newer version as evidence: 57 per
//!   finding on average at saturation, 100 at most, a fifth of the server's CPU spent writing
//!   them.)
//!
//! Findings are real: per template, about 4% of pairs are stale (another writer's audited
//! update between check and use, and the use acting on the newer version), 2% of uses reuse
//! an earlier payment's idempotency key (`duplicate_use`), 1% of uses have no check on their
//! resource (`unchecked_use`, and their check later an `orphan_check`).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use toctou_schema::conventions as c;

/// Event-time spread of one round: a round's events lie in `[now - WINDOW, now]`.
pub const WINDOW_NS: u64 = 200_000_000;
/// Marks the round bytes of a trace id in a template (never a real id: see `find_marks`).
const ROUND_MARK: [u8; 8] = [0xA5; 8];
/// Marks a 16-hex-digit round slot in a template string.
const HEX_MARK: &[u8; 16] = b"@@@@@@@@@@@@@@@@";
/// Marks the 10-digit clock prefix of a resource version in a template string.
const VERSION_MARK: &[u8; 10] = b"%%%%%%%%%%";
/// Top 16 bits of a template time; the low 48 bits are its offset within the window.
const TIME_MARK: u64 = 0xA7A7 << 48;
/// Protobuf tags of the fixed64 times we stamp: Span.start_time_unix_nano (7),
/// Span.end_time_unix_nano (8), LogRecord.time_unix_nano (1),
/// LogRecord.observed_time_unix_nano (11).
const TIME_TAGS: [u8; 4] = [0x39, 0x41, 0x09, 0x59];

/// The services whose batches the templates are; one per template, in turn.
const SERVICES: [(&str, &str, &str); 4] = [
    ("inventory", "inventory", "reserve"),
    ("payments", "payment", "charge"),
    ("orders", "order", "update"),
    ("claims", "claim", "bind"),
];

/// What the mix is made of; the defaults are the benchmark's.
#[derive(Clone, Debug)]
pub struct MixConfig {
    /// Spans per traces request (check/use pairs are half of it).
    pub spans_per_request: usize,
    /// Distinct templates cycled through (each a different service and resources).
    pub templates: usize,
    /// Resources drawn from (a few hot ones, most cold).
    pub resources: u32,
    pub seed: u64,
}

impl Default for MixConfig {
    fn default() -> Self {
        MixConfig {
            spans_per_request: 512,
            templates: 16,
            resources: 100_000,
            seed: 7,
        }
    }
}

/// Which OTLP export a template is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
}

/// One pre-encoded request and where to stamp it.
#[derive(Clone, Debug)]
pub struct Template {
    pub signal: Signal,
    /// Spans or log records in it.
    pub items: u64,
    bytes: Vec<u8>,
    round_marks: Vec<usize>,
    hex_marks: Vec<usize>,
    version_marks: Vec<usize>,
    /// Offset of each fixed64 time, and its offset within the window.
    time_marks: Vec<(usize, u64)>,
}

/// A round's two requests.
#[derive(Clone, Debug)]
pub struct RoundTemplate {
    pub traces: Template,
    pub logs: Template,
}

/// The findings a round is built to produce (before the correlator's verdict), for the
/// generator's report and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub stale_check: u64,
    pub duplicate_use: u64,
    pub unchecked_use: u64,
}

/// All templates of a run.
#[derive(Clone, Debug)]
pub struct Mix {
    pub rounds: Vec<RoundTemplate>,
    pub expected: Vec<Expected>,
}

impl Mix {
    pub fn build(config: &MixConfig) -> Mix {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut rounds = Vec::with_capacity(config.templates);
        let mut expected = Vec::with_capacity(config.templates);
        for t in 0..config.templates.max(1) {
            let (round, exp) = build_round(config, t as u32, &mut rng);
            rounds.push(round);
            expected.push(exp);
        }
        Mix { rounds, expected }
    }
}

impl Template {
    /// Writes this template stamped for `round` at `now_ns` into `out` (cleared first).
    pub fn render(&self, round: u64, now_ns: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.bytes);
        let round_bytes = round.to_be_bytes();
        for &at in &self.round_marks {
            out[at..at + 8].copy_from_slice(&round_bytes);
        }
        let hex = hex16(round);
        for &at in &self.hex_marks {
            out[at..at + 16].copy_from_slice(&hex);
        }
        let prefix = dec10(now_ns / 1_000_000);
        for &at in &self.version_marks {
            out[at..at + 10].copy_from_slice(&prefix);
        }
        let base = now_ns.saturating_sub(WINDOW_NS);
        for &(at, offset) in &self.time_marks {
            out[at..at + 8].copy_from_slice(&(base + offset).to_le_bytes());
        }
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The last 10 decimal digits of `v`.
fn dec10(mut v: u64) -> [u8; 10] {
    let mut out = [b'0'; 10];
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out
}

/// A resource version of a template: the clock slot, then `v` in 6 digits.
fn version_slot(v: u32) -> String {
    debug_assert!(v < 1_000_000);
    format!("{}{v:06}", String::from_utf8_lossy(VERSION_MARK))
}

fn hex16(v: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xF) as usize];
    }
    out
}

/// How one check/use pair of a template goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pair {
    /// Checked, used on the version checked; sometimes the request's own write is audited.
    Clean,
    /// Another writer's update between check and use; the use acts on the newer version.
    Stale,
    /// A payment reusing the key of an earlier pair of the template.
    Duplicate,
    /// The use's resource was never checked by this request.
    Unchecked,
}

fn str_kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        key_strindex: 0,
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

fn int_kv(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        key_strindex: 0,
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
    }
}

fn marker_slot() -> String {
    String::from_utf8(HEX_MARK.to_vec()).expect("ASCII")
}

fn resource_attrs(service: &str, instance: u32) -> Resource {
    Resource {
        attributes: vec![
            str_kv(c::SERVICE_NAME, service),
            str_kv("service.version", "2.14.3"),
            str_kv("service.instance.id", format!("{service}-{instance:04}")),
            str_kv("host.name", format!("node-{:02}", instance % 12)),
            str_kv("deployment.environment.name", "production"),
            str_kv("telemetry.sdk.name", "opentelemetry"),
            str_kv("telemetry.sdk.language", "rust"),
            str_kv("telemetry.sdk.version", "0.33.0"),
            int_kv("process.pid", 4000 + i64::from(instance)),
        ],
        dropped_attributes_count: 0,
        entity_refs: vec![],
    }
}

fn trace_id(template: u32, pair: u32) -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    // Never all zero (an invalid id), whatever the round.
    id.extend_from_slice(&(0x7000_0000 | template).to_be_bytes());
    id.extend_from_slice(&pair.to_be_bytes());
    id.extend_from_slice(&ROUND_MARK);
    id
}

fn span_id(template: u32, pair: u32, which: u8) -> Vec<u8> {
    let mut id = Vec::with_capacity(8);
    id.extend_from_slice(&(template as u16).to_be_bytes());
    id.extend_from_slice(&pair.to_be_bytes()[1..]);
    id.extend_from_slice(&[0x10, 0x20, which]);
    id
}

/// A resource drawn with a few hot ones: 10% of draws from the first 100.
fn pick_resource(rng: &mut StdRng, resources: u32) -> u32 {
    if rng.gen_bool(0.1) {
        rng.gen_range(0..100.min(resources))
    } else {
        rng.gen_range(0..resources)
    }
}

fn build_round(config: &MixConfig, t: u32, rng: &mut StdRng) -> (RoundTemplate, Expected) {
    let (service, kind, operation) = SERVICES[t as usize % SERVICES.len()];
    let pairs = (config.spans_per_request / 2).max(1) as u32;
    let mut spans = Vec::with_capacity(pairs as usize * 2);
    let mut audits = Vec::new();
    let mut expected = Expected::default();
    let mut keys: Vec<String> = Vec::new();
    // Pair p starts at an offset spread over the window, leaving room for its use.
    let step = (WINDOW_NS - 20_000_000) / u64::from(pairs);
    for p in 0..pairs {
        let roll: f64 = rng.gen();
        let mut pair = match roll {
            x if x < 0.04 => Pair::Stale,
            x if x < 0.06 => Pair::Duplicate,
            x if x < 0.07 => Pair::Unchecked,
            _ => Pair::Clean,
        };
        if pair == Pair::Duplicate && (operation != "charge" || keys.is_empty()) {
            // Only payments carry keys, and a duplicate needs an earlier key.
            pair = Pair::Clean;
        }
        let res = pick_resource(rng, config.resources);
        let resource = format!("{kind}/{res:06}");
        // Room for the two writes after it in 6 digits.
        let version: u32 = rng.gen_range(1..999_990);
        let check_at = u64::from(p) * step + rng.gen_range(0..step.max(1));
        let check_end = check_at + rng.gen_range(200_000..2_000_000);
        let use_at = check_end + rng.gen_range(500_000..10_000_000);
        let use_end = use_at + rng.gen_range(300_000..5_000_000);
        let tid = trace_id(t, p);
        let parent = span_id(t, p, 0);

        let check_resource = if pair == Pair::Unchecked {
            format!("{kind}/{:06}", (res + 1) % config.resources)
        } else {
            resource.clone()
        };
        let mut check_attrs = vec![
            str_kv(c::PHASE, "check"),
            str_kv(c::RESOURCE, check_resource),
            str_kv(c::RESOURCE_VERSION, version_slot(version)),
            str_kv(c::CHECK_DECISION, "allow"),
            str_kv(
                c::CHECK_SOURCE,
                if p % 5 == 0 { "replica" } else { "primary" },
            ),
            str_kv("db.system.name", "postgresql"),
            str_kv("db.operation.name", "SELECT"),
            str_kv("db.collection.name", kind),
            str_kv(
                "db.query.text",
                format!("SELECT version, state FROM {kind} WHERE id = $1"),
            ),
            str_kv("server.address", "db-primary.internal"),
            int_kv("server.port", 5432),
            str_kv(
                "enduser.id",
                format!("user-{:05}", rng.gen_range(0..50_000)),
            ),
            str_kv("code.function.name", format!("{service}::check_{kind}")),
            int_kv("thread.id", i64::from(p % 32)),
        ];
        let mut use_attrs = vec![
            str_kv(c::PHASE, "use"),
            str_kv(c::RESOURCE, resource.clone()),
            str_kv(c::OPERATION, operation),
            str_kv(c::USE_OUTCOME, "ok"),
            str_kv("http.request.method", "POST"),
            str_kv("http.route", format!("/{kind}s/{{id}}/{operation}")),
            int_kv(c::HTTP_RESPONSE_STATUS_CODE, 200),
            str_kv("url.scheme", "https"),
            str_kv("server.address", format!("{service}.internal")),
            int_kv("server.port", 8443),
            str_kv("user_agent.original", "checkout-web/5.2 (okhttp/4.12)"),
            str_kv(
                "network.peer.address",
                format!("10.0.{}.{}", p % 16, p % 250),
            ),
            str_kv("code.function.name", format!("{service}::{operation}")),
        ];
        let used_version = if pair == Pair::Stale {
            // Another writer (a job, no request id) committed between check and use.
            let newer = version + 1;
            audits.push(audit_record(
                &resource,
                newer,
                None,
                "repricing-job",
                check_end + (use_at - check_end) / 2,
                t,
                p,
            ));
            expected.stale_check += 1;
            newer
        } else {
            version
        };
        use_attrs.push(str_kv(c::RESOURCE_VERSION, version_slot(used_version)));
        if operation == "charge" {
            let key = if pair == Pair::Duplicate {
                expected.duplicate_use += 1;
                keys[rng.gen_range(0..keys.len())].clone()
            } else {
                let key = format!("idem-{t:04}-{p:05}-{}", marker_slot());
                // Only clean pairs' keys are reused: a duplicate of a stale or unchecked
                // use would take that use's finding (duplicate_use comes first).
                if pair == Pair::Clean {
                    keys.push(key.clone());
                }
                key
            };
            use_attrs.push(str_kv(c::IDEMPOTENCY_KEY, key));
        }
        if pair == Pair::Unchecked {
            expected.unchecked_use += 1;
        }
        if pair != Pair::Stale && rng.gen_bool(0.2) {
            // The request's own write, audited by the system of record after the use.
            let own = format!(
                "{}{}",
                String::from_utf8_lossy(&hex16(u64::from_be_bytes(
                    tid[..8].try_into().expect("8 bytes")
                ))),
                marker_slot()
            );
            audits.push(audit_record(
                &resource,
                used_version + 1,
                Some(own),
                service,
                use_end,
                t,
                p,
            ));
        }
        check_attrs.truncate(14);
        spans.push(span(
            &tid,
            span_id(t, p, 1),
            &parent,
            format!("SELECT {kind}"),
            span::SpanKind::Client,
            check_at,
            check_end,
            check_attrs,
        ));
        spans.push(span(
            &tid,
            span_id(t, p, 2),
            &parent,
            format!("POST /{kind}s/{{id}}/{operation}"),
            span::SpanKind::Internal,
            use_at,
            use_end,
            use_attrs,
        ));
    }
    let traces = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource_attrs(service, t)),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "toctou-instrument".into(),
                    version: "0.1.0".into(),
                    attributes: vec![],
                    dropped_attributes_count: 0,
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
        }],
    };
    let n_audits = audits.len() as u64;
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource_attrs(&format!("{service}-db"), t)),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "audit".into(),
                    version: "1.0.0".into(),
                    attributes: vec![],
                    dropped_attributes_count: 0,
                }),
                log_records: audits,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let traces = template(Signal::Traces, pairs as u64 * 2, traces.encode_to_vec());
    let logs = template(Signal::Logs, n_audits, logs.encode_to_vec());
    (RoundTemplate { traces, logs }, expected)
}

#[allow(clippy::too_many_arguments)]
fn span(
    trace: &[u8],
    id: Vec<u8>,
    parent: &[u8],
    name: String,
    kind: span::SpanKind,
    start: u64,
    end: u64,
    attributes: Vec<KeyValue>,
) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: id,
        trace_state: String::new(),
        parent_span_id: parent.to_vec(),
        flags: 0x301,
        name,
        kind: kind as i32,
        start_time_unix_nano: TIME_MARK | start,
        end_time_unix_nano: TIME_MARK | end,
        attributes,
        dropped_attributes_count: 0,
        events: vec![],
        dropped_events_count: 0,
        links: vec![],
        dropped_links_count: 0,
        status: Some(Status {
            message: String::new(),
            code: status::StatusCode::Ok as i32,
        }),
    }
}

fn audit_record(
    resource: &str,
    version: u32,
    request_id: Option<String>,
    actor: &str,
    at: u64,
    t: u32,
    p: u32,
) -> LogRecord {
    let mut attributes = vec![
        str_kv(c::AUDIT_ACTION, "update"),
        str_kv(c::RESOURCE, resource),
        str_kv(c::RESOURCE_VERSION, version_slot(version)),
        str_kv(c::ACTOR, actor),
        str_kv("db.system.name", "postgresql"),
        str_kv("db.operation.name", "UPDATE"),
    ];
    if let Some(id) = request_id {
        attributes.push(str_kv(c::REQUEST_ID, id));
    }
    LogRecord {
        time_unix_nano: TIME_MARK | at,
        observed_time_unix_nano: TIME_MARK | (at + 1_000_000),
        severity_number: 9,
        severity_text: "INFO".into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(format!(
                "UPDATE {resource} SET version = {}",
                version_slot(version)
            ))),
        }),
        attributes,
        dropped_attributes_count: 0,
        flags: 1,
        trace_id: trace_id(t, p),
        span_id: span_id(t, p, 3),
        event_name: String::new(),
    }
}

/// Finds the stamp positions in an encoded request. The marks are chosen so that nothing
/// else in a request can look like them (0xA5 and 0xA7 bytes appear only in our ids and
/// times); the tests assert the counts match the items exactly.
fn template(signal: Signal, items: u64, bytes: Vec<u8>) -> Template {
    let mut round_marks = Vec::new();
    let mut hex_marks = Vec::new();
    let mut version_marks = Vec::new();
    let mut time_marks = Vec::new();
    let mut i = 0;
    while i + 8 <= bytes.len() {
        // A trace id field: its tag (Span field 1, LogRecord field 9), length 16, then the
        // id, whose last 8 bytes are the mark (anchored, as id bytes before it may be 0xA5).
        if i >= 10
            && [0x0A, 0x4A].contains(&bytes[i - 10])
            && bytes[i - 9] == 16
            && bytes[i..i + 8] == ROUND_MARK
        {
            round_marks.push(i);
            i += 8;
            continue;
        }
        if i + 16 <= bytes.len() && &bytes[i..i + 16] == HEX_MARK {
            hex_marks.push(i);
            i += 16;
            continue;
        }
        if i + 10 <= bytes.len() && &bytes[i..i + 10] == VERSION_MARK {
            version_marks.push(i);
            i += 10;
            continue;
        }
        if i > 0 && TIME_TAGS.contains(&bytes[i - 1]) {
            let v = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
            if v >> 48 == TIME_MARK >> 48 {
                time_marks.push((i, v & ((1 << 48) - 1)));
                i += 8;
                continue;
            }
        }
        i += 1;
    }
    Template {
        signal,
        items,
        bytes,
        round_marks,
        hex_marks,
        version_marks,
        time_marks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};
    use toctou_schema::Event;

    const NOW: u64 = 1_790_000_000_000_000_000;

    fn decode_round(r: &RoundTemplate, round: u64, now: u64) -> (Vec<Event>, Vec<Event>) {
        let mut buf = Vec::new();
        r.traces.render(round, now, &mut buf);
        let req = ExportTraceServiceRequest::decode(buf.as_slice()).expect("traces decode");
        let spans = toctou_collector::decode_traces(&req);
        assert!(spans.rejected.is_empty(), "{:?}", spans.rejected);
        assert_eq!(spans.ignored.total(), 0);
        r.logs.render(round, now, &mut buf);
        let req = ExportLogsServiceRequest::decode(buf.as_slice()).expect("logs decode");
        let logs = toctou_collector::decode_logs(&req);
        assert!(logs.rejected.is_empty(), "{:?}", logs.rejected);
        (spans.events, logs.events)
    }

    #[test]
    fn every_mark_is_found_once_per_id_and_time() {
        let mix = Mix::build(&MixConfig::default());
        for r in &mix.rounds {
            assert_eq!(r.traces.items, 512);
            assert_eq!(r.traces.round_marks.len() as u64, r.traces.items);
            assert_eq!(r.traces.time_marks.len() as u64, 2 * r.traces.items);
            assert_eq!(r.logs.round_marks.len() as u64, r.logs.items);
            assert_eq!(r.logs.time_marks.len() as u64, 2 * r.logs.items);
            // A version on every span; on every audit record, and in its body.
            assert_eq!(r.traces.version_marks.len() as u64, r.traces.items);
            assert_eq!(r.logs.version_marks.len() as u64, 2 * r.logs.items);
            assert!(
                r.logs.items > 20,
                "about a fifth of pairs write: {}",
                r.logs.items
            );
        }
    }

    #[test]
    fn rendered_requests_decode_with_the_collectors_decoder_as_the_conventions_say() {
        let mix = Mix::build(&MixConfig::default());
        let (spans, audits) = decode_round(&mix.rounds[1], 0x1234, NOW);
        assert_eq!(spans.len(), 512);
        let raw = {
            let mut buf = Vec::new();
            mix.rounds[1].traces.render(0x1234, NOW, &mut buf);
            ExportTraceServiceRequest::decode(buf.as_slice()).unwrap()
        };
        for s in &raw.resource_spans[0].scope_spans[0].spans {
            let n = s.attributes.len();
            assert!((10..=20).contains(&n), "{n} attributes on {}", s.name);
            assert_eq!(&s.trace_id[8..], &0x1234u64.to_be_bytes());
        }
        let mut phases = BTreeMap::new();
        for e in &spans {
            let Event::Span(s) = e else { panic!("a span") };
            *phases.entry(s.phase.as_str()).or_insert(0) += 1;
            assert_eq!(s.service, "payments");
            assert!(
                s.start_ns >= NOW - WINDOW_NS && s.end_ns <= NOW,
                "{}",
                s.start_ns
            );
            assert!(s.version.is_some());
            // No explicit request id: the trace id stands in, round digits included.
            assert!(
                s.request_id.ends_with("0000000000001234"),
                "{}",
                s.request_id
            );
            if s.phase == toctou_schema::Phase::Use {
                let key = s.idempotency_key.as_deref().expect("payments carry keys");
                assert!(key.ends_with("0000000000001234"), "{key}");
            }
        }
        assert_eq!(phases["check"], 256);
        assert_eq!(phases["use"], 256);
        let span_requests: HashSet<_> = spans
            .iter()
            .map(|e| match e {
                Event::Span(s) => s.request_id.clone(),
                _ => unreachable!(),
            })
            .collect();
        for e in &audits {
            let Event::Audit(a) = e else {
                panic!("an audit")
            };
            assert_eq!(a.service, "payments-db");
            assert!(a.time_ns >= NOW - WINDOW_NS && a.time_ns <= NOW);
            if let Some(id) = &a.request_id {
                assert!(
                    span_requests.contains(id),
                    "own write of an unknown request {id}"
                );
            }
        }
    }

    #[test]
    fn rounds_differ_in_ids_keys_times_and_versions_only() {
        let mix = Mix::build(&MixConfig::default());
        let (a, a_audits) = decode_round(&mix.rounds[1], 1, NOW);
        let (b, b_audits) = decode_round(&mix.rounds[1], 2, NOW + 1_000_000_000);
        let version = |v: &Option<String>| -> u64 {
            let v = v.as_deref().expect("a version");
            assert_eq!(v.len(), 16, "{v}");
            v.parse().expect("decimal")
        };
        for (x, y) in a_audits.iter().zip(&b_audits) {
            let (Event::Audit(x), Event::Audit(y)) = (x, y) else {
                panic!()
            };
            // One second later: the clock prefix (ms) is 1000 higher.
            assert_eq!(version(&y.version) - version(&x.version), 1000 * 1_000_000);
        }
        for (x, y) in a.iter().zip(&b) {
            let (Event::Span(x), Event::Span(y)) = (x, y) else {
                panic!()
            };
            assert_ne!(x.trace_id, y.trace_id);
            assert_eq!(x.resource, y.resource);
            assert_eq!(y.start_ns - x.start_ns, 1_000_000_000);
            assert_eq!(version(&y.version) - version(&x.version), 1000 * 1_000_000);
            assert_eq!(
                version(&x.version) / 1_000_000,
                NOW / 1_000_000 % 10_000_000_000
            );
            if x.phase == toctou_schema::Phase::Use {
                assert_ne!(x.idempotency_key, y.idempotency_key);
            }
        }
    }

    /// The mix makes the correlator find what it was built to: run two cycles through the
    /// real engine and compare the kinds found with the expected counts.
    #[test]
    fn the_correlator_finds_the_races_the_mix_contains() {
        let config = MixConfig {
            templates: 8,
            ..MixConfig::default()
        };
        let mix = Mix::build(&config);
        let mut engine = toctou_correlator::Engine::new(toctou_correlator::Config::default())
            .expect("default config");
        let mut findings = Vec::new();
        let mut now = NOW;
        let mut want = Expected::default();
        for cycle in 0..2u64 {
            for (i, r) in mix.rounds.iter().enumerate() {
                now += 50_000_000;
                let (spans, audits) = decode_round(r, cycle * 100 + i as u64, now);
                for e in spans.into_iter().chain(audits) {
                    engine.ingest(e, now, &mut findings);
                }
                let e = mix.expected[i];
                want.stale_check += e.stale_check;
                want.duplicate_use += e.duplicate_use;
                want.unchecked_use += e.unchecked_use;
            }
        }
        engine.flush(now, &mut findings);
        assert!(engine.is_drained(), "state or references left after flush");
        let mut kinds = BTreeMap::new();
        for f in &findings {
            *kinds.entry(f.kind.as_str()).or_insert(0u64) += 1;
        }
        assert!(want.stale_check > 0 && want.duplicate_use > 0 && want.unchecked_use > 0);
        assert_eq!(kinds.get("stale_check").copied(), Some(want.stale_check));
        assert_eq!(
            kinds.get("duplicate_use").copied(),
            Some(want.duplicate_use)
        );
        assert_eq!(
            kinds.get("unchecked_use").copied(),
            Some(want.unchecked_use)
        );
        // Each stale check has its one write in between as evidence, not the same write of
        // the cycle before.
        for f in findings.iter().filter(|f| f.kind.as_str() == "stale_check") {
            assert_eq!(f.intervening.len(), 1, "{f:?}");
        }
        // Each unchecked use leaves its request's check unused.
        assert_eq!(kinds.get("orphan_check").copied(), Some(want.unchecked_use));
    }
}
