//! A counting global allocator for the decode-budget property (`tests/decode_budget.rs`
//! and the fuzz targets): the peak of live heap bytes while a closure runs, measured from
//! outside the decoders, so the check does not trust the budget's own arithmetic.
//!
//! A binary opts in with `#[global_allocator] static A: PeakAlloc = PeakAlloc;`; the counts
//! are process-wide, so a measurement is only meaningful with one thread allocating.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and their peak.
pub struct PeakAlloc;

// SAFETY: every call is passed on to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            grow(new_size);
        }
        p
    }
}

fn grow(n: usize) {
    let live = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(live, Relaxed);
}

/// The most heap bytes `f` held at once beyond what was live when it started, and its
/// result (dropped outside the measurement by the caller, so what it holds counts).
pub fn peak_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    (PEAK.load(Relaxed).saturating_sub(base), out)
}

/// What decoding an input of `len` bytes may allocate at its peak, its result included:
/// the decode budget (`crate::budget`) and as much again for what the budget does not
/// charge (the parser's scratch, the events and rejections built from what was decoded).
pub fn allocation_bound(len: usize) -> usize {
    2 * crate::budget::for_input(len)
}
