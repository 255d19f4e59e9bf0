//! [`Item`]: an event as the engine keeps it, from arrival until it is processed.
//!
//! Conversion happens once, on arrival: names are interned, short strings packed (see
//! `compact`), and the event's own strings freed. A buffered item is about 120 bytes with no
//! heap allocation of its own, against ~300 bytes plus half a dozen allocations for the
//! schema event. The conversion also derives the event's identity, used both to drop
//! redeliveries and to order events that share an event time.

use crate::compact::Compact;
use crate::intern::NO_REF;
use crate::symbols::Symbols;
use toctou_schema::{
    AuditAction, AuditEvent, CheckSource, Decision, Event, Phase, SpanEvent, SpanId, TraceId,
    UseOutcome,
};
use xxhash_rust::xxh3::Xxh3;

pub(crate) struct SpanItem {
    pub phase: Phase,
    pub start_ns: u64,
    pub end_ns: u64,
    pub trace: TraceId,
    pub span: SpanId,
    pub resource: u32,
    pub profile: u32,
    pub request: Compact,
    pub version: Compact,
    pub idem: Compact,
    pub decision: Decision,
    pub source: Option<CheckSource>,
    pub outcome: UseOutcome,
    pub permission_denied: bool,
}

impl SpanItem {
    /// Gives back every reference the item still holds.
    pub fn release(self, sym: &mut Symbols) {
        sym.resources.release(self.resource);
        sym.profiles.release(self.profile);
        self.request.release(&mut sym.long);
        self.version.release(&mut sym.long);
        self.idem.release(&mut sym.long);
    }
}

pub(crate) struct AuditItem {
    pub action: AuditAction,
    pub time: u64,
    /// The resource written; `NO_REF` for a policy change.
    pub resource: u32,
    /// The policy's name, for a policy change.
    pub policy: Compact,
    /// The emitting service (a profile with only a service).
    pub profile: u32,
    pub version: Compact,
    pub request: Compact,
    pub actor: Compact,
    pub source_id: Compact,
    pub trace: TraceId,
}

impl AuditItem {
    pub fn release(self, sym: &mut Symbols) {
        sym.resources.release(self.resource);
        sym.profiles.release(self.profile);
        for c in [
            self.policy,
            self.version,
            self.request,
            self.actor,
            self.source_id,
        ] {
            c.release(&mut sym.long);
        }
    }
}

pub(crate) enum Item {
    Span(SpanItem),
    Audit(AuditItem),
}

/// Where an event sorts among events of the same time: audit records first (a write at the
/// instant of a use is already visible to it), then checks, then uses (a check at the
/// instant of its use pairs with it).
fn rank(event: &Event) -> u64 {
    match event {
        Event::Audit(_) => 0,
        Event::Span(s) if s.phase == Phase::Check => 1,
        Event::Span(_) => 2,
        Event::Db(_) => 3,
    }
}

/// An item's place in the processing order, derived from the event alone: event time, then
/// rank (top two bits of `ident[0]`), then the rest of the identity hash. `ident` is also
/// the identity redeliveries are recognised by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct OrderKey {
    pub time: u64,
    pub ident: [u64; 2],
}

/// A separator that cannot occur in UTF-8 text keeps ("ab","c") apart from ("a","bc").
const SEP: &[u8] = &[0xff];

/// The splitmix64 finalizer: a cheap bijective mix of 64 bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Identity of a span from its ids: the hot path, so a few multiplies rather than a
/// general hash. Distinct (trace, span) pairs collide only by 128-bit chance.
fn span_identity(trace: &[u8; 16], span: &[u8; 8]) -> u128 {
    let t0 = u64::from_le_bytes(trace[..8].try_into().expect("8 bytes"));
    let t1 = u64::from_le_bytes(trace[8..].try_into().expect("8 bytes"));
    let s = u64::from_le_bytes(*span);
    let h0 = mix(t0 ^ mix(s ^ 0x9e37_79b9_7f4a_7c15));
    let h1 = mix(t1 ^ mix(s.rotate_left(32) ^ 0xc2b2_ae3d_27d4_eb4f) ^ h0);
    (u128::from(h0) << 64) | u128::from(h1)
}

fn identity(event: &Event) -> u128 {
    match event {
        Event::Span(s) if s.trace_id != [0; 16] || s.span_id != [0; 8] => {
            span_identity(&s.trace_id, &s.span_id)
        }
        Event::Span(s) => {
            // No ids to go by: the span is what it says.
            let mut h = Xxh3::new();
            for part in [
                b"z" as &[u8],
                s.phase.as_str().as_bytes(),
                s.resource.as_bytes(),
                s.request_id.as_bytes(),
                &s.start_ns.to_le_bytes(),
                &s.end_ns.to_le_bytes(),
            ] {
                h.update(part);
                h.update(SEP);
            }
            h.digest128()
        }
        Event::Audit(a) => {
            let mut h = Xxh3::new();
            match &a.source_id {
                Some(id) => {
                    h.update(b"a");
                    h.update(SEP);
                    h.update(id.as_bytes());
                }
                None => {
                    for part in [
                        b"b" as &[u8],
                        a.action.as_str().as_bytes(),
                        a.resource.as_bytes(),
                        a.version.as_deref().unwrap_or("\u{0}none").as_bytes(),
                        &a.time_ns.to_le_bytes(),
                        a.request_id.as_deref().unwrap_or("\u{0}none").as_bytes(),
                    ] {
                        h.update(part);
                        h.update(SEP);
                    }
                }
            }
            h.digest128()
        }
        Event::Db(d) => span_identity(&d.trace_id, &d.span_id),
    }
}

/// Converts an arriving event, taking references on its names; `None` for a database call,
/// which is inference's to read (the engine takes what inference makes of it).
pub(crate) fn convert(event: Event, sym: &mut Symbols) -> Option<(OrderKey, Item)> {
    let hash = identity(&event);
    let ident = [
        (rank(&event) << 62) | ((hash >> 64) as u64 >> 2),
        hash as u64,
    ];
    let key = OrderKey {
        time: event.event_time_ns(),
        ident,
    };
    let item = match event {
        Event::Span(s) => Item::Span(convert_span(s, sym)),
        Event::Audit(a) => Item::Audit(convert_audit(a, sym)),
        Event::Db(_) => return None,
    };
    Some((key, item))
}

fn convert_span(s: SpanEvent, sym: &mut Symbols) -> SpanItem {
    let profile = sym.acquire_profile(
        &s.service,
        &s.operation,
        s.policy.as_deref(),
        s.policy_version.as_deref(),
    );
    SpanItem {
        phase: s.phase,
        start_ns: s.start_ns,
        end_ns: s.end_ns,
        trace: s.trace_id,
        span: s.span_id,
        resource: sym.acquire_resource(s.resource),
        profile,
        request: Compact::encode_owned(s.request_id, &mut sym.long),
        version: Compact::encode_opt(s.version, &mut sym.long),
        idem: Compact::encode_opt(s.idempotency_key, &mut sym.long),
        decision: s.decision,
        source: s.source,
        outcome: s.outcome,
        permission_denied: s.permission_denied,
    }
}

fn convert_audit(a: AuditEvent, sym: &mut Symbols) -> AuditItem {
    let (resource, policy) = if a.action == AuditAction::PolicyChange {
        (NO_REF, Compact::encode_owned(a.resource, &mut sym.long))
    } else {
        (sym.acquire_resource(a.resource), Compact::none())
    };
    AuditItem {
        action: a.action,
        time: a.time_ns,
        resource,
        policy,
        profile: sym.acquire_profile(&a.service, "", None, None),
        version: Compact::encode_opt(a.version, &mut sym.long),
        request: Compact::encode_opt(a.request_id, &mut sym.long),
        actor: Compact::encode_opt(a.actor, &mut sym.long),
        source_id: Compact::encode_opt(a.source_id, &mut sym.long),
        trace: a.trace_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_stay_small() {
        assert!(
            std::mem::size_of::<SpanItem>() <= 112,
            "{}",
            std::mem::size_of::<SpanItem>()
        );
        assert!(
            std::mem::size_of::<Item>() <= 136,
            "{}",
            std::mem::size_of::<Item>()
        );
    }
}
