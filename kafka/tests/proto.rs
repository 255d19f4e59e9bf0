//! `proto/events.proto`, the format as other languages read it, against the structs
//! kafka/src/codec.rs writes by hand: a message the codec writes, read through the .proto
//! (protox compiles it, prost-reflect reads), has every field where the file says and
//! nothing the file does not declare; and a message built from the .proto alone decodes
//! through the codec to the same events. Every field of the file is named here, so a field
//! added to one side only fails a test.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage, Value};
use toctou_kafka::codec;
use toctou_schema::testing::{every_field_audit, every_field_span};
use toctou_schema::{AuditAction, CheckSource, Decision, Event, Phase, UseOutcome};

fn pool() -> DescriptorPool {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let files = protox::compile(["events.proto"], [dir]).expect("events.proto compiles");
    DescriptorPool::from_file_descriptor_set(files).expect("a descriptor pool")
}

fn message(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(&format!("toctou.events.v1.{name}"))
        .unwrap_or_else(|| panic!("{name} in events.proto"))
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn opt(v: &Option<String>) -> Value {
    s(v.as_deref().expect("every field set"))
}

/// A use with every field set (each to a value no other field has), and the fields the
/// .proto should read from it, by name.
fn span() -> (Event, Vec<(&'static str, Value)>) {
    let e = every_field_span();
    // The codes events.proto gives.
    assert_eq!(
        (e.phase, e.decision, e.source, e.outcome),
        (
            Phase::Use,
            Decision::Deny,
            Some(CheckSource::Cache),
            UseOutcome::Conflict
        )
    );
    let fields = vec![
        ("phase", Value::I32(1)),
        ("resource", s(&e.resource)),
        ("version", opt(&e.version)),
        ("request_id", s(&e.request_id)),
        ("trace_id", Value::Bytes(e.trace_id.to_vec().into())),
        ("span_id", Value::Bytes(e.span_id.to_vec().into())),
        ("start_ns", Value::U64(e.start_ns)),
        ("end_ns", Value::U64(e.end_ns)),
        ("service", s(&e.service)),
        ("operation", s(&e.operation)),
        ("actor", s(&e.actor)),
        ("decision", Value::I32(1)),
        ("source", Value::I32(2)),
        ("policy", opt(&e.policy)),
        ("policy_version", opt(&e.policy_version)),
        ("idempotency_key", opt(&e.idempotency_key)),
        ("outcome", Value::I32(1)),
        ("permission_denied", Value::Bool(e.permission_denied)),
    ];
    (Event::Span(e), fields)
}

/// A policy change with every field set, and the fields the .proto should read from it.
fn audit() -> (Event, Vec<(&'static str, Value)>) {
    let e = every_field_audit();
    assert_eq!(e.action, AuditAction::PolicyChange);
    let fields = vec![
        ("action", Value::I32(4)),
        ("resource", s(&e.resource)),
        ("version", opt(&e.version)),
        ("request_id", opt(&e.request_id)),
        ("actor", opt(&e.actor)),
        ("time_ns", Value::U64(e.time_ns)),
        ("service", s(&e.service)),
        ("source_id", opt(&e.source_id)),
        ("trace_id", Value::Bytes(e.trace_id.to_vec().into())),
        ("span_id", Value::Bytes(e.span_id.to_vec().into())),
    ];
    (Event::Audit(e), fields)
}

/// Asserts `msg` holds exactly `fields` (each set, each equal) and every field its
/// descriptor has is among them, with nothing unknown to the .proto.
fn assert_fields(msg: &DynamicMessage, fields: &[(&str, Value)]) {
    let name = msg.descriptor().full_name().to_owned();
    assert_eq!(
        msg.unknown_fields().count(),
        0,
        "{name}: fields the .proto lacks"
    );
    for (field, want) in fields {
        assert!(msg.has_field_by_name(field), "{name}.{field} not set");
        let got = msg.get_field_by_name(field).unwrap();
        assert_eq!(&*got, want, "{name}.{field}");
    }
    let declared: Vec<String> = msg
        .descriptor()
        .fields()
        .map(|f| f.name().to_owned())
        .collect();
    let named: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
    assert_eq!(declared, named, "{name}: the .proto's fields, in order");
}

#[test]
fn the_proto_file_reads_every_field_the_codec_writes() {
    let pool = pool();
    let (span, span_fields) = span();
    let (audit, audit_fields) = audit();
    let bytes = codec::encode(&[span, audit], true);
    assert_eq!(bytes[0], codec::FORMAT_VERSION);
    let len = u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - 5);
    let batch = DynamicMessage::decode(message(&pool, "EventBatch"), &bytes[5..]).unwrap();
    assert_eq!(batch.unknown_fields().count(), 0);
    assert_eq!(
        *batch.get_field_by_name("broadcast_copy").unwrap(),
        Value::Bool(true)
    );
    let events = batch.get_field_by_name("events").unwrap();
    let events = events.as_list().unwrap();
    assert_eq!(events.len(), 2);
    for (event, kind, fields) in [
        (&events[0], "span", &span_fields),
        (&events[1], "audit", &audit_fields),
    ] {
        let event = event.as_message().unwrap();
        assert_eq!(event.unknown_fields().count(), 0);
        let inner = event.get_field_by_name(kind).unwrap();
        assert_fields(inner.as_message().unwrap(), fields);
    }
}

#[test]
fn the_codec_reads_what_is_written_from_the_proto_file_alone() {
    let pool = pool();
    let (span, span_fields) = span();
    let (audit, audit_fields) = audit();
    let build = |name: &str, fields: &[(&str, Value)]| {
        let mut m = DynamicMessage::new(message(&pool, name));
        for (f, v) in fields {
            m.set_field_by_name(f, v.clone());
        }
        m
    };
    let event = |kind: &str, inner: DynamicMessage| {
        let mut m = DynamicMessage::new(message(&pool, "Event"));
        m.set_field_by_name(kind, Value::Message(inner));
        Value::Message(m)
    };
    let mut batch = DynamicMessage::new(message(&pool, "EventBatch"));
    batch.set_field_by_name(
        "events",
        Value::List(vec![
            event("span", build("Span", &span_fields)),
            event("audit", build("Audit", &audit_fields)),
        ]),
    );
    batch.set_field_by_name("broadcast_copy", Value::Bool(true));
    let body = batch.encode_to_vec();
    let mut bytes = vec![codec::FORMAT_VERSION];
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&body);
    let decoded = codec::decode(&bytes).expect("the codec reads it");
    assert_eq!(decoded.events, vec![span, audit]);
    assert!(decoded.broadcast_copy);
}
