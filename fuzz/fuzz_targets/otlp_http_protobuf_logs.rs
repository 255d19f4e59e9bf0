//! Differential target for the OTLP/HTTP protobuf logs path: the wire reader
//! (`wire::logs`) against the full prost decode through `decode_logs`.
//!
//! Why differential: the wire reader is a hand-written replacement for prost on the hot
//! path; the only thing that makes it correct is that the same events come out.
//! Where prost refuses a body the reader takes (bad UTF-8 or garbage inside a field toctou
//! never reads, which the reader checks only for framing) there is no reference to compare
//! with: that leniency is by design (see collector/src/wire.rs), so only "no panic" holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use toctou_collector::decode_logs;
use toctou_collector::fuzzing::wire_logs;

fuzz_target!(|raw: &[u8]| {
    let read = wire_logs(raw);
    let full = ExportLogsServiceRequest::decode(raw);
    match (read, full) {
        (Some(read), Ok(full)) => {
            assert_eq!(read, decode_logs(&full), "wire and prost differ");
        }
        (Some(_), Err(_)) => {}
        (None, Ok(full)) => {
            decode_logs(&full);
        }
        (None, Err(_)) => {}
    }
});
