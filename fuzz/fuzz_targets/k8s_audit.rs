//! The Kubernetes audit webhook parser: any body is events, ignores and rejections, or a
//! typed error; nothing panics; and decoding never holds more heap at once than
//! `allocation_bound` of the body's length (the decode budget of issue 30, measured by a
//! counting allocator).
#![no_main]

use libfuzzer_sys::fuzz_target;
use toctou_collector::fuzzing::{allocation_bound, peak_of, PeakAlloc};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fuzz_target!(|body: &[u8]| {
    let (peak, decoded) = peak_of(|| toctou_collector::decode_k8s_audit(body));
    drop(decoded);
    assert!(
        peak <= allocation_bound(body.len()),
        "{} bytes held {peak} bytes at once",
        body.len()
    );
});
