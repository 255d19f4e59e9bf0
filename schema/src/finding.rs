//! Findings: the races the correlator reports, with their evidence.
//!
//! The JSON form of [`Finding`] is a public interface (findings API, JSON lines output,
//! ClickHouse columns): fields are only ever added, never renamed.

use crate::event::{AuditAction, CheckSource};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The kinds of race, by their exact names. The declaration order is the precedence when
/// one use qualifies for several: the first kind listed wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A use with no matching check, or whose matching check denied.
    UncheckedUse,
    /// The policy an allowing check evaluated changed before the use, or the use was
    /// denied by permission after an allow.
    AuthzDrift,
    /// A second successful use with the same idempotency key and operation, or a second
    /// create of the same resource by another request.
    DuplicateUse,
    /// The use acted on a version other than the one checked, or another request's write
    /// committed between check and use.
    StaleCheck,
    /// A create whose resource saw no finalize within the pair TTL.
    PartialCreate,
    /// An allowing check with no use within the pair TTL.
    OrphanCheck,
}

impl FindingKind {
    pub const ALL: [FindingKind; 6] = [
        FindingKind::UncheckedUse,
        FindingKind::AuthzDrift,
        FindingKind::DuplicateUse,
        FindingKind::StaleCheck,
        FindingKind::PartialCreate,
        FindingKind::OrphanCheck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::UncheckedUse => "unchecked_use",
            FindingKind::AuthzDrift => "authz_drift",
            FindingKind::DuplicateUse => "duplicate_use",
            FindingKind::StaleCheck => "stale_check",
            FindingKind::PartialCreate => "partial_create",
            FindingKind::OrphanCheck => "orphan_check",
        }
    }

    pub fn parse(s: &str) -> Option<FindingKind> {
        FindingKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Default severity: acting without (or against) authorization is worst; a stale read
    /// costs money; leftovers cost cleanup; a check nobody used is information.
    pub fn severity(self) -> Severity {
        match self {
            FindingKind::UncheckedUse | FindingKind::AuthzDrift => Severity::Critical,
            FindingKind::DuplicateUse => Severity::High,
            FindingKind::StaleCheck => Severity::High,
            FindingKind::PartialCreate => Severity::Medium,
            FindingKind::OrphanCheck => Severity::Info,
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// An audit record cited as evidence (an intervening write, a policy change, a create).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRef {
    pub action: AuditAction,
    /// The resource written (the policy, for `policy_change`).
    pub resource: String,
    pub version: Option<String>,
    pub request_id: Option<String>,
    pub actor: Option<String>,
    pub time_ns: u64,
}

/// An earlier use cited as evidence (the first of a duplicated pair).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UseRef {
    pub request_id: String,
    /// Lowercase hex; empty when the use was known only from an audit record.
    pub trace_id: String,
    pub span_id: String,
    pub time_ns: u64,
}

/// One detected race.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Deterministic: the same input gives the same id whatever the arrival order, so
    /// replays and redeliveries collapse in storage.
    pub id: String,
    pub kind: FindingKind,
    pub severity: Severity,
    pub service: String,
    pub operation: String,
    pub resource: String,
    pub request_id: String,
    /// Lowercase hex; empty when unknown.
    pub trace_id: String,
    /// Lowercase hex; empty when there is no check (an unchecked use).
    pub check_span_id: String,
    pub check_time_ns: Option<u64>,
    /// Lowercase hex; empty when there is no use (an orphan check) or the use was known
    /// only from an audit record.
    pub use_span_id: String,
    pub use_time_ns: Option<u64>,
    /// Use time minus check time, when both exist (0 if the use started before the check ended).
    pub race_window_ns: Option<u64>,
    pub checked_version: Option<String>,
    pub used_version: Option<String>,
    pub check_source: Option<CheckSource>,
    pub idempotency_key: Option<String>,
    pub policy: Option<String>,
    pub policy_version: Option<String>,
    /// Writes by other requests between check and use, or the policy changes that drifted.
    pub intervening: Vec<AuditRef>,
    /// For a duplicate: the use it duplicates.
    pub prior_use: Option<UseRef>,
    /// One sentence saying why this is a finding.
    pub reason: String,
    /// The event time at which the finding was decided: the use's start, its end (or up to
    /// the allowed lateness after it) for a use that waited for its write, or the expiry time.
    pub event_time_ns: u64,
    /// When the correlator emitted it: wall clock in `toctou run`, the event time in
    /// `toctou replay` so that a replay is reproducible byte for byte.
    pub detected_at_ns: u64,
    /// Set when the check and the use were inferred from database client spans (spans of a
    /// service with no toctou code, issue 26) rather than reported by toctou spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inferred: Option<Inferred>,
}

/// What a finding inferred from database spans carries as evidence.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inferred {
    /// The statements of the check and the use, as received (truncated), parameters left
    /// out: they are user data.
    pub statements: Vec<String>,
    /// How the use's own write was matched to its change record: `key_and_values` (the row
    /// by its key, and the values the write set), or `values` (an insert, by the values it
    /// wrote).
    pub matched_by: String,
}

fn opt_len(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::len)
}

impl AuditRef {
    /// The bytes it holds: the struct and its strings' contents (allocator slack aside).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<AuditRef>()
            + self.resource.len()
            + opt_len(&self.version)
            + opt_len(&self.request_id)
            + opt_len(&self.actor)
    }
}

impl Finding {
    /// The bytes it holds, its evidence included: what stores bound their findings by.
    pub fn approx_bytes(&self) -> usize {
        let strings = [
            &self.id,
            &self.service,
            &self.operation,
            &self.resource,
            &self.request_id,
            &self.trace_id,
            &self.check_span_id,
            &self.use_span_id,
            &self.reason,
        ];
        let options = [
            &self.checked_version,
            &self.used_version,
            &self.idempotency_key,
            &self.policy,
            &self.policy_version,
        ];
        let prior = self.prior_use.as_ref().map_or(0, |p| {
            p.request_id.len() + p.trace_id.len() + p.span_id.len()
        });
        std::mem::size_of::<Finding>()
            + strings.iter().map(|s| s.len()).sum::<usize>()
            + options.iter().map(|s| opt_len(s)).sum::<usize>()
            + prior
            + self
                .intervening
                .iter()
                .map(AuditRef::approx_bytes)
                .sum::<usize>()
            + self.inferred.as_ref().map_or(0, |i| {
                i.matched_by.len()
                    + i.statements
                        .iter()
                        .map(|s| s.len() + std::mem::size_of::<String>())
                        .sum::<usize>()
            })
    }
}

/// The deterministic finding id: a 128-bit hash of the kind and the identities of the
/// events that make the finding, as 32 hex digits. Callers pass only arrival-independent
/// parts (span ids, request ids, resource, event times), never counters or wall time.
pub fn finding_id(kind: FindingKind, parts: &[&str]) -> String {
    let mut buf = String::with_capacity(64);
    buf.push_str(kind.as_str());
    for p in parts {
        // A separator that cannot occur in the parts keeps ("ab","c") apart from ("a","bc").
        buf.push('\u{1f}');
        buf.push_str(p);
    }
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(buf.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_separate_parts() {
        let a = finding_id(FindingKind::StaleCheck, &["ab", "c"]);
        assert_eq!(a, finding_id(FindingKind::StaleCheck, &["ab", "c"]));
        assert_ne!(a, finding_id(FindingKind::StaleCheck, &["a", "bc"]));
        assert_ne!(a, finding_id(FindingKind::DuplicateUse, &["ab", "c"]));
        assert_eq!(a.len(), 32);
    }

    #[test]
    fn kind_names_round_trip_and_precedence_is_declaration_order() {
        for k in FindingKind::ALL {
            assert_eq!(FindingKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
        assert!(FindingKind::UncheckedUse < FindingKind::AuthzDrift);
        assert!(FindingKind::AuthzDrift < FindingKind::DuplicateUse);
        assert!(FindingKind::DuplicateUse < FindingKind::StaleCheck);
    }
}
