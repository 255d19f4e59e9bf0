//! Pending creates: per resource, the first create (a use with operation `create`, or an
//! audit `create`) until `pair_ttl` after it, when it is reported as `partial_create` unless
//! a `finalize` came in between. A `delete` forgets it at once (nothing is left half-made,
//! and a re-create is no duplicate).
//!
//! A finalized create is kept until its deadline all the same, so that a second create by
//! another request shortly after the first was finalized is still a duplicate; such a
//! duplicate re-opens the create (the resource was made again) with a deadline of its own.
//!
//! Only resource types (`toctou_schema::resource_type`) that have been seen finalizing are
//! reported: a system that never sends `finalize` (plain Kubernetes objects, a service that
//! creates in one step) would otherwise make every create a false `partial_create`.
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
use toctou_schema::{hex_id, resource_type, Finding, SpanId, TraceId, UseRef};
use xxhash_rust::xxh3::xxh3_64;

/// Requests remembered per pending create as having made a duplicate already reported.
/// Beyond it, the other half of a further duplicate may be reported a second time.
const MAX_DUPLICATE_CREATORS: usize = 64;

/// Resource types remembered as finalizing. Types are few (they are what a resource name
/// starts with); past this, new types are not learned and their creates are not reported.
pub(crate) const MAX_FINALIZING_TYPES: usize = 65_536;

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
    /// A `finalize` came after the latest create: its deadline passes without a finding.
    pub finalized: bool,
}

/// Create deadlines: (resource slot, resource generation, create seq).
pub(crate) struct Creates {
    pub deadlines: TimerQueue<(u32, u32, u32)>,
    pub len: usize,
    next_seq: u32,
    /// Hashes of the resource types seen finalizing.
    finalizing_types: hashbrown::HashSet<u64>,
}

impl Creates {
    pub fn new() -> Creates {
        Creates {
            deadlines: TimerQueue::new(),
            len: 0,
            next_seq: 0,
            finalizing_types: hashbrown::HashSet::new(),
        }
    }

    fn learn_finalizing(&mut self, resource: &str) {
        if self.finalizing_types.len() < MAX_FINALIZING_TYPES {
            self.finalizing_types
                .insert(xxh3_64(resource_type(resource).as_bytes()));
        }
    }

    fn finalizes(&self, resource: &str) -> bool {
        self.finalizing_types
            .contains(&xxh3_64(resource_type(resource).as_bytes()))
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

    fn start_create(&mut self, resource: u32, pc: PendingCreate) {
        let time = pc.time;
        let slot = self.sym.resources.retain(resource);
        self.sym.resources.value_mut(slot).create = Some(Box::new(pc));
        self.creates.len += 1;
        self.set_create_deadline(slot, time);
    }

    /// (Re)arms the resource's create deadline at `time + pair_ttl`; a deadline armed
    /// before is recognised as stale by its sequence number when it fires.
    fn set_create_deadline(&mut self, slot: u32, time: u64) {
        let seq = self.creates.next_seq;
        self.creates.next_seq = self.creates.next_seq.wrapping_add(1);
        let gen = self.sym.resources.gen(slot);
        self.pending_create_mut(slot).seq = seq;
        self.creates
            .deadlines
            .push(time.saturating_add(self.ttl_ns), (slot, gen, seq));
    }

    /// A duplicate create after the first was finalized made the resource again: it is
    /// unfinished until a finalize follows this create too.
    fn reopen_create(&mut self, resource: u32, time: u64) {
        let pc = self.pending_create_mut(resource);
        if pc.finalized {
            pc.finalized = false;
            self.set_create_deadline(resource, time);
        }
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
                    finalized: false,
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
            Claim::Duplicate(prior) => {
                self.reopen_create(s.resource, s.start_ns);
                Some(prior)
            }
        }
    }

    /// An audit `create`: starts or joins the pending create, or reports a duplicate create
    /// by another known request.
    pub(crate) fn create_from_audit(&mut self, a: &AuditItem, out: &mut Vec<Finding>) {
        let write = |e: &mut Engine| AuditWrite::new(a, &mut e.sym.long);
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
                    finalized: false,
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
                self.reopen_create(a.resource, a.time);
                let finding = self.audit_duplicate_finding(a, prior);
                self.emit(finding, a.time, out);
            }
        }
    }

    /// `finalize`: the pending create is complete, and the resource's type finalizes.
    pub(crate) fn finalize_create(&mut self, resource: u32) {
        let name = self.sym.resource_name(resource);
        self.creates.learn_finalizing(name);
        if let Some(pc) = self.sym.resources.value_mut(resource).create.as_deref_mut() {
            pc.finalized = true;
        }
    }

    /// `delete`: nothing is left half-made, and a create after it is a new one.
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
        if !pc.finalized && self.creates.finalizes(self.sym.resource_name(slot)) {
            let finding = self.partial_create_finding(slot, &pc, at, evicted);
            self.emit(finding, at, out);
        }
        self.drop_create(slot, pc);
        true
    }

    fn enforce_max_creates(&mut self, out: &mut Vec<Finding>) {
        while self.creates.len > self.config.max_creates {
            if !self.evict_oldest_create(out) {
                break;
            }
        }
    }

    /// Decides the create due first now (reporting `partial_create` as its deadline
    /// would); false if none is pending.
    pub(crate) fn evict_oldest_create(&mut self, out: &mut Vec<Finding>) -> bool {
        while let Some((_, (slot, gen, seq))) = self.creates.deadlines.pop() {
            let at = self.clock;
            if self.decide_create(slot, gen, seq, at, true, out) {
                self.stats.count_evicted(EvictedState::Create);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests;
