//! The wire format of `toctou.events` messages: one format-version byte, the body's length
//! (u32, little endian), then a protobuf `EventBatch` (several events of one resource, or one
//! broadcast policy change).
//!
//! Why a version byte in front rather than a field inside: a reader must know which schema
//! to parse with before it parses, and a future format (another encoding, compression) need
//! not be protobuf at all. A message with a version this build does not know is a typed
//! error the consumer counts and skips; it never reaches the engine half-understood. The
//! length is there because protobuf cannot tell a message cut between two fields from a
//! shorter one: a truncated message must be an error, not fewer events.
//!
//! The prost structs are written by hand (no build script, no protoc): the schema is small
//! and lives here, next to the conversions, field numbers fixed forever. `proto/events.proto`
//! states the same schema for other languages; tests/proto.rs reads messages written here
//! through it, and decodes here messages written from it alone.

use toctou_schema::{
    AuditAction, AuditEvent, CheckSource, Decision, Event, Phase, SpanEvent, UseOutcome,
};

/// The format this build writes, and the only one it reads.
pub const FORMAT_VERSION: u8 = 1;
/// Version byte and body length.
const HEADER: usize = 5;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("empty message")]
    Empty,
    #[error("unknown format version {0} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("truncated message: {got} of {declared} body bytes")]
    Truncated { declared: usize, got: usize },
    #[error("{0} bytes after the body")]
    TrailingBytes(usize),
    #[error("malformed batch: {0}")]
    Malformed(#[from] prost::DecodeError),
    #[error("invalid {field}: {value}")]
    InvalidField { field: &'static str, value: String },
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedBatch {
    pub events: Vec<Event>,
    /// A copy of a broadcast event (policy changes go to every partition) on a partition
    /// other than its home one: correlated there, but not stored again.
    pub broadcast_copy: bool,
}

/// Encodes events as one message body.
pub fn encode(events: &[Event], broadcast_copy: bool) -> Vec<u8> {
    let batch = pb::EventBatch {
        // Database calls are inference's, in `toctou run`; never sent (see `Event::Db`).
        events: events.iter().filter_map(to_pb).collect(),
        broadcast_copy,
    };
    let len = prost::Message::encoded_len(&batch);
    let mut out = Vec::with_capacity(HEADER + len);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    prost::Message::encode(&batch, &mut out).expect("a Vec grows as needed");
    out
}

/// Decodes one message body.
pub fn decode(bytes: &[u8]) -> Result<DecodedBatch, CodecError> {
    let (&version, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let Some((len, body)) = rest.split_first_chunk::<4>() else {
        return Err(CodecError::Truncated {
            declared: 0,
            got: rest.len(),
        });
    };
    let declared = u32::from_le_bytes(*len) as usize;
    if body.len() < declared {
        return Err(CodecError::Truncated {
            declared,
            got: body.len(),
        });
    }
    if body.len() > declared {
        return Err(CodecError::TrailingBytes(body.len() - declared));
    }
    let batch: pb::EventBatch = prost::Message::decode(body)?;
    let events = batch
        .events
        .into_iter()
        .map(from_pb)
        .collect::<Result<_, _>>()?;
    Ok(DecodedBatch {
        events,
        broadcast_copy: batch.broadcast_copy,
    })
}

fn to_pb(event: &Event) -> Option<pb::EventMsg> {
    let kind = match event {
        Event::Db(_) => return None,
        Event::Span(s) => pb::Kind::Span(pb::SpanMsg {
            phase: match s.phase {
                Phase::Check => 0,
                Phase::Use => 1,
            },
            resource: s.resource.clone(),
            version: s.version.clone(),
            request_id: s.request_id.clone(),
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            start_ns: s.start_ns,
            end_ns: s.end_ns,
            service: s.service.clone(),
            operation: s.operation.clone(),
            actor: s.actor.clone(),
            decision: match s.decision {
                Decision::Allow => 0,
                Decision::Deny => 1,
            },
            source: s.source.map(|c| match c {
                CheckSource::Primary => 0,
                CheckSource::Replica => 1,
                CheckSource::Cache => 2,
            }),
            policy: s.policy.clone(),
            policy_version: s.policy_version.clone(),
            idempotency_key: s.idempotency_key.clone(),
            outcome: match s.outcome {
                UseOutcome::Ok => 0,
                UseOutcome::Conflict => 1,
                UseOutcome::Error => 2,
            },
            permission_denied: s.permission_denied,
        }),
        Event::Audit(a) => pb::Kind::Audit(pb::AuditMsg {
            action: match a.action {
                AuditAction::Create => 0,
                AuditAction::Update => 1,
                AuditAction::Delete => 2,
                AuditAction::Finalize => 3,
                AuditAction::PolicyChange => 4,
            },
            resource: a.resource.clone(),
            version: a.version.clone(),
            request_id: a.request_id.clone(),
            actor: a.actor.clone(),
            time_ns: a.time_ns,
            service: a.service.clone(),
            source_id: a.source_id.clone(),
            trace_id: a.trace_id.to_vec(),
            span_id: a.span_id.to_vec(),
        }),
    };
    Some(pb::EventMsg { kind: Some(kind) })
}

fn invalid(field: &'static str, value: impl ToString) -> CodecError {
    CodecError::InvalidField {
        field,
        value: value.to_string(),
    }
}

fn id<const N: usize>(field: &'static str, bytes: Vec<u8>) -> Result<[u8; N], CodecError> {
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| invalid(field, format!("{len} bytes, expected {N}")))
}

fn from_pb(msg: pb::EventMsg) -> Result<Event, CodecError> {
    match msg
        .kind
        .ok_or_else(|| invalid("event", "neither span nor audit"))?
    {
        pb::Kind::Span(s) => Ok(Event::Span(SpanEvent {
            phase: match s.phase {
                0 => Phase::Check,
                1 => Phase::Use,
                v => return Err(invalid("phase", v)),
            },
            resource: s.resource,
            version: s.version,
            request_id: s.request_id,
            trace_id: id("trace_id", s.trace_id)?,
            span_id: id("span_id", s.span_id)?,
            start_ns: s.start_ns,
            end_ns: s.end_ns,
            service: s.service,
            operation: s.operation,
            actor: s.actor,
            decision: match s.decision {
                0 => Decision::Allow,
                1 => Decision::Deny,
                v => return Err(invalid("decision", v)),
            },
            source: match s.source {
                None => None,
                Some(0) => Some(CheckSource::Primary),
                Some(1) => Some(CheckSource::Replica),
                Some(2) => Some(CheckSource::Cache),
                Some(v) => return Err(invalid("source", v)),
            },
            policy: s.policy,
            policy_version: s.policy_version,
            idempotency_key: s.idempotency_key,
            outcome: match s.outcome {
                0 => UseOutcome::Ok,
                1 => UseOutcome::Conflict,
                2 => UseOutcome::Error,
                v => return Err(invalid("outcome", v)),
            },
            permission_denied: s.permission_denied,
        })),
        pb::Kind::Audit(a) => Ok(Event::Audit(AuditEvent {
            action: match a.action {
                0 => AuditAction::Create,
                1 => AuditAction::Update,
                2 => AuditAction::Delete,
                3 => AuditAction::Finalize,
                4 => AuditAction::PolicyChange,
                v => return Err(invalid("action", v)),
            },
            resource: a.resource,
            version: a.version,
            request_id: a.request_id,
            actor: a.actor,
            time_ns: a.time_ns,
            service: a.service,
            source_id: a.source_id,
            trace_id: id("trace_id", a.trace_id)?,
            span_id: id("span_id", a.span_id)?,
        })),
    }
}

/// Format version 1. Field numbers are the format: never renumber, only add.
#[rustfmt::skip]
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EventBatch {
        #[prost(message, repeated, tag = "1")]
        pub events: Vec<EventMsg>,
        #[prost(bool, tag = "2")]
        pub broadcast_copy: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EventMsg {
        #[prost(oneof = "Kind", tags = "1, 2")]
        pub kind: Option<Kind>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Span(SpanMsg),
        #[prost(message, tag = "2")]
        Audit(AuditMsg),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SpanMsg {
        /// 0 check, 1 use.
        #[prost(int32, tag = "1")] pub phase: i32,
        #[prost(string, tag = "2")] pub resource: String,
        #[prost(string, optional, tag = "3")] pub version: Option<String>,
        #[prost(string, tag = "4")] pub request_id: String,
        #[prost(bytes = "vec", tag = "5")] pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "6")] pub span_id: Vec<u8>,
        #[prost(fixed64, tag = "7")] pub start_ns: u64,
        #[prost(fixed64, tag = "8")] pub end_ns: u64,
        #[prost(string, tag = "9")] pub service: String,
        #[prost(string, tag = "10")] pub operation: String,
        #[prost(string, tag = "11")] pub actor: String,
        /// 0 allow, 1 deny.
        #[prost(int32, tag = "12")] pub decision: i32,
        /// 0 primary, 1 replica, 2 cache.
        #[prost(int32, optional, tag = "13")] pub source: Option<i32>,
        #[prost(string, optional, tag = "14")] pub policy: Option<String>,
        #[prost(string, optional, tag = "15")] pub policy_version: Option<String>,
        #[prost(string, optional, tag = "16")] pub idempotency_key: Option<String>,
        /// 0 ok, 1 conflict, 2 error.
        #[prost(int32, tag = "17")] pub outcome: i32,
        #[prost(bool, tag = "18")] pub permission_denied: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AuditMsg {
        /// 0 create, 1 update, 2 delete, 3 finalize, 4 policy_change.
        #[prost(int32, tag = "1")] pub action: i32,
        #[prost(string, tag = "2")] pub resource: String,
        #[prost(string, optional, tag = "3")] pub version: Option<String>,
        #[prost(string, optional, tag = "4")] pub request_id: Option<String>,
        #[prost(string, optional, tag = "5")] pub actor: Option<String>,
        #[prost(fixed64, tag = "6")] pub time_ns: u64,
        #[prost(string, tag = "7")] pub service: String,
        #[prost(string, optional, tag = "8")] pub source_id: Option<String>,
        #[prost(bytes = "vec", tag = "9")] pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "10")] pub span_id: Vec<u8>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(phase: Phase) -> Event {
        Event::Span(SpanEvent {
            phase,
            ..toctou_schema::testing::every_field_span()
        })
    }

    fn audit(action: AuditAction) -> Event {
        Event::Audit(AuditEvent {
            action,
            resource: "orders/42".into(),
            version: None,
            request_id: Some("req-2".into()),
            actor: None,
            time_ns: 5,
            service: "db".into(),
            source_id: Some("audit-1".into()),
            trace_id: [0; 16],
            span_id: [9; 8],
        })
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let mut events = vec![span(Phase::Check), span(Phase::Use)];
        for action in [
            AuditAction::Create,
            AuditAction::Update,
            AuditAction::Delete,
            AuditAction::Finalize,
            AuditAction::PolicyChange,
        ] {
            events.push(audit(action));
        }
        // Defaults and absent options too: zero values must not turn into something else.
        if let Event::Span(mut s) = span(Phase::Check) {
            s.version = None;
            s.source = None;
            s.decision = Decision::Allow;
            s.outcome = UseOutcome::Ok;
            s.source = Some(CheckSource::Primary);
            events.push(Event::Span(s));
        }
        for copy in [false, true] {
            let bytes = encode(&events, copy);
            assert_eq!(bytes[0], FORMAT_VERSION);
            let back = decode(&bytes).unwrap();
            assert_eq!(back.events, events);
            assert_eq!(back.broadcast_copy, copy);
        }
    }

    #[test]
    fn unknown_version_is_a_typed_error() {
        let mut bytes = encode(&[span(Phase::Use)], false);
        bytes[0] = 2;
        assert_eq!(decode(&bytes), Err(CodecError::UnknownVersion(2)));
        assert_eq!(decode(&[]), Err(CodecError::Empty));
        let mut bytes = encode(&[span(Phase::Use)], false);
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(CodecError::TrailingBytes(1)));
    }

    #[test]
    fn truncated_input_is_an_error_at_every_length() {
        let bytes = encode(&[span(Phase::Check), audit(AuditAction::Update)], false);
        for len in 1..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "a message cut to {len} of {} bytes decoded",
                bytes.len()
            );
        }
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let mut batch = pb::EventBatch {
            events: vec![to_pb(&span(Phase::Check)).unwrap()],
            broadcast_copy: false,
        };
        if let Some(pb::Kind::Span(s)) = &mut batch.events[0].kind {
            s.phase = 9;
        }
        let framed = |batch: &pb::EventBatch| {
            let mut bytes = vec![FORMAT_VERSION];
            bytes.extend_from_slice(&(prost::Message::encoded_len(batch) as u32).to_le_bytes());
            prost::Message::encode(batch, &mut bytes).unwrap();
            bytes
        };
        assert!(matches!(
            decode(&framed(&batch)),
            Err(CodecError::InvalidField { field: "phase", .. })
        ));
        if let Some(pb::Kind::Span(s)) = &mut batch.events[0].kind {
            s.phase = 0;
            s.trace_id = vec![1, 2, 3];
        }
        assert!(matches!(
            decode(&framed(&batch)),
            Err(CodecError::InvalidField {
                field: "trace_id",
                ..
            })
        ));
    }
}
