//! [`Engine`]: the event-time loop. Owns all state (one owner per shard, no lock), the
//! watermark, the reorder buffer and the timers, and hands each event to the decisions in
//! `decide` and `checks` in event-time order.
//!
//! The loop, in one place: an arriving event is converted and buffered (or, if older than
//! the watermark, counted late and processed at once). The watermark is the newest event
//! time minus the allowed lateness, or, once input has been idle for the allowed lateness,
//! that plus the idle wall time. Then every buffered event older than the watermark is
//! processed in order, and before each one every timer due before its time fires; finally
//! every timer due before the watermark fires. Timers due at exactly an event's time fire
//! after it, so a timer never depends on how arrivals were batched.
//!
//! Clock skew: an event more than `max_clock_skew` ahead of the wall clock the caller passes
//! takes its arrival as its place in the order, right after the newest event seen (its own
//! times stay in its evidence),
//! so one producer with a fast clock cannot drag the watermark ahead and make everyone
//! else's events late; an event older than the watermark by more than the history kept is
//! counted as a past outlier. Both are counted by direction. The bound needs a wall clock:
//! `toctou replay` passes the event-time high-water mark, which no event is ahead of, so
//! replay orders by the events' own times (docs/CORRELATOR.md, "Clock skew").

use crate::buffer::ReorderBuffer;
use crate::checks::Checks;
use crate::config::{nanos, Config, ConfigError};
use crate::creates::Creates;
use crate::dedupe::Dedupe;
use crate::item::{convert, Item, OrderKey};
use crate::keys::Keys;
use crate::metrics::{EvictedState, Stats};
use crate::policies::Policies;
use crate::resources::AuditLog;
use crate::symbols::Symbols;
use crate::waiting::Waiting;
use toctou_schema::{Event, Finding, Phase};

/// The correlator: feed it events and wall-clock ticks, collect findings.
pub struct Engine {
    pub(crate) config: Config,
    pub(crate) lateness_ns: u64,
    pub(crate) ttl_ns: u64,
    pub(crate) key_ttl_ns: u64,
    /// How long audit writes and policy changes are kept: a tombstone can pair up to two
    /// TTLs after its check, plus the lateness a use may arrive with.
    pub(crate) history_window_ns: u64,
    /// `max_clock_skew` in nanoseconds; 0 when the bound is off.
    skew_ns: u64,
    pub(crate) sym: Symbols,
    pub(crate) buffer: ReorderBuffer,
    pub(crate) checks: Checks,
    pub(crate) keys: Keys,
    pub(crate) creates: Creates,
    pub(crate) audits: AuditLog,
    pub(crate) policies: Policies,
    pub(crate) waiting: Waiting,
    pub(crate) dedupe: Dedupe,
    pub(crate) stats: Stats,
    /// The wall clock the caller passed to the current call: findings' `detected_at_ns`.
    pub(crate) now: u64,
    /// Event time up to which events and timers have been processed in order.
    pub(crate) clock: u64,
    watermark: u64,
    /// Newest event time seen on time.
    max_event: Option<u64>,
    /// Wall clock of the latest arrival, for idle advancement.
    last_arrival: u64,
}

/// The kinds of timer, in the order they fire when due at the same instant.
#[derive(Clone, Copy)]
enum TimerKind {
    /// First: a use's decision sees the state as it was at its deadline (a check expiring
    /// or a write pruned at that very instant is still there).
    UseDecision,
    /// Before expiries, so a tombstone leaving frees its place for one arriving.
    TombstoneRemoval,
    CheckExpiry,
    CreateDeadline,
    KeyExpiry,
    HistoryPrune,
}

impl Engine {
    pub fn new(config: Config) -> Result<Engine, ConfigError> {
        config.validate()?;
        let lateness_ns = nanos(config.allowed_lateness);
        let ttl_ns = nanos(config.pair_ttl);
        Ok(Engine {
            lateness_ns,
            ttl_ns,
            key_ttl_ns: nanos(config.key_ttl),
            history_window_ns: ttl_ns.saturating_mul(2).saturating_add(lateness_ns),
            skew_ns: nanos(config.max_clock_skew),
            sym: Symbols::new(),
            buffer: ReorderBuffer::new(lateness_ns),
            checks: Checks::new(),
            keys: Keys::new(),
            creates: Creates::new(),
            audits: AuditLog::new(),
            policies: Policies::new(),
            waiting: Waiting::new(),
            dedupe: Dedupe::new(nanos(config.dedupe_window), config.max_dedupe),
            stats: Stats {
                pending_checks_limit: config.max_pending as u64,
                interned_bytes_limit: config.max_interned_bytes as u64,
                ..Stats::default()
            },
            now: 0,
            clock: 0,
            watermark: 0,
            max_event: None,
            last_arrival: 0,
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Event time before which every event is considered seen (0 before any event,
    /// `u64::MAX` after a flush).
    pub fn watermark_ns(&self) -> u64 {
        self.watermark
    }

    /// Accept one event that arrived at wall time `now_ns`; findings decided as a result are
    /// appended to `out`.
    pub fn ingest(&mut self, event: Event, now_ns: u64, out: &mut Vec<Finding>) {
        self.now = now_ns;
        self.last_arrival = now_ns;
        let Some((mut key, item)) = convert(event, &mut self.sym) else {
            return;
        };
        if self.skew_ns > 0 && key.time > now_ns.saturating_add(self.skew_ns) {
            // A fast clock: ordering by its time would move the watermark (and expire other
            // producers' state) as far ahead as the clock is wrong. Where it arrived is the
            // best estimate of when it happened: right after the newest event seen (live,
            // about the wall clock; in a backlog being caught up, that backlog's time, which
            // the wall clock would drag forward). It never raises the watermark. The rank in
            // `ident` still puts a check before its use when both arrive together.
            self.stats.clock_skew_future += 1;
            key.time = self.max_event.unwrap_or(now_ns).max(self.watermark);
        } else if self.watermark != u64::MAX
            && key.time.saturating_add(self.history_window_ns) < self.watermark
        {
            // So old that the audit history it would be judged against is gone: a slow
            // clock (or a delivery held up that long). Processed late like any late event.
            self.stats.clock_skew_past += 1;
        }
        if key.time < self.watermark {
            // Its place in the order has passed: processed now, out of order, and counted.
            self.stats.late_events += 1;
            self.process(key, item, out);
            self.fire_timers(self.watermark, out);
        } else {
            self.buffer.push(key, item);
            if self.max_event.is_none_or(|m| key.time > m) {
                self.max_event = Some(key.time);
            }
            while self.buffer.len() > self.config.max_buffered {
                self.release_oldest(out);
            }
            let target = key.time.max(self.max_event.unwrap_or(0));
            self.advance(target.saturating_sub(self.lateness_ns), out);
        }
        self.enforce_max_interned_bytes(out);
        self.update_gauges();
    }

    /// Wall-clock tick (called ~every 100 ms by the binary): advances an idle watermark,
    /// releases buffered events and fires timers.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Finding>) {
        self.tick_input(now_ns, Input::ReadUntil(now_ns), out);
    }

    /// [`Engine::tick`] for a caller that knows how far its input has been read (see
    /// [`Input`]): the idle rule counts the silence only up to the instant everything written
    /// had been read, and not at all while that is not known.
    pub fn tick_input(&mut self, now_ns: u64, input: Input, out: &mut Vec<Finding>) {
        self.now = now_ns;
        let read_until = match input {
            Input::ReadUntil(t) => Some(t.min(now_ns)),
            Input::Behind => None,
        };
        if let (Some(max), Some(read_until)) = (self.max_event, read_until) {
            let idle = read_until.saturating_sub(self.last_arrival);
            if idle >= self.lateness_ns {
                // Nothing arrived for the allowed lateness: event time is taken to move on
                // with the wall clock from the newest event seen.
                let target = max.saturating_add(idle).saturating_sub(self.lateness_ns);
                self.advance(target, out);
            }
        }
        self.enforce_max_interned_bytes(out);
        self.update_gauges();
    }

    /// End of input: drain everything, fire every timer.
    pub fn flush(&mut self, now_ns: u64, out: &mut Vec<Finding>) {
        self.now = now_ns;
        self.watermark = u64::MAX;
        while let Some(time) = self.buffer.peek_time() {
            self.fire_timers(time, out);
            let (key, item) = self.buffer.pop().expect("peeked");
            self.clock = self.clock.max(key.time);
            self.process(key, item, out);
        }
        self.fire_all_timers(out);
        self.update_gauges();
    }

    /// Raises the watermark to `target` (never lowers it) and processes what it passed.
    fn advance(&mut self, target: u64, out: &mut Vec<Finding>) {
        self.watermark = self.watermark.max(target);
        while let Some(time) = self.buffer.peek_time() {
            if time >= self.watermark {
                break;
            }
            self.fire_timers(time, out);
            let (key, item) = self.buffer.pop().expect("peeked");
            self.clock = self.clock.max(key.time);
            self.process(key, item, out);
        }
        self.buffer.set_floor(self.watermark);
        self.fire_timers(self.watermark, out);
    }

    /// Over `max_interned_bytes`: state leaves early, one entry at a time, until its strings
    /// fit again. Tombstones first (they only wait for late uses), then the pending checks
    /// due first (each becomes a tombstone, which leaves next), then the oldest audit
    /// writes, idempotency keys, pending creates and waiting uses, each decided as its
    /// count cap would decide it and counted under the same label; the reorder buffer last
    /// (its oldest event is processed at once, as `max_buffered` does, and what it leaves
    /// in the state is then evicted in turn). Policy histories are not evicted for bytes:
    /// `max_policies` bounds them.
    fn enforce_max_interned_bytes(&mut self, out: &mut Vec<Finding>) {
        while self.sym.interned_bytes() > self.config.max_interned_bytes {
            let evicted = self.evict_oldest_tombstone(out)
                || self.evict_oldest_pending(out)
                || self.evict_oldest_write()
                || self.evict_oldest_key()
                || self.evict_oldest_create(out)
                || self.evict_oldest_waiting(out)
                || self.release_oldest(out);
            if !evicted {
                break;
            }
            self.stats.byte_evictions += 1;
        }
    }

    /// The buffer is full: its oldest event is processed as if the watermark had reached it
    /// (so that anything older arriving later is late, never silently reordered). False if
    /// the buffer is empty.
    fn release_oldest(&mut self, out: &mut Vec<Finding>) -> bool {
        let Some(time) = self.buffer.peek_time() else {
            return false;
        };
        self.stats.count_evicted(EvictedState::Buffered);
        self.watermark = self.watermark.max(time);
        self.fire_timers(time, out);
        let (key, item) = self.buffer.pop().expect("peeked");
        self.clock = self.clock.max(key.time);
        self.process(key, item, out);
        self.buffer.set_floor(self.watermark);
        true
    }

    fn process(&mut self, key: OrderKey, item: Item, out: &mut Vec<Finding>) {
        match item {
            Item::Span(s) if s.phase == Phase::Check => self.on_check(s, out),
            Item::Span(s) => self.on_use(s, key.ident, key.time, out),
            Item::Audit(a) => self.on_audit(a, key.ident, out),
        }
    }

    fn next_timer(&self) -> Option<(u64, TimerKind)> {
        let heads = [
            (self.waiting.timers.head(), TimerKind::UseDecision),
            (self.checks.removal.head(), TimerKind::TombstoneRemoval),
            (self.checks.expiry.head(), TimerKind::CheckExpiry),
            (self.creates.deadlines.head(), TimerKind::CreateDeadline),
            (self.keys.expiry.head(), TimerKind::KeyExpiry),
            (self.audits.prune.head(), TimerKind::HistoryPrune),
        ];
        let mut best = heads[0];
        for h in &heads[1..] {
            if h.0 < best.0 {
                best = *h;
            }
        }
        if best.0 < u64::MAX {
            return Some(best);
        }
        // Only timers set at `u64::MAX` (or none) are left.
        heads
            .into_iter()
            .find(|(_, kind)| self.queue_len(*kind) > 0)
    }

    fn queue_len(&self, kind: TimerKind) -> usize {
        match kind {
            TimerKind::UseDecision => self.waiting.timers.len(),
            TimerKind::TombstoneRemoval => self.checks.removal.len(),
            TimerKind::CheckExpiry => self.checks.expiry.len(),
            TimerKind::CreateDeadline => self.creates.deadlines.len(),
            TimerKind::KeyExpiry => self.keys.expiry.len(),
            TimerKind::HistoryPrune => self.audits.prune.len(),
        }
    }

    /// Fires every timer due strictly before `before`, in (deadline, kind) order.
    fn fire_timers(&mut self, before: u64, out: &mut Vec<Finding>) {
        while let Some((deadline, kind)) = self.next_timer() {
            if deadline >= before {
                break;
            }
            self.fire(kind, out);
        }
    }

    fn fire_all_timers(&mut self, out: &mut Vec<Finding>) {
        while let Some((_, kind)) = self.next_timer() {
            self.fire(kind, out);
        }
    }

    fn fire(&mut self, kind: TimerKind, out: &mut Vec<Finding>) {
        match kind {
            TimerKind::UseDecision => {
                let (d, slot) = self.waiting.timers.pop().expect("peeked");
                self.clock = self.clock.max(d);
                self.decide_waiting(d, slot, false, out);
            }
            TimerKind::CheckExpiry => {
                let (d, h) = self.checks.expiry.pop().expect("peeked");
                self.clock = self.clock.max(d);
                self.fire_check_expiry(d, h, out);
            }
            TimerKind::TombstoneRemoval => {
                let (d, h) = self.checks.removal.pop().expect("peeked");
                self.clock = self.clock.max(d);
                self.fire_tombstone_removal(d, h, out);
            }
            TimerKind::CreateDeadline => {
                let (d, payload) = self.creates.deadlines.pop().expect("peeked");
                self.clock = self.clock.max(d);
                self.fire_create_deadline(d, payload, out);
            }
            TimerKind::KeyExpiry => {
                let (d, h) = self.keys.expiry.pop().expect("peeked");
                self.clock = self.clock.max(d);
                self.fire_key_expiry(h);
            }
            TimerKind::HistoryPrune => {
                let (d, (slot, gen)) = self.audits.prune.pop().expect("peeked");
                self.clock = self.clock.max(d);
                self.fire_history_prune(d, slot, gen);
            }
        }
    }

    fn update_gauges(&mut self) {
        self.stats.pending_checks = self.checks.pending as u64;
        self.stats.tombstones = self.checks.tombstones as u64;
        // Uses waiting for their write hold a copy of their check.
        self.stats.check_state_bytes =
            (self.checks.heap_bytes() + self.waiting.heap_bytes()) as u64;
        self.stats.interned_bytes = self.sym.interned_bytes() as u64;
        self.stats.buffered_events = self.buffer.len() as u64;
        self.stats.watermark_lag_seconds = if self.watermark == 0 || self.watermark == u64::MAX {
            0.0
        } else {
            (self.now as i128 - self.watermark as i128) as f64 / 1e9
        };
    }

    /// Whether, after a [`Engine::flush`], all state has been let go of, and every interned
    /// string with it: the engine counts references by hand (see `intern`), and a holder
    /// that forgets one release leaks its string silently. Policy histories are kept on
    /// purpose (a policy's current version outlives the window): the long strings left must
    /// be exactly the ones they hold, each with exactly as many references. Every test that
    /// runs the engine to its end asserts this.
    pub fn is_drained(&self) -> bool {
        let state_gone = self.buffer.len() == 0
            && self.waiting.len == 0
            && self.checks.table.len() == 0
            && self.checks.pending == 0
            && self.checks.tombstones == 0
            && self.keys.table.len() == 0
            && self.creates.len == 0
            && self.audits.len == 0
            && self.sym.resources.len() == 0
            && self.sym.profiles.len() == 0;
        let mut held: hashbrown::HashMap<u32, u32> = hashbrown::HashMap::new();
        for (_, policy) in self.policies.table.iter() {
            for c in &policy.changes {
                for s in [&c.version, &c.request, &c.actor] {
                    if let Some(slot) = s.long_slot() {
                        *held.entry(slot).or_default() += 1;
                    }
                }
            }
        }
        let strings_gone = self.sym.long.len() == held.len()
            && self
                .sym
                .long
                .refs()
                .all(|(slot, refs)| held.get(&slot) == Some(&refs));
        state_gone && strings_gone
    }
}

mod handover;
pub use handover::Input;
#[cfg(test)]
mod bytes_tests;
#[cfg(test)]
mod skew_tests;
#[cfg(test)]
mod tests;
