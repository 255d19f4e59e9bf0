//! Serde mirrors of the OTLP JSON messages for traces and logs, and their conversion into the
//! prost types, so that JSON input goes through the same extraction as protobuf.
//!
//! Field names are lowerCamelCase as the OTLP JSON mapping writes them; the snake_case proto
//! names are accepted too (proto3 JSON parsers must take both). Unknown fields are ignored,
//! as the OTLP spec requires of receivers, so newer senders still get through.

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
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TracesRequest {
    #[serde(default, alias = "resource_spans", deserialize_with = "metered")]
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LogsRequest {
    #[serde(default, alias = "resource_logs", deserialize_with = "metered")]
    resource_logs: Vec<ResourceLogs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans {
    #[serde(default)]
    resource: Option<Resource>,
    #[serde(default, alias = "scope_spans", deserialize_with = "metered")]
    scope_spans: Vec<ScopeSpans>,
    #[serde(default, alias = "schema_url", deserialize_with = "null_default")]
    schema_url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ResourceLogs {
    #[serde(default)]
    resource: Option<Resource>,
    #[serde(default, alias = "scope_logs", deserialize_with = "metered")]
    scope_logs: Vec<ScopeLogs>,
    #[serde(default, alias = "schema_url", deserialize_with = "null_default")]
    schema_url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Resource {
    #[serde(default, deserialize_with = "metered")]
    attributes: Vec<KeyValue>,
    #[serde(
        default,
        alias = "dropped_attributes_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Scope {
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "null_default")]
    version: String,
    #[serde(default, deserialize_with = "metered")]
    attributes: Vec<KeyValue>,
    #[serde(
        default,
        alias = "dropped_attributes_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ScopeSpans {
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default, deserialize_with = "metered")]
    spans: Vec<Span>,
    #[serde(default, alias = "schema_url", deserialize_with = "null_default")]
    schema_url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ScopeLogs {
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default, alias = "log_records", deserialize_with = "metered")]
    log_records: Vec<LogRecord>,
    #[serde(default, alias = "schema_url", deserialize_with = "null_default")]
    schema_url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Span {
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
    #[serde(default, deserialize_with = "metered")]
    attributes: Vec<KeyValue>,
    #[serde(
        default,
        alias = "dropped_attributes_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
    #[serde(default, deserialize_with = "metered")]
    events: Vec<SpanEvent>,
    #[serde(
        default,
        alias = "dropped_events_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_events_count: u32,
    #[serde(default, deserialize_with = "metered")]
    links: Vec<Link>,
    #[serde(
        default,
        alias = "dropped_links_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_links_count: u32,
    #[serde(default)]
    status: Option<Status>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SpanEvent {
    #[serde(default, alias = "time_unix_nano", deserialize_with = "u64_lenient")]
    time_unix_nano: u64,
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default, deserialize_with = "metered")]
    attributes: Vec<KeyValue>,
    #[serde(
        default,
        alias = "dropped_attributes_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Link {
    #[serde(default, alias = "trace_id", deserialize_with = "hex_bytes")]
    trace_id: Vec<u8>,
    #[serde(default, alias = "span_id", deserialize_with = "hex_bytes")]
    span_id: Vec<u8>,
    #[serde(default, alias = "trace_state", deserialize_with = "null_default")]
    trace_state: String,
    #[serde(default, deserialize_with = "metered")]
    attributes: Vec<KeyValue>,
    #[serde(
        default,
        alias = "dropped_attributes_count",
        deserialize_with = "u32_lenient"
    )]
    dropped_attributes_count: u32,
    #[serde(default, deserialize_with = "u32_lenient")]
    flags: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default, deserialize_with = "null_default")]
    message: String,
    #[serde(default, deserialize_with = "status_code")]
    code: i32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogRecord {
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
    #[serde(default)]
    body: Option<AnyValue>,
    #[serde(default, deserialize_with = "metered")]
    attributes: Vec<KeyValue>,
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

#[derive(Deserialize, Default)]
struct KeyValue {
    #[serde(default, deserialize_with = "null_default")]
    key: String,
    #[serde(default)]
    value: Option<AnyValue>,
}

/// `AnyValue` is a oneof: at most one of these is set. More than one is not valid OTLP; the
/// first in declaration order wins rather than failing the request over it.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AnyValue {
    #[serde(default, alias = "string_value")]
    string_value: Option<String>,
    #[serde(default, alias = "bool_value")]
    bool_value: Option<bool>,
    #[serde(default, alias = "int_value", deserialize_with = "some_i64")]
    int_value: Option<i64>,
    #[serde(default, alias = "double_value", deserialize_with = "some_f64")]
    double_value: Option<f64>,
    #[serde(default, alias = "array_value")]
    array_value: Option<ArrayValue>,
    #[serde(default, alias = "kvlist_value")]
    kvlist_value: Option<KeyValueList>,
    #[serde(default, alias = "bytes_value", deserialize_with = "some_bytes")]
    bytes_value: Option<Vec<u8>>,
}

fn some_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    i64_lenient(d).map(Some)
}

fn some_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    f64_lenient(d).map(Some)
}

fn some_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    base64_bytes(d).map(Some)
}

#[derive(Deserialize, Default)]
struct ArrayValue {
    #[serde(default, deserialize_with = "metered")]
    values: Vec<AnyValue>,
}

#[derive(Deserialize, Default)]
struct KeyValueList {
    #[serde(default, deserialize_with = "metered")]
    values: Vec<KeyValue>,
}

impl From<TracesRequest> for ExportTraceServiceRequest {
    fn from(r: TracesRequest) -> Self {
        ExportTraceServiceRequest {
            resource_spans: r.resource_spans.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<LogsRequest> for ExportLogsServiceRequest {
    fn from(r: LogsRequest) -> Self {
        ExportLogsServiceRequest {
            resource_logs: r.resource_logs.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<ResourceSpans> for pt::ResourceSpans {
    fn from(r: ResourceSpans) -> Self {
        pt::ResourceSpans {
            resource: r.resource.map(Into::into),
            scope_spans: r.scope_spans.into_iter().map(Into::into).collect(),
            schema_url: r.schema_url,
        }
    }
}

impl From<ResourceLogs> for pl::ResourceLogs {
    fn from(r: ResourceLogs) -> Self {
        pl::ResourceLogs {
            resource: r.resource.map(Into::into),
            scope_logs: r.scope_logs.into_iter().map(Into::into).collect(),
            schema_url: r.schema_url,
        }
    }
}

fn key_values(kvs: Vec<KeyValue>) -> Vec<pc::KeyValue> {
    kvs.into_iter().map(Into::into).collect()
}

impl From<Resource> for pr::Resource {
    fn from(r: Resource) -> Self {
        pr::Resource {
            attributes: key_values(r.attributes),
            dropped_attributes_count: r.dropped_attributes_count,
            entity_refs: Vec::new(),
        }
    }
}

impl From<Scope> for pc::InstrumentationScope {
    fn from(s: Scope) -> Self {
        pc::InstrumentationScope {
            name: s.name,
            version: s.version,
            attributes: key_values(s.attributes),
            dropped_attributes_count: s.dropped_attributes_count,
        }
    }
}

impl From<ScopeSpans> for pt::ScopeSpans {
    fn from(s: ScopeSpans) -> Self {
        pt::ScopeSpans {
            scope: s.scope.map(Into::into),
            spans: s.spans.into_iter().map(Into::into).collect(),
            schema_url: s.schema_url,
        }
    }
}

impl From<ScopeLogs> for pl::ScopeLogs {
    fn from(s: ScopeLogs) -> Self {
        pl::ScopeLogs {
            scope: s.scope.map(Into::into),
            log_records: s.log_records.into_iter().map(Into::into).collect(),
            schema_url: s.schema_url,
        }
    }
}

impl From<Span> for pt::Span {
    fn from(s: Span) -> Self {
        pt::Span {
            trace_id: s.trace_id,
            span_id: s.span_id,
            trace_state: s.trace_state,
            parent_span_id: s.parent_span_id,
            flags: s.flags,
            name: s.name,
            kind: s.kind,
            start_time_unix_nano: s.start_time_unix_nano,
            end_time_unix_nano: s.end_time_unix_nano,
            attributes: key_values(s.attributes),
            dropped_attributes_count: s.dropped_attributes_count,
            events: s.events.into_iter().map(Into::into).collect(),
            dropped_events_count: s.dropped_events_count,
            links: s.links.into_iter().map(Into::into).collect(),
            dropped_links_count: s.dropped_links_count,
            status: s.status.map(|st| pt::Status {
                message: st.message,
                code: st.code,
            }),
        }
    }
}

impl From<SpanEvent> for pt::span::Event {
    fn from(e: SpanEvent) -> Self {
        pt::span::Event {
            time_unix_nano: e.time_unix_nano,
            name: e.name,
            attributes: key_values(e.attributes),
            dropped_attributes_count: e.dropped_attributes_count,
        }
    }
}

impl From<Link> for pt::span::Link {
    fn from(l: Link) -> Self {
        pt::span::Link {
            trace_id: l.trace_id,
            span_id: l.span_id,
            trace_state: l.trace_state,
            attributes: key_values(l.attributes),
            dropped_attributes_count: l.dropped_attributes_count,
            flags: l.flags,
        }
    }
}

impl From<LogRecord> for pl::LogRecord {
    fn from(r: LogRecord) -> Self {
        pl::LogRecord {
            time_unix_nano: r.time_unix_nano,
            observed_time_unix_nano: r.observed_time_unix_nano,
            severity_number: r.severity_number,
            severity_text: r.severity_text,
            body: r.body.map(Into::into),
            attributes: key_values(r.attributes),
            dropped_attributes_count: r.dropped_attributes_count,
            flags: r.flags,
            trace_id: r.trace_id,
            span_id: r.span_id,
            event_name: r.event_name,
        }
    }
}

impl From<KeyValue> for pc::KeyValue {
    fn from(kv: KeyValue) -> Self {
        pc::KeyValue {
            key: kv.key,
            value: kv.value.map(Into::into),
            ..Default::default()
        }
    }
}

impl From<AnyValue> for pc::AnyValue {
    fn from(v: AnyValue) -> Self {
        use pc::any_value::Value;
        let value = if let Some(s) = v.string_value {
            Some(Value::StringValue(s))
        } else if let Some(b) = v.bool_value {
            Some(Value::BoolValue(b))
        } else if let Some(i) = v.int_value {
            Some(Value::IntValue(i))
        } else if let Some(d) = v.double_value {
            Some(Value::DoubleValue(d))
        } else if let Some(a) = v.array_value {
            Some(Value::ArrayValue(pc::ArrayValue {
                values: a.values.into_iter().map(Into::into).collect(),
            }))
        } else if let Some(kvs) = v.kvlist_value {
            Some(Value::KvlistValue(pc::KeyValueList {
                values: key_values(kvs.values),
            }))
        } else {
            v.bytes_value.map(Value::BytesValue)
        };
        pc::AnyValue { value }
    }
}
