//! Each distinct statement text is parsed once: services send the same few hundred
//! statements millions of times. [`Interpreter`] keeps the last readings by text, bounded,
//! and counts hits, misses and what it could not read, by reason.

use crate::statement::{interpret, Statement, StatementError};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Distinct statement texts kept by default: an application's statements, with room for
/// the ones an ORM varies (`IN (...)` lists of every length).
pub const DEFAULT_CAPACITY: usize = 4096;

/// A reading of one statement text, shared by every span that carries it.
pub type Reading = Arc<Result<Statement, StatementError>>;

/// Statement readings by text, at most `capacity` (the oldest reading goes first).
pub struct Interpreter {
    capacity: usize,
    readings: HashMap<Arc<str>, Reading>,
    order: VecDeque<Arc<str>>,
    pub hits: u64,
    pub misses: u64,
}

impl Interpreter {
    pub fn new(capacity: usize) -> Interpreter {
        Interpreter {
            capacity: capacity.max(1),
            readings: HashMap::new(),
            order: VecDeque::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// The reading of `sql`, parsed on first sight.
    pub fn read(&mut self, sql: &str) -> Reading {
        self.read_shared(sql).1
    }

    /// [`Interpreter::read`], with the text shared by every span that carries it (what a
    /// caller keeps of each call, instead of a copy).
    pub fn read_shared(&mut self, sql: &str) -> (Arc<str>, Reading) {
        if let Some((text, r)) = self.readings.get_key_value(sql) {
            self.hits += 1;
            return (text.clone(), r.clone());
        }
        self.misses += 1;
        let reading: Reading = Arc::new(interpret(sql));
        if self.readings.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.readings.remove(&oldest);
            }
        }
        let key: Arc<str> = sql.into();
        self.order.push_back(key.clone());
        self.readings.insert(key.clone(), reading.clone());
        (key, reading)
    }

    /// The share of reads answered without parsing.
    pub fn hit_rate(&self) -> f64 {
        match self.hits + self.misses {
            0 => 0.0,
            n => self.hits as f64 / n as f64,
        }
    }

    pub fn len(&self) -> usize {
        self.readings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsed_once_per_text_and_bounded() {
        let mut i = Interpreter::new(2);
        let a = i.read("SELECT v FROM t WHERE id = $1");
        let b = i.read("SELECT v FROM t WHERE id = $1");
        assert!(Arc::ptr_eq(&a, &b), "the same reading, not a second parse");
        assert_eq!((i.hits, i.misses), (1, 1));
        i.read("UPDATE t SET v = $1 WHERE id = $2");
        i.read("not sql");
        assert_eq!(i.len(), 2, "the oldest went");
        let again = i.read("SELECT v FROM t WHERE id = $1");
        assert!(!Arc::ptr_eq(&a, &again), "parsed again after eviction");
        assert_eq!(i.misses, 4);
        assert!(i.read("not sql").is_err());
        assert!((i.hit_rate() - 2.0 / 6.0).abs() < 1e-9);
    }
}
