//! OTLP log records to audit events: records carrying `toctou.audit.action` are a system of
//! record saying that a resource (or a policy) changed.

use super::{file_under, item_label};
use crate::attrs::{self, fixed_id, Known};
use crate::decoded::{Decoded, IgnoreReason, RejectReason, Rejection};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use toctou_schema::conventions as c;
use toctou_schema::{AuditAction, AuditEvent, SpanId, TraceId};

/// Every log record of the request, in order: audit records become events, other records
/// are ignored, and audit records that break the conventions are rejected one by one.
pub fn decode_logs(request: &ExportLogsServiceRequest) -> Decoded {
    let mut out = Decoded::default();
    let mut index = 0;
    for resource_logs in &request.resource_logs {
        let service = attrs::service_name(resource_logs.resource.as_ref());
        for scope_logs in &resource_logs.scope_logs {
            for record in &scope_logs.log_records {
                let known = Known::collect(&record.attributes);
                file_record(&mut out, &service, &RecordParts::of(record), known, index);
                index += 1;
            }
        }
    }
    out
}

/// What the rules read of a log record besides its attributes, borrowed as
/// [`super::traces::SpanParts`] is.
pub(crate) struct RecordParts<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub time_ns: u64,
    pub observed_time_ns: u64,
}

impl<'a> RecordParts<'a> {
    fn of(record: &'a LogRecord) -> Self {
        RecordParts {
            trace_id: &record.trace_id,
            span_id: &record.span_id,
            time_ns: record.time_unix_nano,
            observed_time_ns: record.observed_time_unix_nano,
        }
    }
}

/// Files the `index`th record of a request under the service of its resource (or that
/// service's rejection).
pub(crate) fn file_record(
    out: &mut Decoded,
    service: &Result<String, Rejection>,
    record: &RecordParts,
    known: Known,
    index: usize,
) {
    file_under(
        out,
        service,
        known.audit_action.is_some(),
        |service| audit_from(service, record, known),
        IgnoreReason::NoAction,
        || item_label("log record", record.span_id, index),
    );
}

/// One record: `Ok(None)` when it carries no audit action, `Err` when it does but is unusable.
pub fn audit_event(service: &str, record: &LogRecord) -> Result<Option<AuditEvent>, Rejection> {
    audit_from(
        service,
        &RecordParts::of(record),
        Known::collect(&record.attributes),
    )
}

fn audit_from(
    service: &str,
    record: &RecordParts,
    k: Known,
) -> Result<Option<AuditEvent>, Rejection> {
    let Some(action) = k.audit_action else {
        return Ok(None);
    };
    let action = attrs::keyword(
        c::AUDIT_ACTION,
        Some(action),
        "create, update, delete, finalize, policy_change",
        AuditAction::parse,
    )?
    .expect("a present value parses to Some or fails");
    let resource = attrs::text(c::RESOURCE, k.resource)?.ok_or_else(|| {
        Rejection::new(
            RejectReason::MissingResource,
            format!("missing attribute {}", c::RESOURCE),
        )
    })?;
    let trace_id: TraceId = fixed_id("trace id", record.trace_id)?;
    let span_id: SpanId = fixed_id("span id", record.span_id)?;
    // The commit time is what the producer stamped; a producer that stamped nothing leaves
    // the time the SDK first saw the record as the best estimate.
    let time_ns = if record.time_ns != 0 {
        record.time_ns
    } else {
        record.observed_time_ns
    };
    // No source id: the trace and span ids say where a record was written, not which
    // record it is (one span can commit several), so a redelivery is recognised by its
    // content instead (action, resource, version, time, request id).
    let source_id = None;
    Ok(Some(AuditEvent {
        action,
        resource,
        version: attrs::version(c::RESOURCE_VERSION, k.resource_version)?,
        request_id: attrs::text(c::REQUEST_ID, k.request_id)?,
        actor: attrs::text(c::ACTOR, k.actor)?,
        time_ns,
        service: service.to_string(),
        source_id,
        trace_id,
        span_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    /// `req` decoded, checked to keep one event and ignore one record that has no action.
    fn one_kept_one_ignored(req: &ExportLogsServiceRequest) -> Decoded {
        let d = decode_logs(req);
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.ignored.get(IgnoreReason::NoAction), 1);
        d
    }

    fn reasons(d: &Decoded) -> Vec<RejectReason> {
        d.rejected.iter().map(|r| r.reason).collect()
    }

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

    fn record(attributes: Vec<KeyValue>) -> LogRecord {
        LogRecord {
            time_unix_nano: 1_000,
            observed_time_unix_nano: 2_000,
            trace_id: vec![0x5B; 16],
            span_id: vec![0xEE; 8],
            attributes,
            ..Default::default()
        }
    }

    #[test]
    fn an_audit_record_with_every_attribute() {
        let ev = audit_event(
            "db",
            &record(vec![
                s(c::AUDIT_ACTION, "update"),
                s(c::RESOURCE, "inventory/sku-42"),
                kv(c::RESOURCE_VERSION, Value::IntValue(18)),
                s(c::REQUEST_ID, "req-2"),
                s(c::ACTOR, "bob"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            ev,
            AuditEvent {
                action: AuditAction::Update,
                resource: "inventory/sku-42".into(),
                version: Some("18".into()),
                request_id: Some("req-2".into()),
                actor: Some("bob".into()),
                time_ns: 1_000,
                service: "db".into(),
                source_id: None,
                trace_id: [0x5B; 16],
                span_id: [0xEE; 8],
            }
        );
    }

    #[test]
    fn observed_time_as_fallback() {
        let mut r = record(vec![
            s(c::AUDIT_ACTION, "policy_change"),
            s(c::RESOURCE, "orders-write"),
        ]);
        r.time_unix_nano = 0;
        r.trace_id = vec![];
        r.span_id = vec![];
        let ev = audit_event("iam", &r).unwrap().unwrap();
        assert_eq!(ev.action, AuditAction::PolicyChange);
        assert_eq!(ev.time_ns, 2_000);
        assert_eq!(ev.source_id, None);
        assert_eq!(ev.actor, None);
        assert_eq!(ev.request_id, None);
    }

    #[test]
    fn rejections_and_ignores() {
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource::default()),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        record(vec![s("message", "hello")]),
                        record(vec![s(c::AUDIT_ACTION, "upsert"), s(c::RESOURCE, "r")]),
                        record(vec![s(c::AUDIT_ACTION, "create")]),
                        record(vec![s(c::AUDIT_ACTION, "finalize"), s(c::RESOURCE, "r")]),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let d = one_kept_one_ignored(&req);
        assert_eq!(
            reasons(&d),
            [RejectReason::BadAttribute, RejectReason::MissingResource]
        );
        let id = "ee".repeat(8);
        assert_eq!(
            d.rejected[0].message,
            format!(
                "log record {id}: toctou.audit.action is \"upsert\", expected one of create, \
                 update, delete, finalize, policy_change"
            )
        );
        assert_eq!(
            d.rejected[1].message,
            format!("log record {id}: missing attribute toctou.resource")
        );
        let toctou_schema::Event::Audit(a) = &d.events[0] else {
            panic!("not an audit event")
        };
        assert_eq!(a.service, "unknown_service");
    }

    #[test]
    fn long_kept_values_refuse_their_record_only() {
        let long = "x".repeat(crate::attrs::MAX_VALUE_BYTES + 1);
        let mut resource = Resource::default();
        resource.attributes.push(s(c::SERVICE_NAME, &long));
        let records = vec![
            record(vec![s(c::AUDIT_ACTION, "update"), s(c::RESOURCE, "r")]),
            record(vec![s("message", "hello")]),
        ];
        let req = ExportLogsServiceRequest {
            resource_logs: vec![
                ResourceLogs {
                    resource: Some(resource),
                    scope_logs: vec![ScopeLogs {
                        log_records: records.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![
                            records[0].clone(),
                            record(vec![
                                s(c::AUDIT_ACTION, "update"),
                                s(c::RESOURCE, "r"),
                                s(c::ACTOR, &long),
                            ]),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        };
        let d = one_kept_one_ignored(&req);
        assert_eq!(reasons(&d), [RejectReason::AttributeTooLong; 2]);
        assert!(d.rejected[0].message.contains("service.name is 4097 bytes"));
        assert!(
            d.rejected[1].message.ends_with(&format!(
                "{} is 4097 bytes long, over the limit of 4096 bytes",
                c::ACTOR
            )),
            "{}",
            d.rejected[1].message
        );
    }
}
