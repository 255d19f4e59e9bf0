//! A pruning reader of OTLP protobuf requests: it walks the wire format and builds the
//! prost types with only what the transforms read (ids, times, status, the toctou and
//! status-code attributes of spans and records, `service.name` of resources), skipping the
//! rest without allocating it.
//!
//! Why: decoding a whole request into the owned prost types cost two thirds of `toctou
//! run`'s instructions in the callgrind profile of issue 7 (a `String` per attribute key and
//! value, ~23 attributes per span with its resource, of which 6-7 are read). The transforms
//! stay the single place of every rule: they get the same types, with fewer attributes.
//!
//! Anything unusual (a wire type that does not match the schema, truncation, a group, bad
//! UTF-8 in a kept field) makes the reader give up, and the caller decodes the request with
//! prost as before: malformed requests get exactly prost's error. Fields toctou does not read
//! are checked for framing and wire type, not decoded, so bad UTF-8 inside, say, a span name
//! no longer refuses the whole request.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use toctou_schema::conventions as c;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// The attribute keys the transforms read (`attrs::Known`).
const KEPT_KEYS: [&str; 16] = [
    c::PHASE,
    c::RESOURCE,
    c::RESOURCE_VERSION,
    c::REQUEST_ID,
    c::OPERATION,
    c::ACTOR,
    c::CHECK_DECISION,
    c::CHECK_SOURCE,
    c::POLICY,
    c::POLICY_VERSION,
    c::IDEMPOTENCY_KEY,
    c::USE_OUTCOME,
    c::AUDIT_ACTION,
    c::HTTP_RESPONSE_STATUS_CODE,
    c::HTTP_STATUS_CODE,
    c::RPC_GRPC_STATUS_CODE,
];

/// `None`: not a request this reader takes as is; decode it with prost instead.
type Read<T> = Option<T>;

struct Fields<'a> {
    buf: &'a [u8],
}

/// One field: its number, wire type and, for LEN fields, its bytes; for the others the
/// value (fixed64/fixed32 as little-endian integers).
struct Field<'a> {
    number: u32,
    wire: u8,
    bytes: &'a [u8],
    value: u64,
}

#[inline(always)]
fn varint(buf: &mut &[u8]) -> Read<u64> {
    // Tags and short lengths are one byte: the common case, without the loop.
    if let Some((&b, rest)) = buf.split_first() {
        if b < 0x80 {
            *buf = rest;
            return Some(u64::from(b));
        }
    }
    varint_slow(buf)
}

#[inline(never)]
fn varint_slow(buf: &mut &[u8]) -> Read<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        // The tenth byte holds the top bit only; more is an overflow prost refuses.
        if i == 9 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7F) << (7 * i);
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    /// The next field; `Some(None)` at the end, `None` on malformed input.
    #[inline]
    fn next(&mut self) -> Read<Option<Field<'a>>> {
        if self.buf.is_empty() {
            return Some(None);
        }
        let key = varint(&mut self.buf)?;
        let wire = (key & 7) as u8;
        // A key past u32 is one prost refuses, as it does field number 0.
        let number = u32::try_from(key).ok().map(|k| k >> 3).filter(|n| *n > 0)?;
        let mut field = Field {
            number,
            wire,
            bytes: &[],
            value: 0,
        };
        match wire {
            VARINT => field.value = varint(&mut self.buf)?,
            FIXED64 => {
                let (v, rest) = self.buf.split_first_chunk::<8>()?;
                field.value = u64::from_le_bytes(*v);
                self.buf = rest;
            }
            FIXED32 => {
                let (v, rest) = self.buf.split_first_chunk::<4>()?;
                field.value = u64::from(u32::from_le_bytes(*v));
                self.buf = rest;
            }
            LEN => {
                let n = usize::try_from(varint(&mut self.buf)?).ok()?;
                if n > self.buf.len() {
                    return None;
                }
                let (bytes, rest) = self.buf.split_at(n);
                field.bytes = bytes;
                self.buf = rest;
            }
            // Groups (deprecated) and invalid wire types: prost decides.
            _ => return None,
        }
        Some(Some(field))
    }
}

/// Checks the wire type of a field the schema defines; unknown numbers are skipped as
/// protobuf says.
fn expect(field: &Field, wire: u8) -> Read<()> {
    (field.wire == wire).then_some(())
}

/// An attribute whose key the transforms read, decoded with prost; `Some(None)` for one
/// they do not read.
fn kept_attribute(bytes: &[u8], keep: impl Fn(&[u8]) -> bool) -> Read<Option<KeyValue>> {
    let parts = AttributeFields::read(bytes)?;
    if !keep(parts.key) {
        return Some(None);
    }
    match parts.scalar() {
        Some(kv) => Some(Some(kv)),
        None => KeyValue::decode(bytes).ok().map(Some),
    }
}

/// The fields of one `KeyValue`, read in a single pass (the attribute loop is the reader's
/// hottest: ~15 per span), enough both to decide whether it is kept and to build it.
struct AttributeFields<'a> {
    /// The last key field: it decides, as in prost. A repeated key field (no encoder writes
    /// one, but anyone can send it) must not hide a key the transforms read behind one they
    /// do not (collector/testdata/fuzz/otlp_http_protobuf_traces-241ae86cd20f6061.bin: a span
    /// the reader ignored and prost rejected).
    key: &'a [u8],
    keys: u32,
    value: Option<&'a [u8]>,
    values: u32,
    key_strindex: i32,
    /// A value or key_strindex field of an unexpected wire type: prost's to judge.
    odd: bool,
}

impl<'a> AttributeFields<'a> {
    fn read(bytes: &'a [u8]) -> Read<Self> {
        let mut parts = AttributeFields {
            key: &[],
            keys: 0,
            value: None,
            values: 0,
            key_strindex: 0,
            odd: false,
        };
        let mut fields = Fields::new(bytes);
        while let Some(f) = fields.next()? {
            match (f.number, f.wire) {
                (1, LEN) => {
                    parts.key = f.bytes;
                    parts.keys += 1;
                }
                (1, _) => return None,
                (2, LEN) => {
                    parts.value = Some(f.bytes);
                    parts.values += 1;
                }
                (3, VARINT) => parts.key_strindex = f.value as i32,
                (2 | 3, _) => parts.odd = true,
                _ => {}
            }
        }
        Some(parts)
    }

    /// A key-value whose value is a string, bool, int or double, each field once: what
    /// toctou's attributes are. prost took ~900 instructions for one; this, a tenth. `None`
    /// for anything else (arrays, maps, bytes, repeated fields, bad UTF-8), which prost then
    /// decodes.
    fn scalar(&self) -> Option<KeyValue> {
        if self.odd || self.keys != 1 || self.values > 1 {
            return None;
        }
        let value = match self.value {
            Some(bytes) => Some(AnyValue {
                value: Some(scalar_value(bytes)?),
            }),
            None => None,
        };
        Some(KeyValue {
            key: std::str::from_utf8(self.key).ok()?.to_owned(),
            value,
            key_strindex: self.key_strindex,
        })
    }
}

/// [`AttributeFields::scalar`] of a whole encoded `KeyValue`.
#[cfg(test)]
fn scalar_attribute(bytes: &[u8]) -> Option<KeyValue> {
    AttributeFields::read(bytes)?.scalar()
}

fn scalar_value(bytes: &[u8]) -> Option<Value> {
    let mut fields = Fields::new(bytes);
    let mut value = None;
    while let Some(f) = fields.next()? {
        let v = match (f.number, f.wire) {
            (1, LEN) => Value::StringValue(std::str::from_utf8(f.bytes).ok()?.to_owned()),
            (2, VARINT) => Value::BoolValue(f.value != 0),
            (3, VARINT) => Value::IntValue(f.value as i64),
            (4, FIXED64) => Value::DoubleValue(f64::from_bits(f.value)),
            (1..=8, _) => return None,
            _ => continue,
        };
        if value.replace(v).is_some() {
            return None;
        }
    }
    value
}

fn is_kept_key(key: &[u8]) -> bool {
    // Every key we read starts with one of these; most keys a service sends do not.
    (key.starts_with(b"toctou.") || key.starts_with(b"http.") || key.starts_with(b"rpc."))
        && KEPT_KEYS.iter().any(|k| k.as_bytes() == key)
}

fn resource(bytes: &[u8], into: &mut Resource) -> Read<()> {
    let mut fields = Fields::new(bytes);
    while let Some(f) = fields.next()? {
        match f.number {
            1 => {
                expect(&f, LEN)?;
                if let Some(kv) = kept_attribute(f.bytes, |k| k == c::SERVICE_NAME.as_bytes())? {
                    into.attributes.push(kv);
                }
            }
            2 => expect(&f, VARINT)?,
            3 => expect(&f, LEN)?,
            _ => {}
        }
    }
    Some(())
}

fn span(bytes: &[u8]) -> Read<Span> {
    let mut s = Span::default();
    let mut fields = Fields::new(bytes);
    while let Some(f) = fields.next()? {
        match f.number {
            1 => {
                expect(&f, LEN)?;
                s.trace_id = f.bytes.to_vec();
            }
            2 => {
                expect(&f, LEN)?;
                s.span_id = f.bytes.to_vec();
            }
            7 => {
                expect(&f, FIXED64)?;
                s.start_time_unix_nano = f.value;
            }
            8 => {
                expect(&f, FIXED64)?;
                s.end_time_unix_nano = f.value;
            }
            9 => {
                expect(&f, LEN)?;
                if let Some(kv) = kept_attribute(f.bytes, is_kept_key)? {
                    s.attributes.push(kv);
                }
            }
            15 => {
                expect(&f, LEN)?;
                s.status
                    .get_or_insert_with(Status::default)
                    .merge(f.bytes)
                    .ok()?;
            }
            3 | 4 | 5 | 11 | 13 => expect(&f, LEN)?,
            6 | 10 | 12 | 14 => expect(&f, VARINT)?,
            16 => expect(&f, FIXED32)?,
            _ => {}
        }
    }
    Some(s)
}

fn scope_spans(bytes: &[u8]) -> Read<ScopeSpans> {
    let mut out = ScopeSpans::default();
    let mut fields = Fields::new(bytes);
    while let Some(f) = fields.next()? {
        match f.number {
            2 => {
                expect(&f, LEN)?;
                out.spans.push(span(f.bytes)?);
            }
            1 | 3 => expect(&f, LEN)?,
            _ => {}
        }
    }
    Some(out)
}

/// An OTLP/protobuf traces request, pruned to what `decode_traces` reads; `None` when it is
/// not well formed as far as this reader checks (decode it with prost then).
pub fn traces(raw: &[u8]) -> Option<ExportTraceServiceRequest> {
    let mut out = ExportTraceServiceRequest::default();
    let mut fields = Fields::new(raw);
    while let Some(f) = fields.next()? {
        if f.number != 1 {
            continue;
        }
        expect(&f, LEN)?;
        let mut rs = ResourceSpans::default();
        let mut inner = Fields::new(f.bytes);
        while let Some(g) = inner.next()? {
            match g.number {
                1 => {
                    expect(&g, LEN)?;
                    resource(g.bytes, rs.resource.get_or_insert_with(Resource::default))?;
                }
                2 => {
                    expect(&g, LEN)?;
                    rs.scope_spans.push(scope_spans(g.bytes)?);
                }
                3 => expect(&g, LEN)?,
                _ => {}
            }
        }
        out.resource_spans.push(rs);
    }
    Some(out)
}

fn log_record(bytes: &[u8]) -> Read<LogRecord> {
    let mut r = LogRecord::default();
    let mut fields = Fields::new(bytes);
    while let Some(f) = fields.next()? {
        match f.number {
            1 => {
                expect(&f, FIXED64)?;
                r.time_unix_nano = f.value;
            }
            11 => {
                expect(&f, FIXED64)?;
                r.observed_time_unix_nano = f.value;
            }
            6 => {
                expect(&f, LEN)?;
                if let Some(kv) = kept_attribute(f.bytes, is_kept_key)? {
                    r.attributes.push(kv);
                }
            }
            9 => {
                expect(&f, LEN)?;
                r.trace_id = f.bytes.to_vec();
            }
            10 => {
                expect(&f, LEN)?;
                r.span_id = f.bytes.to_vec();
            }
            3 | 5 | 12 => expect(&f, LEN)?,
            2 | 7 => expect(&f, VARINT)?,
            8 => expect(&f, FIXED32)?,
            _ => {}
        }
    }
    Some(r)
}

/// An OTLP/protobuf logs request, pruned to what `decode_logs` reads; `None` as for
/// [`traces`].
pub fn logs(raw: &[u8]) -> Option<ExportLogsServiceRequest> {
    let mut out = ExportLogsServiceRequest::default();
    let mut fields = Fields::new(raw);
    while let Some(f) = fields.next()? {
        if f.number != 1 {
            continue;
        }
        expect(&f, LEN)?;
        let mut rl = ResourceLogs::default();
        let mut inner = Fields::new(f.bytes);
        while let Some(g) = inner.next()? {
            match g.number {
                1 => {
                    expect(&g, LEN)?;
                    resource(g.bytes, rl.resource.get_or_insert_with(Resource::default))?;
                }
                2 => {
                    expect(&g, LEN)?;
                    let mut sl = ScopeLogs::default();
                    let mut scope = Fields::new(g.bytes);
                    while let Some(h) = scope.next()? {
                        match h.number {
                            2 => {
                                expect(&h, LEN)?;
                                sl.log_records.push(log_record(h.bytes)?);
                            }
                            1 | 3 => expect(&h, LEN)?,
                            _ => {}
                        }
                    }
                    rl.scope_logs.push(sl);
                }
                3 => expect(&g, LEN)?,
                _ => {}
            }
        }
        out.resource_logs.push(rl);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_logs, decode_traces};

    /// The requests of the repository's test data, in protobuf: the pruned request decodes
    /// to exactly the events, ignores and rejections of the full one.
    fn fixtures() -> Vec<(ExportTraceServiceRequest, ExportLogsServiceRequest)> {
        let mut out = Vec::new();
        let mut stack = vec![
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata")),
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/otlp")),
        ];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let ext = path.extension().and_then(|e| e.to_str());
                if ext != Some("json") && ext != Some("jsonl") {
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                let docs: Vec<&[u8]> = if ext == Some("jsonl") {
                    bytes.split(|b| *b == b'\n').collect()
                } else {
                    vec![&bytes]
                };
                for doc in docs {
                    let traces = crate::traces_from_json(doc).ok();
                    let logs = crate::logs_from_json(doc).ok();
                    if traces.is_some() || logs.is_some() {
                        out.push((traces.unwrap_or_default(), logs.unwrap_or_default()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn pruned_requests_decode_to_the_same_events_as_full_ones() {
        let all = fixtures();
        assert!(all.len() >= 10, "found only {} OTLP JSON files", all.len());
        let mut spans = 0;
        for (t, l) in all {
            let raw = t.encode_to_vec();
            let pruned = traces(&raw).expect("well formed");
            assert_eq!(decode_traces(&pruned), decode_traces(&t));
            spans += decode_traces(&t).item_count();
            let raw = l.encode_to_vec();
            let pruned = logs(&raw).expect("well formed");
            assert_eq!(decode_logs(&pruned), decode_logs(&l));
        }
        assert!(spans > 20);
    }

    #[test]
    fn unread_attributes_are_dropped_and_read_ones_kept_in_order() {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            key_strindex: 0,
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("host.name", "h"), kv(c::SERVICE_NAME, "svc")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        name: "GET /x".into(),
                        start_time_unix_nano: 5,
                        end_time_unix_nano: 6,
                        attributes: vec![
                            kv(c::PHASE, "check"),
                            kv("db.system.name", "postgresql"),
                            kv(c::RESOURCE, "a/1"),
                            kv(c::RESOURCE, "a/2"),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let pruned = traces(&req.encode_to_vec()).unwrap();
        let res = pruned.resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(res.attributes, vec![kv(c::SERVICE_NAME, "svc")]);
        let s = &pruned.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            s.attributes,
            vec![
                kv(c::PHASE, "check"),
                kv(c::RESOURCE, "a/1"),
                kv(c::RESOURCE, "a/2")
            ]
        );
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (5, 6));
        assert_eq!(s.name, "", "unread fields are not copied");
        assert_eq!(decode_traces(&pruned), decode_traces(&req));
    }

    #[test]
    fn scalar_attributes_decode_as_prost_does_and_the_rest_is_left_to_it() {
        use opentelemetry_proto::tonic::common::v1::ArrayValue;
        let kv = |v: Option<Value>| KeyValue {
            key: c::RESOURCE_VERSION.into(),
            key_strindex: 0,
            value: Some(AnyValue { value: v }),
        };
        for v in [
            Value::StringValue("v-7".into()),
            Value::StringValue(String::new()),
            Value::BoolValue(true),
            Value::IntValue(-42),
            Value::IntValue(i64::MAX),
            Value::DoubleValue(2.5),
        ] {
            let raw = kv(Some(v)).encode_to_vec();
            assert_eq!(
                scalar_attribute(&raw),
                Some(KeyValue::decode(raw.as_slice()).unwrap())
            );
        }
        let array = Value::ArrayValue(ArrayValue {
            values: vec![AnyValue {
                value: Some(Value::IntValue(1)),
            }],
        });
        for other in [Some(array), None] {
            let raw = kv(other).encode_to_vec();
            assert_eq!(scalar_attribute(&raw), None);
            let full = KeyValue::decode(raw.as_slice()).unwrap();
            assert_eq!(kept_attribute(&raw, is_kept_key), Some(Some(full)));
        }
    }

    #[test]
    fn malformed_input_is_left_to_prost() {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans::default()],
        };
        let raw = req.encode_to_vec();
        // Truncated: the length says more than there is.
        assert!(traces(&raw[..raw.len() - 1]).is_none());
        assert!(traces(&[0x0A, 0x05, 0x01]).is_none());
        // Field 1 as a varint where the schema says a message.
        assert!(traces(&[0x08, 0x01]).is_none());
        // A group.
        assert!(logs(&[0x0B]).is_none());
        // Bad UTF-8 in a kept attribute's value: prost's to report.
        let mut raw = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        attributes: vec![KeyValue {
                            key: c::PHASE.into(),
                            key_strindex: 0,
                            value: Some(AnyValue {
                                value: Some(Value::StringValue("check".into())),
                            }),
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        assert!(traces(&raw).is_some());
        let at = raw.windows(5).position(|w| w == b"check").unwrap();
        raw[at] = 0xFF;
        assert!(ExportTraceServiceRequest::decode(raw.as_slice()).is_err());
        assert!(traces(&raw).is_none());
        // Varints as prost reads them: a tenth byte above 1 overflows, a key past u32 is
        // invalid; both are prost's to report, also in a kept attribute's value.
        let overflowing = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02];
        assert!(varint(&mut &overflowing[..]).is_none());
        assert_eq!(
            varint(&mut &[0xFF; 9].iter().chain(&[0x01]).copied().collect::<Vec<_>>()[..]),
            Some(u64::MAX)
        );
        assert!(traces(&[0x80, 0x80, 0x80, 0x80, 0x10, 0x00]).is_none());
        assert!(
            ExportTraceServiceRequest::decode(&[0x80, 0x80, 0x80, 0x80, 0x10, 0x00][..]).is_err()
        );
        // An empty request is a request with nothing in it.
        assert_eq!(traces(&[]), Some(ExportTraceServiceRequest::default()));
    }

    /// An attribute `key` whose AnyValue nests `depth` kvlists, built from the inside out
    /// without recursion (prost's encoder would recurse as deep).
    fn deep_attribute(key: &str, depth: usize) -> Vec<u8> {
        fn prefix(rev: &mut Vec<u8>, tag: u8, len: usize) {
            let mut head = vec![tag];
            prost::encoding::encode_varint(len as u64, &mut head);
            rev.extend(head.iter().rev());
        }
        // Reversed: every level prepends a few bytes to what is inside it.
        let mut rev: Vec<u8> = vec![0x01, 0x18]; // AnyValue { int_value: 1 }
        for _ in 0..depth {
            let value = rev.len();
            prefix(&mut rev, 0x12, value); // KeyValue.value
            rev.extend(b"\x0A\x01k".iter().rev()); // KeyValue.key = "k"
            let kv = rev.len();
            prefix(&mut rev, 0x0A, kv); // KeyValueList.values
            let list = rev.len();
            prefix(&mut rev, 0x32, list); // AnyValue.kvlist_value
        }
        let value = rev.len();
        prefix(&mut rev, 0x12, value);
        let mut kv = vec![0x0A, key.len() as u8];
        kv.extend(key.as_bytes());
        rev.reverse();
        kv.extend(rev);
        kv
    }

    #[test]
    fn deep_nesting_is_skipped_unread_and_refused_by_prost_when_read() {
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![
                KeyValue {
                    key: c::PHASE.into(),
                    key_strindex: 0,
                    value: Some(AnyValue {
                        value: Some(Value::StringValue("check".into())),
                    }),
                },
                KeyValue {
                    key: c::RESOURCE.into(),
                    key_strindex: 0,
                    value: Some(AnyValue {
                        value: Some(Value::StringValue("r".into())),
                    }),
                },
            ],
            ..Default::default()
        };
        let request = |attribute: Vec<u8>| {
            let mut span = span.encode_to_vec();
            prost::encoding::encode_key(9, prost::encoding::WireType::LengthDelimited, &mut span);
            prost::encoding::encode_varint(attribute.len() as u64, &mut span);
            span.extend(attribute);
            let scope = ScopeSpans::default();
            let mut scope_bytes = scope.encode_to_vec();
            prost::encoding::bytes::encode(2, &span, &mut scope_bytes);
            let mut rs = Vec::new();
            prost::encoding::bytes::encode(2, &scope_bytes, &mut rs);
            let mut req = Vec::new();
            prost::encoding::bytes::encode(1, &rs, &mut req);
            req
        };
        // 100k levels in an attribute toctou does not read: skipped by its length.
        let raw = request(deep_attribute("deep", 100_000));
        assert!(raw.len() > 1_000_000);
        let pruned = traces(&raw).expect("unread fields are skipped, not descended");
        assert_eq!(decode_traces(&pruned).events.len(), 1);
        // The same depth in toctou.resource is read, so prost decodes it, up to its limit.
        let raw = request(deep_attribute(c::RESOURCE, 100_000));
        assert!(traces(&raw).is_none());
        let err = ExportTraceServiceRequest::decode(raw.as_slice()).unwrap_err();
        assert!(err.to_string().contains("recursion limit reached"), "{err}");
    }
}
