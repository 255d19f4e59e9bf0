//! OTLP spans to check and use events, per the instrumentation conventions
//! (`schema/src/conventions.rs`).

use super::{file_under, item_label};
use crate::attrs::{self, fixed_id, Attr, Known};
use crate::decoded::{Decoded, IgnoreReason, RejectReason, Rejection};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use toctou_schema::conventions as c;
use toctou_schema::{
    hex_id, CheckSource, DbParams, DbSpanEvent, DbStatement, Decision, Phase, SpanEvent, SpanId,
    TraceId, UseOutcome,
};

/// HTTP status meaning the caller was not allowed.
const HTTP_FORBIDDEN: i64 = 403;
/// gRPC `PERMISSION_DENIED`.
const GRPC_PERMISSION_DENIED: i64 = 7;

/// Every span of the request, in order: toctou spans become events, spans without
/// `toctou.phase` are ignored, and spans that claim a phase but break the conventions are
/// rejected one by one while the rest of the request goes through.
pub fn decode_traces(request: &ExportTraceServiceRequest) -> Decoded {
    let mut out = Decoded::default();
    decode_spans(request, &mut out);
    out
}

fn decode_spans(request: &ExportTraceServiceRequest, out: &mut Decoded) {
    let mut index = 0;
    for resource_spans in &request.resource_spans {
        let service = attrs::service_name(resource_spans.resource.as_ref());
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                let known = Known::collect(&span.attributes);
                file_span(out, &service, &SpanParts::of(span), known, index);
                index += 1;
            }
        }
    }
}

/// What the rules read of a span besides its attributes, borrowed from wherever it was
/// decoded (the prost types, or the wire bytes in `wire`).
pub(crate) struct SpanParts<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub start_ns: u64,
    pub end_ns: u64,
    pub status_is_error: bool,
    /// The request's entry into its service: no parent span, or a server span (its parent
    /// is the caller's, in another process).
    pub root: bool,
    pub name: &'a str,
    /// The status's message (an exception's type and text, as the SDKs set it).
    pub status_message: &'a str,
}

impl<'a> SpanParts<'a> {
    fn of(span: &'a Span) -> Self {
        SpanParts {
            trace_id: &span.trace_id,
            span_id: &span.span_id,
            start_ns: span.start_time_unix_nano,
            end_ns: span.end_time_unix_nano,
            status_is_error: span
                .status
                .as_ref()
                .is_some_and(|s| s.code == StatusCode::Error as i32),
            root: span.parent_span_id.is_empty() || span.kind == SpanKind::Server as i32,
            name: &span.name,
            status_message: span.status.as_ref().map_or("", |s| &s.message),
        }
    }
}

/// Files the `index`th span of a request under the service of its resource (or that
/// service's rejection).
pub(crate) fn file_span(
    out: &mut Decoded,
    service: &Result<String, Rejection>,
    span: &SpanParts,
    known: Known,
    index: usize,
) {
    if known.phase.is_none() {
        if let (Ok(service), Some(db)) = (service, db_span(span, &known)) {
            out.events.push(db.into_event(service));
            return;
        }
    }
    file_under(
        out,
        service,
        known.phase.is_some(),
        |service| span_from(service, span, known),
        IgnoreReason::NoPhase,
        || item_label("span", span.span_id, index),
    );
}

/// Statement texts longer than this are not read (an ORM's longest statements are a few
/// kilobytes; a span whose text is a bulk load is no check or use).
const MAX_DB_TEXT_BYTES: usize = 16 * 1024;
/// Rendered parameters longer than this are not kept (the statement is still read, for
/// risks): what names a row is a few values.
const MAX_DB_PARAMS_BYTES: usize = 16 * 1024;

/// What inference reads of a span without `toctou.phase`, still borrowed.
struct DbSpan<'a> {
    parts: &'a SpanParts<'a>,
    request_id: Option<&'a str>,
    route: Option<&'a str>,
    statement: Option<DbStatement>,
}

impl DbSpan<'_> {
    fn into_event(self, service: &str) -> toctou_schema::Event {
        DbSpanEvent {
            trace_id: fixed_id("trace id", self.parts.trace_id).unwrap_or_default(),
            span_id: fixed_id("span id", self.parts.span_id).unwrap_or_default(),
            root: self.parts.root,
            start_ns: self.parts.start_ns,
            end_ns: self.parts.end_ns,
            service: service.to_string(),
            request_id: self.request_id.map(str::to_owned),
            route: self.route.map(str::to_owned),
            statement: self.statement,
        }
        .into()
    }
}

/// A database client call with its statement, or a root span with an `http.route` (the
/// endpoint a request's calls are counted under); `None` for any other span, and for a
/// span with no trace id (nothing groups it with its request's other calls).
fn db_span<'a>(span: &'a SpanParts<'a>, k: &Known<'a>) -> Option<DbSpan<'a>> {
    let str_of = |a: Option<Attr<'a>>| match a {
        Some(Attr::Str(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    if span.trace_id.len() != 16 || span.trace_id.iter().all(|b| *b == 0) {
        return None;
    }
    let system = str_of(k.db_system_name).or(str_of(k.db_system));
    let text = str_of(k.db_query_text).or(str_of(k.db_statement));
    let statement = match (system, text) {
        (Some(system), Some(text)) if text.len() <= MAX_DB_TEXT_BYTES => {
            let params = match str_of(k.db_params) {
                Some(r) if r.len() <= MAX_DB_PARAMS_BYTES => DbParams::Rendered(r.to_owned()),
                Some(_) => DbParams::None,
                None if k.db_params_array.is_some() => DbParams::Indexed(
                    k.db_params_array
                        .iter()
                        .flatten()
                        .enumerate()
                        .map(|(i, v)| (i.to_string(), v.clone()))
                        .collect(),
                ),
                None if !k.db_indexed.is_empty() => DbParams::Indexed(
                    k.db_indexed
                        .iter()
                        .filter_map(|(key, v)| Some((key.to_string(), attr_text(*v)?)))
                        .collect(),
                ),
                None => DbParams::None,
            };
            let status = k
                .db_status
                .and_then(attr_text)
                .or_else(|| k.error_type.and_then(attr_text))
                .or_else(|| sqlstate_of_message(span.status_message).map(str::to_owned));
            Some(DbStatement {
                system: system.to_owned(),
                text: text.to_owned(),
                params,
                status,
                failed: span.status_is_error,
            })
        }
        _ => None,
    };
    let route = if span.root {
        str_of(k.http_route)
    } else {
        None
    };
    if statement.is_none() && route.is_none() {
        return None;
    }
    let route = route.or((span.root && !span.name.is_empty()).then_some(span.name));
    Some(DbSpan {
        parts: span,
        request_id: str_of(k.request_id),
        route,
        statement,
    })
}

/// The SQLSTATE of a serialization failure or deadlock, from a failed call's status message
/// where the instrumentation recorded no `db.response.status_code` (the older conventions):
/// the exception's type (`SerializationFailure: ...`, psycopg) or PostgreSQL's own text,
/// which drivers pass on.
fn sqlstate_of_message(message: &str) -> Option<&'static str> {
    if message.contains("SerializationFailure") || message.contains("could not serialize access") {
        Some("40001")
    } else if message.contains("DeadlockDetected") || message.contains("deadlock detected") {
        Some("40P01")
    } else {
        None
    }
}

/// A scalar attribute's text (a parameter, a status code).
fn attr_text(a: Attr<'_>) -> Option<String> {
    match a {
        Attr::Str(s) => Some(s.to_owned()),
        Attr::Int(i) => Some(i.to_string()),
        Attr::Double(d) => Some(d.to_string()),
        Attr::Bool(b) => Some(b.to_string()),
        Attr::Other(_) => None,
    }
}

/// One span: `Ok(None)` when it is not a toctou span, `Err` when it is one but is unusable.
pub fn span_event(service: &str, span: &Span) -> Result<Option<SpanEvent>, Rejection> {
    span_from(
        service,
        &SpanParts::of(span),
        Known::collect(&span.attributes),
    )
}

fn span_from(service: &str, span: &SpanParts, k: Known) -> Result<Option<SpanEvent>, Rejection> {
    let Some(phase) = k.phase else {
        return Ok(None);
    };
    let phase = attrs::keyword(c::PHASE, Some(phase), "check, use", Phase::parse)?
        .expect("a present value parses to Some or fails");
    let resource = attrs::text(c::RESOURCE, k.resource)?.ok_or_else(|| {
        Rejection::new(
            RejectReason::MissingResource,
            format!("missing attribute {}", c::RESOURCE),
        )
    })?;
    let trace_id: TraceId = fixed_id("trace id", span.trace_id)?;
    let span_id: SpanId = fixed_id("span id", span.span_id)?;
    let request_id = match attrs::text(c::REQUEST_ID, k.request_id)? {
        Some(id) => id,
        None => {
            let id = hex_id(&trace_id);
            if id.is_empty() {
                // Without either key the span cannot be paired with anything.
                return Err(Rejection::new(
                    RejectReason::BadId,
                    format!("no {} and no trace id to stand in for it", c::REQUEST_ID),
                ));
            }
            id
        }
    };
    let decision = attrs::keyword(
        c::CHECK_DECISION,
        k.decision,
        "allow, deny",
        Decision::parse,
    )?
    .unwrap_or_default();
    let source = attrs::keyword(
        c::CHECK_SOURCE,
        k.source,
        "primary, replica, cache",
        CheckSource::parse,
    )?;
    let explicit_outcome = attrs::keyword(
        c::USE_OUTCOME,
        k.outcome,
        "ok, conflict, error",
        UseOutcome::parse,
    )?;
    let permission_denied = [k.http_response_status_code, k.http_status_code]
        .into_iter()
        .any(|v| attrs::status_code(v) == Some(HTTP_FORBIDDEN))
        || attrs::status_code(k.rpc_grpc_status_code) == Some(GRPC_PERMISSION_DENIED);
    // A refused use did not act, even on an HTTP server span whose status stays unset for
    // 4xx answers (as the semantic conventions prescribe).
    let outcome = match explicit_outcome {
        Some(o) => o,
        None if span.status_is_error || permission_denied => UseOutcome::Error,
        None => UseOutcome::Ok,
    };
    let actor = attrs::text(c::ACTOR, k.actor)?.unwrap_or_else(|| service.to_string());
    Ok(Some(SpanEvent {
        phase,
        resource,
        version: attrs::version(c::RESOURCE_VERSION, k.resource_version)?,
        request_id,
        trace_id,
        span_id,
        start_ns: span.start_ns,
        end_ns: span.end_ns,
        service: service.to_string(),
        operation: attrs::text(c::OPERATION, k.operation)?.unwrap_or_default(),
        actor,
        decision,
        source,
        policy: attrs::text(c::POLICY, k.policy)?,
        policy_version: attrs::version(c::POLICY_VERSION, k.policy_version)?,
        idempotency_key: attrs::text(c::IDEMPOTENCY_KEY, k.idempotency_key)?,
        outcome,
        permission_denied,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

    fn kv(key: &str, v: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    fn s(key: &str, v: &str) -> KeyValue {
        kv(key, Value::StringValue(v.into()))
    }

    fn span(attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![0xAB; 16],
            span_id: vec![0xCD; 8],
            start_time_unix_nano: 100,
            end_time_unix_nano: 200,
            attributes,
            ..Default::default()
        }
    }

    fn request(service: Option<&str>, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: service
                        .map(|n| vec![s(c::SERVICE_NAME, n)])
                        .unwrap_or_default(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn one(attributes: Vec<KeyValue>) -> Result<Option<SpanEvent>, Rejection> {
        span_event("shop", &span(attributes))
    }

    #[test]
    fn a_check_with_every_attribute() {
        let ev = one(vec![
            s(c::PHASE, "check"),
            s(c::RESOURCE, "inventory/sku-42"),
            kv(c::RESOURCE_VERSION, Value::IntValue(17)),
            s(c::REQUEST_ID, "req-1"),
            s(c::OPERATION, "reserve"),
            s(c::ACTOR, "alice"),
            s(c::CHECK_DECISION, "deny"),
            s(c::CHECK_SOURCE, "replica"),
            s(c::POLICY, "orders-write"),
            kv(c::POLICY_VERSION, Value::DoubleValue(3.0)),
            s(c::IDEMPOTENCY_KEY, "k-9"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            ev,
            SpanEvent {
                phase: Phase::Check,
                resource: "inventory/sku-42".into(),
                version: Some("17".into()),
                request_id: "req-1".into(),
                trace_id: [0xAB; 16],
                span_id: [0xCD; 8],
                start_ns: 100,
                end_ns: 200,
                service: "shop".into(),
                operation: "reserve".into(),
                actor: "alice".into(),
                decision: Decision::Deny,
                source: Some(CheckSource::Replica),
                policy: Some("orders-write".into()),
                policy_version: Some("3".into()),
                idempotency_key: Some("k-9".into()),
                outcome: UseOutcome::Ok,
                permission_denied: false,
            }
        );
    }

    #[test]
    fn defaults_come_from_trace_id_and_service() {
        let ev = one(vec![s(c::PHASE, "use"), s(c::RESOURCE, "r")])
            .unwrap()
            .unwrap();
        assert_eq!(ev.phase, Phase::Use);
        assert_eq!(ev.request_id, "ab".repeat(16));
        assert_eq!(ev.actor, "shop");
        assert_eq!(ev.operation, "");
        assert_eq!(ev.version, None);
        assert_eq!(ev.decision, Decision::Allow);
        assert_eq!(ev.outcome, UseOutcome::Ok);
        assert!(!ev.permission_denied);
    }

    #[test]
    fn outcome_falls_back_to_span_status() {
        let mut sp = span(vec![s(c::PHASE, "use"), s(c::RESOURCE, "r")]);
        sp.status = Some(Status {
            code: StatusCode::Error as i32,
            message: "boom".into(),
        });
        assert_eq!(
            span_event("x", &sp).unwrap().unwrap().outcome,
            UseOutcome::Error
        );
        // An explicit outcome wins over the status.
        sp.attributes.push(s(c::USE_OUTCOME, "conflict"));
        assert_eq!(
            span_event("x", &sp).unwrap().unwrap().outcome,
            UseOutcome::Conflict
        );
    }

    #[test]
    fn a_refused_use_failed_even_with_its_status_unset() {
        let ev = one(vec![
            s(c::PHASE, "use"),
            s(c::RESOURCE, "r"),
            kv(c::HTTP_RESPONSE_STATUS_CODE, Value::IntValue(403)),
        ])
        .unwrap()
        .unwrap();
        assert!(ev.permission_denied);
        assert_eq!(ev.outcome, UseOutcome::Error);
    }

    #[test]
    fn permission_denied_from_http_or_grpc_codes() {
        let denied = |extra: KeyValue| {
            one(vec![s(c::PHASE, "use"), s(c::RESOURCE, "r"), extra])
                .unwrap()
                .unwrap()
                .permission_denied
        };
        assert!(denied(kv(
            c::HTTP_RESPONSE_STATUS_CODE,
            Value::IntValue(403)
        )));
        assert!(denied(s(c::HTTP_STATUS_CODE, "403")));
        assert!(denied(kv(c::RPC_GRPC_STATUS_CODE, Value::IntValue(7))));
        assert!(denied(s(c::RPC_GRPC_STATUS_CODE, "7")));
        assert!(!denied(kv(
            c::HTTP_RESPONSE_STATUS_CODE,
            Value::IntValue(404)
        )));
        assert!(!denied(kv(c::RPC_GRPC_STATUS_CODE, Value::IntValue(403))));
    }

    #[test]
    fn every_rejection_reason() {
        let rej = |attrs: Vec<KeyValue>| one(attrs).unwrap_err();
        let r = rej(vec![s(c::PHASE, "verify"), s(c::RESOURCE, "r")]);
        assert_eq!(r.reason, RejectReason::BadAttribute);
        assert_eq!(
            r.message,
            "toctou.phase is \"verify\", expected one of check, use"
        );
        let r = rej(vec![s(c::PHASE, "check")]);
        assert_eq!(r.reason, RejectReason::MissingResource);
        assert_eq!(r.message, "missing attribute toctou.resource");
        let r = rej(vec![s(c::PHASE, "check"), s(c::RESOURCE, "")]);
        assert_eq!(r.reason, RejectReason::MissingResource);
        for (key, bad) in [
            (c::CHECK_DECISION, "maybe"),
            (c::CHECK_SOURCE, "disk"),
            (c::USE_OUTCOME, "meh"),
        ] {
            let r = rej(vec![s(c::PHASE, "use"), s(c::RESOURCE, "r"), s(key, bad)]);
            assert_eq!(r.reason, RejectReason::BadAttribute, "{key}");
            assert!(r.message.starts_with(key), "{}", r.message);
        }
        let r = rej(vec![
            s(c::PHASE, "use"),
            kv(c::RESOURCE, Value::BoolValue(true)),
        ]);
        assert_eq!(r.reason, RejectReason::BadAttribute);
        let r = rej(vec![kv(c::PHASE, Value::IntValue(1)), s(c::RESOURCE, "r")]);
        assert_eq!(r.reason, RejectReason::BadAttribute);

        let mut sp = span(vec![s(c::PHASE, "use"), s(c::RESOURCE, "r")]);
        sp.trace_id = vec![1; 15];
        assert_eq!(
            span_event("x", &sp).unwrap_err().reason,
            RejectReason::BadId
        );
        sp.trace_id = vec![];
        let r = span_event("x", &sp).unwrap_err();
        assert_eq!(r.reason, RejectReason::BadId);
        // A request id makes the trace id unnecessary.
        sp.attributes.push(s(c::REQUEST_ID, "q"));
        assert_eq!(span_event("x", &sp).unwrap().unwrap().request_id, "q");
    }

    #[test]
    fn a_request_mixes_good_ignored_and_rejected() {
        let good = span(vec![s(c::PHASE, "check"), s(c::RESOURCE, "r")]);
        // A child span: a root one with a route would go to inference.
        let mut plain = span(vec![s("http.route", "/x")]);
        plain.parent_span_id = vec![9; 8];
        let mut bad = span(vec![s(c::PHASE, "use")]);
        bad.span_id = vec![0x01; 8];
        let d = decode_traces(&request(None, vec![good, plain, bad]));
        assert_eq!(d.events.len(), 1);
        let toctou_schema::Event::Span(ev) = &d.events[0] else {
            panic!("not a span")
        };
        assert_eq!(ev.service, "unknown_service");
        assert_eq!(d.ignored.get(IgnoreReason::NoPhase), 1);
        assert_eq!(d.rejected.len(), 1);
        assert_eq!(
            d.rejected[0].message,
            "span 0101010101010101: missing attribute toctou.resource"
        );
        assert_eq!(
            d.error_message("spans"),
            "rejected 1 of 3 spans: span 0101010101010101: missing attribute toctou.resource"
        );
    }

    #[test]
    fn a_service_name_over_the_limit_refuses_the_toctou_spans_of_its_resource() {
        let name = "s".repeat(crate::attrs::MAX_VALUE_BYTES + 1);
        let good = span(vec![s(c::PHASE, "check"), s(c::RESOURCE, "r")]);
        let plain = span(vec![s("http.route", "/x")]);
        let mut req = request(Some(&name), vec![good.clone(), plain]);
        req.resource_spans
            .push(request(Some("shop"), vec![good]).resource_spans.remove(0));
        let d = decode_traces(&req);
        assert_eq!(d.events.len(), 1, "the other resource's span");
        assert_eq!(d.ignored.get(IgnoreReason::NoPhase), 1);
        assert_eq!(d.rejected.len(), 1);
        assert_eq!(d.rejected[0].reason, RejectReason::AttributeTooLong);
        assert_eq!(
            d.rejected[0].message,
            "span cdcdcdcdcdcdcdcd: service.name is 4097 bytes long, over the limit of 4096 bytes"
        );
    }

    #[test]
    fn database_calls_and_root_routes_go_to_inference() {
        let mut call = span(vec![
            s("db.system", "postgresql"),
            s("db.statement", "UPDATE items SET stock = %s WHERE id = %s"),
            s("db.statement.parameters", "(9, 1)"),
        ]);
        call.parent_span_id = vec![7; 8];
        call.status = Some(Status {
            code: StatusCode::Error as i32,
            message: "SerializationFailure: could not serialize access due to concurrent update"
                .into(),
        });
        let mut node = span(vec![
            s("db.system.name", "postgresql"),
            s(
                "db.query.text",
                "SELECT 1 FROM users WHERE email = $1 AND tenant = $2",
            ),
            kv(
                "db.postgresql.values",
                Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(Value::StringValue("a@example.com".into())),
                        },
                        AnyValue {
                            value: Some(Value::IntValue(3)),
                        },
                    ],
                }),
            ),
        ]);
        node.parent_span_id = vec![7; 8];
        let mut current = span(vec![
            s("db.system.name", "postgresql"),
            s("db.query.text", "SELECT v FROM t WHERE id = $1"),
            s("db.query.parameter.0", "7"),
            kv("db.query.parameter.1", Value::IntValue(8)),
        ]);
        current.parent_span_id = vec![7; 8];
        // A server span: its parent is the caller's, in another process.
        let mut root = span(vec![s("http.route", "/buy/<id>")]);
        root.name = "POST /buy/<id>".into();
        root.parent_span_id = vec![5; 8];
        root.kind = SpanKind::Server as i32;
        // No statement, or not a database: ignored as before.
        let mut redis = span(vec![s("db.system", "redis")]);
        redis.parent_span_id = vec![7; 8];
        let mut child_route = span(vec![s("http.route", "/x")]);
        child_route.parent_span_id = vec![7; 8];
        let req = request(
            Some("shop"),
            vec![call, current, root, redis, child_route, node],
        );
        let d = decode_traces(&req);
        assert_eq!(d.ignored.get(IgnoreReason::NoPhase), 2);
        let dbs: Vec<&DbSpanEvent> = d
            .events
            .iter()
            .map(|e| match e {
                toctou_schema::Event::Db(d) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(dbs.len(), 4);
        // Node's pg: the parameters as an array.
        assert_eq!(
            dbs[3].statement.as_ref().unwrap().params,
            DbParams::Indexed(vec![
                ("0".into(), "a@example.com".into()),
                ("1".into(), "3".into())
            ])
        );
        let st = dbs[0].statement.as_ref().unwrap();
        assert_eq!(st.text, "UPDATE items SET stock = %s WHERE id = %s");
        assert_eq!(st.params, DbParams::Rendered("(9, 1)".into()));
        assert_eq!(
            st.status.as_deref(),
            Some("40001"),
            "from the status message"
        );
        assert!(st.failed && !dbs[0].root);
        let st = dbs[1].statement.as_ref().unwrap();
        assert_eq!(
            st.params,
            DbParams::Indexed(vec![("0".into(), "7".into()), ("1".into(), "8".into())])
        );
        assert_eq!(st.status, None);
        assert!(dbs[2].root && dbs[2].statement.is_none());
        assert_eq!(dbs[2].route.as_deref(), Some("/buy/<id>"));
        assert_eq!(dbs[2].service, "shop");
        // The wire reader leaves a request with an array it reads to prost, and makes the
        // same of the rest.
        let raw = prost::Message::encode_to_vec(&req);
        assert_eq!(crate::wire::traces(&raw), None);
        let mut rest = req.clone();
        rest.resource_spans[0].scope_spans[0].spans.pop();
        let raw = prost::Message::encode_to_vec(&rest);
        assert_eq!(crate::wire::traces(&raw).unwrap(), decode_traces(&rest));
    }

    #[test]
    fn rejections_without_span_id_are_numbered() {
        let mut bad = span(vec![s(c::PHASE, "use")]);
        bad.span_id = vec![];
        let d = decode_traces(&request(Some("svc"), vec![span(vec![]), bad]));
        assert_eq!(
            d.rejected[0].message,
            "span #1: missing attribute toctou.resource"
        );
    }
}
