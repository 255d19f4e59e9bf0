//! What decoding one request yields: the events, and what was ignored or rejected and why.
//!
//! The reason enums here are the label values of the `toctou_ignored_total` and
//! `toctou_rejected_total` counters, so they are a closed set: adding one is a change to the
//! metrics interface that dashboards read.

use toctou_schema::Event;

/// The kind of telemetry a receiver takes in; a label value of the event counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Logs,
    K8sAudit,
    /// A database's change stream (`toctou run --cdc-postgres`): audit records only.
    Cdc,
}

impl Signal {
    pub const ALL: [Signal; 4] = [Signal::Traces, Signal::Logs, Signal::K8sAudit, Signal::Cdc];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::K8sAudit => "k8s_audit",
            Signal::Cdc => "cdc",
        }
    }
}

/// Why an item that decoded fine is not toctou data. Ignoring is normal (most spans of an
/// instrumented service are not checks or uses), so these are counted, never reported to the
/// client as errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// A span without `toctou.phase`.
    NoPhase,
    /// A log record without `toctou.audit.action`.
    NoAction,
    /// A Kubernetes `get`, `list` or `watch`: it changed nothing.
    ReadVerb,
    /// A Kubernetes verb that maps to no audit action (`impersonate`, `proxy`, ...).
    OtherVerb,
    /// A Kubernetes audit stage other than `ResponseComplete`; the same request shows up
    /// again at that stage.
    NonFinalStage,
    /// A Kubernetes request answered with status >= 400: it changed nothing.
    FailedRequest,
    /// The same (auditID, stage) twice in one body or replay file.
    Duplicate,
    /// Debezium records that are not row writes (`toctou_cdc::debezium::Skip`): a null-value
    /// tombstone, a snapshot read, a truncate, a heartbeat, transaction metadata, a schema
    /// change.
    CdcTombstone,
    CdcSnapshot,
    CdcTruncate,
    CdcHeartbeat,
    CdcTransaction,
    CdcSchemaChange,
}

impl IgnoreReason {
    pub const ALL: [IgnoreReason; 13] = [
        IgnoreReason::NoPhase,
        IgnoreReason::NoAction,
        IgnoreReason::ReadVerb,
        IgnoreReason::OtherVerb,
        IgnoreReason::NonFinalStage,
        IgnoreReason::FailedRequest,
        IgnoreReason::Duplicate,
        IgnoreReason::CdcTombstone,
        IgnoreReason::CdcSnapshot,
        IgnoreReason::CdcTruncate,
        IgnoreReason::CdcHeartbeat,
        IgnoreReason::CdcTransaction,
        IgnoreReason::CdcSchemaChange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            IgnoreReason::NoPhase => "no_phase",
            IgnoreReason::NoAction => "no_action",
            IgnoreReason::ReadVerb => "read_verb",
            IgnoreReason::OtherVerb => "other_verb",
            IgnoreReason::NonFinalStage => "non_final_stage",
            IgnoreReason::FailedRequest => "failed_request",
            IgnoreReason::Duplicate => "duplicate",
            IgnoreReason::CdcTombstone => "tombstone",
            IgnoreReason::CdcSnapshot => "snapshot",
            IgnoreReason::CdcTruncate => "truncate",
            IgnoreReason::CdcHeartbeat => "heartbeat",
            IgnoreReason::CdcTransaction => "transaction",
            IgnoreReason::CdcSchemaChange => "schema_change",
        }
    }

    /// Each reason arises from exactly one signal, which keeps the label pairs bounded.
    pub fn signal(self) -> Signal {
        match self {
            IgnoreReason::NoPhase => Signal::Traces,
            IgnoreReason::NoAction => Signal::Logs,
            IgnoreReason::ReadVerb
            | IgnoreReason::OtherVerb
            | IgnoreReason::NonFinalStage
            | IgnoreReason::FailedRequest
            | IgnoreReason::Duplicate => Signal::K8sAudit,
            IgnoreReason::CdcTombstone
            | IgnoreReason::CdcSnapshot
            | IgnoreReason::CdcTruncate
            | IgnoreReason::CdcHeartbeat
            | IgnoreReason::CdcTransaction
            | IgnoreReason::CdcSchemaChange => Signal::Cdc,
        }
    }

    /// The reason a Debezium record is not a write.
    pub fn of_skip(skip: toctou_cdc::debezium::Skip) -> IgnoreReason {
        use toctou_cdc::debezium::Skip;
        match skip {
            Skip::Tombstone => IgnoreReason::CdcTombstone,
            Skip::Snapshot => IgnoreReason::CdcSnapshot,
            Skip::Truncate => IgnoreReason::CdcTruncate,
            Skip::Heartbeat => IgnoreReason::CdcHeartbeat,
            Skip::Transaction => IgnoreReason::CdcTransaction,
            Skip::SchemaChange => IgnoreReason::CdcSchemaChange,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl RejectReason {
    /// The reason a Debezium record is refused: not a change event as documented, an `op`
    /// toctou does not know, or no key to name its row by.
    pub fn of_debezium(kind: toctou_cdc::debezium::RejectKind) -> RejectReason {
        use toctou_cdc::debezium::RejectKind;
        match kind {
            RejectKind::Malformed => RejectReason::MalformedJson,
            RejectKind::UnknownOp => RejectReason::BadAttribute,
            RejectKind::NoKey => RejectReason::MissingResource,
        }
    }
}

/// Why input was refused, for a whole request or for one span or record in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The body is not a valid protobuf message of the expected type.
    MalformedProtobuf,
    /// The body is not valid JSON, or not of the expected shape.
    MalformedJson,
    /// A `Content-Type` the endpoint does not take.
    UnsupportedContentType,
    /// A `Content-Encoding` the endpoint does not take, or a body that fails to decompress.
    BadEncoding,
    /// The body is larger than `max_request_bytes`, as received or once decompressed.
    TooLarge,
    /// The request body could not be read to its end (client went away mid-body).
    ReadError,
    /// A method other than POST on a receiver path.
    MethodNotAllowed,
    /// A span or record without `toctou.resource` (or a Kubernetes event without an object).
    MissingResource,
    /// An attribute or field with a value outside its allowed set or of the wrong type.
    BadAttribute,
    /// A value toctou keeps (resource, request id, service name, ...) longer than
    /// `attrs::MAX_VALUE_BYTES`.
    AttributeTooLong,
    /// A trace or span id of the wrong length, or no trace id where one is needed.
    BadId,
    /// The sink was full: the client is told to retry.
    Backpressure,
    /// The sink is gone (shutting down): the client is told to retry elsewhere or later.
    SinkClosed,
    /// No bearer token, or one that is not in the listener's token set (`collector::auth`).
    Unauthenticated,
}

impl RejectReason {
    pub const ALL: [RejectReason; 14] = [
        RejectReason::MalformedProtobuf,
        RejectReason::MalformedJson,
        RejectReason::UnsupportedContentType,
        RejectReason::BadEncoding,
        RejectReason::TooLarge,
        RejectReason::ReadError,
        RejectReason::MethodNotAllowed,
        RejectReason::MissingResource,
        RejectReason::BadAttribute,
        RejectReason::AttributeTooLong,
        RejectReason::BadId,
        RejectReason::Backpressure,
        RejectReason::SinkClosed,
        RejectReason::Unauthenticated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedProtobuf => "malformed_protobuf",
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::UnsupportedContentType => "unsupported_content_type",
            RejectReason::BadEncoding => "bad_encoding",
            RejectReason::TooLarge => "too_large",
            RejectReason::ReadError => "read_error",
            RejectReason::MethodNotAllowed => "method_not_allowed",
            RejectReason::MissingResource => "missing_resource",
            RejectReason::BadAttribute => "bad_attribute",
            RejectReason::AttributeTooLong => "attribute_too_long",
            RejectReason::BadId => "bad_id",
            RejectReason::Backpressure => "backpressure",
            RejectReason::SinkClosed => "sink_closed",
            RejectReason::Unauthenticated => "unauthenticated",
        }
    }
}

/// One span, log record or audit event that was refused, with a message naming the item and
/// what was wrong with it (the text goes back to the client in `partial_success`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
        }
    }
}

/// Counts of ignored items by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IgnoredCounts([u64; IgnoreReason::ALL.len()]);

impl IgnoredCounts {
    pub fn add(&mut self, reason: IgnoreReason) {
        self.0[reason.index()] += 1;
    }

    pub fn get(&self, reason: IgnoreReason) -> u64 {
        self.0[reason.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn merge(&mut self, other: &IgnoredCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    /// The reasons with a non-zero count, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (IgnoreReason, u64)> + '_ {
        IgnoreReason::ALL
            .into_iter()
            .map(|r| (r, self.get(r)))
            .filter(|(_, n)| *n > 0)
    }
}

/// Counts of rejected items by reason, for rejections that are not listed one by one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejectedCounts([u64; RejectReason::ALL.len()]);

impl RejectedCounts {
    pub fn add(&mut self, reason: RejectReason) {
        self.0[reason as usize] += 1;
    }

    pub fn get(&self, reason: RejectReason) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// The result of decoding one request: the good events (in input order), and the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    pub events: Vec<Event>,
    pub ignored: IgnoredCounts,
    pub rejected: Vec<Rejection>,
    /// Rejections past those in `rejected`, counted by reason without a message: a body of
    /// JSON lines can hold millions of two-byte bad lines, and a message each would cost
    /// tens of times the body (see [`MAX_LISTED_ERRORS`]).
    pub rejected_unlisted: RejectedCounts,
}

/// How many rejection messages go back to a client in one `error_message`: enough to fix
/// the instrumentation, short enough that a batch of bad spans does not echo itself back.
const MAX_MESSAGES: usize = 5;

/// How many rejection messages a receipt lists (the audit webhook's `errors`); bad lines of
/// a JSON-lines body past this many are only counted, in [`Decoded::rejected_unlisted`].
pub(crate) const MAX_LISTED_ERRORS: usize = 10;

impl Decoded {
    /// The `error_message` of an OTLP partial success, e.g. `rejected 2 of 7 spans: span
    /// 00f0...: missing attribute toctou.resource; ...`. Empty when nothing was rejected, as
    /// the OTLP spec asks for a fully accepted request.
    pub fn error_message(&self, noun: &str) -> String {
        rejection_summary(
            &self.rejected,
            self.rejected_total(),
            self.item_count(),
            noun,
        )
    }

    /// Items rejected, listed or not.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.len() as u64 + self.rejected_unlisted.total()
    }

    /// Items seen: accepted, ignored and rejected.
    pub fn item_count(&self) -> u64 {
        self.events.len() as u64 + self.ignored.total() + self.rejected_total()
    }
}

/// See [`Decoded::error_message`]; shared with receivers that keep only the rejections.
/// `total` counts the unlisted rejections too.
pub(crate) fn rejection_summary(
    listed: &[Rejection],
    total: u64,
    items: u64,
    noun: &str,
) -> String {
    if total == 0 {
        return String::new();
    }
    let mut msg = format!("rejected {total} of {items} {noun}");
    for (i, r) in listed.iter().take(MAX_MESSAGES).enumerate() {
        msg.push_str(if i == 0 { ": " } else { "; " });
        msg.push_str(&r.message);
    }
    let shown = listed.len().min(MAX_MESSAGES) as u64;
    if shown > 0 && total > shown {
        msg.push_str(&format!("; and {} more", total - shown));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in RejectReason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate {}", r.as_str());
            assert!(r
                .as_str()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        for r in IgnoreReason::ALL {
            assert!(seen.insert(r.as_str()), "duplicate {}", r.as_str());
            assert_eq!(IgnoreReason::ALL[r.index()], r);
        }
    }

    #[test]
    fn error_message_caps_the_list() {
        let mut d = Decoded::default();
        assert_eq!(d.error_message("spans"), "");
        for i in 0..7 {
            d.rejected.push(Rejection::new(
                RejectReason::MissingResource,
                format!("span {i}: missing attribute toctou.resource"),
            ));
        }
        d.ignored.add(IgnoreReason::NoPhase);
        let m = d.error_message("spans");
        assert!(
            m.starts_with("rejected 7 of 8 spans: span 0: missing"),
            "{m}"
        );
        assert!(m.contains("span 4:"), "{m}");
        assert!(!m.contains("span 5:"), "{m}");
        assert!(m.ends_with("; and 2 more"), "{m}");
    }

    #[test]
    fn ignored_counts_merge_and_iterate() {
        let mut a = IgnoredCounts::default();
        a.add(IgnoreReason::ReadVerb);
        let mut b = IgnoredCounts::default();
        b.add(IgnoreReason::ReadVerb);
        b.add(IgnoreReason::Duplicate);
        a.merge(&b);
        assert_eq!(a.total(), 3);
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            vec![(IgnoreReason::ReadVerb, 2), (IgnoreReason::Duplicate, 1)]
        );
    }
}
