//! Decode budgets: how much memory decoding one request may allocate, and the checks that
//! keep every decoder under it before the memory exists.
//!
//! Why: the body limits (`body.rs`) bound the bytes a request brings, not what decoding
//! them allocates. A 2-byte empty span (`0x12 0x00`) becomes a ~250-byte prost `Span` (and
//! twice that in a growing `Vec`), a 3-byte `{},` a struct of the JSON mirror and then of
//! prost: issue 30 measured 6.57 GB of RSS for one 20 MiB body of empty spans through the
//! prost fallback, 4.0 GB for 6.9M `{}` spans in OTLP JSON, 5.4 GB for a Kubernetes
//! `EventList` of 6.9M `{}` items.
//!
//! The budget of a request is [`BUDGET_FACTOR`] times its decompressed size (at least
//! [`BUDGET_FLOOR`]), so with `--max-request-bytes` B and S request slots decoding holds at
//! most about `BUDGET_FACTOR * B` per request and `S` times that in total. Each path keeps
//! to it in its own way:
//! - the zero-copy wire reader (`wire.rs`) allocates only the events and rejections of
//!   toctou spans and records, each of which takes tens of bytes on the wire: within the
//!   budget by construction (1M empty spans cost it +12 MB);
//! - prost cannot be stopped while it decodes, so [`check_traces`] and [`check_logs`] walk
//!   the message with the OTLP schema first and add up what prost will allocate (every
//!   repeated message at twice its struct size, for `Vec` growth, every string and bytes
//!   field at its length); a request over budget is refused before prost runs;
//! - the serde paths (OTLP JSON, the Kubernetes audit webhook) charge every element of a
//!   sequence to a [`Meter`] as they deserialize it, and fail at the first element past the
//!   budget, so `[{},{},...]` is refused before millions of structs exist.
//!
//! A request over budget is refused as too large (413, gRPC `RESOURCE_EXHAUSTED`) and
//! counted under `toctou_rejected_total{reason="too_large"}`.

use crate::error::DecodeError;
use opentelemetry_proto::tonic::common::v1 as pc;
use opentelemetry_proto::tonic::logs::v1 as pl;
use opentelemetry_proto::tonic::trace::v1 as pt;
use std::cell::Cell;
use std::mem::size_of;

/// Decoding may allocate this many times the decompressed body. Legitimate OTLP requests
/// cost a few times their size in prost types (see the tests), so 16 leaves room for
/// unusual but honest requests while bounding the attacks at a small multiple of
/// `--max-request-bytes`.
pub const BUDGET_FACTOR: usize = 16;

/// The budget of a small request: a few hundred bytes of JSON may legitimately hold a
/// handful of structs larger than sixteen times their text.
pub const BUDGET_FLOOR: usize = 1024 * 1024;

/// The allocation budget of decoding an input of `len` bytes.
pub fn for_input(len: usize) -> usize {
    len.saturating_mul(BUDGET_FACTOR).max(BUDGET_FLOOR)
}

/// Refuses an OTLP/protobuf traces request whose prost decoding would pass its budget.
pub fn check_traces(raw: &[u8]) -> Result<(), DecodeError> {
    check(raw, Msg::TracesRequest)
}

/// Refuses an OTLP/protobuf logs request whose prost decoding would pass its budget.
pub fn check_logs(raw: &[u8]) -> Result<(), DecodeError> {
    check(raw, Msg::LogsRequest)
}

fn check(raw: &[u8], root: Msg) -> Result<(), DecodeError> {
    let budget = for_input(raw.len());
    if protobuf_cost(raw, root, budget) > budget {
        return Err(DecodeError::OverBudget { budget });
    }
    Ok(())
}

/// The OTLP messages prost builds for traces and logs.
#[derive(Clone, Copy, Debug)]
enum Msg {
    TracesRequest,
    LogsRequest,
    ResourceSpans,
    ResourceLogs,
    ScopeSpans,
    ScopeLogs,
    Span,
    SpanEvent,
    Link,
    Status,
    LogRecord,
    Resource,
    EntityRef,
    Scope,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

/// What prost does with a length-delimited field.
enum Field {
    /// A message held inline (`Option<T>` or a oneof): no allocation of its own.
    Inline(Msg),
    /// One more element of a `Vec<T>` of messages, of this struct size.
    Element(Msg, usize),
    /// A string or bytes field: a copy of its bytes.
    Bytes,
    /// One more element of a `Vec<String>`.
    StringElement,
}

/// The length-delimited fields of each message (field numbers of opentelemetry-proto);
/// `None` for scalars and unknown fields, which prost skips without allocating.
fn field(msg: Msg, number: u64) -> Option<Field> {
    use Field::*;
    use Msg::*;
    let kv = || Element(KeyValue, size_of::<pc::KeyValue>());
    Some(match (msg, number) {
        (TracesRequest, 1) => Element(ResourceSpans, size_of::<pt::ResourceSpans>()),
        (LogsRequest, 1) => Element(ResourceLogs, size_of::<pl::ResourceLogs>()),
        (ResourceSpans | ResourceLogs, 1) => Inline(Resource),
        (ResourceSpans, 2) => Element(ScopeSpans, size_of::<pt::ScopeSpans>()),
        (ResourceLogs, 2) => Element(ScopeLogs, size_of::<pl::ScopeLogs>()),
        (ResourceSpans | ResourceLogs | ScopeSpans | ScopeLogs, 3) => Bytes,
        (ScopeSpans | ScopeLogs, 1) => Inline(Scope),
        (ScopeSpans, 2) => Element(Span, size_of::<pt::Span>()),
        (ScopeLogs, 2) => Element(LogRecord, size_of::<pl::LogRecord>()),
        (Span, 1..=5) => Bytes,
        (Span, 9) => kv(),
        (Span, 11) => Element(SpanEvent, size_of::<pt::span::Event>()),
        (Span, 13) => Element(Link, size_of::<pt::span::Link>()),
        (Span, 15) => Inline(Status),
        (SpanEvent, 2) => Bytes,
        (SpanEvent, 3) => kv(),
        (Link, 1..=3) => Bytes,
        (Link, 4) => kv(),
        (Status, 2) => Bytes,
        (LogRecord, 3 | 9 | 10 | 12) => Bytes,
        (LogRecord, 5) => Inline(AnyValue),
        (LogRecord, 6) => kv(),
        (Resource, 1) => kv(),
        (Resource, 3) => Element(EntityRef, size_of::<pc::EntityRef>()),
        (EntityRef, 1 | 2) => Bytes,
        (EntityRef, 3 | 4) => StringElement,
        (Scope, 1 | 2) => Bytes,
        (Scope, 3) => kv(),
        (KeyValue, 1) => Bytes,
        (KeyValue, 2) => Inline(AnyValue),
        (AnyValue, 1 | 7) => Bytes,
        (AnyValue, 5) => Inline(ArrayValue),
        (AnyValue, 6) => Inline(KeyValueList),
        (ArrayValue, 1) => Element(AnyValue, size_of::<pc::AnyValue>()),
        (KeyValueList, 1) => kv(),
        _ => return None,
    })
}

/// prost's nesting limit: deeper messages are an error before they allocate more.
const MAX_DEPTH: usize = 100;

/// What prost allocates decoding `raw` as `root`, counted until it passes `stop` (then
/// some larger number) or the input ends. Malformed input is counted up to the point where
/// prost too stops, which is what it allocates before its error.
fn protobuf_cost(raw: &[u8], root: Msg, stop: usize) -> usize {
    let mut cost = 0;
    walk(raw, root, 0, &mut cost, stop);
    cost
}

/// Adds the cost of one message; false once the cost passed `stop` or the input is
/// malformed: the walk ends there.
fn walk(mut buf: &[u8], msg: Msg, depth: usize, cost: &mut usize, stop: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    while !buf.is_empty() {
        let Some(key) = varint(&mut buf) else {
            return false;
        };
        let ok = match key & 7 {
            0 => varint(&mut buf).is_some(),
            1 => skip(&mut buf, 8),
            5 => skip(&mut buf, 4),
            2 => {
                let Some(len) = varint(&mut buf).and_then(|n| usize::try_from(n).ok()) else {
                    return false;
                };
                if len > buf.len() {
                    return false;
                }
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                match field(msg, key >> 3) {
                    None => true,
                    Some(Field::Bytes) => {
                        *cost += len;
                        true
                    }
                    Some(Field::StringElement) => {
                        *cost += 2 * size_of::<String>() + len;
                        true
                    }
                    Some(Field::Inline(child)) => walk(bytes, child, depth + 1, cost, stop),
                    Some(Field::Element(child, size)) => {
                        *cost += 2 * size;
                        walk(bytes, child, depth + 1, cost, stop)
                    }
                }
            }
            _ => false,
        };
        if !ok || *cost > stop {
            return false;
        }
    }
    true
}

fn skip(buf: &mut &[u8], n: usize) -> bool {
    match buf.get(n..) {
        Some(rest) => {
            *buf = rest;
            true
        }
        None => false,
    }
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7F) << (7 * i);
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

thread_local! {
    /// Bytes the serde decoding running on this thread may still allocate; `None` when no
    /// [`Meter`] is open (then nothing is counted).
    static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
    static EXCEEDED: Cell<bool> = const { Cell::new(false) };
    /// The budget of the innermost open meter, for its error.
    static BUDGET: Cell<usize> = const { Cell::new(0) };
}

/// The budget of one serde decoding on this thread, open while the value lives. Sequence
/// elements are charged through [`charge`]; [`json_error`] tells a serde error that came
/// from the budget from one that came from the input.
pub(crate) struct Meter {
    budget: usize,
    outer: Option<usize>,
    outer_budget: usize,
}

impl Meter {
    /// Opens the budget for decoding an input of `len` bytes. A meter opened inside another
    /// (a document of a JSON-lines body) keeps to what is left of the outer one.
    pub fn open(len: usize) -> Meter {
        let budget = for_input(len);
        let outer = LEFT.with(Cell::get);
        let own = outer.map_or(budget, |o| o.min(budget));
        LEFT.with(|l| l.set(Some(own)));
        EXCEEDED.with(|e| e.set(false));
        let outer_budget = BUDGET.with(|b| b.replace(own));
        Meter {
            budget: own,
            outer,
            outer_budget,
        }
    }

    /// Whether the budget ran out (the serde error that followed says nothing useful).
    pub fn refused(&self) -> bool {
        EXCEEDED.with(Cell::get)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let left = LEFT.with(Cell::get).unwrap_or(0);
        let used = self.budget.saturating_sub(left);
        // What this document used is gone from the outer budget too.
        LEFT.with(|l| l.set(self.outer.map(|o| o.saturating_sub(used))));
        BUDGET.with(|b| b.set(self.outer_budget));
    }
}

/// `e` from a serde parse on this thread: the open meter's [`DecodeError::OverBudget`]
/// when the parse stopped because the budget ran out, else the parser's error.
pub(crate) fn json_error(e: serde_json::Error) -> DecodeError {
    if EXCEEDED.with(Cell::get) {
        DecodeError::OverBudget {
            budget: BUDGET.with(Cell::get),
        }
    } else {
        DecodeError::Json(e)
    }
}

/// Charges `bytes` to the open meter; `false` once it runs out.
pub(crate) fn charge(bytes: usize) -> bool {
    LEFT.with(|l| match l.get() {
        None => true,
        Some(left) if left >= bytes => {
            l.set(Some(left - bytes));
            true
        }
        Some(_) => {
            l.set(Some(0));
            EXCEEDED.with(|e| e.set(true));
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    /// One span with an array `toctou.phase` (which the wire reader leaves to prost),
    /// then `n` empty spans: the attack of issue 30.
    fn empty_spans(n: usize) -> Vec<u8> {
        let array = pc::AnyValue {
            value: Some(pc::any_value::Value::ArrayValue(pc::ArrayValue {
                values: vec![],
            })),
        };
        let span = pt::Span {
            attributes: vec![pc::KeyValue {
                key: "toctou.phase".into(),
                value: Some(array),
                ..Default::default()
            }],
            ..Default::default()
        };
        crate::fuzzing::then_empty_spans(span, n)
    }

    #[test]
    fn the_estimate_covers_what_prost_builds() {
        let raw = empty_spans(1000);
        let req = ExportTraceServiceRequest::decode(raw.as_slice()).unwrap();
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 1001);
        let cost = protobuf_cost(&raw, Msg::TracesRequest, usize::MAX);
        // At least the structs prost holds, at most twice that (Vec growth) and the strings.
        assert!(cost >= spans.capacity() * size_of::<pt::Span>(), "{cost}");
        assert!(cost <= 2 * 1001 * size_of::<pt::Span>() + 1000, "{cost}");
    }

    #[test]
    fn empty_spans_past_the_budget_are_refused_before_prost() {
        // 1 MiB of empty spans: over a hundred times its size in prost types.
        let raw = empty_spans(512 * 1024);
        let err = check_traces(&raw).unwrap_err();
        assert!(matches!(err, DecodeError::OverBudget { .. }), "{err}");
        assert_eq!(err.reason(), crate::decoded::RejectReason::TooLarge);
        // A few fit in the floor.
        check_traces(&empty_spans(100)).unwrap();
    }

    #[test]
    fn a_meter_refuses_past_its_budget_and_gives_back_to_the_outer_one() {
        {
            let outer = Meter::open(0);
            assert!(charge(BUDGET_FLOOR / 2));
            {
                let inner = Meter::open(0);
                // The inner budget is what is left of the outer one.
                assert!(!charge(BUDGET_FLOOR / 2 + 1));
                assert!(inner.refused());
            }
            assert!(!charge(1), "the inner used up the outer");
            assert!(outer.refused());
        }
        // Without a meter nothing is counted.
        assert!(charge(usize::MAX));
    }
}
