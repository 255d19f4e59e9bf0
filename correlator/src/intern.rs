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

/// The bytes a key holds outside its slot (a long name's heap copy): what an interner adds
/// up as keys come and go, so that long strings are counted without walking the state.
pub(crate) trait KeyBytes {
    fn key_bytes(&self) -> usize;
}

pub(crate) struct Interner<K, V> {
    table: Table<Entry<K, V>>,
    /// [`KeyBytes::key_bytes`] of every live key.
    key_bytes: usize,
}

impl<K: KeyBytes, V: Default> Interner<K, V> {
    /// `rehash` must hash a key exactly as callers hash their borrowed form of it.
    pub fn new(rehash: fn(&DefaultHashBuilder, &Entry<K, V>) -> u64) -> Self {
        Interner {
            table: Table::new(rehash),
            key_bytes: 0,
        }
    }

    /// The bytes the live keys hold outside their slots.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
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
        self.key_bytes += entry.key.key_bytes();
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
            let gone = self.table.remove(slot);
            self.key_bytes -= gone.key.key_bytes();
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

    /// The key of a slot if it still holds the generation `gen`.
    pub fn live_key(&self, slot: u32, gen: u32) -> Option<&K> {
        self.table
            .live(crate::table::Handle { slot, gen })
            .map(|e| &e.key)
    }

    /// The value of a slot if it still holds the generation `gen`.
    pub fn live_mut(&mut self, slot: u32, gen: u32) -> Option<&mut V> {
        self.table
            .live_mut(crate::table::Handle { slot, gen })
            .map(|e| &mut e.value)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Every live key's slot and reference count.
    pub fn refs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.table.iter().map(|(slot, e)| (slot, e.refs))
    }
}

/// A string key stored in the slot itself when short (resource names usually are), so
/// that a lookup compares it without chasing a second pointer.
pub(crate) enum Name {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Heap(Box<str>),
}

const INLINE_NAME: usize = 30;

impl Name {
    fn new(s: String) -> Name {
        if s.len() <= INLINE_NAME {
            let mut bytes = [0; INLINE_NAME];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Name::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            Name::Heap(s.into_boxed_str())
        }
    }

    /// The bytes, for comparing and hashing without re-validating UTF-8 on every lookup.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Inline { len, bytes } => &bytes[..*len as usize],
            Name::Heap(s) => s.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Name::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).expect("inline names come from a str")
            }
            Name::Heap(s) => s,
        }
    }
}

impl KeyBytes for Name {
    fn key_bytes(&self) -> usize {
        match self {
            Name::Inline { .. } => 0,
            Name::Heap(s) => s.len(),
        }
    }
}

impl<V: Default> Interner<Name, V> {
    /// The slot of a string key, with a reference taken; a new long key keeps the string's
    /// allocation instead of copying it.
    pub fn acquire_string(&mut self, s: String) -> u32 {
        let hash = self.hash(s.as_bytes());
        if let Some(slot) = self.find(hash, |k| k.as_bytes() == s.as_bytes()) {
            return self.retain(slot);
        }
        let entry = Entry {
            key: Name::new(s),
            refs: 1,
            value: V::default(),
        };
        self.key_bytes += entry.key.key_bytes();
        self.table.insert(hash, entry).slot
    }

    pub fn find_str(&self, s: &str) -> Option<u32> {
        self.find(self.hash(s.as_bytes()), |k| k.as_bytes() == s.as_bytes())
    }
}

/// Hash of a name-keyed entry: the hash of its bytes, as lookups compute it.
pub(crate) fn rehash_name<V>(b: &DefaultHashBuilder, e: &Entry<Name, V>) -> u64 {
    use std::hash::BuildHasher;
    b.hash_one(e.key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_until_the_last_release() {
        let mut i: Interner<Name, u8> = Interner::new(rehash_name);
        let a = i.acquire_string("inventory/sku-1".into());
        let b = i.acquire_string("inventory/sku-1".into());
        assert_eq!(a, b);
        assert_eq!(i.len(), 1);
        *i.value_mut(a) = 7;
        i.release(a);
        assert_eq!(i.key(b).as_str(), "inventory/sku-1");
        assert_eq!(*i.value(b), 7);
        let gen = i.gen(a);
        i.release(b);
        assert_eq!(i.len(), 0);
        assert!(i.live_mut(a, gen).is_none());
        assert_eq!(i.find_str("inventory/sku-1"), None);
        i.release(NO_REF);
    }

    #[test]
    fn long_and_short_names_round_trip() {
        let mut i: Interner<Name, ()> = Interner::new(rehash_name);
        let long = "k8s/deployments/a-very-long-namespace/a-very-long-name".to_string();
        let s = i.acquire_string(long.clone());
        let t = i.acquire_string("x".repeat(30));
        assert_eq!(i.key(s).as_str(), long);
        assert_eq!(i.key(t).as_str(), "x".repeat(30));
        assert!(matches!(i.key(s), Name::Heap(_)));
        assert!(matches!(i.key(t), Name::Inline { .. }));
        assert_eq!(std::mem::size_of::<Name>(), 32);
        assert_eq!(i.find_str(&long), Some(s));
        // Only the long name is held outside its slot, and counted once whatever its refs.
        let again = i.acquire_string(long.clone());
        assert_eq!(i.key_bytes(), long.len());
        i.release(again);
        i.release(s);
        assert_eq!(i.key_bytes(), 0);
        i.release(t);
    }
}
