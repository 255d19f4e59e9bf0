//! The rows of the `findings` and `events` tables as RowBinary structs, and their mapping
//! from the schema types. Field order is the column order the inserts name; the column
//! types are in schema/sql (a `String` for every enum, by its snake_case name).

use serde::Serialize;
use toctou_schema::{hex_id, resource_type, Event, Finding};

const NS_PER_S: u64 = 1_000_000_000;

/// `DateTime` is seconds as a `UInt32`; times past 2106 saturate rather than wrap.
fn seconds(ns: u64) -> u32 {
    u32::try_from(ns / NS_PER_S).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct FindingRow {
    pub id: String,
    pub kind: String,
    pub severity: String,
    pub service: String,
    pub operation: String,
    pub resource: String,
    pub resource_type: String,
    pub request_id: String,
    pub trace_id: String,
    pub check_span_id: String,
    pub check_time_ns: Option<u64>,
    pub use_span_id: String,
    pub use_time_ns: Option<u64>,
    pub race_window_ns: Option<u64>,
    pub checked_version: Option<String>,
    pub used_version: Option<String>,
    pub check_source: Option<String>,
    pub idempotency_key: Option<String>,
    pub policy: Option<String>,
    pub policy_version: Option<String>,
    #[serde(rename = "intervening.action")]
    pub intervening_action: Vec<String>,
    #[serde(rename = "intervening.resource")]
    pub intervening_resource: Vec<String>,
    #[serde(rename = "intervening.version")]
    pub intervening_version: Vec<Option<String>>,
    #[serde(rename = "intervening.request_id")]
    pub intervening_request_id: Vec<Option<String>>,
    #[serde(rename = "intervening.actor")]
    pub intervening_actor: Vec<Option<String>>,
    #[serde(rename = "intervening.time_ns")]
    pub intervening_time_ns: Vec<u64>,
    pub prior_use_request_id: Option<String>,
    pub prior_use_trace_id: Option<String>,
    pub prior_use_span_id: Option<String>,
    pub prior_use_time_ns: Option<u64>,
    pub reason: String,
    pub event_time: u32,
    pub event_time_ns: u64,
    pub detected_at: u32,
    pub detected_at_ns: u64,
}

impl From<&Finding> for FindingRow {
    fn from(f: &Finding) -> Self {
        let prior = f.prior_use.as_ref();
        FindingRow {
            id: f.id.clone(),
            kind: f.kind.as_str().to_owned(),
            severity: f.severity.as_str().to_owned(),
            service: f.service.clone(),
            operation: f.operation.clone(),
            resource: f.resource.clone(),
            resource_type: resource_type(&f.resource).to_owned(),
            request_id: f.request_id.clone(),
            trace_id: f.trace_id.clone(),
            check_span_id: f.check_span_id.clone(),
            check_time_ns: f.check_time_ns,
            use_span_id: f.use_span_id.clone(),
            use_time_ns: f.use_time_ns,
            race_window_ns: f.race_window_ns,
            checked_version: f.checked_version.clone(),
            used_version: f.used_version.clone(),
            check_source: f.check_source.map(|s| s.as_str().to_owned()),
            idempotency_key: f.idempotency_key.clone(),
            policy: f.policy.clone(),
            policy_version: f.policy_version.clone(),
            intervening_action: f
                .intervening
                .iter()
                .map(|a| a.action.as_str().to_owned())
                .collect(),
            intervening_resource: f.intervening.iter().map(|a| a.resource.clone()).collect(),
            intervening_version: f.intervening.iter().map(|a| a.version.clone()).collect(),
            intervening_request_id: f.intervening.iter().map(|a| a.request_id.clone()).collect(),
            intervening_actor: f.intervening.iter().map(|a| a.actor.clone()).collect(),
            intervening_time_ns: f.intervening.iter().map(|a| a.time_ns).collect(),
            prior_use_request_id: prior.map(|p| p.request_id.clone()),
            prior_use_trace_id: prior.map(|p| p.trace_id.clone()),
            prior_use_span_id: prior.map(|p| p.span_id.clone()),
            prior_use_time_ns: prior.map(|p| p.time_ns),
            reason: f.reason.clone(),
            event_time: seconds(f.event_time_ns),
            event_time_ns: f.event_time_ns,
            detected_at: seconds(f.detected_at_ns),
            detected_at_ns: f.detected_at_ns,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct EventRow {
    #[serde(rename = "type")]
    pub kind: String,
    pub service: String,
    pub operation: String,
    pub resource: String,
    pub resource_type: String,
    pub version: Option<String>,
    pub request_id: String,
    pub trace_id: String,
    pub span_id: String,
    pub event_key: String,
    pub event_time: u32,
    pub event_time_ns: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub actor: String,
    pub decision: String,
    pub check_source: Option<String>,
    pub policy: Option<String>,
    pub policy_version: Option<String>,
    pub idempotency_key: Option<String>,
    pub outcome: String,
    pub permission_denied: u8,
    pub audit_action: String,
    pub source_id: Option<String>,
}

impl From<&Event> for EventRow {
    fn from(e: &Event) -> Self {
        match e {
            Event::Span(s) => {
                let is_check = s.phase == toctou_schema::Phase::Check;
                let trace_id = hex_id(&s.trace_id);
                let span_id = hex_id(&s.span_id);
                EventRow {
                    kind: s.phase.as_str().to_owned(),
                    service: s.service.clone(),
                    operation: s.operation.clone(),
                    resource: s.resource.clone(),
                    resource_type: resource_type(&s.resource).to_owned(),
                    version: s.version.clone(),
                    request_id: s.request_id.clone(),
                    event_key: format!("{trace_id}/{span_id}"),
                    trace_id,
                    span_id,
                    event_time: seconds(e.event_time_ns()),
                    event_time_ns: e.event_time_ns(),
                    start_ns: s.start_ns,
                    end_ns: s.end_ns,
                    actor: s.actor.clone(),
                    // Only meaningful on its own phase; empty elsewhere so rollups never
                    // count a use's default decision or a check's default outcome.
                    decision: if is_check {
                        match s.decision {
                            toctou_schema::Decision::Allow => "allow".into(),
                            toctou_schema::Decision::Deny => "deny".into(),
                        }
                    } else {
                        String::new()
                    },
                    check_source: s.source.map(|x| x.as_str().to_owned()),
                    policy: s.policy.clone(),
                    policy_version: s.policy_version.clone(),
                    idempotency_key: s.idempotency_key.clone(),
                    outcome: if is_check {
                        String::new()
                    } else {
                        s.outcome.as_str().to_owned()
                    },
                    permission_denied: u8::from(s.permission_denied),
                    audit_action: String::new(),
                    source_id: None,
                }
            }
            Event::Audit(a) => {
                let trace_id = hex_id(&a.trace_id);
                let span_id = hex_id(&a.span_id);
                // The record's identity at its source when it has one; otherwise its content,
                // which is what the correlator's redelivery check falls back to as well.
                let event_key = match &a.source_id {
                    Some(id) => id.clone(),
                    None => format!(
                        "{:032x}",
                        xxhash_rust::xxh3::xxh3_128(
                            format!(
                                "{}\u{1f}{}\u{1f}{:?}\u{1f}{:?}\u{1f}{:?}\u{1f}{}",
                                a.action.as_str(),
                                a.resource,
                                a.version,
                                a.request_id,
                                a.actor,
                                a.time_ns
                            )
                            .as_bytes()
                        )
                    ),
                };
                EventRow {
                    kind: "audit".into(),
                    service: a.service.clone(),
                    operation: String::new(),
                    resource: a.resource.clone(),
                    resource_type: resource_type(&a.resource).to_owned(),
                    version: a.version.clone(),
                    request_id: a.request_id.clone().unwrap_or_default(),
                    trace_id,
                    span_id,
                    event_key,
                    event_time: seconds(a.time_ns),
                    event_time_ns: a.time_ns,
                    start_ns: a.time_ns,
                    end_ns: a.time_ns,
                    actor: a.actor.clone().unwrap_or_default(),
                    decision: String::new(),
                    check_source: None,
                    policy: None,
                    policy_version: None,
                    idempotency_key: None,
                    outcome: String::new(),
                    permission_denied: 0,
                    audit_action: a.action.as_str().to_owned(),
                    source_id: a.source_id.clone(),
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use toctou_schema::{AuditAction, AuditEvent, AuditRef, FindingKind, Severity, UseRef};

    /// A finding with every optional field set; the sink's tests send it too.
    pub(crate) fn finding() -> Finding {
        Finding {
            id: "f".into(),
            kind: FindingKind::DuplicateUse,
            severity: Severity::High,
            service: "shop".into(),
            operation: "reserve".into(),
            resource: "k8s/pods/default/web-1".into(),
            request_id: "r".into(),
            trace_id: "t".into(),
            check_span_id: String::new(),
            check_time_ns: None,
            use_span_id: "u".into(),
            use_time_ns: Some(5_000_000_001),
            race_window_ns: None,
            checked_version: None,
            used_version: Some("2".into()),
            check_source: Some(toctou_schema::CheckSource::Cache),
            idempotency_key: Some("k".into()),
            policy: None,
            policy_version: None,
            intervening: vec![
                AuditRef {
                    action: AuditAction::Update,
                    resource: "k8s/pods/default/web-1".into(),
                    version: Some("2".into()),
                    request_id: None,
                    actor: Some("a".into()),
                    time_ns: 7,
                },
                AuditRef {
                    action: AuditAction::Delete,
                    resource: "k8s/pods/default/web-1".into(),
                    version: None,
                    request_id: Some("q".into()),
                    actor: None,
                    time_ns: 8,
                },
            ],
            prior_use: Some(UseRef {
                request_id: "p".into(),
                trace_id: "pt".into(),
                span_id: "ps".into(),
                time_ns: 3,
            }),
            reason: "why".into(),
            event_time_ns: 5_000_000_001,
            detected_at_ns: 6_999_999_999,
        }
    }

    #[test]
    fn a_finding_keeps_every_field_and_its_evidence_in_order() {
        let row = FindingRow::from(&finding());
        assert_eq!(row.kind, "duplicate_use");
        assert_eq!(row.severity, "high");
        assert_eq!(row.resource_type, "k8s/pods");
        assert_eq!(row.check_source.as_deref(), Some("cache"));
        assert_eq!(row.intervening_action, vec!["update", "delete"]);
        assert_eq!(row.intervening_version, vec![Some("2".into()), None]);
        assert_eq!(row.intervening_request_id, vec![None, Some("q".into())]);
        assert_eq!(row.intervening_time_ns, vec![7, 8]);
        assert_eq!(row.prior_use_trace_id.as_deref(), Some("pt"));
        assert_eq!((row.event_time, row.detected_at), (5, 6));
    }

    #[test]
    fn an_audit_without_a_source_id_is_keyed_by_its_content() {
        let audit = AuditEvent {
            action: AuditAction::Update,
            resource: "inventory/1".into(),
            version: Some("3".into()),
            request_id: None,
            actor: None,
            time_ns: 42,
            service: "db".into(),
            source_id: None,
            trace_id: [0; 16],
            span_id: [0; 8],
        };
        let a = EventRow::from(&Event::Audit(audit.clone()));
        assert_eq!(a, EventRow::from(&Event::Audit(audit.clone())));
        assert_eq!(
            (a.kind.as_str(), a.audit_action.as_str()),
            ("audit", "update")
        );
        let mut later = audit.clone();
        later.time_ns = 43;
        assert_ne!(a.event_key, EventRow::from(&Event::Audit(later)).event_key);
        let mut sourced = audit;
        sourced.source_id = Some("audit-1".into());
        assert_eq!(EventRow::from(&Event::Audit(sourced)).event_key, "audit-1");
    }

    #[test]
    fn times_past_2106_saturate() {
        assert_eq!(seconds(u64::MAX), u32::MAX);
    }
}
