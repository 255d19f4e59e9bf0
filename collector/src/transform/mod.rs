//! Conversions from OTLP messages (the prost types) to toctou events, one file per signal.
//!
//! These are pure functions: no I/O, no metrics. They return a [`Decoded`] that says what
//! became an event, what was not toctou data, and what was refused and why; the receivers
//! count and answer from it. JSON input is first turned into the same prost types (see
//! [`crate::json`]), so each rule below exists once.
//!
//! [`Decoded`]: crate::decoded::Decoded

pub mod logs;
pub mod traces;

pub use logs::decode_logs;
pub use traces::decode_traces;

use crate::decoded::{Decoded, IgnoreReason, Rejection};
use toctou_schema::{hex_id, Event};

/// Files one item's outcome in `out`: its event, an ignore of `reason` when it is not
/// toctou data, or its rejection, labelled with which item it was (`item_label`).
pub(crate) fn file_outcome<T: Into<Event>>(
    out: &mut Decoded,
    outcome: Result<Option<T>, Rejection>,
    reason: IgnoreReason,
    label: impl FnOnce() -> String,
) {
    match outcome {
        Ok(Some(event)) => out.events.push(event.into()),
        Ok(None) => out.ignored.add(reason),
        Err(mut rejection) => {
            rejection.message = format!("{}: {}", label(), rejection.message);
            out.rejected.push(rejection);
        }
    }
}

/// Files one item under the service of its resource: `decide` makes its outcome from the
/// service's name. When the name is unusable (`service` is its rejection), an item that
/// `claims` to be toctou data is refused for it, and any other was never ours to take.
pub(crate) fn file_under<T: Into<Event>>(
    out: &mut Decoded,
    service: &Result<String, Rejection>,
    claims: bool,
    decide: impl FnOnce(&str) -> Result<Option<T>, Rejection>,
    reason: IgnoreReason,
    label: impl FnOnce() -> String,
) {
    let outcome = match service {
        Ok(service) => decide(service),
        Err(r) if claims => Err(r.clone()),
        Err(_) => Ok(None),
    };
    file_outcome(out, outcome, reason, label);
}

/// How an item is named in rejection messages: by its span id, which is what a developer
/// can search for in their tracing backend, or by position when it has none.
pub(crate) fn item_label(kind: &str, span_id: &[u8], index: usize) -> String {
    let id = hex_id(span_id);
    if id.is_empty() {
        format!("{kind} #{index}")
    } else {
        format!("{kind} {id}")
    }
}
