//! OTLP JSON: parsing requests (HTTP `application/json` bodies and replay files) into the
//! prost types, telling documents apart by their top-level keys, and writing the JSON forms
//! of the responses.
//!
//! # Layout
//! - `scalar`: the lenient spellings of numbers, ids, bytes and enums.
//! - `model`: the request messages read straight into the prost types (serde remote
//!   definitions).

mod model;
mod scalar;

pub(crate) use scalar::metered;

use crate::budget;
use crate::error::DecodeError;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// An OTLP/JSON `ExportTraceServiceRequest`, as the prost message.
pub fn traces_from_json(body: &[u8]) -> Result<ExportTraceServiceRequest, DecodeError> {
    expect_object(body)?;
    let meter = budget::Meter::open(body.len());
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = model::traces(&mut de)
        .and_then(|r| de.end().map(|()| r))
        .map_err(|e| bounded(e, &meter))?;
    Ok(parsed)
}

/// An OTLP/JSON `ExportLogsServiceRequest`, as the prost message.
pub fn logs_from_json(body: &[u8]) -> Result<ExportLogsServiceRequest, DecodeError> {
    expect_object(body)?;
    let meter = budget::Meter::open(body.len());
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = model::logs(&mut de)
        .and_then(|r| de.end().map(|()| r))
        .map_err(|e| bounded(e, &meter))?;
    Ok(parsed)
}

/// The longest parser message passed on, in bytes. serde quotes a value of the wrong type
/// or spelling in full, and the message goes back to the client and into the log: a 20 MiB
/// string where a number belongs must not come back as a 20 MiB error.
const MAX_ERROR_BYTES: usize = 256;

/// `e`, with its message cut to about [`MAX_ERROR_BYTES`] (see [`cut`]) and its position;
/// the budget's error when the parse stopped there.
fn bounded(e: serde_json::Error, meter: &budget::Meter) -> DecodeError {
    if meter.refused() {
        return budget::json_error(e);
    }
    let text = e.to_string();
    if text.len() <= MAX_ERROR_BYTES {
        return DecodeError::Json(e);
    }
    let position = position_suffix(&e);
    let message = text.strip_suffix(&position).unwrap_or(&text);
    DecodeError::Json(serde::de::Error::custom(format!(
        "{}{position}",
        cut(message)
    )))
}

/// serde's message without its position, cut like [`bounded`]: in an input of several
/// documents the position counts from the document's start, and the reader of such inputs
/// (`crate::documents`) gives the input's line and column instead.
pub(crate) fn unplaced_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    cut(text.strip_suffix(&position_suffix(e)).unwrap_or(&text))
}

fn position_suffix(e: &serde_json::Error) -> String {
    format!(" at line {} column {}", e.line(), e.column())
}

/// `message` cut to about [`MAX_ERROR_BYTES`]: the start and the end, where serde says what it
/// expected.
fn cut(message: &str) -> String {
    if message.len() <= MAX_ERROR_BYTES {
        return message.to_string();
    }
    let mut head = MAX_ERROR_BYTES / 2;
    while !message.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = message.len().saturating_sub(MAX_ERROR_BYTES / 2).max(head);
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} [{} bytes cut] {}",
        &message[..head],
        tail - head,
        &message[tail..],
    )
}

/// serde's derived structs also read JSON arrays (as tuples), which would let `[]` pass as
/// an empty request; a request is an object.
fn expect_object(body: &[u8]) -> Result<(), DecodeError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        // An empty body is left to the parser, which says so ("EOF while parsing").
        Some(b'{') | None => Ok(()),
        _ => Err(DecodeError::Json(serde::de::Error::custom(
            "expected a JSON object at the top level",
        ))),
    }
}

/// What a JSON document is, by its top-level keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DocKind {
    Traces,
    Logs,
    K8sEvent,
    K8sEventList,
}

/// Only the keys that tell documents apart; `IgnoredAny` skips the values without building
/// them, so probing costs a scan and no allocation.
#[derive(Deserialize)]
struct Probe {
    #[serde(default, rename = "resourceSpans", alias = "resource_spans")]
    resource_spans: Option<IgnoredAny>,
    #[serde(default, rename = "resourceLogs", alias = "resource_logs")]
    resource_logs: Option<IgnoredAny>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(default)]
    items: Option<IgnoredAny>,
}

/// The API group of Kubernetes audit events; v1 and the older v1beta1 share the fields we read.
const AUDIT_GROUP: &str = "audit.k8s.io/";

pub(crate) fn detect(doc: &[u8]) -> Result<DocKind, DecodeError> {
    expect_object(doc)?;
    let p: Probe = serde_json::from_slice(doc)?;
    if p.resource_spans.is_some() {
        return Ok(DocKind::Traces);
    }
    if p.resource_logs.is_some() {
        return Ok(DocKind::Logs);
    }
    let kind =
        match (p.kind.as_deref(), p.items.is_some()) {
            (Some("EventList"), _) | (None, true) => DocKind::K8sEventList,
            (Some("Event"), _) => DocKind::K8sEvent,
            (Some(other), _) => {
                return Err(DecodeError::UnknownDocument(format!(
                    "kind {other:?} is not a kubernetes audit Event or EventList"
                )))
            }
            (None, false) => return Err(DecodeError::UnknownDocument(
                "expected resourceSpans, resourceLogs, or a kubernetes audit Event or EventList"
                    .into(),
            )),
        };
    // Captured audit logs sometimes lack apiVersion (the falco fixtures do); a wrong one
    // means some other API's Event, whose fields mean something else.
    match p.api_version.as_deref() {
        None => Ok(kind),
        Some(v) if v.starts_with(AUDIT_GROUP) => Ok(kind),
        Some(v) => Err(DecodeError::UnknownDocument(format!(
            "apiVersion {v:?} is not {AUDIT_GROUP}*"
        ))),
    }
}

/// The JSON `ExportTraceServiceResponse` / `ExportLogsServiceResponse`: `{}` when all was
/// accepted, else a `partialSuccess` whose count field is `count_field` (`rejectedSpans` or
/// `rejectedLogRecords`). The count is a string, as proto3 JSON writes int64.
pub(crate) fn export_response(count_field: &str, rejected: usize, message: &str) -> Vec<u8> {
    let body = if rejected == 0 && message.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({
            "partialSuccess": {
                count_field: rejected.to_string(),
                "errorMessage": message,
            }
        })
    };
    body.to_string().into_bytes()
}

/// A `google.rpc.Status` in JSON, the body of an OTLP/HTTP error response.
pub(crate) fn rpc_status(code: i32, message: &str) -> Vec<u8> {
    serde_json::json!({ "code": code, "message": message })
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::{decode_logs, decode_traces};
    use crate::IgnoreReason;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    const TRACE_JSON: &str = include_str!("../../testdata/otlp/trace.json");
    const LOGS_JSON: &str = include_str!("../../testdata/otlp/logs.json");
    const EVENTS_JSON: &str = include_str!("../../testdata/otlp/events.json");

    #[test]
    fn official_trace_example_decodes_to_one_ignored_span() {
        let req = traces_from_json(TRACE_JSON.as_bytes()).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        // Upper-case hex and an unquoted int64 in the example.
        assert_eq!(
            hex::encode(&span.trace_id),
            "5b8efff798038103d269b633813fc60c"
        );
        assert_eq!(hex::encode(&span.parent_span_id), "eee19b7ec3c1b173");
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.kind, 2);
        let d = decode_traces(&req);
        assert_eq!(d.events.len(), 0);
        assert_eq!(d.ignored.get(IgnoreReason::NoPhase), 1);
        assert!(d.rejected.is_empty());
    }

    #[test]
    fn official_logs_examples_decode_to_ignored_records() {
        let req = logs_from_json(LOGS_JSON.as_bytes()).unwrap();
        let rec = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(rec.severity_number, 10);
        assert_eq!(rec.attributes.len(), 6);
        let values: Vec<_> = rec
            .attributes
            .iter()
            .map(|kv| kv.value.as_ref().unwrap().value.clone().unwrap())
            .collect();
        assert_eq!(values[0], Value::StringValue("some string".into()));
        assert_eq!(values[1], Value::BoolValue(true));
        assert_eq!(values[2], Value::IntValue(10));
        assert_eq!(values[3], Value::DoubleValue(637.704));
        let Value::ArrayValue(a) = &values[4] else {
            panic!("array")
        };
        assert_eq!(a.values.len(), 2);
        let Value::KvlistValue(m) = &values[5] else {
            panic!("kvlist")
        };
        assert_eq!(m.values[0].key, "some.map.key");
        let d = decode_logs(&req);
        assert_eq!(
            (d.events.len(), d.ignored.get(IgnoreReason::NoAction)),
            (0, 1)
        );

        let req = logs_from_json(EVENTS_JSON.as_bytes()).unwrap();
        let rec = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(rec.event_name, "browser.page_view");
        let d = decode_logs(&req);
        assert_eq!(
            (d.events.len(), d.ignored.get(IgnoreReason::NoAction)),
            (0, 1)
        );
    }

    #[test]
    fn snake_case_names_and_enum_names_are_accepted() {
        let body = br#"{"resource_spans":[{"scope_spans":[{"spans":[{
            "trace_id":"5b8efff798038103d269b633813fc60c","span_id":"eee19b7ec3c1b174",
            "kind":"SPAN_KIND_CLIENT","status":{"code":"STATUS_CODE_ERROR"},
            "start_time_unix_nano":"5","attributes":[{"key":"a","value":{"bytes_value":"AAE="}}]
        }]}]}]}"#;
        let req = traces_from_json(body).unwrap();
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.kind, 3);
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        assert_eq!(span.start_time_unix_nano, 5);
        assert_eq!(
            span.attributes[0].value.as_ref().unwrap().value,
            Some(Value::BytesValue(vec![0, 1]))
        );
    }

    #[test]
    fn nulls_and_unknown_fields_are_tolerated() {
        let body = br#"{"resourceSpans":[{"resource":null,"scopeSpans":[{"spans":null,
            "futureField":{"x":1}}]}],"alsoNew":true}"#;
        let req = traces_from_json(body).unwrap();
        assert!(req.resource_spans[0].scope_spans[0].spans.is_empty());
        assert!(traces_from_json(b"{}").unwrap().resource_spans.is_empty());
    }

    #[test]
    fn invalid_json_is_an_error_with_a_position() {
        for body in [
            &b"{\"resourceSpans\": ["[..],
            b"[]",
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}"#,
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"soon"}]}]}]}"#,
        ] {
            let err = traces_from_json(body).unwrap_err();
            assert!(matches!(err, DecodeError::Json(_)), "{err}");
            assert!(err.to_string().starts_with("malformed json: "), "{err}");
        }
    }

    #[test]
    fn nesting_past_the_parser_limit_is_an_error_not_a_crash() {
        // 100k levels of kvlistValue in an attribute nobody reads: serde_json stops at 128.
        let depth = 100_000;
        let body = crate::fuzzing::nested_kvlists(depth);
        let err = traces_from_json(&body).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("malformed json: recursion limit exceeded"),
            "{err}"
        );
        // Unknown fields are skipped without building them, and serde_json skips without
        // recursing: as deep as that, the request is simply empty.
        let body = format!(
            "{{\"resourceLogs\":[],\"future\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(logs_from_json(body.as_bytes())
            .unwrap()
            .resource_logs
            .is_empty());
    }

    #[test]
    fn a_huge_value_of_the_wrong_type_is_not_echoed_whole() {
        let huge = "z".repeat(1 << 20);
        let body = format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"startTimeUnixNano":"{huge}"}}]}}]}}]}}"#
        );
        let err = traces_from_json(body.as_bytes()).unwrap_err();
        let text = err.to_string();
        assert!(text.len() < 400, "{} bytes", text.len());
        assert!(text.starts_with("malformed json: "), "{text}");
        assert!(text.contains("bytes cut] z"), "{text}");
        assert!(
            text.contains("\" is not an integer at line 1 column "),
            "{text}"
        );
    }

    #[test]
    fn documents_are_told_apart_by_their_keys() {
        assert_eq!(detect(TRACE_JSON.as_bytes()).unwrap(), DocKind::Traces);
        assert_eq!(detect(LOGS_JSON.as_bytes()).unwrap(), DocKind::Logs);
        assert_eq!(
            detect(br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1"}"#).unwrap(),
            DocKind::K8sEvent
        );
        assert_eq!(detect(br#"{"kind":"Event"}"#).unwrap(), DocKind::K8sEvent);
        assert_eq!(
            detect(br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}"#).unwrap(),
            DocKind::K8sEventList
        );
        assert_eq!(detect(br#"{"items":[]}"#).unwrap(), DocKind::K8sEventList);
        for bad in [
            &br#"{"kind":"Event","apiVersion":"v1"}"#[..],
            br#"{"kind":"Pod"}"#,
            br#"{"resourceMetrics":[]}"#,
        ] {
            let err = detect(bad).unwrap_err();
            assert!(matches!(err, DecodeError::UnknownDocument(_)), "{err}");
        }
    }

    #[test]
    fn responses_in_json() {
        assert_eq!(export_response("rejectedSpans", 0, ""), b"{}");
        let v: serde_json::Value =
            serde_json::from_slice(&export_response("rejectedSpans", 2, "bad")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"partialSuccess":{"rejectedSpans":"2","errorMessage":"bad"}})
        );
        let v: serde_json::Value = serde_json::from_slice(&rpc_status(3, "x")).unwrap();
        assert_eq!(v, serde_json::json!({"code":3,"message":"x"}));
    }
}
