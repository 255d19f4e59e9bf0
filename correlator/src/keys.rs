//! Idempotency keys: per (operation, key), the first successful use, kept for `key_ttl`
//! from its time and bounded by `max_keys` (oldest forgotten first, counted).

use crate::compact::Compact;
use crate::engine::Engine;
use crate::metrics::EvictedState;
use crate::table::{Handle, Table};
use crate::timer::TimerQueue;
use hashbrown::DefaultHashBuilder;
use std::hash::BuildHasher;
use toctou_schema::{SpanId, TraceId};

/// The first successful use of a key.
pub(crate) struct KeyRecord {
    pub operation: Compact,
    pub key: Compact,
    pub request: Compact,
    pub trace: TraceId,
    pub span: SpanId,
    pub time: u64,
}

fn rehash(b: &DefaultHashBuilder, r: &KeyRecord) -> u64 {
    b.hash_one((&r.operation, &r.key))
}

pub(crate) struct Keys {
    pub table: Table<KeyRecord>,
    pub expiry: TimerQueue<Handle>,
}

impl Keys {
    pub fn new() -> Keys {
        Keys {
            table: Table::new(rehash),
            expiry: TimerQueue::new(),
        }
    }
}

/// The use being registered under its key.
pub(crate) struct KeyedUse<'a> {
    pub operation: &'a str,
    pub key: &'a Compact,
    pub request: &'a Compact,
    pub trace: TraceId,
    pub span: SpanId,
    pub time: u64,
}

impl Engine {
    /// Remembers a successful use of an idempotency key. Returns the slot of the earlier use
    /// of the same key and operation by another span, if one is remembered.
    pub(crate) fn register_key(&mut self, u: KeyedUse<'_>) -> Option<u32> {
        let operation = Compact::encode(u.operation, &mut self.sym.long);
        let hash = self.keys.table.hash(&(&operation, u.key));
        if let Some(slot) = self
            .keys
            .table
            .find(hash, |r| r.operation == operation && r.key == *u.key)
        {
            operation.release(&mut self.sym.long);
            let first = self.keys.table.get(slot);
            let same_span = first.trace == u.trace && first.span == u.span;
            return (!same_span).then_some(slot);
        }
        let rec = KeyRecord {
            operation,
            key: u.key.share(&mut self.sym.long),
            request: u.request.share(&mut self.sym.long),
            trace: u.trace,
            span: u.span,
            time: u.time,
        };
        let handle = self.keys.table.insert(hash, rec);
        self.keys
            .expiry
            .push(u.time.saturating_add(self.key_ttl_ns), handle);
        while self.keys.table.len() > self.config.max_keys {
            if !self.evict_oldest_key() {
                break;
            }
        }
        None
    }

    /// Forgets the key due to expire first; false if none is remembered.
    pub(crate) fn evict_oldest_key(&mut self) -> bool {
        while let Some((_, oldest)) = self.keys.expiry.pop() {
            if self.keys.table.live(oldest).is_some() {
                self.stats.count_evicted(EvictedState::Key);
                self.forget_key(oldest.slot);
                return true;
            }
        }
        false
    }

    pub(crate) fn fire_key_expiry(&mut self, h: Handle) {
        if self.keys.table.live(h).is_some() {
            self.forget_key(h.slot);
        }
    }

    fn forget_key(&mut self, slot: u32) {
        let rec = self.keys.table.remove(slot);
        for c in [rec.operation, rec.key, rec.request] {
            c.release(&mut self.sym.long);
        }
    }
}
