//! One request's database calls, in the order they ran, each statement read once per
//! distinct text (`toctou_sql::Interpreter`), and the request's endpoint once its root span
//! arrives.

use hashbrown::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use toctou_schema::{SpanId, TraceId};
use toctou_sql::{Param, Reading};

/// Statement text kept as evidence, at most (a finding carries its statements).
pub const MAX_EVIDENCE_BYTES: usize = 512;

/// One database call of a request.
pub struct Call {
    pub reading: Reading,
    /// Its parameters' values (empty when the instrumentation captured none). Only read to
    /// name rows and versions; dropped with the request.
    pub params: Vec<Param>,
    pub span_id: SpanId,
    pub start_ns: u64,
    pub end_ns: u64,
    /// The call failed (span status error, or a SQLSTATE).
    pub failed: bool,
    /// A serialization failure or deadlock (SQLSTATE 40001, 40P01): a race the database
    /// prevented.
    pub serialization_failure: bool,
    /// The statement as received (shared with every call of the same text).
    pub text: Arc<str>,
}

/// One request's calls.
#[derive(Default)]
pub struct Trace {
    pub calls: Vec<Call>,
    /// The root span's `http.route` (or name), once it arrived.
    pub route: Option<String>,
    pub service: String,
    /// `toctou.request_id`, when a span of the request carried it.
    pub request_id: Option<String>,
    /// Wall time the last span of it arrived.
    pub last_ns: u64,
    /// Its risks were counted (at its root span, or when it left without one).
    pub risks_counted: bool,
    /// Calls not kept (past `max_calls_per_trace`).
    pub dropped_calls: u64,
}

impl Trace {
    /// Places a call in start order (spans of one request can arrive in any order).
    pub fn insert(&mut self, call: Call) -> usize {
        let at = self.calls.partition_point(|c| c.start_ns <= call.start_ns);
        self.calls.insert(at, call);
        at
    }
}

/// Requests by trace id, at most `max`; the one seen longest ago leaves first.
pub struct Traces {
    map: HashMap<TraceId, Trace>,
    /// (arrival, trace) in arrival order; stale entries are skipped.
    order: VecDeque<(u64, TraceId)>,
    max: usize,
}

impl Traces {
    pub fn new(max: usize) -> Traces {
        Traces {
            map: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// The request's entry, made if new; `evicted` gets a request pushed out to make room.
    pub fn touch(
        &mut self,
        trace: TraceId,
        now_ns: u64,
        evicted: &mut Vec<(TraceId, Trace)>,
    ) -> &mut Trace {
        if !self.map.contains_key(&trace) {
            while self.map.len() >= self.max {
                match self.pop_oldest() {
                    Some(t) => evicted.push(t),
                    None => break,
                }
            }
        }
        self.order.push_back((now_ns, trace));
        // A hot request's entries would pile up: compact when they outnumber requests.
        if self.order.len() > 4 * self.map.len() + 1024 {
            let map = &self.map;
            self.order
                .retain(|(at, t)| map.get(t).is_some_and(|tr| tr.last_ns == *at));
        }
        let t = self.map.entry(trace).or_default();
        t.last_ns = now_ns;
        t
    }

    pub fn get(&self, trace: &TraceId) -> Option<&Trace> {
        self.map.get(trace)
    }

    /// Requests idle since before `before_ns`, removed.
    pub fn expire(&mut self, before_ns: u64, out: &mut Vec<(TraceId, Trace)>) {
        while let Some(&(at, trace)) = self.order.front() {
            if at >= before_ns {
                break;
            }
            self.order.pop_front();
            if self.map.get(&trace).is_some_and(|t| t.last_ns == at) {
                if let Some(t) = self.map.remove(&trace) {
                    out.push((trace, t));
                }
            }
        }
    }

    fn pop_oldest(&mut self) -> Option<(TraceId, Trace)> {
        while let Some((at, trace)) = self.order.pop_front() {
            if self.map.get(&trace).is_some_and(|t| t.last_ns == at) {
                return self.map.remove(&trace).map(|t| (trace, t));
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get_mut(&mut self, trace: &TraceId) -> Option<&mut Trace> {
        self.map.get_mut(trace)
    }

    /// A request done with (its entry in the arrival order goes stale and is skipped).
    pub fn remove(&mut self, trace: &TraceId) -> Option<Trace> {
        self.map.remove(trace)
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
