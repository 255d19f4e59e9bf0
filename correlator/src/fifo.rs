//! [`Fifo`]: a first-in first-out queue that grows by whole chunks and never moves what it
//! holds.
//!
//! Why not a `VecDeque`: the queues kept for a window (the dedupe order for 60 s, the
//! timers for 30 s to 10 min, the findings store up to its bound) grow for as long as the
//! window at a steady rate. A `VecDeque` doubles as it grows: every doubling copies all it
//! holds into a region twice the size, and that fresh region's pages are first touched by
//! the copy, while the old region goes back to the allocator. First touch is the dearest
//! part of growing state on a virtual machine (see BENCHMARKS.md, "gRPC at 10k spans/s"),
//! and the copy is a pause proportional to the queue. Here a full chunk is followed by a
//! new one; an emptied chunk is kept for the next, so a queue at a steady length allocates
//! nothing.

use std::collections::VecDeque;

/// Bytes per chunk: large enough that chunk changes are rare (one per ~2,700 dedupe
/// entries), small enough that an idle queue holds little.
const CHUNK_BYTES: usize = 64 << 10;

pub struct Fifo<T> {
    /// Each chunk has room for exactly `per_chunk` items; only the last is being filled and
    /// only the first being emptied.
    chunks: VecDeque<VecDeque<T>>,
    /// An emptied chunk, kept for the next one needed.
    spare: Option<VecDeque<T>>,
    per_chunk: usize,
    len: usize,
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Fifo<T> {
    pub fn new() -> Self {
        Fifo {
            chunks: VecDeque::new(),
            spare: None,
            per_chunk: (CHUNK_BYTES / std::mem::size_of::<T>().max(1)).max(16),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push_back(&mut self, item: T) {
        let per_chunk = self.per_chunk;
        match self.chunks.back_mut() {
            Some(last) if last.len() < per_chunk => last.push_back(item),
            _ => {
                let mut chunk = self
                    .spare
                    .take()
                    .unwrap_or_else(|| VecDeque::with_capacity(per_chunk));
                chunk.push_back(item);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    pub fn pop_front(&mut self) -> Option<T> {
        let first = self.chunks.front_mut()?;
        let item = first.pop_front();
        if first.is_empty() {
            let emptied = self.chunks.pop_front();
            if self.spare.is_none() {
                self.spare = emptied;
            }
        }
        self.len -= 1;
        item
    }

    pub fn front(&self) -> Option<&T> {
        self.chunks.front().and_then(|c| c.front())
    }

    pub fn back(&self) -> Option<&T> {
        self.chunks.back().and_then(|c| c.back())
    }

    /// Oldest first; `.rev()` for newest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// Drops the spare chunk (an idle queue then holds nothing).
    pub fn shrink(&mut self) {
        self.spare = None;
        if self.chunks.is_empty() {
            self.chunks = VecDeque::new();
        }
    }

    /// Heap bytes held, chunks and spare at full size.
    pub fn heap_bytes(&self) -> usize {
        let chunks = self.chunks.len() + usize::from(self.spare.is_some());
        chunks * self.per_chunk * std::mem::size_of::<T>()
            + self.chunks.capacity() * std::mem::size_of::<VecDeque<T>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_in_first_out_across_chunks() {
        let mut f = Fifo::new();
        let per_chunk = f.per_chunk as u64;
        assert_eq!(per_chunk, 8192);
        // Interleaved pushes and pops across several chunk boundaries.
        let mut next_out = 0u64;
        for i in 0..5 * per_chunk {
            f.push_back(i);
            if i % 3 == 0 {
                assert_eq!(f.pop_front(), Some(next_out));
                next_out += 1;
            }
        }
        assert_eq!(f.len() as u64, 5 * per_chunk - next_out);
        assert_eq!(f.front(), Some(&next_out));
        assert_eq!(f.back(), Some(&(5 * per_chunk - 1)));
        let all: Vec<u64> = f.iter().copied().collect();
        assert_eq!(all, (next_out..5 * per_chunk).collect::<Vec<_>>());
        let newest: Vec<u64> = f.iter().rev().take(3).copied().collect();
        assert_eq!(
            newest,
            [5 * per_chunk - 1, 5 * per_chunk - 2, 5 * per_chunk - 3]
        );
        while let Some(i) = f.pop_front() {
            assert_eq!(i, next_out);
            next_out += 1;
        }
        assert!(f.is_empty());
        assert_eq!(f.front(), None);
        assert_eq!(f.pop_front(), None);
        assert_eq!(next_out, 5 * per_chunk);
    }

    #[test]
    fn items_stay_put_and_a_steady_queue_reuses_its_chunks() {
        let mut f = Fifo::new();
        let per_chunk = f.per_chunk;
        for i in 0..per_chunk {
            f.push_back(i);
        }
        let first = f.front().unwrap() as *const usize;
        // Growing past the first chunk does not move the items already held.
        for i in per_chunk..3 * per_chunk {
            f.push_back(i);
        }
        assert_eq!(f.front().unwrap() as *const usize, first);
        assert_eq!(f.heap_bytes() - f.chunks.capacity() * 32, 3 * CHUNK_BYTES);

        // At a steady length, the chunk emptied at the front is the next one filled.
        let held = f.heap_bytes();
        for i in 0..10 * per_chunk {
            f.push_back(i);
            f.pop_front();
        }
        assert_eq!(f.len(), 3 * per_chunk);
        assert!(f.heap_bytes() <= held + CHUNK_BYTES, "{}", f.heap_bytes());

        while f.pop_front().is_some() {}
        f.shrink();
        assert_eq!(f.heap_bytes(), 0);
    }
}
