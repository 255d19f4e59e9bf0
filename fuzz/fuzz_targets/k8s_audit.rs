//! The Kubernetes audit webhook parser: any body is events, ignores and rejections, or a
//! typed error; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = toctou_collector::decode_k8s_audit(body);
});
