//! The Kafka message decoder of `toctou.events` (`toctou_kafka::codec`). Any message
//! decodes or is a typed error, and whatever decodes survives encode + decode unchanged (a
//! re-published batch must mean the same thing).
#![no_main]

use toctou_kafka::codec;

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
