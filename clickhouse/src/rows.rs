//! The rows of the `findings` and `events` tables as RowBinary structs, and their mapping
//! from the schema types; those of `risks` in [`risks`]. Field order is the column order the
//! inserts name; the column types are in schema/sql (a `String` for every enum, by its
//! snake_case name).

pub mod risks;

pub use risks::RiskRow;
use serde::Serialize;
use toctou_schema::{hex_id, resource_type, Event, Finding};

const NS_PER_S: u64 = 1_000_000_000;

/// `DateTime` is seconds as a `UInt32`; times past 2106 saturate rather than wrap.
pub fn seconds(ns: u64) -> u32 {
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

impl EventRow {
    /// The row of an event; `None` for a database call (`Event::Db`), which is inference's
    /// input and never stored.
    pub fn of(e: &Event) -> Option<Self> {
        let c = EventColumns::of(e)?;
        let text = |s: &str| s.to_owned();
        Some(EventRow {
            kind: text(c.kind),
            service: text(c.service),
            operation: text(c.operation),
            resource: text(c.resource),
            resource_type: text(c.resource_type),
            version: c.version.map(text),
            request_id: text(c.request_id),
            trace_id: c.trace_id.to_string(),
            span_id: c.span_id.to_string(),
            event_key: c.event_key.to_string(&c),
            event_time: seconds(c.event_time_ns),
            event_time_ns: c.event_time_ns,
            start_ns: c.start_ns,
            end_ns: c.end_ns,
            actor: text(c.actor),
            decision: text(c.decision),
            check_source: c.check_source.map(text),
            policy: c.policy.map(text),
            policy_version: c.policy_version.map(text),
            idempotency_key: c.idempotency_key.map(text),
            outcome: text(c.outcome),
            permission_denied: c.permission_denied,
            audit_action: text(c.audit_action),
            source_id: c.source_id.map(text),
        })
    }
}

/// The column list of an `events` insert, in [`EventRow`]'s field order: the order
/// [`write_event`] writes.
pub fn event_columns() -> String {
    <EventRow as clickhouse::Row>::COLUMN_NAMES
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Appends `e` to `out` as one RowBinary row of the `events` table, columns in
/// [`EventRow`]'s order, without making the row. Every event goes to ClickHouse; making
/// its `EventRow` (a dozen strings allocated on the correlator's thread, freed on the
/// sink's) and serializing that was 2.7 s of CPU per million spans at 100k spans/s, as much
/// as decoding and correlating them (issue 7).
pub fn write_event(e: &Event, out: &mut Vec<u8>) {
    let Some(c) = EventColumns::of(e) else {
        // A database call: inference's input, never stored.
        return;
    };
    let text = |out: &mut Vec<u8>, s: &str| {
        leb128(out, s.len());
        out.extend_from_slice(s.as_bytes());
    };
    let nullable = |out: &mut Vec<u8>, s: Option<&str>| match s {
        Some(s) => {
            out.push(0);
            text(out, s);
        }
        None => out.push(1),
    };
    text(out, c.kind);
    text(out, c.service);
    text(out, c.operation);
    text(out, c.resource);
    text(out, c.resource_type);
    nullable(out, c.version);
    text(out, c.request_id);
    c.trace_id.write(out);
    c.span_id.write(out);
    match &c.event_key {
        EventKey::Ids => {
            leb128(out, c.trace_id.len() + 1 + c.span_id.len());
            c.trace_id.write_digits(out);
            out.push(b'/');
            c.span_id.write_digits(out);
        }
        EventKey::Given(id) => text(out, id),
        EventKey::Content(hash) => text(out, &format!("{hash:032x}")),
    }
    out.extend_from_slice(&seconds(c.event_time_ns).to_le_bytes());
    out.extend_from_slice(&c.event_time_ns.to_le_bytes());
    out.extend_from_slice(&c.start_ns.to_le_bytes());
    out.extend_from_slice(&c.end_ns.to_le_bytes());
    text(out, c.actor);
    text(out, c.decision);
    nullable(out, c.check_source);
    nullable(out, c.policy);
    nullable(out, c.policy_version);
    nullable(out, c.idempotency_key);
    text(out, c.outcome);
    out.push(c.permission_denied);
    text(out, c.audit_action);
    nullable(out, c.source_id);
}

/// RowBinary's string length: unsigned LEB128.
fn leb128(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// One event as the columns of `events`, borrowing its strings: the one mapping from the
/// schema, behind both [`EventRow`] and [`write_event`].
struct EventColumns<'a> {
    kind: &'static str,
    service: &'a str,
    operation: &'a str,
    resource: &'a str,
    resource_type: &'a str,
    version: Option<&'a str>,
    request_id: &'a str,
    trace_id: HexId<'a>,
    span_id: HexId<'a>,
    event_key: EventKey<'a>,
    event_time_ns: u64,
    start_ns: u64,
    end_ns: u64,
    actor: &'a str,
    decision: &'static str,
    check_source: Option<&'static str>,
    policy: Option<&'a str>,
    policy_version: Option<&'a str>,
    idempotency_key: Option<&'a str>,
    outcome: &'static str,
    permission_denied: u8,
    audit_action: &'static str,
    source_id: Option<&'a str>,
}

/// A trace or span id, written as lowercase hex; empty when all zero (unknown).
#[derive(Clone, Copy)]
struct HexId<'a>(&'a [u8]);

impl HexId<'_> {
    fn len(self) -> usize {
        if self.0.iter().all(|b| *b == 0) {
            0
        } else {
            self.0.len() * 2
        }
    }

    fn write_digits(self, out: &mut Vec<u8>) {
        let (at, n) = (out.len(), self.len());
        out.resize(at + n, 0);
        toctou_schema::write_hex(self.0, &mut out[at..]);
    }

    /// As a RowBinary string.
    fn write(self, out: &mut Vec<u8>) {
        leb128(out, self.len());
        self.write_digits(out);
    }
}

impl std::fmt::Display for HexId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex_id(self.0))
    }
}

/// What identifies an event in `event_key`.
enum EventKey<'a> {
    /// A span: `{trace_id}/{span_id}`.
    Ids,
    /// An audit record's identity at its source.
    Given(&'a str),
    /// An audit record without one: the hash of its content, which is what the
    /// correlator's redelivery check falls back to as well.
    Content(u128),
}

impl EventKey<'_> {
    fn to_string(&self, c: &EventColumns<'_>) -> String {
        match self {
            EventKey::Ids => format!("{}/{}", c.trace_id, c.span_id),
            EventKey::Given(id) => (*id).to_owned(),
            EventKey::Content(hash) => format!("{hash:032x}"),
        }
    }
}

impl<'a> EventColumns<'a> {
    fn of(e: &'a Event) -> Option<Self> {
        Some(match e {
            Event::Db(_) => return None,
            Event::Span(s) => {
                let is_check = s.phase == toctou_schema::Phase::Check;
                EventColumns {
                    kind: s.phase.as_str(),
                    service: &s.service,
                    operation: &s.operation,
                    resource: &s.resource,
                    resource_type: resource_type(&s.resource),
                    version: s.version.as_deref(),
                    request_id: &s.request_id,
                    trace_id: HexId(&s.trace_id),
                    span_id: HexId(&s.span_id),
                    event_key: EventKey::Ids,
                    event_time_ns: e.event_time_ns(),
                    start_ns: s.start_ns,
                    end_ns: s.end_ns,
                    actor: &s.actor,
                    // Only meaningful on its own phase; empty elsewhere so rollups never
                    // count a use's default decision or a check's default outcome.
                    decision: match (is_check, s.decision) {
                        (false, _) => "",
                        (true, toctou_schema::Decision::Allow) => "allow",
                        (true, toctou_schema::Decision::Deny) => "deny",
                    },
                    check_source: s.source.map(|x| x.as_str()),
                    policy: s.policy.as_deref(),
                    policy_version: s.policy_version.as_deref(),
                    idempotency_key: s.idempotency_key.as_deref(),
                    outcome: if is_check { "" } else { s.outcome.as_str() },
                    permission_denied: u8::from(s.permission_denied),
                    audit_action: "",
                    source_id: None,
                }
            }
            Event::Audit(a) => EventColumns {
                kind: "audit",
                service: &a.service,
                operation: "",
                resource: &a.resource,
                resource_type: resource_type(&a.resource),
                version: a.version.as_deref(),
                request_id: a.request_id.as_deref().unwrap_or_default(),
                trace_id: HexId(&a.trace_id),
                span_id: HexId(&a.span_id),
                event_key: match &a.source_id {
                    Some(id) => EventKey::Given(id),
                    None => EventKey::Content(xxhash_rust::xxh3::xxh3_128(
                        format!(
                            "{}\u{1f}{}\u{1f}{:?}\u{1f}{:?}\u{1f}{:?}\u{1f}{}",
                            a.action.as_str(),
                            a.resource,
                            a.version,
                            a.request_id,
                            a.actor,
                            a.time_ns
                        )
                        .as_bytes(),
                    )),
                },
                event_time_ns: a.time_ns,
                start_ns: a.time_ns,
                end_ns: a.time_ns,
                actor: a.actor.as_deref().unwrap_or_default(),
                decision: "",
                check_source: None,
                policy: None,
                policy_version: None,
                idempotency_key: None,
                outcome: "",
                permission_denied: 0,
                audit_action: a.action.as_str(),
                source_id: a.source_id.as_deref(),
            },
        })
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
            inferred: None,
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
        let a = EventRow::of(&Event::Audit(audit.clone())).unwrap();
        assert_eq!(a, EventRow::of(&Event::Audit(audit.clone())).unwrap());
        assert_eq!(
            (a.kind.as_str(), a.audit_action.as_str()),
            ("audit", "update")
        );
        let mut later = audit.clone();
        later.time_ns = 43;
        assert_ne!(
            a.event_key,
            EventRow::of(&Event::Audit(later)).unwrap().event_key
        );
        let mut sourced = audit;
        sourced.source_id = Some("audit-1".into());
        assert_eq!(
            EventRow::of(&Event::Audit(sourced)).unwrap().event_key,
            "audit-1"
        );
    }

    /// RowBinary as ClickHouse reads it, for the columns of `events`.
    struct Reader<'a>(&'a [u8]);

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> &[u8] {
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        }
        fn u8(&mut self) -> u8 {
            self.take(1)[0]
        }
        fn u32(&mut self) -> u32 {
            u32::from_le_bytes(self.take(4).try_into().unwrap())
        }
        fn u64(&mut self) -> u64 {
            u64::from_le_bytes(self.take(8).try_into().unwrap())
        }
        fn text(&mut self) -> String {
            let (mut len, mut shift) = (0usize, 0);
            loop {
                let b = self.u8();
                len |= usize::from(b & 0x7f) << shift;
                shift += 7;
                if b < 0x80 {
                    break;
                }
            }
            String::from_utf8(self.take(len).to_vec()).unwrap()
        }
        fn nullable(&mut self) -> Option<String> {
            match self.u8() {
                0 => Some(self.text()),
                1 => None,
                b => panic!("null flag {b}"),
            }
        }
        fn event(&mut self) -> EventRow {
            EventRow {
                kind: self.text(),
                service: self.text(),
                operation: self.text(),
                resource: self.text(),
                resource_type: self.text(),
                version: self.nullable(),
                request_id: self.text(),
                trace_id: self.text(),
                span_id: self.text(),
                event_key: self.text(),
                event_time: self.u32(),
                event_time_ns: self.u64(),
                start_ns: self.u64(),
                end_ns: self.u64(),
                actor: self.text(),
                decision: self.text(),
                check_source: self.nullable(),
                policy: self.nullable(),
                policy_version: self.nullable(),
                idempotency_key: self.nullable(),
                outcome: self.text(),
                permission_denied: self.u8(),
                audit_action: self.text(),
                source_id: self.nullable(),
            }
        }
    }

    #[test]
    fn written_events_read_back_as_their_rows() {
        use toctou_schema::{CheckSource, Decision, Phase, SpanEvent, UseOutcome};
        let check = SpanEvent {
            phase: Phase::Check,
            resource: "k8s/pods/default/web-1".into(),
            version: Some("7".into()),
            // Past 127 bytes: a two-byte length.
            request_id: "r".repeat(300),
            trace_id: [0xab; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            start_ns: 5_000_000_000,
            end_ns: 5_000_000_009,
            service: "café".into(),
            operation: "réserver".into(),
            actor: "ünïcode".into(),
            decision: Decision::Deny,
            source: Some(CheckSource::Cache),
            policy: Some("policies/p".into()),
            policy_version: Some("3".into()),
            idempotency_key: Some("k".into()),
            outcome: UseOutcome::Ok,
            permission_denied: false,
        };
        let mut r#use = check.clone();
        r#use.phase = Phase::Use;
        r#use.trace_id = [0; 16];
        r#use.version = None;
        r#use.source = None;
        r#use.policy = None;
        r#use.outcome = UseOutcome::Conflict;
        r#use.permission_denied = true;
        let audit = AuditEvent {
            action: AuditAction::Delete,
            resource: "inventory/1".into(),
            version: None,
            request_id: Some("q".into()),
            actor: Some("a".into()),
            time_ns: u64::MAX,
            service: "db".into(),
            source_id: Some("audit-1".into()),
            trace_id: [0; 16],
            span_id: [9; 8],
        };
        let mut unsourced = audit.clone();
        unsourced.source_id = None;
        unsourced.request_id = None;
        let events: Vec<Event> = vec![check.into(), r#use.into(), audit.into(), unsourced.into()];
        let mut bytes = Vec::new();
        for e in &events {
            write_event(e, &mut bytes);
        }
        let mut reader = Reader(&bytes);
        for e in &events {
            assert_eq!(Some(reader.event()), EventRow::of(e));
        }
        assert!(reader.0.is_empty(), "{} bytes left over", reader.0.len());
        let columns = event_columns();
        assert!(columns.starts_with("`type`,`service`,"), "{columns}");
        assert!(
            columns.ends_with(",`audit_action`,`source_id`"),
            "{columns}"
        );
    }

    #[test]
    fn times_past_2106_saturate() {
        assert_eq!(seconds(u64::MAX), u32::MAX);
    }
}
