//! The reorder buffer: items wait here until the watermark passes them, then leave in
//! [`OrderKey`] order (event time, then a tie-break derived from the event alone).
//!
//! A binary heap of 32-byte keys orders the items; the items themselves sit still in a slab,
//! so sifting moves keys, not 120-byte items. Bounded by the caller (`max_buffered`).

use crate::item::{Item, OrderKey};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub(crate) struct ReorderBuffer {
    heap: BinaryHeap<Reverse<(OrderKey, u32)>>,
    slots: Vec<Option<Item>>,
    free: Vec<u32>,
}

impl ReorderBuffer {
    pub fn new() -> Self {
        ReorderBuffer {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
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
        self.heap.push(Reverse((key, slot)));
    }

    /// The event time of the next item out.
    pub fn peek_time(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((key, _))| key.time)
    }

    pub fn pop(&mut self) -> Option<(OrderKey, Item)> {
        let Reverse((key, slot)) = self.heap.pop()?;
        let item = self.slots[slot as usize]
            .take()
            .expect("a queued slot holds its item");
        if self.heap.is_empty() {
            // Drained: reuse from the start, and give a burst's memory back.
            self.slots.clear();
            self.free.clear();
            if self.slots.capacity() > 4096 {
                self.slots = Vec::new();
                self.free = Vec::new();
                self.heap = BinaryHeap::new();
            }
        } else {
            self.free.push(slot);
        }
        Some((key, item))
    }
}
