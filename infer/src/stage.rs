//! [`Inference`]: database calls in, checks, uses and attributed change records out.
//!
//! For each write of a request (an `UPDATE`, `DELETE` or `INSERT` span), the latest earlier
//! read of the same row (by its key), or for an insert the latest earlier read that tested
//! the inserted values (`SELECT 1 FROM users WHERE email = %s`), makes a pair. A protected
//! pair (`FOR UPDATE`, a version predicate, a guarded relative update, `ON CONFLICT`,
//! `INSERT ... WHERE NOT EXISTS`, a serializable transaction) is no race and is counted. An
//! unprotected one waits for the write's own change record; once found, the stage hands the
//! engine a check (the read), the change record with the request that made it, and a use
//! (the write) that says which version it replaced. The engine then decides as it does for
//! toctou spans: versions first, commit times where no version decides.
//!
//! What the write replaced is the version of the row's previous change in commit order (the
//! change stream is the truth of what was committed); what the read saw is the version the
//! write's own parameters carry (`SET version = %s` with the read version plus one, or
//! `WHERE version = %s`).

use crate::changes::{same_value, shows, Changes, Held, PendingWrite, SpanRef, Target};
use crate::config::Config;
use crate::recent::Recent;
use crate::risks::{RiskReport, Risks, Seen};
use crate::stats::Stats;
use crate::traces::{truncated, Call, Trace, Traces, MAX_EVIDENCE_BYTES};
use hashbrown::{HashMap, HashSet};
use std::collections::VecDeque;
use toctou_cdc::{Op, RowChange};
use toctou_schema::{
    hex_id, AuditAction, AuditEvent, DbParams, DbSpanEvent, Decision, Event, Finding, Inferred,
    Phase, SpanEvent, SpanId, TraceId, UseOutcome,
};
use toctou_sql::{
    indexed_params, pairs, parse_params_for, read_then_write, row_key, serialization_failure,
    value, Interpreter, Operation, Protection, Statement,
};

/// The version a check-then-insert's check and use carry: the read found no row.
const ABSENT: &str = "absent";

/// A change handed on without a request, still matchable by a late write span.
struct Released {
    audit: AuditEvent,
    change: Option<RowChange>,
    /// The version it replaced, when known.
    replaced: Option<String>,
    /// When the row's previous change committed (0: none seen).
    after_ns: u64,
    /// A write was paired with it already.
    claimed: bool,
}

/// Inferred uses remembered for the findings they may lead to (their evidence).
const MAX_EVIDENCE: usize = 100_000;

pub struct Inference {
    config: Config,
    interpreter: Interpreter,
    traces: Traces,
    /// Primary key columns by table, as the change stream described them.
    keys: HashMap<String, Vec<String>>,
    pending: HashMap<u64, PendingWrite>,
    /// (made, id) in the order made: what the hold expires.
    pending_order: VecDeque<(u64, u64)>,
    /// Waiting writes by row (default name) and, for inserts of tested values, by table.
    pending_by_row: HashMap<String, Vec<u64>>,
    pending_by_table: HashMap<String, Vec<u64>>,
    changes: Changes,
    /// Changes already handed on without a request (passed, or held past the hold), kept
    /// one more hold: a write span later than that can still pair with its change where
    /// versions decide without it (see [`Inference::emit_late`]).
    released: HashMap<String, VecDeque<Released>>,
    released_order: VecDeque<(u64, String)>,
    /// The last committed version of each row handed on (by its name in the stream), and
    /// when it committed.
    versions: Recent<String, (Option<String>, u64)>,
    /// Evidence of the uses handed to the engine, by use span.
    evidence: Recent<SpanId, Inferred>,
    /// Requests that sent toctou spans: their own checks and uses win over inference.
    instrumented: Recent<TraceId, ()>,
    /// Some database call has arrived (until then toctou spans cost nothing here).
    seen_db: bool,
    /// Requests whose entry span arrived: done at the next tick.
    finished: Vec<TraceId>,
    risks: Risks,
    stats: Stats,
    next_id: u64,
}

impl Inference {
    pub fn new(config: Config) -> Inference {
        Inference {
            traces: Traces::new(config.max_traces),
            interpreter: Interpreter::new(toctou_sql::DEFAULT_CAPACITY),
            keys: HashMap::new(),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            pending_by_row: HashMap::new(),
            pending_by_table: HashMap::new(),
            changes: Changes::default(),
            released: HashMap::new(),
            released_order: VecDeque::new(),
            versions: Recent::new(config.max_versions),
            evidence: Recent::new(MAX_EVIDENCE),
            instrumented: Recent::new(config.max_traces),
            seen_db: false,
            finished: Vec::new(),
            risks: Risks::default(),
            stats: Stats::default(),
            next_id: 0,
            config,
        }
    }

    /// How long a change in doubt waits for more write spans (at most the hold).
    fn settle_ns(&self) -> u64 {
        self.config.settle.min(self.config.hold).as_nanos() as u64
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.cache_hits = self.interpreter.hits;
        s.cache_misses = self.interpreter.misses;
        s.held_changes = self.changes.len as u64;
        s.pending_writes = self.pending.len() as u64;
        s
    }

    pub fn risks(&self) -> RiskReport {
        self.risks.report()
    }

    /// A toctou span of request `trace`: its checks and uses are its own, and win over what
    /// its database calls would say.
    pub fn on_toctou_span(&mut self, trace: TraceId) {
        if self.seen_db && !self.instrumented.contains(&trace) {
            self.instrumented.insert(trace, ());
        }
    }

    /// One database call or root span.
    pub fn on_db(&mut self, d: DbSpanEvent, now_ns: u64, out: &mut Vec<Event>) {
        if d.statement.is_none() && self.traces.get(&d.trace_id).is_none() {
            // A root span whose request made no database call (it ends after its calls, so
            // they came first): nothing to name. Not kept, so that requests of services
            // without database spans cost nothing here.
            return;
        }
        self.seen_db = true;
        let mut evicted = Vec::new();
        let max_calls = self.config.max_calls_per_trace;
        let trace = self.traces.touch(d.trace_id, now_ns, &mut evicted);
        if trace.service.is_empty() {
            trace.service = d.service.clone();
        }
        if trace.request_id.is_none() {
            trace.request_id = d.request_id.clone();
        }
        if d.root {
            trace.route = d.route.clone().or(trace.route.take());
        }
        let mut written = None;
        if let Some(st) = &d.statement {
            self.stats.statements += 1;
            if trace.calls.len() >= max_calls {
                trace.dropped_calls += 1;
                self.stats.not_understood("too_many_calls");
            } else {
                let (text, reading) = self.interpreter.read_shared(&st.text);
                match reading.as_ref() {
                    Err(e) => self.stats.not_understood(e.reason()),
                    Ok(statement) => {
                        let params = match &st.params {
                            DbParams::None => Vec::new(),
                            DbParams::Rendered(r) => match parse_params_for(r, &statement.names) {
                                Ok(p) => p,
                                Err(_) => {
                                    self.stats.not_understood("parameters");
                                    Vec::new()
                                }
                            },
                            DbParams::Indexed(v) => indexed_params(v),
                        };
                        let is_write = matches!(
                            statement.operation,
                            Operation::Update | Operation::Delete | Operation::Insert
                        );
                        let serialization_failure =
                            st.status.as_deref().is_some_and(serialization_failure);
                        let at = trace.insert(Call {
                            reading: reading.clone(),
                            params,
                            span_id: d.span_id,
                            start_ns: d.start_ns,
                            end_ns: d.end_ns,
                            failed: st.failed || st.status.is_some(),
                            serialization_failure,
                            text,
                        });
                        if is_write {
                            written = Some(at);
                        }
                    }
                }
            }
        }
        let root_arrived = d.root && !trace.risks_counted;
        for (id, t) in evicted {
            self.stats.traces_evicted += 1;
            self.count_risks(&id, &t);
        }
        if let Some(w) = written {
            self.infer_pair(d.trace_id, w, now_ns, out);
        }
        if root_arrived {
            // The request's entry span ends after its calls: the request is done once the
            // batch it came in is read (an export groups spans by instrumentation scope, so
            // its calls can follow it in the same batch). At the next tick its risks are
            // counted and its calls let go.
            if let Some(t) = self.traces.get_mut(&d.trace_id) {
                t.risks_counted = true;
            }
            self.finished.push(d.trace_id);
        }
    }

    /// A record of the change stream, with its row change when the reader kept it.
    pub fn on_change(
        &mut self,
        audit: AuditEvent,
        change: Option<RowChange>,
        now_ns: u64,
        out: &mut Vec<Event>,
    ) {
        // Held changes are queued by the row's default name, which waiting writes know.
        let row = match &change {
            Some(c) => c.default_name(),
            None => audit.resource.clone(),
        };
        if let Some(c) = &change {
            let table = table_of(&row);
            if !c.key.is_empty() && !self.keys.contains_key(table) {
                self.keys.insert(
                    table.to_string(),
                    c.key.iter().map(|(k, _)| k.clone()).collect(),
                );
            }
        }
        // Held for attribution: changes without a request id (a transaction that named its
        // request wrote it from instrumented code, which reports its own checks and uses),
        // once database calls are arriving, and any change behind a held one of its row.
        // Every table, not only those some pair writes: a table's first changes can come
        // before the first spans that write it.
        let hold = self.config.change_stream
            && ((self.seen_db && audit.request_id.is_none()) || self.changes.holds(&row));
        // The stream is in commit order: the row's previous change is the last one held, or
        // else the last one handed on.
        let after_ns = self
            .changes
            .queues
            .get(&row)
            .and_then(|q| q.back())
            .map(|h| h.audit.time_ns)
            .or_else(|| self.versions.get(&audit.resource).map(|(_, t)| *t))
            .unwrap_or(0);
        if !hold {
            self.stats.change("passed");
            self.hand_on(row, audit, change, after_ns, now_ns, out);
            return;
        }
        let seq = self.changes.push(&row, audit, change, after_ns, now_ns);
        self.attribute_change(&row, seq, now_ns, false, false);
        while self.changes.len > self.config.max_held_changes {
            let Some(oldest) = self.changes.pop_expired(u64::MAX) else {
                break;
            };
            self.release(&oldest, u64::MAX, "evicted", out);
        }
        self.release(&row, now_ns, "unattributed", out);
    }

    /// Releases what the hold let go, drops writes whose change never came, and forgets
    /// requests gone idle (counting their risks).
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Event>) {
        let hold = self.config.hold.as_nanos() as u64;
        // Changes whose writer was in doubt: attributed among the writes come by now.
        let settled = now_ns.saturating_sub(self.settle_ns());
        while let Some((row, seq)) = self.changes.next_to_settle(settled) {
            if self.attribute_change(&row, seq, now_ns, false, false) {
                self.release(&row, now_ns, "unattributed", out);
            }
        }
        while let Some(row) = self.changes.pop_expired(now_ns.saturating_sub(hold)) {
            self.release(&row, now_ns, "unattributed", out);
        }
        while let Some(&(made, id)) = self.pending_order.front() {
            if made.saturating_add(hold) > now_ns && self.pending.len() <= self.config.max_pending {
                break;
            }
            self.pending_order.pop_front();
            if self.pending.get(&id).is_some_and(|p| p.own.is_none()) {
                // Its last chance: a held change it fits, in doubt or not.
                let rows = self.attribute_pending(id, now_ns, true);
                for row in &rows {
                    self.release(row, now_ns, "unattributed", out);
                }
                if self.pending.get(&id).is_some_and(|p| p.own.is_some()) {
                    continue;
                }
                self.take_pending(id);
                self.stats.pair("unmatched");
            }
        }
        self.finish_requests(now_ns);
        let idle = self.config.trace_idle.as_nanos() as u64;
        let mut gone = Vec::new();
        self.traces.expire(now_ns.saturating_sub(idle), &mut gone);
        for (id, t) in gone {
            self.count_risks(&id, &t);
        }
    }

    /// End of input: every held change goes, every waiting write is counted unmatched.
    pub fn flush(&mut self, out: &mut Vec<Event>) {
        let rows: Vec<String> = self.changes.queues.keys().cloned().collect();
        for row in rows {
            self.release(&row, u64::MAX, "unattributed", out);
        }
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            self.take_pending(id);
            self.stats.pair("unmatched");
        }
        self.finish_requests(u64::MAX);
        let mut gone = Vec::new();
        self.traces.expire(u64::MAX, &mut gone);
        for (id, t) in gone {
            self.count_risks(&id, &t);
        }
    }

    /// Counts the risks of the requests whose entry span arrived, and lets their calls go.
    fn finish_requests(&mut self, now_ns: u64) {
        for id in std::mem::take(&mut self.finished) {
            if let Some(t) = self.traces.remove(&id) {
                let risks = self.risks_of(&t);
                self.add_risks(&id, t.service, t.route, risks, now_ns.min(t.last_ns));
            }
        }
    }

    /// Marks the findings that came of inferred uses, with their statements.
    pub fn annotate(&self, findings: &mut [Finding]) {
        if self.evidence.is_empty() {
            return;
        }
        for f in findings {
            let Some(span) = span_from_hex(&f.use_span_id) else {
                continue;
            };
            if let Some(e) = self.evidence.get(&span) {
                f.inferred = Some(e.clone());
            }
        }
    }

    /// Pairs the write at `w` of request `trace` with the read before it.
    fn infer_pair(&mut self, trace_id: TraceId, w: usize, now_ns: u64, out: &mut Vec<Event>) {
        let Some(trace) = self.traces.get(&trace_id) else {
            return;
        };
        let write = &trace.calls[w];
        let Ok(ws) = write.reading.as_ref() else {
            return;
        };
        let request = trace
            .request_id
            .clone()
            .unwrap_or_else(|| hex_id(&trace_id));
        let schema = self.config.default_schema.clone();
        // A table's key as the change stream described it; until one of its changes came,
        // the columns the write pins (its version column aside): an ORM writes a row back
        // by its key.
        let guess: Vec<String> = ws
            .conditions
            .iter()
            .map(|c| c.column.clone())
            .filter(|c| *c != self.config.version_column)
            .collect();
        let keys = &self.keys;
        let write_table = ws.table.qualified(&schema);
        let key_columns = |table: &str| -> Option<Vec<String>> {
            match keys.get(table) {
                Some(k) => Some(k.clone()),
                None if table == write_table && !guess.is_empty() => Some(guess.clone()),
                None => Some(vec!["id".into()]),
            }
        };
        if write.serialization_failure {
            // The database refused it: a race prevented. A use that says so, for the
            // engine's count of prevented races.
            self.stats.pair("prevented");
            let resource = row_key(
                &toctou_sql::Call {
                    statement: ws,
                    params: &write.params,
                },
                &schema,
                &key_columns,
            )
            .map(|(t, k)| row_name(&t, &k))
            .unwrap_or_else(|| ws.table.qualified(&schema));
            out.push(Event::Span(inferred_span(
                Phase::Use,
                SpanSide {
                    resource,
                    request: request.clone(),
                    trace: trace_id,
                    service: &trace.service,
                    operation: operation_of(ws),
                },
                (write.span_id, write.start_ns, write.end_ns),
                None,
                UseOutcome::Conflict,
            )));
            return;
        }
        if write.failed || !self.config.change_stream {
            return;
        }
        // The request's calls before the write that were read and succeeded.
        let usable: Vec<usize> = (0..=w)
            .filter(|&i| {
                let c = &trace.calls[i];
                (i == w || !c.failed) && c.reading.is_ok()
            })
            .collect();
        let statements: Vec<&Statement> = usable
            .iter()
            .filter_map(|&i| trace.calls[i].reading.as_ref().as_ref().ok())
            .collect();
        let serializable = statements
            .iter()
            .any(|s| s.operation == Operation::Serializable);
        let calls: Vec<toctou_sql::Call<'_>> = usable
            .iter()
            .zip(&statements)
            .map(|(&i, s)| toctou_sql::Call {
                statement: s,
                params: &trace.calls[i].params,
            })
            .collect();
        let last = calls.len() - 1;
        let found = pairs(&calls, &schema, &key_columns, &self.config.version_column)
            .into_iter()
            .find(|p| p.write == last);
        let (read_at, target, checked_version, protection, read_filter) = match found {
            Some(p) => {
                let Some((table, key)) = row_key(&calls[last], &schema, &key_columns) else {
                    return;
                };
                let name = row_name(&table, &key);
                (
                    usable[p.read],
                    Target::Row { table, key, name },
                    p.checked_version,
                    p.protection,
                    p.filter,
                )
            }
            None if ws.operation == Operation::Insert => {
                match absent_read(&calls, last, &schema, self.config.hash_keys) {
                    Some(AbsentRead {
                        read,
                        table,
                        values,
                        resource,
                    }) => (
                        usable[read],
                        Target::Absent {
                            table,
                            values,
                            resource,
                        },
                        None,
                        ws.protection.clone(),
                        Vec::new(),
                    ),
                    None => return,
                }
            }
            None => return,
        };
        if serializable || protection != Protection::None {
            self.stats.pair("protected");
            return;
        }
        let read = &trace.calls[read_at];
        let written: Vec<(String, String)> = ws
            .writes
            .iter()
            .filter_map(|c| Some((c.column.clone(), value(&c.value, &write.params)?)))
            .collect();
        let (operation, action) = match ws.operation {
            Operation::Update => ("update", AuditAction::Update),
            Operation::Delete => ("delete", AuditAction::Delete),
            _ => ("create", AuditAction::Create),
        };
        self.next_id += 1;
        let p = PendingWrite {
            id: self.next_id,
            trace: trace_id,
            request,
            service: trace.service.clone(),
            read: span_ref(read),
            write: span_ref(write),
            target,
            checked_version,
            read_filter,
            written,
            operation,
            action,
            created_ns: now_ns,
            own: None,
            rivals: 0,
        };
        let id = p.id;
        match &p.target {
            Target::Row { name, .. } => {
                self.pending_by_row
                    .entry(name.clone())
                    .or_default()
                    .push(id);
            }
            Target::Absent { table, .. } => {
                self.pending_by_table
                    .entry(table.clone())
                    .or_default()
                    .push(id);
            }
        }
        self.pending_order.push_back((now_ns, id));
        self.pending.insert(id, p);
        // Its change may have come first: held, or even handed on already.
        let rows = self.attribute_pending(id, now_ns, false);
        for row in &rows {
            self.release(row, now_ns, "unattributed", out);
        }
        if self.pending.get(&id).is_some_and(|p| p.own.is_none()) {
            self.emit_late(id, out);
        }
    }

    /// Attributes the held changes of the rows the waiting write `id` may have written (see
    /// [`Inference::attribute_fitting`]); returns the rows where some change was.
    fn attribute_pending(&mut self, id: u64, now_ns: u64, force: bool) -> Vec<String> {
        let Some(p) = self.pending.get(&id) else {
            return Vec::new();
        };
        let rows: Vec<String> = match &p.target {
            Target::Row { name, .. } => vec![name.clone()],
            Target::Absent { table, .. } => {
                // The table's rows in the order of their changes' commits: the first commit
                // gets the first write to end (see `attribute_change`).
                let prefix = format!("{table}/");
                let mut rows: Vec<(u64, &String)> = self
                    .changes
                    .queues
                    .iter()
                    .filter(|(row, _)| row.starts_with(&prefix))
                    .filter_map(|(row, q)| {
                        let first = q.iter().find(|h| h.owner.is_none())?;
                        Some((first.audit.time_ns, row))
                    })
                    .collect();
                rows.sort_unstable();
                rows.into_iter().map(|(_, row)| row.clone()).collect()
            }
        };
        rows.into_iter()
            .filter(|row| self.attribute_fitting(id, row, now_ns, force))
            .collect()
    }

    /// Attributes the held changes of `row` that the waiting write `id` fits (see [`fits`]),
    /// in commit order, each to the waiting write that made it where one can be (see
    /// [`Inference::attribute_change`]: that write, or another alike). Only those: a write's
    /// arrival changes nothing for the others.
    fn attribute_fitting(&mut self, id: u64, row: &str, now_ns: u64, force: bool) -> bool {
        let slack = self.config.clock_slack.as_nanos() as u64;
        let (Some(p), Some(q)) = (self.pending.get(&id), self.changes.queues.get(row)) else {
            return false;
        };
        // The queue is in commit order: none committed before the write started fits it.
        let from =
            q.partition_point(|h| h.audit.time_ns.saturating_add(RESOLUTION_NS) < p.write.start_ns);
        let fitting: Vec<u64> = q
            .range(from..)
            .take_while(|h| h.after_ns < p.write.end_ns.saturating_add(RESOLUTION_NS))
            .filter(|h| {
                h.owner.is_none()
                    && matches(p, &h.audit, h.change.as_ref(), slack)
                    && fits(p, h.audit.time_ns, h.after_ns, slack, false)
            })
            .map(|h| h.seq)
            .collect();
        let mut any = false;
        for seq in fitting {
            any |= self.attribute_change(row, seq, now_ns, false, force);
        }
        any
    }

    /// The waiting writes of `row` (and, for inserts of tested values, of its table) whose
    /// key and values match the held change `h`, owned or not, times aside.
    fn alike<'a>(&'a self, row: &'a str, h: &'a Held) -> impl Iterator<Item = &'a PendingWrite> {
        let slack = self.config.clock_slack.as_nanos() as u64;
        self.pending_by_row
            .get(row)
            .into_iter()
            .flatten()
            .chain(
                self.pending_by_table
                    .get(table_of(row))
                    .into_iter()
                    .flatten(),
            )
            .filter_map(|id| self.pending.get(id))
            .filter(move |p| matches(p, &h.audit, h.change.as_ref(), slack))
    }

    /// The waiting write that made the held change `seq` of `row`, if one waits: of those
    /// that fit it (see [`fits`]), the one that ended first; once the change had its settle
    /// (`force`: now), or at once if that write's times leave no doubt (see [`decisive`]).
    /// `loose`: the hold ran out, clocks may disagree by the slack.
    fn attribute_change(
        &mut self,
        row: &str,
        seq: u64,
        now_ns: u64,
        loose: bool,
        force: bool,
    ) -> bool {
        let slack = self.config.clock_slack.as_nanos() as u64;
        let settled = now_ns.saturating_sub(self.settle_ns());
        let Some(q) = self.changes.queues.get(row) else {
            return false;
        };
        let Some(at) = q.iter().position(|h| h.seq == seq) else {
            return false;
        };
        let h = &q[at];
        if h.owner.is_some() {
            return false;
        }
        // A write that fits a change of the row committed earlier and still waiting for its
        // writer is that one's first (see `fits`: the bounds overlap by the resolution).
        let earlier = |p: &PendingWrite| {
            q.range(..at)
                .rev()
                .take_while(|e| e.audit.time_ns.saturating_add(RESOLUTION_NS) >= p.write.start_ns)
                .any(|e| {
                    e.owner.is_none()
                        && matches(p, &e.audit, e.change.as_ref(), slack)
                        && fits(p, e.audit.time_ns, e.after_ns, slack, false)
                })
        };
        let chosen = self
            .alike(row, h)
            .filter(|p| {
                p.own.is_none()
                    && fits(p, h.audit.time_ns, h.after_ns, slack, loose)
                    && (loose || !earlier(p))
            })
            .min_by_key(|p| (p.write.end_ns, p.id));
        let Some(p) = chosen else {
            return false;
        };
        if !loose && !force && h.arrived_ns > settled && !decisive(p, h.audit.time_ns) {
            return false;
        }
        let id = p.id;
        self.own(id, row, seq);
        true
    }

    /// The held change `seq` of `row` is the waiting write `id`'s own. Writes alike (the same
    /// row, the same values) were told apart by time alone: the owner says so.
    fn own(&mut self, id: u64, row: &str, seq: u64) {
        let Some(h) = self.changes.get(row, seq) else {
            return;
        };
        let rivals = self.alike(row, h).count().saturating_sub(1);
        if rivals > 0 {
            let alike: Vec<u64> = self.alike(row, h).map(|p| p.id).collect();
            for other in alike {
                if let Some(p) = self.pending.get_mut(&other) {
                    p.rivals = p.rivals.max(rivals);
                }
            }
        }
        if let Some(h) = self.changes.get_mut(row, seq) {
            h.owner = Some(id);
        }
        if let Some(p) = self.pending.get_mut(&id) {
            p.own = Some((row.to_string(), seq));
        }
    }

    /// Releases the row's held changes from the front, in commit order: each attributed one,
    /// and each held since before `now - hold` (`why` counts those).
    fn release(&mut self, row: &str, now_ns: u64, why: &'static str, out: &mut Vec<Event>) {
        let hold = self.config.hold.as_nanos() as u64;
        let front = |c: &Changes| {
            let h = c.queues.get(row)?.front()?;
            Some((
                h.seq,
                h.owner.is_none() && h.arrived_ns.saturating_add(hold) <= now_ns,
            ))
        };
        while let Some((seq, expired)) = front(&self.changes) {
            if expired {
                // A last try, with clocks that may disagree by the slack.
                self.attribute_change(row, seq, now_ns, true, false);
            }
            let Some(h) = self
                .changes
                .pop_front_if(row, |h| h.owner.is_some() || expired)
            else {
                break;
            };
            match h.owner.and_then(|id| self.take_pending(id)) {
                Some(p) => {
                    self.stats.change("attributed");
                    let replaced = self.note_version(&h.audit);
                    if read_its_row(&p, h.change.as_ref()) {
                        self.emit_pair(p, h.audit, replaced, h.after_ns, false, out);
                    } else {
                        self.other_rows(p, h.audit, false, out);
                    }
                }
                None => {
                    self.stats.change(why);
                    self.hand_on(row.to_string(), h.audit, h.change, h.after_ns, now_ns, out);
                }
            }
        }
    }

    /// A change handed on without a request: to the engine, and remembered one more hold
    /// for a write span that comes later still.
    fn hand_on(
        &mut self,
        row: String,
        audit: AuditEvent,
        change: Option<RowChange>,
        after_ns: u64,
        now_ns: u64,
        out: &mut Vec<Event>,
    ) {
        let replaced = self.note_version(&audit);
        if self.config.change_stream {
            let q = self.released.entry(row.clone()).or_default();
            q.push_back(Released {
                audit: audit.clone(),
                change,
                replaced,
                after_ns,
                claimed: false,
            });
            self.released_order.push_back((now_ns, row));
        }
        out.push(Event::Audit(audit));
        let hold = self.config.hold.as_nanos() as u64;
        while let Some((at, _)) = self.released_order.front() {
            if at.saturating_add(hold) > now_ns
                && self.released_order.len() <= self.config.max_held_changes
            {
                break;
            }
            if let Some((_, row)) = self.released_order.pop_front() {
                if let Some(q) = self.released.get_mut(&row) {
                    q.pop_front();
                    if q.is_empty() {
                        self.released.remove(&row);
                    }
                }
            }
        }
    }

    /// A change already handed on without a request that the waiting write `id` made: the
    /// pair goes to the engine without the change (it has it). A row's versions decide (the
    /// read's from the write's parameters, the one the change replaced), or without any the
    /// change's commit time (the use ends there); an insert of tested values needs neither.
    /// A read's version without the replaced one decides nothing: counted unmatched.
    fn emit_late(&mut self, id: u64, out: &mut Vec<Event>) {
        let slack = self.config.clock_slack.as_nanos() as u64;
        let Some(p) = self.pending.get(&id) else {
            return;
        };
        let rows: Vec<String> = match &p.target {
            Target::Row { name, .. } => vec![name.clone()],
            Target::Absent { table, .. } => {
                let prefix = format!("{table}/");
                self.released
                    .keys()
                    .filter(|r| r.starts_with(&prefix))
                    .cloned()
                    .collect()
            }
        };
        // Its own is the first it fits by time (see `fits`); not one merely within the
        // slack, while its own may still be on the way.
        let mut found = None;
        for row in rows {
            if let Some(q) = self.released.get(&row) {
                if let Some(i) = q.iter().position(|r| {
                    !r.claimed
                        && matches(p, &r.audit, r.change.as_ref(), slack)
                        && fits(p, r.audit.time_ns, r.after_ns, slack, false)
                }) {
                    found = Some((row, i));
                    break;
                }
            }
        }
        let Some((row, i)) = found else {
            return;
        };
        let Some(r) = self.released.get_mut(&row).and_then(|q| q.get_mut(i)) else {
            return;
        };
        r.claimed = true;
        let (audit, replaced, after_ns) = (r.audit.clone(), r.replaced.clone(), r.after_ns);
        let read_it = read_its_row(p, r.change.as_ref());
        let decides = match &p.target {
            // A read's version from the write's parameters without the one the write
            // replaced decides nothing; without any, the time of the own commit does.
            Target::Row { .. } => p.checked_version.is_none() || replaced.is_some(),
            Target::Absent { .. } => true,
        };
        let Some(p) = self.take_pending(id) else {
            return;
        };
        if !read_it {
            self.other_rows(p, audit, true, out);
        } else if !decides {
            self.stats.pair("unmatched");
        } else {
            self.emit_pair(p, audit, replaced, after_ns, true, out);
        }
    }

    /// A write whose read, pinned by a filter, did not read the row written (its change's
    /// row image does not show the filter's values): no pair; the change goes on with its
    /// request (unless `late`: the engine has it).
    fn other_rows(&mut self, p: PendingWrite, audit: AuditEvent, late: bool, out: &mut Vec<Event>) {
        self.stats.pair("other_rows");
        if !late {
            let mut own = audit;
            own.request_id = Some(p.request);
            out.push(Event::Audit(own));
        }
    }

    /// A matched pair to the engine: the check, the write's change record with its request
    /// (unless `late`: the engine has it already, as another's), and the use, saying which
    /// version the write replaced (`replaced`); the row's change before it committed at
    /// `after_ns`.
    fn emit_pair(
        &mut self,
        p: PendingWrite,
        audit: AuditEvent,
        replaced: Option<String>,
        after_ns: u64,
        late: bool,
        out: &mut Vec<Event>,
    ) {
        self.stats.pair("matched");
        if self.instrumented.contains(&p.trace) {
            // The request reports its own checks and uses: only the change goes on.
            if !late {
                out.push(Event::Audit(audit));
            }
            return;
        }
        if matches!(p.target, Target::Row { .. }) && p.checked_version.is_none() {
            // Without versions the engine places the row's other commits by time: one after
            // the read's end it did not see. One stamped during the read, or just before it
            // (visible only after its flush), it may or may not have seen.
            let lag = self.config.visibility_lag.as_nanos() as u64;
            if after_ns > p.read.start_ns.saturating_sub(lag) && after_ns <= p.read.end_ns {
                self.stats.undecided += 1;
            }
        }
        let (resource, matched_by) = match &p.target {
            Target::Row { .. } => (audit.resource.clone(), "key_and_values"),
            Target::Absent { resource, .. } => (resource.clone(), "values"),
        };
        let mut matched_by = if p.rivals > 0 {
            format!(
                "{matched_by}, then time among {} writes alike",
                p.rivals + 1
            )
        } else {
            matched_by.to_string()
        };
        if late {
            matched_by.push_str(", after its change record went on");
        }
        let span = |phase: Phase, s: &SpanRef, version: Option<String>| {
            inferred_span(
                phase,
                SpanSide {
                    resource: resource.clone(),
                    request: p.request.clone(),
                    trace: p.trace,
                    service: &p.service,
                    operation: p.operation,
                },
                (s.span_id, s.start_ns, s.end_ns),
                version,
                UseOutcome::Ok,
            )
        };
        // A read that found no row saw the same (absence) its insert acted on: whether it
        // raced is for the duplicate rule to say (a second insert of the tested values),
        // not for staleness.
        let (checked, used) = match &p.target {
            Target::Row { .. } => (
                p.checked_version.clone(),
                // The version replaced is evidence only where the read's version is known
                // to compare it with.
                p.checked_version.as_ref().and(replaced),
            ),
            Target::Absent { .. } => (Some(ABSENT.to_string()), Some(ABSENT.to_string())),
        };
        out.push(Event::Span(span(Phase::Check, &p.read, checked)));
        let mut use_event = span(Phase::Use, &p.write, used);
        // The write came after the read in the request's statements; some SDKs record
        // starts in whole milliseconds (JavaScript's `Date.now()`), which can put its start
        // before the read's end.
        use_event.start_ns = use_event.start_ns.max(p.read.end_ns);
        use_event.end_ns = use_event.end_ns.max(use_event.start_ns);
        if late && matches!(p.target, Target::Row { .. }) && p.checked_version.is_none() {
            // The engine has the own change as another's: it finds no own write to time
            // the use by, and places the row's commits against the use's end. Ending the use
            // at its own commit puts the commits before it in and its own out, as when the
            // change carries the request.
            let commit = audit.time_ns.max(p.read.end_ns);
            use_event.start_ns = use_event.start_ns.min(commit);
            use_event.end_ns = commit;
        }
        let mut own = audit;
        own.request_id = Some(p.request.clone());
        match &p.target {
            Target::Row { .. } => {
                if !late {
                    out.push(Event::Audit(own));
                }
                out.push(Event::Span(use_event));
            }
            Target::Absent { resource, .. } => {
                // The use first: a second create of the tested values is then reported on
                // the use, with its trace, rather than on the change record.
                let tested = AuditEvent {
                    action: AuditAction::Create,
                    resource: resource.clone(),
                    version: own.version.clone(),
                    request_id: own.request_id.clone(),
                    actor: own.actor.clone(),
                    time_ns: own.time_ns,
                    service: own.service.clone(),
                    source_id: own.source_id.as_ref().map(|s| format!("{s}#tested")),
                    trace_id: [0; 16],
                    span_id: [0; 8],
                };
                out.push(Event::Span(use_event));
                if !late {
                    out.push(Event::Audit(own));
                }
                out.push(Event::Audit(tested));
            }
        }
        self.evidence.insert(
            p.write.span_id,
            Inferred {
                statements: vec![p.read.text.clone(), p.write.text.clone()],
                matched_by,
            },
        );
    }

    /// Records a row's committed version; returns the one it replaced, when known.
    fn note_version(&mut self, audit: &AuditEvent) -> Option<String> {
        self.versions
            .insert(
                audit.resource.clone(),
                (audit.version.clone(), audit.time_ns),
            )
            .and_then(|(v, _)| v)
    }

    fn take_pending(&mut self, id: u64) -> Option<PendingWrite> {
        let p = self.pending.remove(&id)?;
        let index = match &p.target {
            Target::Row { name, .. } => self.pending_by_row.get_mut(name),
            Target::Absent { table, .. } => self.pending_by_table.get_mut(table),
        };
        if let Some(ids) = index {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                match &p.target {
                    Target::Row { name, .. } => self.pending_by_row.remove(name),
                    Target::Absent { table, .. } => self.pending_by_table.remove(table),
                };
            }
        }
        Some(p)
    }

    /// A request's unprotected read-then-write patterns.
    fn risks_of(&self, t: &Trace) -> Vec<(toctou_sql::RiskKind, String, String, String)> {
        let ok: Vec<&Call> = t
            .calls
            .iter()
            .filter(|c| !c.failed && c.reading.is_ok())
            .collect();
        let statements: Vec<&Statement> = ok
            .iter()
            .filter_map(|c| c.reading.as_ref().as_ref().ok())
            .collect();
        let mut seen = HashSet::new();
        read_then_write(&statements, &self.config.default_schema)
            .into_iter()
            .filter_map(|r| {
                let table = statements[r.write]
                    .table
                    .qualified(&self.config.default_schema);
                seen.insert((r.kind, table.clone())).then(|| {
                    (
                        r.kind,
                        table,
                        truncated(&ok[r.read].text, MAX_EVIDENCE_BYTES),
                        truncated(&ok[r.write].text, MAX_EVIDENCE_BYTES),
                    )
                })
            })
            .collect()
    }

    fn count_risks(&mut self, id: &TraceId, t: &Trace) {
        if t.risks_counted {
            return;
        }
        let risks = self.risks_of(t);
        self.add_risks(id, t.service.clone(), t.route.clone(), risks, t.last_ns);
    }

    fn add_risks(
        &mut self,
        id: &TraceId,
        service: String,
        route: Option<String>,
        risks: Vec<(toctou_sql::RiskKind, String, String, String)>,
        at_ns: u64,
    ) {
        let trace = hex_id(id);
        let endpoint = route.unwrap_or_else(|| "unknown".into());
        for (kind, table, read, write) in risks {
            self.risks.add(
                Seen {
                    service: &service,
                    endpoint: &endpoint,
                    kind,
                    table: &table,
                    trace_id: &trace,
                    read: &read,
                    write: &write,
                    at_ns,
                },
                self.config.max_risks,
            );
        }
    }
}

/// Whether the waiting write `p`'s read read the row its change `change` shows: always for a
/// read by the row's key; for a read pinned by a filter, when the row image shows the
/// filter's values (the row as the write left it: a filter column the write changed says
/// no).
fn read_its_row(p: &PendingWrite, change: Option<&RowChange>) -> bool {
    if p.read_filter.is_empty() {
        return true;
    }
    let Some(c) = change else {
        return false;
    };
    p.read_filter.iter().all(|(col, v)| {
        c.columns
            .iter()
            .any(|(cc, cv)| cc == col && same_value(cv, v))
    })
}

/// Whether the held change `h` can be the waiting write `p`'s own.
fn matches(
    p: &PendingWrite,
    audit: &AuditEvent,
    change: Option<&RowChange>,
    slack_ns: u64,
) -> bool {
    if audit.action != p.action || audit.time_ns.saturating_add(slack_ns) < p.write.start_ns {
        return false;
    }
    match (&p.target, change) {
        (Target::Row { table, key, .. }, Some(c)) => {
            is_table(c, table)
                && c.key.len() == key.len()
                && c.key
                    .iter()
                    .zip(key)
                    .all(|((a, x), (b, y))| a == b && same_value(x, y))
                && shows(&c.columns, &p.written)
        }
        (Target::Row { name, .. }, None) => audit.resource == *name,
        (Target::Absent { table, values, .. }, Some(c)) => {
            is_table(c, table)
                && c.op == Op::Insert
                && values.iter().all(|(col, v)| {
                    c.columns
                        .iter()
                        .any(|(cc, cv)| cc == col && same_value(cv, v))
                })
        }
        // Without the row's values, an insert cannot be told from another's.
        (Target::Absent { .. }, None) => false,
    }
}

/// How far a span's recorded times may precede the real ones: JavaScript SDKs anchor span
/// times to `Date.now()`, whole milliseconds.
const RESOLUTION_NS: u64 = 1_000_000;

/// Whether the waiting write `p` can have made a change committed at `commit_ns` (the row's
/// previous change at `after_ns`), by time; its key and values are for [`matches`].
///
/// A row's writer holds its lock from some moment of its statement to its commit, within
/// the statement (autocommit) or after it (a transaction): the statement started by the
/// commit and ended after the row's previous commit (a statement waiting for the lock
/// returns only once the holder committed). Among several that fit, the writers of a row
/// end in the order they commit: the change is the one's that ended first (see
/// [`Inference::attribute_change`]). That takes the application's and the database's clocks
/// to agree (one host, or to the millisecond); `loose` (the hold ran out unattributed) lets
/// them disagree by the slack.
fn fits(p: &PendingWrite, commit_ns: u64, after_ns: u64, slack_ns: u64, loose: bool) -> bool {
    if loose {
        return p.write.start_ns <= commit_ns.saturating_add(slack_ns);
    }
    p.write.start_ns <= commit_ns.saturating_add(RESOLUTION_NS)
        && match p.target {
            Target::Row { .. } => after_ns < p.write.end_ns.saturating_add(RESOLUTION_NS),
            Target::Absent { .. } => true,
        }
}

/// Whether the write's times alone say it made a change committed at `commit_ns` (given that
/// it fits, see [`fits`]): a row's write whose statement ended before the commit (a
/// transaction's write, its commit a statement later), since a statement that waited for
/// the lock ends only after the holder's commit. One that ended after the commit (autocommit, or a waiter) leaves it in
/// doubt until the writes of other processes, exported on their own schedule, had time to
/// come: the change waits for its settle.
fn decisive(p: &PendingWrite, commit_ns: u64) -> bool {
    // An insert of tested values takes no lock others wait for: nothing to wait for.
    matches!(p.target, Target::Absent { .. })
        || p.write.end_ns.saturating_add(RESOLUTION_NS) <= commit_ns
}

/// A read that found no row for values an insert then wrote.
struct AbsentRead {
    /// Its index among the calls.
    read: usize,
    table: String,
    /// The tested (column, value) pairs, sorted by column.
    values: Vec<(String, String)>,
    /// The table and the tested values, as a resource name.
    resource: String,
}

/// The latest read before the insert at `w` that tested, on the same table, only columns the
/// insert writes, with the values it writes.
fn absent_read(
    calls: &[toctou_sql::Call<'_>],
    w: usize,
    schema: &str,
    hash: bool,
) -> Option<AbsentRead> {
    let insert = &calls[w];
    let table = insert.statement.table.qualified(schema);
    let inserted: Vec<(String, String)> = insert
        .statement
        .writes
        .iter()
        .filter_map(|c| Some((c.column.clone(), value(&c.value, insert.params)?)))
        .collect();
    (0..w).rev().find_map(|r| {
        let read = &calls[r];
        let s = read.statement;
        if s.operation != Operation::Select
            || s.table.qualified(schema) != table
            || s.conditions.is_empty()
        {
            return None;
        }
        let mut values = s
            .conditions
            .iter()
            .map(|c| {
                let v = value(&c.value, read.params)?;
                inserted
                    .iter()
                    .any(|(col, iv)| *col == c.column && same_value(iv, &v))
                    .then(|| (c.column.clone(), v))
            })
            .collect::<Option<Vec<_>>>()?;
        values.sort();
        let named: Vec<String> = values
            .iter()
            .map(|(c, v)| {
                if hash {
                    format!("{c}=#{:016x}", xxhash_rust::xxh3::xxh3_64(v.as_bytes()))
                } else {
                    format!("{c}={v}")
                }
            })
            .collect();
        let resource = format!("{table}[{}]", named.join(","));
        Some(AbsentRead {
            read: r,
            table: table.clone(),
            values,
            resource,
        })
    })
}

/// Who an inferred span is of: the row or tested values, the request, its service.
struct SpanSide<'a> {
    resource: String,
    request: String,
    trace: TraceId,
    service: &'a str,
    operation: &'static str,
}

/// A check or use as an instrumented service would have sent it: an allowing check, a use
/// with `outcome`; the span is (id, start, end).
fn inferred_span(
    phase: Phase,
    side: SpanSide<'_>,
    (span_id, start_ns, end_ns): (SpanId, u64, u64),
    version: Option<String>,
    outcome: UseOutcome,
) -> SpanEvent {
    SpanEvent {
        phase,
        resource: side.resource,
        version,
        request_id: side.request,
        trace_id: side.trace,
        span_id,
        start_ns,
        end_ns,
        service: side.service.to_string(),
        operation: side.operation.into(),
        actor: side.service.to_string(),
        decision: Decision::Allow,
        source: None,
        policy: None,
        policy_version: None,
        idempotency_key: None,
        outcome,
        permission_denied: false,
    }
}

/// A row's name as the change stream names it by default: `schema.table/k1,k2`.
fn row_name(table: &str, key: &[(String, String)]) -> String {
    let mut name = format!("{table}/");
    for (i, (_, v)) in key.iter().enumerate() {
        if i > 0 {
            name.push(',');
        }
        name.push_str(v);
    }
    name
}

/// The table (`schema.table`) of a row's name (`schema.table/key`).
fn table_of(row: &str) -> &str {
    row.split_once('/').map_or(row, |(t, _)| t)
}

/// Whether the change is of `table` (`schema.table`), without making the name.
fn is_table(c: &RowChange, table: &str) -> bool {
    table.len() == c.schema.len() + 1 + c.table.len()
        && table.starts_with(c.schema.as_str())
        && table.as_bytes()[c.schema.len()] == b'.'
        && table.ends_with(c.table.as_str())
}

fn operation_of(s: &Statement) -> &'static str {
    match s.operation {
        Operation::Insert => "create",
        Operation::Delete => "delete",
        _ => "update",
    }
}

fn span_ref(c: &Call) -> SpanRef {
    SpanRef {
        span_id: c.span_id,
        start_ns: c.start_ns,
        end_ns: c.end_ns,
        text: truncated(&c.text, MAX_EVIDENCE_BYTES),
    }
}

fn span_from_hex(hex: &str) -> Option<SpanId> {
    if hex.len() != 16 {
        return None;
    }
    let mut id = [0u8; 8];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

#[cfg(test)]
mod tests;
