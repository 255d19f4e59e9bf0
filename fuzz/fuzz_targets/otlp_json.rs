//! The OTLP/HTTP JSON decoder, traces and logs, as the HTTP receiver runs it: any body
//! either decodes or is a typed error; nothing panics; and decoding never holds more heap
//! at once than `allocation_bound` of the body's length (the decode budget of issue 30,
//! measured by a counting allocator). The first byte picks the signal, so one corpus
//! covers both.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toctou_collector::fuzzing::{allocation_bound, decode_http, peak_of, PeakAlloc};
use toctou_collector::Signal;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fuzz_target!(|data: &[u8]| {
    let Some((&signal, body)) = data.split_first() else {
        return;
    };
    let signal = if signal & 1 == 0 {
        Signal::Traces
    } else {
        Signal::Logs
    };
    let (peak, decoded) = peak_of(|| decode_http(signal, true, body));
    drop(decoded);
    assert!(
        peak <= allocation_bound(body.len()),
        "{} bytes held {peak} bytes at once",
        body.len()
    );
});
