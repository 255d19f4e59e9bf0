//! [`TimerQueue`]: deadlines in order, cheap when they are set in order.
//!
//! Events are processed in event-time order, so the deadlines one kind of timer gets
//! (`time + ttl`) almost always arrive sorted. Those go to the back of a deque: O(1) to set
//! and to fire. The few set out of order (late events, re-armed timers, early evictions) go
//! to a small heap. Firing takes the smaller head of the two; on equal deadlines the deque's
//! goes first, so the order depends only on the order timers were set, never on arrival.
//!
//! Timers are not cancelled: the payload names a record by slot and generation, and the
//! handler checks that the record is still the one (and in the state) the timer was set for.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

pub(crate) struct TimerQueue<P: Ord + Copy> {
    run: VecDeque<(u64, P)>,
    stragglers: BinaryHeap<Reverse<(u64, P)>>,
    /// The earliest deadline (`u64::MAX` when empty), cached: the engine asks before every
    /// event, far more often than timers are set or fire.
    head: u64,
}

impl<P: Ord + Copy> TimerQueue<P> {
    pub fn new() -> Self {
        TimerQueue {
            run: VecDeque::new(),
            stragglers: BinaryHeap::new(),
            head: u64::MAX,
        }
    }

    /// Heap bytes held by the two queues.
    pub fn heap_bytes(&self) -> usize {
        (self.run.capacity() + self.stragglers.capacity()) * std::mem::size_of::<(u64, P)>()
    }

    pub fn push(&mut self, deadline: u64, payload: P) {
        self.head = self.head.min(deadline);
        match self.run.back() {
            Some(&(last, _)) if deadline < last => {
                self.stragglers.push(Reverse((deadline, payload)))
            }
            _ => self.run.push_back((deadline, payload)),
        }
    }

    fn run_first(&self) -> Option<bool> {
        match (self.run.front(), self.stragglers.peek()) {
            (None, None) => None,
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (Some(r), Some(Reverse(s))) => Some(r.0 <= s.0),
        }
    }

    pub fn peek(&self) -> Option<(u64, P)> {
        match self.run_first()? {
            true => self.run.front().copied(),
            false => self.stragglers.peek().map(|r| r.0),
        }
    }

    /// The earliest deadline, `u64::MAX` when empty (a timer set at `u64::MAX` reads the
    /// same; the engine only fires those at a flush, which drains by emptiness).
    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn pop(&mut self) -> Option<(u64, P)> {
        let popped = match self.run_first()? {
            true => self.run.pop_front(),
            false => self.stragglers.pop().map(|r| r.0),
        };
        self.head = self.peek().map_or(u64::MAX, |(d, _)| d);
        if self.run.is_empty() && self.stragglers.is_empty() && self.run.capacity() > 4096 {
            // A drained queue gives its memory back (end of input, or after a burst).
            self.run = VecDeque::new();
            self.stragglers = BinaryHeap::new();
        }
        popped
    }

    pub fn len(&self) -> usize {
        self.run.len() + self.stragglers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_whatever_the_setting_order() {
        let mut q = TimerQueue::new();
        for (d, p) in [
            (10, 1u32),
            (20, 2),
            (15, 3),
            (20, 4),
            (5, 5),
            (30, 6),
            (20, 7),
        ] {
            q.push(d, p);
        }
        assert_eq!(q.len(), 7);
        assert_eq!(q.head(), 5);
        let order: Vec<(u64, u32)> = std::iter::from_fn(|| q.pop()).collect();
        // Equal deadlines: those set in order first, in setting order; then stragglers.
        assert_eq!(
            order,
            vec![(5, 5), (10, 1), (15, 3), (20, 2), (20, 4), (20, 7), (30, 6)]
        );
        assert_eq!(q.pop(), None);
        assert_eq!(q.head(), u64::MAX);
    }
}
