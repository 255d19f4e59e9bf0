//! The set of recently seen span and audit identities, to drop redeliveries (OTLP retries,
//! webhook resends).
//!
//! Identities are 128-bit hashes (see `item`), so an entry is 16 bytes whatever the source
//! id looks like. Entries leave oldest-first, by insertion: once their event time plus the
//! window has passed the processing clock, or early when the set is full (counted by the
//! caller). Checks are not kept here: a check's own pending entry recognises its redelivery.

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use std::collections::VecDeque;

pub(crate) struct Dedupe {
    set: HashTable<[u64; 2]>,
    /// Insertion order with each entry's expiry: event time + window.
    order: VecDeque<(u64, [u64; 2])>,
    window_ns: u64,
    max: usize,
}

/// What remembering an identity did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// First sighting; `evicted` when remembering it pushed the oldest identity out.
    New {
        evicted: bool,
    },
    Duplicate,
}

impl Dedupe {
    pub fn new(window_ns: u64, max: usize) -> Self {
        Dedupe {
            set: HashTable::new(),
            order: VecDeque::new(),
            window_ns,
            max,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.set.len()
    }

    fn forget(&mut self, ident: [u64; 2]) {
        // The second word is a plain hash word (the first carries the event's rank).
        if let Ok(entry) = self.set.find_entry(ident[1], |k| *k == ident) {
            entry.remove();
        }
    }

    /// The event time of the oldest identity remembered (by insertion order, which follows
    /// event time but for late events): what a rebuilt engine must re-read to drop the
    /// same redeliveries.
    pub fn oldest_time(&self) -> Option<u64> {
        self.order
            .front()
            .map(|&(expiry, _)| expiry.saturating_sub(self.window_ns))
    }

    /// Forgets identities whose window ended before `clock`.
    pub fn expire(&mut self, clock: u64) {
        while let Some(&(expiry, ident)) = self.order.front() {
            if expiry >= clock {
                break;
            }
            self.order.pop_front();
            self.forget(ident);
        }
        if self.order.is_empty() && self.order.capacity() > 4096 {
            self.order = VecDeque::new();
            self.set = HashTable::new();
        }
    }

    /// Remembers an identity seen at event time `time`; says whether it was already known.
    pub fn observe(&mut self, ident: [u64; 2], time: u64) -> Seen {
        // One probe for both the lookup and the insertion: at saturation the set is at its
        // bound, far larger than the cache, so each probe is a miss.
        match self.set.entry(ident[1], |k| *k == ident, |k| k[1]) {
            Entry::Occupied(_) => return Seen::Duplicate,
            Entry::Vacant(slot) => {
                slot.insert(ident);
            }
        }
        self.order
            .push_back((time.saturating_add(self.window_ns), ident));
        let mut evicted = false;
        while self.set.len() > self.max {
            let (_, oldest) = self
                .order
                .pop_front()
                .expect("entries are in the order queue");
            self.forget(oldest);
            evicted = true;
        }
        Seen::New { evicted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_the_window_and_bound() {
        let mut d = Dedupe::new(100, 2);
        assert_eq!(d.observe([1, 1], 0), Seen::New { evicted: false });
        assert_eq!(d.observe([1, 1], 0), Seen::Duplicate);
        assert_eq!(d.observe([2, 2], 10), Seen::New { evicted: false });
        // Full: the oldest identity goes, and is then unknown.
        assert_eq!(d.observe([3, 3], 20), Seen::New { evicted: true });
        assert_eq!(d.len(), 2);
        assert_eq!(d.observe([1, 1], 30), Seen::New { evicted: true });
        // Expiry: [3,3] was seen at 20, so it is kept through clock 120.
        d.expire(120);
        assert_eq!(d.observe([3, 3], 130), Seen::Duplicate);
        d.expire(200);
        assert_eq!(d.len(), 0);
    }
}
