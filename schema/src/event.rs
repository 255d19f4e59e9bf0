//! The normalized event: one check span, use span or audit record.
//!
//! The collector turns every wire format (OTLP protobuf and JSON, the Kubernetes audit
//! webhook) into these; the correlator and every sink read only these. Times are Unix
//! nanoseconds in event time (what the producer recorded), never arrival time.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// A W3C trace id; all zeroes when unknown.
pub type TraceId = [u8; 16];
/// A W3C span id; all zeroes when unknown.
pub type SpanId = [u8; 8];

/// Which side of the race a span records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Check,
    Use,
}

impl Phase {
    pub fn parse(s: &str) -> Option<Phase> {
        match s {
            "check" => Some(Phase::Check),
            "use" => Some(Phase::Use),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Check => "check",
            Phase::Use => "use",
        }
    }
}

/// The outcome of a check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The check passed; an absent `toctou.check.decision` means this.
    #[default]
    Allow,
    Deny,
}

impl Decision {
    pub fn parse(s: &str) -> Option<Decision> {
        match s {
            "allow" => Some(Decision::Allow),
            "deny" => Some(Decision::Deny),
            _ => None,
        }
    }
}

/// Where the check read the state it decided on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckSource {
    Primary,
    Replica,
    Cache,
}

impl CheckSource {
    pub fn parse(s: &str) -> Option<CheckSource> {
        match s {
            "primary" => Some(CheckSource::Primary),
            "replica" => Some(CheckSource::Replica),
            "cache" => Some(CheckSource::Cache),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CheckSource::Primary => "primary",
            CheckSource::Replica => "replica",
            CheckSource::Cache => "cache",
        }
    }
}

/// How a use ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UseOutcome {
    /// The use took effect; the default when `toctou.use.outcome` is absent and the span
    /// status is not an error.
    #[default]
    Ok,
    /// The use's own precondition (e.g. a compare-and-swap on the version) failed: the race
    /// happened but was caught. Counted as a prevented race, never a finding.
    Conflict,
    /// The use failed for another reason (explicit outcome, or span status ERROR).
    Error,
}

impl UseOutcome {
    pub fn parse(s: &str) -> Option<UseOutcome> {
        match s {
            "ok" => Some(UseOutcome::Ok),
            "conflict" => Some(UseOutcome::Conflict),
            "error" => Some(UseOutcome::Error),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UseOutcome::Ok => "ok",
            UseOutcome::Conflict => "conflict",
            UseOutcome::Error => "error",
        }
    }
}

/// What an audit record says happened to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    Create,
    Update,
    Delete,
    /// The resource is fully provisioned; clears a pending create.
    Finalize,
    /// A policy changed; the audit's resource is the policy's name.
    PolicyChange,
}

impl AuditAction {
    pub fn parse(s: &str) -> Option<AuditAction> {
        match s {
            "create" => Some(AuditAction::Create),
            "update" => Some(AuditAction::Update),
            "delete" => Some(AuditAction::Delete),
            "finalize" => Some(AuditAction::Finalize),
            "policy_change" => Some(AuditAction::PolicyChange),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Delete => "delete",
            AuditAction::Finalize => "finalize",
            AuditAction::PolicyChange => "policy_change",
        }
    }

    /// Whether the action changes the resource's state (and so can make a check stale).
    pub fn is_write(self) -> bool {
        !matches!(self, AuditAction::PolicyChange)
    }
}

/// A check or use span, reduced to what the join needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanEvent {
    pub phase: Phase,
    pub resource: String,
    /// Check: the version observed. Use: the version acted on (the pre-image).
    pub version: Option<String>,
    /// `toctou.request_id`, or the lowercase hex trace id when absent.
    pub request_id: String,
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub start_ns: u64,
    pub end_ns: u64,
    /// `service.name` of the emitting resource (`unknown_service` when absent, as the SDKs do).
    pub service: String,
    /// `toctou.operation`; empty when absent.
    pub operation: String,
    /// `toctou.actor`, else the service.
    pub actor: String,
    /// Checks: the decision (allow when absent). Ignored on uses.
    pub decision: Decision,
    pub source: Option<CheckSource>,
    pub policy: Option<String>,
    pub policy_version: Option<String>,
    pub idempotency_key: Option<String>,
    /// Uses: how the use ended. Ignored on checks.
    pub outcome: UseOutcome,
    /// Uses: the use failed with permission denied (HTTP 403 or gRPC `PERMISSION_DENIED`).
    pub permission_denied: bool,
}

impl SpanEvent {
    /// The instant the join places this span at: a check has observed its state by the time
    /// it ends; a use acts on state from the time it starts. Measuring the race window from
    /// check end to use start keeps writes that overlap either span out of the window, so an
    /// ambiguous ordering never becomes a finding.
    pub fn event_time_ns(&self) -> u64 {
        match self.phase {
            Phase::Check => self.end_ns,
            Phase::Use => self.start_ns,
        }
    }
}

/// A record from a system of record that a resource changed (or a policy did).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub action: AuditAction,
    /// The resource written; for `policy_change`, the policy's name.
    pub resource: String,
    /// The version after the change.
    pub version: Option<String>,
    pub request_id: Option<String>,
    pub actor: Option<String>,
    /// Commit time.
    pub time_ns: u64,
    /// The emitting service (`kubernetes` for the audit webhook).
    pub service: String,
    /// Identity of the record at its source (Kubernetes `auditID`, or the log record's
    /// trace/span ids in hex); used to drop redeliveries.
    pub source_id: Option<String>,
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

/// The parameters of a database call, as its instrumentation recorded them (capturing them
/// is opt-in: most calls carry none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DbParams {
    #[default]
    None,
    /// All in one attribute: `db.statement.parameters` (a Python tuple repr),
    /// `pgx.query.parameters`, `db.postgresql.values` (a JSON array).
    Rendered(String),
    /// One attribute each, `db.query.parameter.<key>`: (key, value).
    Indexed(Vec<(String, String)>),
}

/// A database call as its client span recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbStatement {
    /// `db.system.name` (or the older `db.system`): `postgresql`, `mysql`, ...
    pub system: String,
    /// `db.query.text` (or the older `db.statement`), as received.
    pub text: String,
    pub params: DbParams,
    /// `db.response.status_code` (a SQLSTATE), else `error.type`, of a failed call.
    pub status: Option<String>,
    /// The span's status is an error.
    pub failed: bool,
}

/// A span without `toctou.phase` that inference reads (issue 26): a database client call
/// (its statement), or the root span of a request (its route, which names the endpoint).
/// Spans with `toctou.phase` are [`SpanEvent`]s and win over inference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbSpanEvent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The span has no parent: it is the request's root.
    pub root: bool,
    pub start_ns: u64,
    pub end_ns: u64,
    pub service: String,
    /// `toctou.request_id`, when the span carries it (the trace id stands in otherwise).
    pub request_id: Option<String>,
    /// A root span's `http.route`, else its name.
    pub route: Option<String>,
    pub statement: Option<DbStatement>,
}

/// One normalized input event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Span(SpanEvent),
    Audit(AuditEvent),
    /// Read by inference only; never stored, never sent to Kafka (see [`DbSpanEvent`]).
    Db(DbSpanEvent),
}

impl From<DbSpanEvent> for Event {
    fn from(d: DbSpanEvent) -> Event {
        Event::Db(d)
    }
}

impl From<SpanEvent> for Event {
    fn from(s: SpanEvent) -> Event {
        Event::Span(s)
    }
}

impl From<AuditEvent> for Event {
    fn from(a: AuditEvent) -> Event {
        Event::Audit(a)
    }
}

impl Event {
    /// The event time the correlator orders and windows by.
    pub fn event_time_ns(&self) -> u64 {
        match self {
            Event::Span(s) => s.event_time_ns(),
            Event::Audit(a) => a.time_ns,
            Event::Db(d) => d.end_ns,
        }
    }

    /// The resource; empty for a database call, which names none until inference reads it.
    pub fn resource(&self) -> &str {
        match self {
            Event::Span(s) => &s.resource,
            Event::Audit(a) => &a.resource,
            Event::Db(_) => "",
        }
    }

    /// The bytes it holds: the value and its strings' contents (allocator slack aside).
    /// What the queue to the correlator is bounded by.
    pub fn approx_bytes(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        std::mem::size_of::<Event>()
            + match self {
                Event::Span(s) => {
                    s.resource.len()
                        + opt(&s.version)
                        + s.request_id.len()
                        + s.service.len()
                        + s.operation.len()
                        + s.actor.len()
                        + opt(&s.policy)
                        + opt(&s.policy_version)
                        + opt(&s.idempotency_key)
                }
                Event::Audit(a) => {
                    a.resource.len()
                        + opt(&a.version)
                        + opt(&a.request_id)
                        + opt(&a.actor)
                        + a.service.len()
                        + opt(&a.source_id)
                }
                Event::Db(d) => {
                    d.service.len()
                        + opt(&d.request_id)
                        + opt(&d.route)
                        + d.statement.as_ref().map_or(0, |s| {
                            s.system.len()
                                + s.text.len()
                                + opt(&s.status)
                                + match &s.params {
                                    DbParams::None => 0,
                                    DbParams::Rendered(r) => r.len(),
                                    DbParams::Indexed(v) => {
                                        v.iter().map(|(k, v)| k.len() + v.len() + 48).sum()
                                    }
                                }
                        })
                }
            }
    }
}

/// A resource or policy version: compared for equality, and ordered where both sides parse
/// as integers (the convention says nothing stronger, so nothing stronger is assumed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version<'a>(pub &'a str);

/// What starts a version that is a change stream's commit position rather than a row's own
/// version: `commit:<integer>`.
pub const COMMIT_POSITION_PREFIX: &str = "commit:";

/// The version of a row change from a table without a version column: its transaction's
/// commit position in the stream (PostgreSQL's LSN, MySQL's binlog position), marked so that
/// it is compared only with other change-stream versions, never with a span's version (which
/// cannot know it): `commit:<position>`.
pub fn commit_position_version(position: u64) -> String {
    format!("{COMMIT_POSITION_PREFIX}{position}")
}

impl Version<'_> {
    pub fn as_int(&self) -> Option<i128> {
        self.0.trim().parse::<i128>().ok()
    }

    /// The commit position of a change-stream version ([`commit_position_version`]).
    pub fn commit_position(&self) -> Option<u64> {
        self.0.strip_prefix(COMMIT_POSITION_PREFIX)?.parse().ok()
    }

    /// `Some(ordering)` when both versions are integers, both commit positions, or equal as
    /// strings. A commit position is never ordered against an application's version.
    pub fn partial_order(&self, other: &Version<'_>) -> Option<Ordering> {
        match (self.as_int(), other.as_int()) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ if self.0 == other.0 => Some(Ordering::Equal),
            _ => match (self.commit_position(), other.commit_position()) {
                (Some(a), Some(b)) => Some(a.cmp(&b)),
                _ => None,
            },
        }
    }

    /// Equality as the conventions define it: integers by value, anything else byte for byte.
    pub fn same(&self, other: &Version<'_>) -> bool {
        self.partial_order(other) == Some(Ordering::Equal)
    }
}

impl fmt::Display for Version<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The type of a resource, for grouping: the identity up to its first `/`
/// (`inventory/sku-42` → `inventory`), or its first two segments for Kubernetes objects
/// (`k8s/pods/default/web-1` → `k8s/pods`); the whole identity when it has no `/`.
pub fn resource_type(resource: &str) -> &str {
    let mut cuts = resource.match_indices('/').map(|(i, _)| i);
    let first = cuts.next();
    let end = if resource.starts_with("k8s/") {
        cuts.next().or(first)
    } else {
        first
    };
    match end {
        Some(i) => &resource[..i],
        None => resource,
    }
}

/// Lowercase hex of an id; empty for an all-zero (unknown) id.
pub fn hex_id(id: &[u8]) -> String {
    // By table into a buffer on the stack, copied out once: `hex::encode`'s char-at-a-time
    // iterator was 3% of `toctou run`'s instructions, and pushing a byte at a time with a
    // UTF-8 check at the end still ~540 instructions a call (callgrind, issue 7; every span
    // without a request id, and every finding's ids, come here).
    if id.iter().all(|b| *b == 0) {
        return String::new();
    }
    let mut stack = [0u8; 32];
    let mut heap = Vec::new();
    let out = match stack.get_mut(..id.len() * 2) {
        Some(out) => out,
        None => {
            heap.resize(id.len() * 2, 0);
            &mut heap[..]
        }
    };
    write_hex(id, out);
    std::str::from_utf8(out)
        .expect("hex digits are ASCII")
        .to_owned()
}

/// Writes the lowercase hex of `bytes` into the first `2 * bytes.len()` bytes of `out`.
pub fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_id_is_lowercase_hex_and_empty_for_zero() {
        assert_eq!(hex_id(&[0; 16]), "");
        assert_eq!(hex_id(&[]), "");
        assert_eq!(hex_id(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
        // Longer than any W3C id: still hex, by the slow path.
        assert_eq!(hex_id(&[0xab; 20]), "ab".repeat(20));
        for seed in 0u32..256 {
            let id: Vec<u8> = (0..16u32)
                .map(|i| (seed.wrapping_mul(2654435761).rotate_left(i)) as u8)
                .collect();
            if id.iter().any(|b| *b != 0) {
                assert_eq!(hex_id(&id), hex::encode(&id));
            }
        }
    }

    #[test]
    fn versions_order_only_as_integers() {
        assert!(Version("7").same(&Version("07")));
        assert_eq!(
            Version("9").partial_order(&Version("10")),
            Some(Ordering::Less)
        );
        assert_eq!(Version("a9").partial_order(&Version("a10")), None);
        assert!(Version("etag-1").same(&Version("etag-1")));
        assert!(!Version("etag-1").same(&Version("etag-2")));
    }

    #[test]
    fn event_time_is_check_end_and_use_start() {
        let mut s = crate::testing::span_at(Phase::Check, "r", "q", 20_000_000).0;
        s.start_ns = 10_000_000;
        assert_eq!(s.event_time_ns(), 20_000_000);
        s.phase = Phase::Use;
        assert_eq!(s.event_time_ns(), 10_000_000);
    }

    #[test]
    fn resource_types() {
        assert_eq!(resource_type("inventory/sku-42"), "inventory");
        assert_eq!(resource_type("claims/ns/pod-1"), "claims");
        assert_eq!(resource_type("k8s/pods/default/web-1"), "k8s/pods");
        assert_eq!(resource_type("k8s/namespaces/_/foo"), "k8s/namespaces");
        assert_eq!(resource_type("k8s/pods"), "k8s");
        assert_eq!(resource_type("singleton"), "singleton");
    }

    #[test]
    fn unknown_ids_render_empty() {
        assert_eq!(hex_id(&[0; 8]), "");
        assert_eq!(hex_id(&[0xab, 0, 0, 0, 0, 0, 0, 1]), "ab00000000000001");
    }
}
