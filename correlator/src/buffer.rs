//! The reorder buffer: items wait here until the watermark passes them, then leave in
//! [`OrderKey`] order (event time, then a tie-break derived from the event alone).
//!
//! A timing wheel: every buffered event lies between the watermark and the watermark plus
//! the allowed lateness (older ones are late and never buffered; newer ones raise the
//! watermark), so a ring of 4096 time buckets spanning at least the lateness holds them
//! all. Adding is an O(1) push into the event's bucket; the bucket next out is sorted once
//! when it is reached (buckets hold a few events each) and drained from its end. An event
//! beyond the ring (one that jumps ahead before the watermark follows it) waits in a side
//! list until [`ReorderBuffer::set_floor`] moves the ring.
//!
//! The 120-byte items stay put in a slab; buckets move 32-byte keys. Bounded by the caller
//! (`max_buffered`).

use crate::item::{Item, OrderKey};

const BUCKETS: usize = 4096;
const WORDS: usize = BUCKETS / 64;

#[derive(Clone, Copy)]
struct Entry {
    key: OrderKey,
    slot: u32,
}

pub(crate) struct ReorderBuffer {
    /// Bucket width is `1 << shift` nanoseconds.
    shift: u32,
    buckets: Vec<Vec<Entry>>,
    /// Bit set per non-empty bucket (by ring index).
    occupied: [u64; WORDS],
    /// Bucket number (time >> shift) of the ring's first bucket: no entry is older.
    floor: u64,
    /// Ring index of the bucket kept sorted (descending), if any.
    sorted: Option<usize>,
    /// Entries too far ahead for the ring, until the floor moves up.
    ahead: Vec<Entry>,
    len: usize,
    slots: Vec<Option<Item>>,
    free: Vec<u32>,
}

impl ReorderBuffer {
    /// A buffer for events at most `span_ns` ahead of the watermark.
    pub fn new(span_ns: u64) -> Self {
        // The ring must span the lateness plus one bucket.
        let per_bucket = span_ns / (BUCKETS as u64 - 1) + 1;
        let shift = 64 - (per_bucket - 1).leading_zeros();
        ReorderBuffer {
            shift: shift.min(63),
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            occupied: [0; WORDS],
            floor: 0,
            sorted: None,
            ahead: Vec::new(),
            len: 0,
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, key: OrderKey, item: Item) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(item);
                slot
            }
            None => {
                self.slots.push(Some(item));
                (self.slots.len() - 1) as u32
            }
        };
        self.place(Entry { key, slot });
        self.len += 1;
    }

    fn place(&mut self, entry: Entry) {
        // The engine never buffers below the watermark; were it to, the entry goes out next
        // rather than being lost.
        let bucket = (entry.key.time >> self.shift).max(self.floor);
        if bucket - self.floor >= BUCKETS as u64 {
            self.ahead.push(entry);
            return;
        }
        let i = (bucket as usize) & (BUCKETS - 1);
        let b = &mut self.buckets[i];
        if self.sorted == Some(i) {
            let at = b.partition_point(|e| e.key > entry.key);
            b.insert(at, entry);
        } else {
            b.push(entry);
        }
        self.occupied[i / 64] |= 1 << (i % 64);
    }

    /// Ring index of the first non-empty bucket, from the floor on.
    fn first(&self) -> Option<usize> {
        let start = (self.floor as usize) & (BUCKETS - 1);
        let (word, bit) = (start / 64, start % 64);
        let masked = self.occupied[word] & (!0u64 << bit);
        if masked != 0 {
            return Some(word * 64 + masked.trailing_zeros() as usize);
        }
        for k in 1..=WORDS {
            let w = (word + k) % WORDS;
            let bits = if w == word {
                // Wrapped around to the start word: only the bits before the floor.
                self.occupied[w] & !(!0u64 << bit)
            } else {
                self.occupied[w]
            };
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
        }
        None
    }

    /// The first non-empty bucket, sorted so that its oldest entry is last.
    fn head(&mut self) -> Option<usize> {
        let i = self.first()?;
        if self.sorted != Some(i) {
            self.buckets[i].sort_unstable_by_key(|e| std::cmp::Reverse(e.key));
            self.sorted = Some(i);
        }
        Some(i)
    }

    /// The event time of the next item out.
    pub fn peek_time(&mut self) -> Option<u64> {
        match self.head() {
            Some(i) => self.buckets[i].last().map(|e| e.key.time),
            None => self.ahead.iter().map(|e| e.key.time).min(),
        }
    }

    pub fn pop(&mut self) -> Option<(OrderKey, Item)> {
        let Entry { key, slot } = match self.head() {
            Some(i) => {
                let b = &mut self.buckets[i];
                let e = b.pop().expect("occupied buckets hold entries");
                if b.is_empty() {
                    self.occupied[i / 64] &= !(1 << (i % 64));
                    self.sorted = None;
                }
                e
            }
            None => {
                // Only entries ahead of the ring: bring the ring to them first.
                let min = self.ahead.iter().map(|e| e.key.time).min()?;
                self.set_floor(min);
                return self.pop();
            }
        };
        let item = self.slots[slot as usize]
            .take()
            .expect("a queued slot holds its item");
        self.len -= 1;
        if self.len == 0 {
            // Drained: reuse slots from the start, and give a burst's memory back.
            self.slots.clear();
            self.free.clear();
            if self.slots.capacity() > 4096 {
                self.slots = Vec::new();
                self.free = Vec::new();
                for b in &mut self.buckets {
                    *b = Vec::new();
                }
            }
        } else {
            self.free.push(slot);
        }
        Some((key, item))
    }

    /// Tells the buffer that nothing older than `time` is buffered or will be (the
    /// watermark moved): the ring moves up, and entries that waited ahead of it join it.
    pub fn set_floor(&mut self, time: u64) {
        let floor = time >> self.shift;
        if floor <= self.floor {
            return;
        }
        debug_assert!(
            self.first().is_none_or(|i| {
                let b = &self.buckets[i];
                b.iter().all(|e| e.key.time >> self.shift >= floor)
            }),
            "raising the floor above a buffered event"
        );
        self.floor = floor;
        if !self.ahead.is_empty() {
            for e in std::mem::take(&mut self.ahead) {
                self.place(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::Compact;
    use crate::intern::NO_REF;
    use crate::item::AuditItem;
    use toctou_schema::AuditAction;

    fn item(time: u64) -> Item {
        Item::Audit(AuditItem {
            action: AuditAction::Update,
            time,
            resource: NO_REF,
            policy: Compact::none(),
            profile: NO_REF,
            version: Compact::none(),
            request: Compact::none(),
            actor: Compact::none(),
            source_id: Compact::none(),
            trace: [0; 16],
        })
    }

    /// Feeds random events within `lateness` of the newest, releasing below a watermark that
    /// follows them, as the engine does; everything must come out in key order.
    fn run(lateness: u64, step: u64, seed: u64) {
        let mut b = ReorderBuffer::new(lateness);
        let mut x = seed;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut released, mut pushed): (Vec<OrderKey>, usize) = (Vec::new(), 0);
        let (mut max, mut watermark) = (1_000_000u64, 0u64);
        for round in 0..3_000u64 {
            // Mostly near the newest event; now and then a jump far ahead.
            let time = if round % 500 == 499 {
                max + 50 * lateness + 7
            } else {
                (max + next() % (step + 1))
                    .saturating_sub(next() % (lateness + 1))
                    .max(watermark)
            };
            let key = OrderKey {
                time,
                ident: [next() % 3, next()],
            };
            b.push(key, item(time));
            pushed += 1;
            max = max.max(time);
            watermark = watermark.max(max.saturating_sub(lateness));
            while b.peek_time().is_some_and(|t| t < watermark) {
                released.push(b.pop().unwrap().0);
            }
            b.set_floor(watermark);
        }
        while let Some((k, _)) = b.pop() {
            released.push(k);
        }
        assert_eq!(released.len(), pushed);
        assert!(released.windows(2).all(|w| w[0] <= w[1]), "out of order");
        assert_eq!(b.len(), 0);
        assert!(b.pop().is_none());
    }

    #[test]
    fn releases_in_key_order_whatever_the_lateness() {
        for (lateness, step) in [
            (0, 0),
            (0, 5),
            (10, 3),
            (2_000_000_000, 50_000),
            (1 << 40, 1 << 30),
        ] {
            for seed in [1, 0x9e37_79b9_7f4a_7c15] {
                run(lateness, step, seed);
            }
        }
    }
}
