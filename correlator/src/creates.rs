//! Pending creates: per resource, the first create (a use with operation `create`, or an
//! audit `create`) until a `finalize` or `delete` clears it, or `pair_ttl` passes and it is
//! reported as `partial_create`.
//!
//! A create use and an audit create from the same request are one create, whichever is
//! processed first. A create by another known request is a duplicate; that request is
//! remembered on the pending create so that its other half (span or audit record) does not
//! report the same duplicate twice.

use crate::compact::Compact;
use crate::engine::Engine;
use crate::item::{AuditItem, SpanItem};
use crate::metrics::EvictedState;
use crate::resources::AuditWrite;
use crate::timer::TimerQueue;
use toctou_schema::{hex_id, Finding, SpanId, TraceId, UseRef};

/// Requests remembered per pending create as having made a duplicate already reported.
/// Beyond it, the other half of a further duplicate may be reported a second time.
const MAX_DUPLICATE_CREATORS: usize = 64;

pub(crate) struct PendingCreate {
    /// Event time of the first create.
    pub time: u64,
    /// The creating request; `None` while only known from an audit record without one.
    pub request: Compact,
    /// Service and operation of whichever half came first.
    pub profile: u32,
    pub trace: TraceId,
    /// The create use's span; zero while only known from an audit record.
    pub span: SpanId,
    pub use_time: Option<u64>,
    /// The audit create, when one has been seen.
    pub audit: Option<AuditWrite>,
    /// Tells this create's deadline timer from one set for an earlier create.
    pub seq: u32,
    /// Other requests whose duplicate create was reported.
    pub duplicates: Vec<Compact>,
}

/// Create deadlines: (resource slot, resource generation, create seq).
pub(crate) struct Creates {
    pub deadlines: TimerQueue<(u32, u32, u32)>,
    pub len: usize,
    next_seq: u32,
}

impl Creates {
    pub fn new() -> Creates {
        Creates {
            deadlines: TimerQueue::new(),
            len: 0,
            next_seq: 0,
        }
    }
}

/// Who a create came from.
enum Claim {
    /// A new pending create was registered.
    First,
    /// The same create as the pending one (same request, or one that cannot be told apart).
    Same,
    /// Another known request created it first.
    Duplicate(UseRef),
}

impl Engine {
    fn prior_create(&self, pc: &PendingCreate) -> UseRef {
        UseRef {
            request_id: pc.request.to_string_or_empty(&self.sym.long),
            trace_id: hex_id(&pc.trace),
            span_id: hex_id(&pc.span),
            time_ns: pc.time,
        }
    }

    /// Registers the create or matches it to the pending one of the resource.
    fn claim_create(&mut self, resource: u32, request: &Compact) -> Claim {
        let Some(pc) = self.sym.resources.value(resource).create.as_deref() else {
            return Claim::First;
        };
        if request.is_none() || pc.request == *request || pc.duplicates.iter().any(|d| d == request)
        {
            return Claim::Same;
        }
        if pc.request.is_none() {
            let request = request.share(&mut self.sym.long);
            let pc = self.pending_create_mut(resource);
            pc.request = request;
            return Claim::Same;
        }
        let prior = self.prior_create(pc);
        if pc.duplicates.len() < MAX_DUPLICATE_CREATORS {
            let request = request.share(&mut self.sym.long);
            self.pending_create_mut(resource).duplicates.push(request);
        }
        Claim::Duplicate(prior)
    }

    fn pending_create_mut(&mut self, resource: u32) -> &mut PendingCreate {
        self.sym
            .resources
            .value_mut(resource)
            .create
            .as_deref_mut()
            .expect("a pending create")
    }

    fn start_create(&mut self, resource: u32, mut pc: PendingCreate) {
        let deadline = pc.time.saturating_add(self.ttl_ns);
        pc.seq = self.creates.next_seq;
        self.creates.next_seq = self.creates.next_seq.wrapping_add(1);
        let seq = pc.seq;
        let slot = self.sym.resources.retain(resource);
        let gen = self.sym.resources.gen(slot);
        self.sym.resources.value_mut(slot).create = Some(Box::new(pc));
        self.creates.deadlines.push(deadline, (slot, gen, seq));
        self.creates.len += 1;
    }

    /// A successful use with operation `create`. Returns the prior create when this one is
    /// a duplicate by another request.
    pub(crate) fn create_from_use(
        &mut self,
        s: &SpanItem,
        out: &mut Vec<Finding>,
    ) -> Option<UseRef> {
        match self.claim_create(s.resource, &s.request) {
            Claim::First => {
                let pc = PendingCreate {
                    time: s.start_ns,
                    request: s.request.share(&mut self.sym.long),
                    profile: self.sym.profiles.retain(s.profile),
                    trace: s.trace,
                    span: s.span,
                    use_time: Some(s.start_ns),
                    audit: None,
                    seq: 0,
                    duplicates: Vec::new(),
                };
                self.start_create(s.resource, pc);
                self.enforce_max_creates(out);
                None
            }
            Claim::Same => {
                let pc = self.pending_create_mut(s.resource);
                if pc.use_time.is_none() {
                    pc.trace = s.trace;
                    pc.span = s.span;
                    pc.use_time = Some(s.start_ns);
                }
                None
            }
            Claim::Duplicate(prior) => Some(prior),
        }
    }

    /// An audit `create`: starts or joins the pending create, or reports a duplicate create
    /// by another known request.
    pub(crate) fn create_from_audit(&mut self, a: &AuditItem, out: &mut Vec<Finding>) {
        let write = |e: &mut Engine| AuditWrite {
            time: a.time,
            action: a.action,
            version: a.version.share(&mut e.sym.long),
            request: a.request.share(&mut e.sym.long),
            actor: a.actor.share(&mut e.sym.long),
        };
        match self.claim_create(a.resource, &a.request) {
            Claim::First => {
                let pc = PendingCreate {
                    time: a.time,
                    request: a.request.share(&mut self.sym.long),
                    profile: self.sym.profiles.retain(a.profile),
                    trace: a.trace,
                    span: [0; 8],
                    use_time: None,
                    audit: Some(write(self)),
                    seq: 0,
                    duplicates: Vec::new(),
                };
                self.start_create(a.resource, pc);
                self.enforce_max_creates(out);
            }
            Claim::Same => {
                if self.pending_create_mut(a.resource).audit.is_none() {
                    let w = write(self);
                    self.pending_create_mut(a.resource).audit = Some(w);
                }
            }
            Claim::Duplicate(prior) => {
                let finding = self.audit_duplicate_finding(a, prior);
                self.emit(finding, a.time, out);
            }
        }
    }

    /// `finalize` or `delete`: nothing is left half-made.
    pub(crate) fn clear_create(&mut self, resource: u32) {
        if let Some(pc) = self.sym.resources.value_mut(resource).create.take() {
            self.drop_create(resource, *pc);
        }
    }

    fn drop_create(&mut self, resource: u32, pc: PendingCreate) {
        let long = &mut self.sym.long;
        pc.request.release(long);
        for d in pc.duplicates {
            d.release(long);
        }
        if let Some(w) = pc.audit {
            for c in [w.version, w.request, w.actor] {
                c.release(long);
            }
        }
        self.sym.profiles.release(pc.profile);
        self.creates.len -= 1;
        self.sym.resources.release(resource);
    }

    /// Deadline timer: a create that saw no finalize is a partial create.
    pub(crate) fn fire_create_deadline(
        &mut self,
        deadline: u64,
        (slot, gen, seq): (u32, u32, u32),
        out: &mut Vec<Finding>,
    ) {
        self.decide_create(slot, gen, seq, deadline, false, out);
    }

    fn decide_create(
        &mut self,
        slot: u32,
        gen: u32,
        seq: u32,
        at: u64,
        evicted: bool,
        out: &mut Vec<Finding>,
    ) -> bool {
        let Some(state) = self.sym.resources.live_mut(slot, gen) else {
            return false;
        };
        if state.create.as_ref().is_none_or(|pc| pc.seq != seq) {
            return false;
        }
        let pc = *state.create.take().expect("checked above");
        let finding = self.partial_create_finding(slot, &pc, at, evicted);
        self.emit(finding, at, out);
        self.drop_create(slot, pc);
        true
    }

    fn enforce_max_creates(&mut self, out: &mut Vec<Finding>) {
        while self.creates.len > self.config.max_creates {
            let Some((_, (slot, gen, seq))) = self.creates.deadlines.pop() else {
                break;
            };
            let at = self.clock;
            if self.decide_create(slot, gen, seq, at, true, out) {
                self.stats.count_evicted(EvictedState::Create);
            }
        }
    }
}

#[cfg(test)]
mod tests;
