//! Refcounted interning: one copy of each distinct key, shared by every holder, freed when
//! the last holder lets go.
//!
//! Pending state names resources, service/operation profiles and long strings by a `u32`
//! slot instead of owning a `String` per field per check. Counting references (rather than
//! interning forever) keeps the interners bounded by the live state that uses them, which is
//! itself bounded, so a stream of distinct names cannot grow memory without limit.
//!
//! The counting is manual: every holder of a slot number must release it exactly once. The
//! engine's tests check that every interner is empty after `flush`.

use crate::table::Table;
use hashbrown::DefaultHashBuilder;
use std::hash::Hash;

/// Marks a field whose reference was handed on (or never taken): releasing it does nothing.
pub(crate) const NO_REF: u32 = u32::MAX;

pub(crate) struct Entry<K, V> {
    pub key: K,
    refs: u32,
    pub value: V,
}

pub(crate) struct Interner<K, V> {
    table: Table<Entry<K, V>>,
}

impl<K, V: Default> Interner<K, V> {
    /// `rehash` must hash a key exactly as callers hash their borrowed form of it.
    pub fn new(rehash: fn(&DefaultHashBuilder, &Entry<K, V>) -> u64) -> Self {
        Interner {
            table: Table::new(rehash),
        }
    }

    pub fn hash<Q: Hash + ?Sized>(&self, q: &Q) -> u64 {
        self.table.hash(q)
    }

    /// The slot of the key (created with `make` if new), with one more reference taken.
    pub fn acquire(&mut self, hash: u64, eq: impl Fn(&K) -> bool, make: impl FnOnce() -> K) -> u32 {
        if let Some(slot) = self.table.find(hash, |e| eq(&e.key)) {
            self.table.get_mut(slot).refs += 1;
            return slot;
        }
        let entry = Entry {
            key: make(),
            refs: 1,
            value: V::default(),
        };
        self.table.insert(hash, entry).slot
    }

    pub fn find(&self, hash: u64, eq: impl Fn(&K) -> bool) -> Option<u32> {
        self.table.find(hash, |e| eq(&e.key))
    }

    /// Takes one more reference on a slot already held.
    pub fn retain(&mut self, slot: u32) -> u32 {
        debug_assert_ne!(slot, NO_REF);
        self.table.get_mut(slot).refs += 1;
        slot
    }

    /// Gives one reference back; the last one frees the key and its value.
    pub fn release(&mut self, slot: u32) {
        if slot == NO_REF {
            return;
        }
        let entry = self.table.get_mut(slot);
        entry.refs -= 1;
        if entry.refs == 0 {
            self.table.remove(slot);
        }
    }

    pub fn key(&self, slot: u32) -> &K {
        &self.table.get(slot).key
    }

    pub fn value(&self, slot: u32) -> &V {
        &self.table.get(slot).value
    }

    pub fn value_mut(&mut self, slot: u32) -> &mut V {
        &mut self.table.get_mut(slot).value
    }

    pub fn gen(&self, slot: u32) -> u32 {
        self.table.handle(slot).gen
    }

    /// The value of a slot if it still holds the generation `gen`.
    pub fn live_mut(&mut self, slot: u32, gen: u32) -> Option<&mut V> {
        self.table
            .live_mut(crate::table::Handle { slot, gen })
            .map(|e| &mut e.value)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.len()
    }
}

impl<V: Default> Interner<Box<str>, V> {
    /// The slot of a string key, with a reference taken; a new key keeps the string's
    /// allocation instead of copying it.
    pub fn acquire_string(&mut self, s: String) -> u32 {
        let hash = self.hash(s.as_str());
        if let Some(slot) = self.find(hash, |k| **k == *s) {
            return self.retain(slot);
        }
        let entry = Entry {
            key: s.into_boxed_str(),
            refs: 1,
            value: V::default(),
        };
        self.table.insert(hash, entry).slot
    }
}

/// Hash of a `str`-keyed entry, matching `hash(s)` for a borrowed `&str`.
pub(crate) fn rehash_str<V>(b: &DefaultHashBuilder, e: &Entry<Box<str>, V>) -> u64 {
    use std::hash::BuildHasher;
    b.hash_one(&*e.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_until_the_last_release() {
        let mut i: Interner<Box<str>, u8> = Interner::new(rehash_str);
        let h = i.hash("inventory/sku-1");
        let a = i.acquire(
            h,
            |k| &**k == "inventory/sku-1",
            || "inventory/sku-1".into(),
        );
        let b = i.acquire(h, |k| &**k == "inventory/sku-1", || unreachable!());
        assert_eq!(a, b);
        assert_eq!(i.len(), 1);
        *i.value_mut(a) = 7;
        i.release(a);
        assert_eq!(&**i.key(b), "inventory/sku-1");
        assert_eq!(*i.value(b), 7);
        let gen = i.gen(a);
        i.release(b);
        assert_eq!(i.len(), 0);
        assert!(i.live_mut(a, gen).is_none());
        assert_eq!(i.find(h, |k| &**k == "inventory/sku-1"), None);
        i.release(NO_REF);
    }
}
