//! The Kafka message decoder of `toctou.events` (src/kafka/codec.rs, included by path: it is
//! in the binary crate and depends only on the schema, prost and thiserror). Any message
//! decodes or is a typed error, and whatever decodes survives encode + decode unchanged (a
//! re-published batch must mean the same thing).
#![no_main]

#[allow(dead_code)]
#[path = "../../src/kafka/codec.rs"]
mod codec;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|message: &[u8]| {
    if let Ok(batch) = codec::decode(message) {
        let again = codec::encode(&batch.events, batch.broadcast_copy);
        assert_eq!(
            codec::decode(&again),
            Ok(batch),
            "encode/decode round trip differs"
        );
    }
});
