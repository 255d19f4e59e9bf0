//! Kubernetes audit events (`audit.k8s.io/v1` `Event` and `EventList`, as the audit webhook
//! backend posts them, and JSON lines of `Event`s, as the log backend writes them) to audit
//! events.
//!
//! Only what changed the cluster becomes an event: the `ResponseComplete` stage of a write
//! verb that did not fail. Everything else is counted as ignored, by reason.

use crate::attrs::{too_long, MAX_VALUE_BYTES};
use crate::budget;
use crate::decoded::{Decoded, IgnoreReason, RejectReason, Rejection, MAX_LISTED_ERRORS};
use crate::documents::{documents, Bad};
use crate::error::DecodeError;
use crate::json::{detect, metered, DocKind};
use crate::timestamp::parse_rfc3339;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use toctou_schema::conventions as c;
use toctou_schema::{AuditAction, AuditEvent, Event};

/// The stage at which a request's outcome is known; the other stages repeat the request.
const FINAL_STAGE: &str = "ResponseComplete";
/// Stands in for the namespace of a cluster-scoped object in the resource path.
const CLUSTER_SCOPE: &str = "_";

#[derive(Deserialize)]
struct EventList {
    /// Charged to the decode budget item by item (`crate::budget`): an `EventList` of
    /// millions of `{}` must not become millions of records.
    #[serde(default, deserialize_with = "metered")]
    items: Vec<AuditRecord>,
}

/// The fields of an audit `Event` that we read; the rest (request and response bodies can
/// be large) is skipped unparsed.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AuditRecord {
    #[serde(default, rename = "auditID")]
    audit_id: Option<String>,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default)]
    verb: Option<String>,
    #[serde(default)]
    user: Option<UserInfo>,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    response_status: Option<ResponseStatus>,
    #[serde(default)]
    response_object: Option<ResponseObject>,
    #[serde(default)]
    stage_timestamp: Option<String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct UserInfo {
    #[serde(default)]
    username: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    subresource: Option<String>,
    #[serde(default)]
    api_group: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
}

#[derive(Deserialize, Default)]
struct ResponseStatus {
    #[serde(default)]
    code: Option<i64>,
}

#[derive(Deserialize, Default)]
struct ResponseObject {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
}

/// The (auditID, stage) pairs already seen in one body or file.
pub(crate) type Seen = HashSet<(String, String)>;

/// One webhook body: an `EventList`, one `Event`, or JSON lines of them (as the log backend
/// writes them and log shippers forward such files). A bad line is rejected as one item,
/// named by its line, and the good lines are kept; a body without one good document is
/// refused whole, as a bad `Event` or `EventList` always was.
pub fn decode_k8s_audit(body: &[u8]) -> Result<Decoded, DecodeError> {
    let _meter = budget::Meter::open(body.len());
    let mut out = Decoded::default();
    let mut seen = Seen::new();
    // The line of each listed rejection from a good document; a bad one names its own.
    let mut lines: Vec<Option<usize>> = Vec::new();
    let (mut good, mut bad) = (0usize, 0usize);
    let mut first_bad = None;
    for doc in documents(body) {
        let failed = match doc {
            Ok(doc) => match decode_document(doc.raw, &mut seen, &mut out) {
                Ok(()) => {
                    good += 1;
                    lines.resize(out.rejected.len(), Some(doc.line));
                    continue;
                }
                // Past the budget the whole body is too large, not one line bad.
                Err(error @ DecodeError::OverBudget { .. }) => return Err(error),
                Err(error) => Bad::Refused { doc, error },
            },
            Err(not_json) => not_json,
        };
        bad += 1;
        // A message each for as many as a receipt lists; past that a bad line costs only
        // its count, however many two-byte lines a body holds.
        if bad > MAX_LISTED_ERRORS {
            out.rejected_unlisted.add(failed.reason());
            continue;
        }
        let e = failed.into_error();
        out.rejected.push(Rejection::new(e.reason(), e.to_string()));
        lines.push(None);
        first_bad.get_or_insert(e);
    }
    if good == 0 {
        return Err(first_bad.unwrap_or_else(|| {
            DecodeError::UnknownDocument(
                "empty body: expected an audit Event, EventList or JSON lines of Events".into(),
            )
        }));
    }
    // One document has no other line to tell it from.
    if good + bad > 1 {
        for (rejection, line) in out.rejected.iter_mut().zip(lines) {
            if let Some(line) = line {
                rejection.message = format!("line {line}: {}", rejection.message);
            }
        }
    }
    Ok(out)
}

/// One document known to be an audit `Event` or `EventList`, appended to `out`; `seen`
/// carries the deduplication across documents of one replay file.
pub(crate) fn decode_document(
    doc: &[u8],
    seen: &mut Seen,
    out: &mut Decoded,
) -> Result<(), DecodeError> {
    match detect(doc)? {
        DocKind::K8sEvent => {
            let record: AuditRecord = serde_json::from_slice(doc).map_err(budget::json_error)?;
            push(record, 0, seen, out);
        }
        DocKind::K8sEventList => {
            let list: EventList = serde_json::from_slice(doc).map_err(budget::json_error)?;
            for (i, record) in list.items.into_iter().enumerate() {
                push(record, i, seen, out);
            }
        }
        DocKind::Traces | DocKind::Logs => {
            return Err(DecodeError::UnknownDocument(
                "an OTLP request is not a kubernetes audit Event or EventList".into(),
            ))
        }
    }
    Ok(())
}

fn push(record: AuditRecord, index: usize, seen: &mut Seen, out: &mut Decoded) {
    match audit_event(record, seen) {
        Ok(Ok(event)) => out.events.push(Event::Audit(event)),
        Ok(Err(reason)) => out.ignored.add(reason),
        // Past the listed ones a rejection is only counted: an `EventList` of a million
        // `{}` items must not cost a message each.
        Err((_, rejection)) if out.rejected.len() >= MAX_LISTED_ERRORS => {
            out.rejected_unlisted.add(rejection.reason);
        }
        Err((label, mut rejection)) => {
            let label = label.unwrap_or_else(|| format!("audit event #{index}"));
            rejection.message = format!("{label}: {}", rejection.message);
            out.rejected.push(rejection);
        }
    }
}

type Outcome = Result<Result<AuditEvent, IgnoreReason>, (Option<String>, Rejection)>;

fn audit_event(r: AuditRecord, seen: &mut Seen) -> Outcome {
    // The same bound as span attributes (`attrs::MAX_VALUE_BYTES`): an API server never
    // sends an id, name or user anywhere near it, and whatever is kept lives on in the
    // correlator's state and in findings. Checked before the id is remembered or quoted.
    if let Some(len) = r
        .audit_id
        .as_ref()
        .map(String::len)
        .filter(|n| *n > MAX_VALUE_BYTES)
    {
        return Err((None, too_long("auditID", len)));
    }
    let audit_id = r.audit_id.filter(|id| !id.is_empty());
    let stage = r.stage.unwrap_or_default();
    let label = audit_id.as_ref().map(|id| format!("audit event {id}"));
    let reject = |reason, message: String| -> Outcome {
        Err((label.clone(), Rejection::new(reason, message)))
    };

    // Without an auditID there is nothing to tell a repeat from a second request by.
    if let Some(id) = &audit_id {
        if !seen.insert((id.clone(), stage.clone())) {
            return Ok(Err(IgnoreReason::Duplicate));
        }
    }
    if stage != FINAL_STAGE {
        return Ok(Err(IgnoreReason::NonFinalStage));
    }
    let action = match r.verb.as_deref().unwrap_or_default() {
        "create" => AuditAction::Create,
        "update" | "patch" => AuditAction::Update,
        "delete" | "deletecollection" => AuditAction::Delete,
        "get" | "list" | "watch" => return Ok(Err(IgnoreReason::ReadVerb)),
        _ => return Ok(Err(IgnoreReason::OtherVerb)),
    };
    if r.response_status.and_then(|s| s.code).unwrap_or(0) >= 400 {
        return Ok(Err(IgnoreReason::FailedRequest));
    }

    let Some(object) = r.object_ref else {
        return reject(RejectReason::MissingResource, "no objectRef".into());
    };
    let Some(kind) = object.resource.filter(|s| !s.is_empty()) else {
        return reject(
            RejectReason::MissingResource,
            "no objectRef.resource".into(),
        );
    };
    let meta = r
        .response_object
        .and_then(|o| o.metadata)
        .unwrap_or_default();
    // A create with generateName has no name in objectRef; the server-chosen one is in the
    // response.
    let Some(name) = object.name.filter(|s| !s.is_empty()).or(meta.name) else {
        return reject(
            RejectReason::MissingResource,
            "no objectRef.name nor responseObject.metadata.name".into(),
        );
    };
    // The API server puts a Namespace's own name in objectRef.namespace when it is deleted
    // or updated but not when it is created; Namespaces are cluster-scoped, so the path
    // ignores it and every verb names the same resource.
    let core_namespace =
        kind == "namespaces" && object.api_group.as_deref().unwrap_or("").is_empty();
    let namespace = match object.namespace.filter(|s| !s.is_empty()) {
        Some(ns) if !core_namespace => ns,
        _ => CLUSTER_SCOPE.to_string(),
    };
    let mut resource = format!("k8s/{kind}/{namespace}/{name}");
    if let Some(sub) = object.subresource.filter(|s| !s.is_empty()) {
        resource.push('/');
        resource.push_str(&sub);
    }

    let Some(stamp) = r.stage_timestamp else {
        return reject(RejectReason::BadAttribute, "no stageTimestamp".into());
    };
    let time_ns = match parse_rfc3339(&stamp) {
        Ok(t) => t,
        Err(why) => return reject(RejectReason::BadAttribute, format!("stageTimestamp: {why}")),
    };
    // The version after the change is the response's: for an update, objectRef carries the
    // resourceVersion the client sent, which is the version before it.
    let version = meta
        .resource_version
        .filter(|s| !s.is_empty())
        .or(object.resource_version.filter(|s| !s.is_empty()));
    let request_id = r
        .annotations
        .and_then(|mut a| a.remove(c::REQUEST_ID))
        .filter(|s| !s.is_empty());
    let actor = r.user.and_then(|u| u.username).filter(|s| !s.is_empty());
    for (field, value) in [
        ("the resource (from objectRef)", Some(&resource)),
        ("resourceVersion", version.as_ref()),
        (c::REQUEST_ID, request_id.as_ref()),
        ("user.username", actor.as_ref()),
    ] {
        if let Some(len) = value.map(String::len).filter(|n| *n > MAX_VALUE_BYTES) {
            return Err((label, too_long(field, len)));
        }
    }
    Ok(Ok(AuditEvent {
        action,
        resource,
        version,
        request_id,
        actor,
        time_ns,
        service: c::K8S_SERVICE.to_string(),
        source_id: audit_id,
        trace_id: [0; 16],
        span_id: [0; 8],
    }))
}

#[cfg(test)]
mod tests;
