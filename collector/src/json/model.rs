//! How the OTLP JSON messages for traces and logs are read straight into the prost types, so
//! that JSON input goes through the same extraction as protobuf.
//!
//! Each message has a serde *remote* definition (`SpanDef` for `pt::Span`, ...): serde's
//! derive reads the JSON into the prost struct itself, with no mirror struct to convert
//! (benches/otlp_json.rs measured the mirror and its conversion at a third of the time and
//! half the peak heap of a legitimate body). The definitions say what the generated serde
//! of `opentelemetry-proto` does not (BENCHMARKS.md, "OTLP JSON reader"): the snake_case
//! proto names as aliases (proto3 JSON parsers must take both; that reader drops them
//! silently), `null` for any default, enums by name, and every repeated message charged to
//! the decode budget as it is read (`metered`).
//!
//! Field names are lowerCamelCase as the OTLP JSON mapping writes them. Unknown fields are
//! ignored, as the OTLP spec requires of receivers, so newer senders still get through.

use super::scalar::{
    base64_bytes, f64_lenient, hex_bytes, i64_lenient, metered, null_default, severity_number,
    span_kind, status_code, u32_lenient, u64_lenient,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as pc;
use opentelemetry_proto::tonic::logs::v1 as pl;
use opentelemetry_proto::tonic::resource::v1 as pr;
use opentelemetry_proto::tonic::trace::v1 as pt;
use serde::{Deserialize, Deserializer};

/// A prost message with a JSON reading (its remote definition below).
pub(crate) trait Message: Sized {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

/// A message as a `Deserialize` value, so that `Option` and [`metered`] can hold it.
/// Transparent, so that a `Vec<De<T>>` becomes a `Vec<T>` in place.
#[repr(transparent)]
struct De<T>(T);

impl<'de, T: Message> Deserialize<'de> for De<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::read(d).map(De)
    }
}

/// A repeated message field: `null` reads as empty, every element charged to the budget.
fn messages<'de, D: Deserializer<'de>, T: Message>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(metered::<D, De<T>>(d)?.into_iter().map(|m| m.0).collect())
}

/// A singular message field: `null` reads as absent.
fn message<'de, D: Deserializer<'de>, T: Message>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<De<T>>::deserialize(d)?.map(|m| m.0))
}

macro_rules! messages {
    ($($def:ident => $ty:ty),* $(,)?) => {$(
        impl Message for $ty {
            fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $def::deserialize(d)
            }
        }
    )*};
}

messages! {
    TracesRequestDef => ExportTraceServiceRequest,
    LogsRequestDef => ExportLogsServiceRequest,
    ResourceSpansDef => pt::ResourceSpans,
    ResourceLogsDef => pl::ResourceLogs,
    ResourceDef => pr::Resource,
    ScopeDef => pc::InstrumentationScope,
    ScopeSpansDef => pt::ScopeSpans,
    ScopeLogsDef => pl::ScopeLogs,
    SpanDef => pt::Span,
    SpanEventDef => pt::span::Event,
    LinkDef => pt::span::Link,
    StatusDef => pt::Status,
    LogRecordDef => pl::LogRecord,
    KeyValueDef => pc::KeyValue,
    ArrayValueDef => pc::ArrayValue,
    KeyValueListDef => pc::KeyValueList,
}

/// An OTLP/JSON `ExportTraceServiceRequest`.
pub(crate) fn traces<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<ExportTraceServiceRequest, D::Error> {
    ExportTraceServiceRequest::read(d)
}

/// An OTLP/JSON `ExportLogsServiceRequest`.
pub(crate) fn logs<'de, D: Deserializer<'de>>(d: D) -> Result<ExportLogsServiceRequest, D::Error> {
    ExportLogsServiceRequest::read(d)
}

#[derive(Deserialize)]
#[serde(remote = "ExportTraceServiceRequest", rename_all = "camelCase")]
struct TracesRequestDef {
    #[serde(default, alias = "resource_spans", deserialize_with = "messages")]
    resource_spans: Vec<pt::ResourceSpans>,
}

#[derive(Deserialize)]
#[serde(remote = "ExportLogsServiceRequest", rename_all = "camelCase")]
struct LogsRequestDef {
    #[serde(default, alias = "resource_logs", deserialize_with = "messages")]
    resource_logs: Vec<pl::ResourceLogs>,
}

#[derive(Deserialize)]
#[serde(remote = "pt::ResourceSpans", rename_all = "camelCase")]
struct ResourceSpansDef {
    #[serde(default, deserialize_with = "message")]
    resource: Option<pr::Resource>,
    #[serde(default, alias = "scope_spans", deserialize_with = "messages")]
    scope_spans: Vec<pt::ScopeSpans>,
    #[serde(default, alias = "schema_url", deserialize_with = "null_default")]
    schema_url: String,
}

#[derive(Deserialize)]
#[serde(remote = "pl::ResourceLogs", rename_all = "camelCase")]
struct ResourceLogsDef {
    #[serde(default, deserialize_with = "message")]
    resource: Option<pr::Resource>,
    #[serde(default, alias = "scope_logs", deserialize_with = "messages")]
    scope_logs: Vec<pl::ScopeLogs>,
    #[serde(default, alias = "schema_url", deserialize_with = "null_default")]
    schema_url: String,
}

#[derive(Deserialize)]
#[serde(remote = "pr::Resource", rename_all = "camelCase")]
struct ResourceDef {
    #[serde(default, deserialize_with = "messages")]
    attributes: Vec<pc::KeyValue>,
    #[serde(
        default,
        alias = "dropped_attributes_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
    /// Not read: toctou takes nothing from entities.
    #[serde(skip)]
    entity_refs: Vec<pc::EntityRef>,
}

#[derive(Deserialize)]
#[serde(remote = "pc::InstrumentationScope", rename_all = "camelCase")]
struct ScopeDef {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    version: String,
    #[serde(default, deserialize_with = "messages")]
    attributes: Vec<pc::KeyValue>,
    #[serde(
        default,
        alias = "dropped_attributes_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
}

#[derive(Deserialize)]
#[serde(remote = "pt::ScopeSpans", rename_all = "camelCase")]
struct ScopeSpansDef {
    #[serde(default, deserialize_with = "message")]
    scope: Option<pc::InstrumentationScope>,
    #[serde(default, deserialize_with = "messages")]
    spans: Vec<pt::Span>,
    #[serde(default, alias = "schema_url", deserialize_with = "null_default")]
    schema_url: String,
}

#[derive(Deserialize)]
#[serde(remote = "pl::ScopeLogs", rename_all = "camelCase")]
struct ScopeLogsDef {
    #[serde(default, deserialize_with = "message")]
    scope: Option<pc::InstrumentationScope>,
    #[serde(default, alias = "log_records", deserialize_with = "messages")]
    log_records: Vec<pl::LogRecord>,
    #[serde(default, alias = "schema_url", deserialize_with = "null_default")]
    schema_url: String,
}

#[derive(Deserialize)]
#[serde(remote = "pt::Span", rename_all = "camelCase")]
struct SpanDef {
    #[serde(default, alias = "trace_id", deserialize_with = "hex_bytes")]
    trace_id: Vec<u8>,
    #[serde(default, alias = "span_id", deserialize_with = "hex_bytes")]
    span_id: Vec<u8>,
    #[serde(default, alias = "trace_state", deserialize_with = "null_default")]
    trace_state: String,
    #[serde(default, alias = "parent_span_id", deserialize_with = "hex_bytes")]
    parent_span_id: Vec<u8>,
    #[serde(default, deserialize_with = "u32_lenient")]
    flags: u32,
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "span_kind")]
    kind: i32,
    #[serde(
        default,
        alias = "start_time_unix_nano",
        deserialize_with = "u64_lenient"
    )]
    start_time_unix_nano: u64,
    #[serde(
        default,
        alias = "end_time_unix_nano",
        deserialize_with = "u64_lenient"
    )]
    end_time_unix_nano: u64,
    #[serde(default, deserialize_with = "messages")]
    attributes: Vec<pc::KeyValue>,
    #[serde(
        default,
        alias = "dropped_attributes_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
    #[serde(default, deserialize_with = "messages")]
    events: Vec<pt::span::Event>,
    #[serde(
        default,
        alias = "dropped_events_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_events_count: u32,
    #[serde(default, deserialize_with = "messages")]
    links: Vec<pt::span::Link>,
    #[serde(
        default,
        alias = "dropped_links_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_links_count: u32,
    #[serde(default, deserialize_with = "message")]
    status: Option<pt::Status>,
}

#[derive(Deserialize)]
#[serde(remote = "pt::span::Event", rename_all = "camelCase")]
struct SpanEventDef {
    #[serde(default, alias = "time_unix_nano", deserialize_with = "u64_lenient")]
    time_unix_nano: u64,
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "messages")]
    attributes: Vec<pc::KeyValue>,
    #[serde(
        default,
        alias = "dropped_attributes_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
}

#[derive(Deserialize)]
#[serde(remote = "pt::span::Link", rename_all = "camelCase")]
struct LinkDef {
    #[serde(default, alias = "trace_id", deserialize_with = "hex_bytes")]
    trace_id: Vec<u8>,
    #[serde(default, alias = "span_id", deserialize_with = "hex_bytes")]
    span_id: Vec<u8>,
    #[serde(default, alias = "trace_state", deserialize_with = "null_default")]
    trace_state: String,
    #[serde(default, deserialize_with = "messages")]
    attributes: Vec<pc::KeyValue>,
    #[serde(
        default,
        alias = "dropped_attributes_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
    #[serde(default, deserialize_with = "u32_lenient")]
    flags: u32,
}

#[derive(Deserialize)]
#[serde(remote = "pt::Status", rename_all = "camelCase")]
struct StatusDef {
    #[serde(default, deserialize_with = "null_default")]
    message: String,
    #[serde(default, deserialize_with = "status_code")]
    code: i32,
}

#[derive(Deserialize)]
#[serde(remote = "pl::LogRecord", rename_all = "camelCase")]
struct LogRecordDef {
    #[serde(default, alias = "time_unix_nano", deserialize_with = "u64_lenient")]
    time_unix_nano: u64,
    #[serde(
        default,
        alias = "observed_time_unix_nano",
        deserialize_with = "u64_lenient"
    )]
    observed_time_unix_nano: u64,
    #[serde(
        default,
        alias = "severity_number",
        deserialize_with = "severity_number"
    )]
    severity_number: i32,
    #[serde(default, alias = "severity_text", deserialize_with = "null_default")]
    severity_text: String,
    #[serde(default, deserialize_with = "message")]
    body: Option<pc::AnyValue>,
    #[serde(default, deserialize_with = "messages")]
    attributes: Vec<pc::KeyValue>,
    #[serde(
        default,
        alias = "dropped_attributes_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
    #[serde(default, deserialize_with = "u32_lenient")]
    flags: u32,
    #[serde(default, alias = "trace_id", deserialize_with = "hex_bytes")]
    trace_id: Vec<u8>,
    #[serde(default, alias = "span_id", deserialize_with = "hex_bytes")]
    span_id: Vec<u8>,
    #[serde(default, alias = "event_name", deserialize_with = "null_default")]
    event_name: String,
}

#[derive(Deserialize)]
#[serde(remote = "pc::KeyValue")]
struct KeyValueDef {
    #[serde(default, deserialize_with = "null_default")]
    key: String,
    #[serde(default, deserialize_with = "message")]
    value: Option<pc::AnyValue>,
    /// The profiles signal's string-table index; not in traces or logs.
    #[serde(skip)]
    key_strindex: i32,
}

#[derive(Deserialize)]
#[serde(remote = "pc::ArrayValue")]
struct ArrayValueDef {
    #[serde(default, deserialize_with = "messages")]
    values: Vec<pc::AnyValue>,
}

#[derive(Deserialize)]
#[serde(remote = "pc::KeyValueList")]
struct KeyValueListDef {
    #[serde(default, deserialize_with = "messages")]
    values: Vec<pc::KeyValue>,
}

/// `AnyValue` is a oneof: at most one of these is set. More than one is not valid OTLP; the
/// first in declaration order wins rather than failing the request over it. (A oneof has no
/// remote definition: its fields are read here and the one set becomes the value.)
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AnyValueFields {
    #[serde(default, alias = "string_value")]
    string_value: Option<String>,
    #[serde(default, alias = "bool_value")]
    bool_value: Option<bool>,
    #[serde(default, alias = "int_value", deserialize_with = "some_i64")]
    int_value: Option<i64>,
    #[serde(default, alias = "double_value", deserialize_with = "some_f64")]
    double_value: Option<f64>,
    #[serde(default, alias = "array_value", deserialize_with = "message")]
    array_value: Option<pc::ArrayValue>,
    #[serde(default, alias = "kvlist_value", deserialize_with = "message")]
    kvlist_value: Option<pc::KeyValueList>,
    #[serde(default, alias = "bytes_value", deserialize_with = "some_bytes")]
    bytes_value: Option<Vec<u8>>,
}

impl Message for pc::AnyValue {
    fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use pc::any_value::Value;
        let v = AnyValueFields::deserialize(d)?;
        let value = if let Some(s) = v.string_value {
            Some(Value::StringValue(s))
        } else if let Some(b) = v.bool_value {
            Some(Value::BoolValue(b))
        } else if let Some(i) = v.int_value {
            Some(Value::IntValue(i))
        } else if let Some(d) = v.double_value {
            Some(Value::DoubleValue(d))
        } else if let Some(a) = v.array_value {
            Some(Value::ArrayValue(a))
        } else if let Some(kvs) = v.kvlist_value {
            Some(Value::KvlistValue(kvs))
        } else {
            v.bytes_value.map(Value::BytesValue)
        };
        Ok(pc::AnyValue { value })
    }
}

fn some_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    i64_lenient(d).map(Some)
}

fn some_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    f64_lenient(d).map(Some)
}

fn some_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    base64_bytes(d).map(Some)
}
