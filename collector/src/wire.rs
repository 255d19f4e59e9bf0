//! A reader of OTLP protobuf requests straight into events: it walks the wire format and
//! hands the transforms only what they read (ids, times, status, the toctou and status-code
//! attributes of spans and records, `service.name` of resources), borrowed from the request
//! bytes, skipping the rest without allocating it.
//!
//! Why: decoding a whole request into the owned prost types cost two thirds of `toctou
//! run`'s instructions in the callgrind profile of issue 7 (a `String` per attribute key and
//! value, ~23 attributes per span with its resource, of which 6-7 are read). Building
//! pruned prost types still allocated a key, a value and two ids per kept attribute and
//! span, which the transforms then copied again: 13% of the samples at saturation. The
//! transforms stay the single place of every rule: they take the same borrowed parts
//! (`SpanParts`, `RecordParts`, `attrs::Known`) from here as from the prost types.
//!
//! Anything unusual (a wire type that does not match the schema, truncation, a group, bad
//! UTF-8 in a kept field, a kept attribute that is not a plain scalar) makes the reader give
//! up, and the caller decodes the request with prost as before: malformed requests get
//! exactly prost's error. Fields toctou does not read are checked for framing and wire type,
//! not decoded, so bad UTF-8 inside, say, a span name does not refuse the whole request.

use crate::attrs::{self, Attr, Known};
use crate::decoded::{Decoded, Rejection};
use crate::transform::logs::{file_record, RecordParts};
use crate::transform::traces::{file_span, SpanParts};
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use toctou_schema::conventions as c;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Encoded size of a typical toctou span and audit record with their attributes (a span
/// ~400 bytes with 15 attributes), to size the event list of a request.
const BYTES_PER_SPAN: usize = 400;
const BYTES_PER_RECORD: usize = 250;

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
    #[inline(always)]
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

/// A kept key or string value as text, `None` when it is not UTF-8.
///
/// Why not `str::from_utf8` alone: it is called ~13 times a span, on strings of 10-40
/// bytes, where it costs ~110 instructions (callgrind: 10% of the whole process at a fixed
/// rate). The keys and values toctou reads are ASCII in practice, which `is_ascii` confirms
/// a word at a time; anything else takes the full check.
#[inline]
fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: every ASCII byte sequence is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

/// Checks the wire type of a field the schema defines; unknown numbers are skipped as
/// protobuf says.
fn expect(field: &Field, wire: u8) -> Read<()> {
    (field.wire == wire).then_some(())
}

/// Reads one attribute into `known` when toctou reads its key; others are skipped unread.
#[inline]
fn attribute<'a>(bytes: &'a [u8], known: &mut Known<'a>) -> Read<()> {
    let parts = AttributeFields::read(bytes)?;
    // Every key toctou reads starts with one of these; most keys a service sends do not.
    let key = parts.key;
    if !(key.starts_with(b"toctou.")
        || key.starts_with(b"http.")
        || key.starts_with(b"rpc.")
        || key.starts_with(b"db.")
        || key.starts_with(b"pgx.")
        || key.starts_with(b"error."))
    {
        return Some(());
    }
    // A key that is not UTF-8 is none of ours (prost would refuse it, but not in an
    // attribute nobody reads: the reader does not check those).
    let Some(key) = utf8(key) else {
        return Some(());
    };
    if let Some(k) = key.strip_prefix("db.query.parameter.") {
        if let Some(value) = parts.value()? {
            known.offer_indexed(k, value);
        }
        return Some(());
    }
    let Some(slot) = known.slot(key) else {
        return Some(());
    };
    // Read (and so checked) even when an earlier occurrence already won.
    let value = parts.value()?;
    if slot.is_none() {
        *slot = value;
    }
    Some(())
}

/// The fields of one `KeyValue`, read in a single pass (the attribute loop is the reader's
/// hottest: ~15 per span), enough both to decide whether it is kept and to read it.
struct AttributeFields<'a> {
    /// The last key field: it decides, as in prost. A repeated key field (no encoder writes
    /// one, but anyone can send it) must not hide a key the transforms read behind one they
    /// do not (collector/testdata/fuzz/otlp_http_protobuf_traces-241ae86cd20f6061.bin: a span
    /// the reader ignored and prost rejected).
    key: &'a [u8],
    keys: u32,
    value: Option<&'a [u8]>,
    values: u32,
    /// A value or key_strindex field of an unexpected wire type: prost's to judge.
    odd: bool,
}

impl<'a> AttributeFields<'a> {
    fn read(bytes: &'a [u8]) -> Read<Self> {
        Self::read_plain(bytes).map_or_else(|| Self::read_any(bytes), Some)
    }

    /// The layout every encoder writes: a key under 128 bytes (tag 0x0A), then a value under
    /// 128 bytes (tag 0x12) ending the message, or no value. Read without the field loop;
    /// `None` for any other layout, which [`Self::read_any`] then reads.
    #[inline]
    fn read_plain(bytes: &'a [u8]) -> Option<Self> {
        let (&[0x0A, key_len], rest) = bytes.split_first_chunk::<2>()? else {
            return None;
        };
        if key_len >= 0x80 || usize::from(key_len) > rest.len() {
            return None;
        }
        let (key, rest) = rest.split_at(usize::from(key_len));
        let value = match rest {
            [] => None,
            _ => Some(sole_short_field(rest, 0x12)?),
        };
        Some(AttributeFields {
            key,
            keys: 1,
            value,
            values: u32::from(value.is_some()),
            odd: false,
        })
    }

    fn read_any(bytes: &'a [u8]) -> Read<Self> {
        let mut parts = AttributeFields {
            key: &[],
            keys: 0,
            value: None,
            values: 0,
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
                (3, VARINT) => {}
                (2 | 3, _) => parts.odd = true,
                _ => {}
            }
        }
        Some(parts)
    }

    /// The value when it is a string, bool, int or double, each field once: what toctou's
    /// attributes are (`Some(None)` for no value, which counts as absent). prost took ~900
    /// instructions for a key-value; this, a tenth, and no allocation. `None` for anything
    /// else (arrays, maps, bytes, repeated fields, bad UTF-8): the request then goes to
    /// prost, which decodes or refuses it.
    fn value(&self) -> Read<Option<Attr<'a>>> {
        if self.odd || self.keys != 1 || self.values > 1 {
            return None;
        }
        match self.value {
            Some(bytes) => scalar_value(bytes),
            None => Some(None),
        }
    }
}

/// The bytes of a LEN field with one-byte tag `tag` and a length under 128 that fills
/// `bytes` exactly: how encoders write a short value alone in its message.
#[inline(always)]
fn sole_short_field(bytes: &[u8], tag: u8) -> Option<&[u8]> {
    match bytes {
        [t, len, value @ ..] if *t == tag && *len < 0x80 && usize::from(*len) == value.len() => {
            Some(value)
        }
        _ => None,
    }
}

fn scalar_value(bytes: &[u8]) -> Read<Option<Attr<'_>>> {
    // The layout encoders write for a short string, the usual value of a kept attribute:
    // one field 1 under 128 bytes filling the message. Read without the field loop, which
    // cost ~180 instructions a value (callgrind, issue 7); any other layout takes the loop.
    if let Some(text) = sole_short_field(bytes, 0x0A) {
        return Some(Some(Attr::Str(utf8(text)?)));
    }
    let mut fields = Fields::new(bytes);
    let mut value = None;
    while let Some(f) = fields.next()? {
        let v = match (f.number, f.wire) {
            (1, LEN) => Attr::Str(utf8(f.bytes)?),
            (2, VARINT) => Attr::Bool(f.value != 0),
            (3, VARINT) => Attr::Int(f.value as i64),
            (4, FIXED64) => Attr::Double(f64::from_bits(f.value)),
            (1..=8, _) => return None,
            _ => continue,
        };
        if value.replace(v).is_some() {
            return None;
        }
    }
    Some(value)
}

/// Finds the value of the resource's first `service.name` attribute (`first` stays `None`
/// until one is seen; a resource may come in several fields, which prost merges).
fn resource<'a>(bytes: &'a [u8], first: &mut Option<Option<Attr<'a>>>) -> Read<()> {
    let mut fields = Fields::new(bytes);
    while let Some(f) = fields.next()? {
        match f.number {
            1 => {
                expect(&f, LEN)?;
                let parts = AttributeFields::read(f.bytes)?;
                if parts.key == c::SERVICE_NAME.as_bytes() {
                    let value = parts.value()?;
                    first.get_or_insert(value);
                }
            }
            2 => expect(&f, VARINT)?,
            3 => expect(&f, LEN)?,
            _ => {}
        }
    }
    Some(())
}

/// The service of a `ResourceSpans` or `ResourceLogs` message (field 1 is the resource in
/// both), read before its items since the resource may follow them on the wire.
fn service(bytes: &[u8]) -> Read<Result<String, Rejection>> {
    let mut first = None;
    let mut fields = Fields::new(bytes);
    while let Some(f) = fields.next()? {
        match f.number {
            1 => {
                expect(&f, LEN)?;
                resource(f.bytes, &mut first)?;
            }
            2 | 3 => expect(&f, LEN)?,
            _ => {}
        }
    }
    Some(attrs::service_name_of(first.flatten()))
}

/// Reads a `Status` message's code into `code` (left as it is when absent, as prost merges a
/// repeated status); its message is checked as prost would.
fn status_code<'a>(bytes: &'a [u8], code: &mut i32, message: &mut &'a str) -> Read<()> {
    let mut fields = Fields::new(bytes);
    while let Some(f) = fields.next()? {
        match f.number {
            2 => {
                expect(&f, LEN)?;
                *message = utf8(f.bytes)?;
            }
            3 => {
                expect(&f, VARINT)?;
                *code = f.value as i32;
            }
            _ => {}
        }
    }
    Some(())
}

fn span(bytes: &[u8]) -> Read<(SpanParts<'_>, Known<'_>)> {
    let mut s = SpanParts {
        trace_id: &[],
        span_id: &[],
        start_ns: 0,
        end_ns: 0,
        status_is_error: false,
        root: true,
        name: "",
        status_message: "",
    };
    let mut known = Known::default();
    let mut status = None;
    let (mut has_parent, mut server) = (false, false);
    let mut fields = Fields::new(bytes);
    while let Some(f) = fields.next()? {
        match f.number {
            1 => {
                expect(&f, LEN)?;
                s.trace_id = f.bytes;
            }
            2 => {
                expect(&f, LEN)?;
                s.span_id = f.bytes;
            }
            7 => {
                expect(&f, FIXED64)?;
                s.start_ns = f.value;
            }
            8 => {
                expect(&f, FIXED64)?;
                s.end_ns = f.value;
            }
            9 => {
                expect(&f, LEN)?;
                attribute(f.bytes, &mut known)?;
            }
            15 => {
                expect(&f, LEN)?;
                // Repeated, the messages merge: a later one without a code keeps the code.
                status_code(f.bytes, status.get_or_insert(0), &mut s.status_message)?;
            }
            4 => {
                expect(&f, LEN)?;
                // An empty parent span id is no parent, as prost reads it.
                has_parent = !f.bytes.is_empty();
            }
            6 => {
                expect(&f, VARINT)?;
                server = f.value == SpanKind::Server as u64;
            }
            5 => {
                expect(&f, LEN)?;
                s.name = utf8(f.bytes)?;
            }
            3 | 11 | 13 => expect(&f, LEN)?,
            10 | 12 | 14 => expect(&f, VARINT)?,
            16 => expect(&f, FIXED32)?,
            _ => {}
        }
    }
    s.status_is_error = status == Some(StatusCode::Error as i32);
    s.root = !has_parent || server;
    Some((s, known))
}

/// An OTLP/protobuf traces request, straight to what `decode_traces` makes of it without
/// building the prost types; `None` when it is not well formed as far as this reader checks
/// or holds something it leaves to prost (decode it with prost then).
pub fn traces(raw: &[u8]) -> Option<Decoded> {
    walk(raw, BYTES_PER_SPAN, |out, service, bytes, index| {
        let (parts, known) = span(bytes)?;
        file_span(out, service, &parts, known, index);
        Some(())
    })
}

/// Walks an export request, whose layout traces and logs share (field 1: the resource
/// groups; in each, field 1 the resource and field 2 the scope groups; in each of those,
/// field 2 the items), and hands each item's bytes to `file` with its resource's service
/// and its index in the request.
fn walk(
    raw: &[u8],
    bytes_per_item: usize,
    mut file: impl FnMut(&mut Decoded, &Result<String, Rejection>, &[u8], usize) -> Read<()>,
) -> Option<Decoded> {
    let mut out = Decoded::default();
    // Room for the events up front: grown by doubling, the list (~300 bytes an event) was
    // copied ~10 times for a 512-span request; a wrong estimate costs a copy or some slack.
    out.events.reserve(raw.len() / bytes_per_item);
    let mut index = 0;
    let mut fields = Fields::new(raw);
    while let Some(f) = fields.next()? {
        if f.number != 1 {
            continue;
        }
        expect(&f, LEN)?;
        let service = service(f.bytes)?;
        let mut inner = Fields::new(f.bytes);
        while let Some(g) = inner.next()? {
            if g.number != 2 {
                continue;
            }
            let mut scope = Fields::new(g.bytes);
            while let Some(h) = scope.next()? {
                match h.number {
                    2 => {
                        expect(&h, LEN)?;
                        file(&mut out, &service, h.bytes, index)?;
                        index += 1;
                    }
                    1 | 3 => expect(&h, LEN)?,
                    _ => {}
                }
            }
        }
    }
    Some(out)
}

fn log_record(bytes: &[u8]) -> Read<(RecordParts<'_>, Known<'_>)> {
    let mut r = RecordParts {
        trace_id: &[],
        span_id: &[],
        time_ns: 0,
        observed_time_ns: 0,
    };
    let mut known = Known::default();
    let mut fields = Fields::new(bytes);
    while let Some(f) = fields.next()? {
        match f.number {
            1 => {
                expect(&f, FIXED64)?;
                r.time_ns = f.value;
            }
            11 => {
                expect(&f, FIXED64)?;
                r.observed_time_ns = f.value;
            }
            6 => {
                expect(&f, LEN)?;
                attribute(f.bytes, &mut known)?;
            }
            9 => {
                expect(&f, LEN)?;
                r.trace_id = f.bytes;
            }
            10 => {
                expect(&f, LEN)?;
                r.span_id = f.bytes;
            }
            3 | 5 | 12 => expect(&f, LEN)?,
            2 | 7 => expect(&f, VARINT)?,
            8 => expect(&f, FIXED32)?,
            _ => {}
        }
    }
    Some((r, known))
}

/// An OTLP/protobuf logs request, straight to what `decode_logs` makes of it; `None` as for
/// [`traces`].
pub fn logs(raw: &[u8]) -> Option<Decoded> {
    walk(raw, BYTES_PER_RECORD, |out, service, bytes, index| {
        let (parts, known) = log_record(bytes)?;
        file_record(out, service, &parts, known, index);
        Some(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_logs, decode_traces};
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message;
    use toctou_schema::Event;

    /// The requests of the repository's test data, in protobuf: the wire reader makes
    /// exactly the events, ignores and rejections the transforms make of the full request.
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
            assert_eq!(traces(&raw).expect("well formed"), decode_traces(&t));
            spans += decode_traces(&t).item_count();
            let raw = l.encode_to_vec();
            assert_eq!(logs(&raw).expect("well formed"), decode_logs(&l));
        }
        assert!(spans > 20);
    }

    #[test]
    fn unread_attributes_are_skipped_and_the_first_read_one_wins() {
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
        let decoded = traces(&req.encode_to_vec()).unwrap();
        assert_eq!(decoded, decode_traces(&req));
        let Event::Span(s) = &decoded.events[0] else {
            panic!("a span event")
        };
        assert_eq!((s.service.as_str(), s.resource.as_str()), ("svc", "a/1"));
        assert_eq!((s.start_ns, s.end_ns), (5, 6));
    }

    /// The value of an encoded `KeyValue` as the wire reader reads it.
    fn value_of(raw: &[u8]) -> Option<Option<Attr<'_>>> {
        AttributeFields::read(raw)?.value()
    }

    #[test]
    fn short_strings_read_as_the_field_loop_reads_them() {
        let long = "x".repeat(200);
        let mut long_value = vec![0x0A, 0xC8, 0x01];
        long_value.extend_from_slice(long.as_bytes());
        let cases: [(&[u8], Read<Option<Attr>>); 7] = [
            (b"\x0A\x03v-7", Some(Some(Attr::Str("v-7")))),
            (b"\x0A\x00", Some(Some(Attr::Str("")))),
            (&long_value, Some(Some(Attr::Str(&long)))),
            // Not UTF-8: prost's to refuse.
            (b"\x0A\x02\xFF\xFE", None),
            // A second value, a repeated string, a truncated one: none is a plain scalar.
            (b"\x0A\x01a\x10\x01", None),
            (b"\x0A\x01a\x0A\x01b", None),
            (b"\x0A\x02a", None),
        ];
        for (bytes, expected) in cases {
            assert_eq!(scalar_value(bytes), expected, "{bytes:?}");
        }
    }

    #[test]
    fn scalar_attributes_read_as_prost_decodes_them_and_the_rest_is_left_to_it() {
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
            let full = KeyValue::decode(raw.as_slice()).unwrap();
            let expected = full.value.as_ref().and_then(|v| v.value.as_ref());
            assert_eq!(value_of(&raw), Some(expected.map(Attr::of)));
        }
        // No value, or an empty AnyValue: absent, as `Known::collect` takes it.
        assert_eq!(value_of(&kv(None).encode_to_vec()), Some(None));
        let mut no_value = kv(None);
        no_value.value = None;
        assert_eq!(value_of(&no_value.encode_to_vec()), Some(None));
        // An array in an attribute toctou reads: the whole request goes to prost, and the
        // transforms refuse the span for it.
        let array = Value::ArrayValue(ArrayValue {
            values: vec![AnyValue {
                value: Some(Value::IntValue(1)),
            }],
        });
        assert_eq!(value_of(&kv(Some(array.clone())).encode_to_vec()), None);
        let mut attributes = vec![
            KeyValue {
                key: c::PHASE.into(),
                key_strindex: 0,
                value: Some(AnyValue {
                    value: Some(Value::StringValue("check".into())),
                }),
            },
            kv(Some(array)),
        ];
        let req = |attributes: Vec<KeyValue>| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        attributes,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert!(traces(&req(attributes.clone()).encode_to_vec()).is_none());
        assert_eq!(decode_traces(&req(attributes.clone())).rejected.len(), 1);
        // The same array under a key toctou does not read is skipped unread.
        attributes[1].key = "app.tags".into();
        assert!(traces(&req(attributes).encode_to_vec()).is_some());
    }

    #[test]
    fn the_plain_layout_reads_as_the_field_loop_does() {
        let kv = |key: String, value: Option<Value>| {
            KeyValue {
                key,
                key_strindex: 0,
                value: value.map(|v| AnyValue { value: Some(v) }),
            }
            .encode_to_vec()
        };
        let plain = [
            kv(c::PHASE.into(), Some(Value::StringValue("check".into()))),
            kv("k".into(), Some(Value::IntValue(-1))),
            kv("k".into(), None),
        ];
        let other = [
            kv("k".repeat(200), Some(Value::StringValue("v".into()))),
            kv("k".into(), Some(Value::StringValue("v".repeat(200)))),
            // No key field (prost writes none for ""), the key twice, a key_strindex, a value
            // before its key.
            kv(String::new(), Some(Value::BoolValue(true))),
            [kv("a".into(), None), kv("b".into(), None)].concat(),
            [kv("a".into(), None), vec![0x18, 0x05]].concat(),
            [vec![0x12, 0x02, 0x18, 0x01], kv("a".into(), None)].concat(),
        ];
        let fields = |p: AttributeFields<'_>| {
            (
                p.key.to_vec(),
                p.keys,
                p.value.map(<[u8]>::to_vec),
                p.values,
                p.odd,
            )
        };
        for raw in &plain {
            let fast = AttributeFields::read_plain(raw).expect("the plain layout");
            assert_eq!(
                fields(fast),
                fields(AttributeFields::read_any(raw).unwrap())
            );
        }
        for raw in &other {
            assert!(AttributeFields::read_plain(raw).is_none(), "{raw:?}");
            assert!(AttributeFields::read(raw).is_some());
        }
    }

    #[test]
    fn a_resource_after_its_spans_and_repeated_statuses_read_as_prost_merges_them() {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            key_strindex: 0,
            value: Some(AnyValue {
                value: Some(Value::StringValue(v.into())),
            }),
        };
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes: vec![kv(c::PHASE, "use"), kv(c::RESOURCE, "r")],
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Default::default()
        };
        let scope = ScopeSpans {
            spans: vec![span],
            ..Default::default()
        };
        // ResourceSpans written by hand: the scope first, then two resource fields (prost
        // merges them: the first service.name decides).
        let mut rs = Vec::new();
        prost::encoding::message::encode(2, &scope, &mut rs);
        for name in ["late-svc", "other"] {
            let r = Resource {
                attributes: vec![kv(c::SERVICE_NAME, name)],
                ..Default::default()
            };
            prost::encoding::message::encode(1, &r, &mut rs);
        }
        let mut raw = Vec::new();
        prost::encoding::bytes::encode(1, &rs, &mut raw);
        // A second status field without a code keeps the first one's code.
        let full = ExportTraceServiceRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(traces(&raw).unwrap(), decode_traces(&full));
        let Event::Span(s) = &traces(&raw).unwrap().events[0] else {
            panic!("a span event")
        };
        assert_eq!(s.service, "late-svc");
        assert_eq!(s.outcome, toctou_schema::UseOutcome::Error);

        let logs_req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: None,
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        observed_time_unix_nano: 9,
                        attributes: vec![kv(c::AUDIT_ACTION, "update"), kv(c::RESOURCE, "r")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let raw = logs_req.encode_to_vec();
        assert_eq!(logs(&raw).unwrap(), decode_logs(&logs_req));
        assert_eq!(logs(&raw).unwrap().events[0].event_time_ns(), 9);
    }

    #[test]
    fn text_is_read_as_str_from_utf8_reads_it() {
        let cases: [&[u8]; 7] = [
            b"",
            b"toctou.resource",
            "inventory/Zürich-7".as_bytes(),
            "注文/000123".as_bytes(),
            b"ok\xFF",
            b"\xC3",
            b"\xED\xA0\x80 surrogate",
        ];
        for bytes in cases {
            assert_eq!(utf8(bytes), std::str::from_utf8(bytes).ok(), "{bytes:?}");
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
        assert_eq!(traces(&[]), Some(Decoded::default()));
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
        let decoded = traces(&raw).expect("unread fields are skipped, not descended");
        assert_eq!(decoded.events.len(), 1);
        // The same depth in toctou.resource is read, so prost decodes it, up to its limit.
        let raw = request(deep_attribute(c::RESOURCE, 100_000));
        assert!(traces(&raw).is_none());
        let err = ExportTraceServiceRequest::decode(raw.as_slice()).unwrap_err();
        assert!(err.to_string().contains("recursion limit reached"), "{err}");
    }
}
