//! The OTLP/HTTP JSON decoder, traces and logs, through the transforms: any body either
//! decodes or is a typed error; nothing panics. The first byte picks the signal, so one
//! corpus covers both.
#![no_main]

use libfuzzer_sys::fuzz_target;
use toctou_collector::{decode_logs, decode_traces, logs_from_json, traces_from_json};

fuzz_target!(|data: &[u8]| {
    let Some((&signal, body)) = data.split_first() else {
        return;
    };
    if signal & 1 == 0 {
        if let Ok(request) = traces_from_json(body) {
            decode_traces(&request);
        }
    } else if let Ok(request) = logs_from_json(body) {
        decode_logs(&request);
    }
});
