//! Differential target for the OTLP/HTTP protobuf traces path: the pruning reader
//! (`wire::traces`) against the full prost decode, both through `decode_traces`.
//!
//! Why differential: the pruning reader is a hand-written replacement for prost on the hot
//! path; the only thing that makes it correct is that the transforms see the same thing.
//! Where prost refuses a body the reader takes (bad UTF-8 or garbage inside a field toctou
//! never reads, which the reader checks only for framing) there is no reference to compare
//! with: that leniency is by design (see collector/src/wire.rs), so only "no panic" holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use toctou_collector::decode_traces;
use toctou_collector::fuzzing::wire_traces;

fuzz_target!(|raw: &[u8]| {
    let pruned = wire_traces(raw);
    let full = ExportTraceServiceRequest::decode(raw);
    match (pruned, full) {
        (Some(pruned), Ok(full)) => {
            assert_eq!(
                decode_traces(&pruned),
                decode_traces(&full),
                "wire and prost differ"
            );
        }
        (Some(pruned), Err(_)) => {
            decode_traces(&pruned);
        }
        (None, Ok(full)) => {
            decode_traces(&full);
        }
        (None, Err(_)) => {}
    }
});
