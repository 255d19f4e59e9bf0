//! [`Recent`]: a map of the latest keys inserted, at most so many; the key inserted longest
//! ago goes first. What the stage remembers of rows, uses and requests past their moment.

use hashbrown::HashMap;
use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::Hash;

pub struct Recent<K, V> {
    map: HashMap<K, V>,
    /// Keys in the order first inserted.
    order: VecDeque<K>,
    max: usize,
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    pub fn new(max: usize) -> Self {
        Recent {
            map: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Sets `key`'s value, making room first if it is new; returns the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if !self.map.contains_key(&key) {
            if self.map.len() >= self.max {
                if let Some(oldest) = self.order.pop_front() {
                    self.map.remove(&oldest);
                }
            }
            self.order.push_back(key.clone());
        }
        self.map.insert(key, value)
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(key)
    }

    pub fn contains<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.map.contains_key(key)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_key_goes_first() {
        let mut r = Recent::new(2);
        assert_eq!(r.insert("a", 1), None);
        assert_eq!(r.insert("b", 2), None);
        assert_eq!(r.insert("a", 3), Some(1), "an update keeps its place");
        r.insert("c", 4);
        assert!(!r.contains("a") && r.contains("b") && r.contains("c"));
        assert_eq!(r.get("c"), Some(&4));
    }
}
