//! The storage under every keyed piece of state: a slab of records addressed by `u32` slot,
//! plus a hash index of slot numbers.
//!
//! Why not a `HashMap<Key, Record>`: the index holds 4-byte slot numbers (5 bytes per bucket
//! with hashbrown's control byte) instead of key and value, records keep a stable slot that
//! timers can name, and a slot's generation tells a timer whether the record it was set for
//! is still the one living there. Keys are never stored twice: the caller hashes its key and
//! compares against the record itself.
//!
//! The slab is a list of fixed-size chunks, not one `Vec`: a `Vec` doubles when full, so a
//! table of 1.2M checks sat in room for 2M (232 B per check instead of ~150 under load) and
//! briefly held both copies while growing. Chunks bound the slack to one chunk and never move
//! a record. The first chunk grows like a `Vec` up to the chunk size, so a small table (a few
//! policies, one Kafka partition's engine at idle) stays small.

use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::{BuildHasher, Hash};

/// A record's address plus the generation it was created in; stale once the slot is freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Handle {
    pub slot: u32,
    pub gen: u32,
}

struct Slot<T> {
    gen: u32,
    value: Option<T>,
}

/// Slots per chunk (a power of two): ~450 KB of check records.
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

/// The slab: slot `i` lives in chunk `i / CHUNK` at `i % CHUNK`.
struct Slots<T> {
    chunks: Vec<Vec<Slot<T>>>,
    len: usize,
}

impl<T> Slots<T> {
    fn new() -> Slots<T> {
        Slots {
            chunks: Vec::new(),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, slot: Slot<T>) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => {
                if chunk.len() == chunk.capacity() {
                    // Only the first chunk can be short of room: it grows like a Vec.
                    chunk.reserve_exact(chunk.len().clamp(4, CHUNK - chunk.len()));
                }
                chunk.push(slot);
            }
            _ => {
                let mut chunk = Vec::with_capacity(if self.chunks.is_empty() { 4 } else { CHUNK });
                chunk.push(slot);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    fn get(&self, i: usize) -> Option<&Slot<T>> {
        self.chunks.get(i >> CHUNK_BITS)?.get(i & (CHUNK - 1))
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut Slot<T>> {
        self.chunks
            .get_mut(i >> CHUNK_BITS)?
            .get_mut(i & (CHUNK - 1))
    }

    fn iter(&self) -> impl Iterator<Item = &Slot<T>> {
        self.chunks.iter().flatten()
    }

    /// O(1): the engine reads it after every event. Only the first chunk can hold less than
    /// `CHUNK` slots of room; every later one is allocated with exactly `CHUNK`.
    fn heap_bytes(&self) -> usize {
        let slots = self.chunks.first().map_or(0, Vec::capacity)
            + self.chunks.len().saturating_sub(1) * CHUNK;
        self.chunks.capacity() * std::mem::size_of::<Vec<Slot<T>>>()
            + slots * std::mem::size_of::<Slot<T>>()
    }
}

impl<T> std::ops::Index<usize> for Slots<T> {
    type Output = Slot<T>;
    fn index(&self, i: usize) -> &Slot<T> {
        &self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}

impl<T> std::ops::IndexMut<usize> for Slots<T> {
    fn index_mut(&mut self, i: usize) -> &mut Slot<T> {
        &mut self.chunks[i >> CHUNK_BITS][i & (CHUNK - 1)]
    }
}

pub(crate) struct Table<T> {
    index: HashTable<u32>,
    slots: Slots<T>,
    /// Freed slots, reused last-in first-out; never longer than `slots`.
    free: Vec<u32>,
    build: DefaultHashBuilder,
    /// Recomputes a record's hash when the index grows.
    rehash: fn(&DefaultHashBuilder, &T) -> u64,
    /// Generation given to newly created slots: above every generation ever handed out, so
    /// that a handle from before the storage was given back never names a new record.
    epoch: u32,
}

impl<T> Table<T> {
    pub fn new(rehash: fn(&DefaultHashBuilder, &T) -> u64) -> Table<T> {
        Table {
            index: HashTable::new(),
            slots: Slots::new(),
            free: Vec::new(),
            build: DefaultHashBuilder::default(),
            rehash,
            epoch: 0,
        }
    }

    pub fn hash<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.build.hash_one(key)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Heap bytes held: the slab (records and free slots alike), the free list and the
    /// index. What the records point to (interned strings) is counted by their owners.
    pub fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + self.index.allocation_size()
    }

    pub fn find(&self, hash: u64, eq: impl Fn(&T) -> bool) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&i| slots[i as usize].value.as_ref().is_some_and(&eq))
            .copied()
    }

    /// Stores a record the caller knows is absent, under `hash` (which must equal `rehash`
    /// of the record).
    pub fn insert(&mut self, hash: u64, value: T) -> Handle {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize].value = Some(value);
                slot
            }
            None => {
                let slot = self.slots.len() as u32;
                self.slots.push(Slot {
                    gen: self.epoch,
                    value: Some(value),
                });
                slot
            }
        };
        let Table {
            index,
            slots,
            build,
            rehash,
            ..
        } = self;
        index.insert_unique(hash, slot, |&i| {
            let value = slots[i as usize].value.as_ref();
            rehash(build, value.expect("indexed slots hold a record"))
        });
        Handle {
            slot,
            gen: self.slots[slot as usize].gen,
        }
    }

    /// Takes the record out of its slot and frees the slot (its generation moves on).
    pub fn remove(&mut self, slot: u32) -> T {
        let value = self.slots[slot as usize]
            .value
            .take()
            .expect("removing a live slot");
        let hash = (self.rehash)(&self.build, &value);
        match self.index.find_entry(hash, |&i| i == slot) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => unreachable!("a live slot is indexed under its record's hash"),
        }
        let s = &mut self.slots[slot as usize];
        s.gen = s.gen.wrapping_add(1);
        self.free.push(slot);
        if self.index.is_empty() {
            // Everything is gone (end of input or a lull after a burst): give the memory back.
            let newest = self.slots.iter().map(|s| s.gen).max().unwrap_or(0);
            self.epoch = newest.wrapping_add(1);
            self.slots = Slots::new();
            self.free = Vec::new();
            self.index = HashTable::new();
        }
        value
    }

    pub fn get(&self, slot: u32) -> &T {
        self.slots[slot as usize]
            .value
            .as_ref()
            .expect("reading a live slot")
    }

    pub fn get_mut(&mut self, slot: u32) -> &mut T {
        self.slots[slot as usize]
            .value
            .as_mut()
            .expect("writing a live slot")
    }

    pub fn handle(&self, slot: u32) -> Handle {
        Handle {
            slot,
            gen: self.slots[slot as usize].gen,
        }
    }

    /// Every live record with its slot, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.index.iter().map(|&slot| (slot, self.get(slot)))
    }

    /// The record a handle names, if it is still the one in its slot.
    pub fn live(&self, h: Handle) -> Option<&T> {
        let s = self.slots.get(h.slot as usize)?;
        if s.gen != h.gen {
            return None;
        }
        s.value.as_ref()
    }

    pub fn live_mut(&mut self, h: Handle) -> Option<&mut T> {
        let s = self.slots.get_mut(h.slot as usize)?;
        if s.gen != h.gen {
            return None;
        }
        s.value.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rehash(b: &DefaultHashBuilder, v: &(u32, String)) -> u64 {
        b.hash_one(v.0)
    }

    #[test]
    fn records_across_chunks_stay_put_and_room_grows_by_one_chunk() {
        let mut t: Table<(u32, String)> = Table::new(rehash);
        let n = 3 * CHUNK as u32 + 5;
        let handles: Vec<Handle> = (0..n)
            .map(|k| t.insert(t.hash(&k), (k, k.to_string())))
            .collect();
        assert_eq!(t.slots.chunks.len(), 4);
        assert!(t.slots.chunks.iter().all(|c| c.capacity() == CHUNK));
        for (k, h) in handles.iter().enumerate() {
            assert_eq!(t.live(*h).unwrap().0, k as u32);
        }
        // Room is at most one chunk more than the records need.
        let record = std::mem::size_of::<Slot<(u32, String)>>();
        assert!(t.slots.heap_bytes() < (n as usize + CHUNK) * record + 4096);
        // A slot freed in a middle chunk is reused there.
        let k = CHUNK as u32 + 7;
        let slot = t.find(t.hash(&k), |v| v.0 == k).unwrap();
        t.remove(slot);
        let again = t.insert(t.hash(&u32::MAX), (u32::MAX, "x".into()));
        assert_eq!(again.slot, slot);
        assert_eq!(t.get(slot).0, u32::MAX);
        assert!(t.live(handles[k as usize]).is_none());
    }

    #[test]
    fn insert_find_remove_and_stale_handles() {
        let mut t: Table<(u32, String)> = Table::new(rehash);
        let mut handles = Vec::new();
        for k in 0..1000u32 {
            let h = t.hash(&k);
            assert_eq!(t.find(h, |v| v.0 == k), None);
            handles.push(t.insert(h, (k, k.to_string())));
        }
        assert_eq!(t.len(), 1000);
        for k in (0..1000u32).step_by(2) {
            let slot = t.find(t.hash(&k), |v| v.0 == k).unwrap();
            assert_eq!(t.remove(slot).1, k.to_string());
        }
        assert_eq!(t.len(), 500);
        assert!(t.live(handles[0]).is_none());
        assert_eq!(t.live(handles[1]).unwrap().0, 1);
        // Freed slots are reused under a new generation.
        let h = t.insert(t.hash(&5000u32), (5000, "x".into()));
        assert!(handles
            .iter()
            .any(|old| old.slot == h.slot && old.gen != h.gen));
        assert!(t.live(h).is_some());
        for k in (1..1000u32).step_by(2).chain([5000]) {
            let slot = t.find(t.hash(&k), |v| v.0 == k).unwrap();
            t.remove(slot);
        }
        assert_eq!(t.len(), 0);
        assert!(t.live(h).is_none());
        // After the storage was given back, an old handle still names nothing.
        let again = t.insert(t.hash(&7u32), (7, "y".into()));
        assert_eq!(again.slot, 0);
        assert!(handles.iter().chain([&h]).all(|old| t.live(*old).is_none()));
    }
}
