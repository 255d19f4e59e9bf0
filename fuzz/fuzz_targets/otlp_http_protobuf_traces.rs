//! Differential target for the OTLP/HTTP protobuf traces path: the wire reader
//! (`wire::traces`) against the full prost decode through `decode_traces`.
//!
//! Why differential: the wire reader is a hand-written replacement for prost on the hot
//! path; the only thing that makes it correct is that the same events come out.
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
    let read = wire_traces(raw);
    let full = ExportTraceServiceRequest::decode(raw);
    match (read, full) {
        (Some(read), Ok(full)) => {
            assert_eq!(read, decode_traces(&full), "wire and prost differ");
        }
        (Some(_), Err(_)) => {}
        (None, Ok(full)) => {
            decode_traces(&full);
        }
        (None, Err(_)) => {}
    }
});
