//! Inputs the fuzz targets (fuzz/, `scripts/fuzz`) or their review turned up, replayed with
//! the targets' own checks: every file in testdata/fuzz/, named `<target>-<hash>.bin`, goes
//! through what that target does, so a fixed bug stays fixed without nightly or libFuzzer.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::path::PathBuf;
use toctou_collector::fuzzing::{wire_logs, wire_traces};
use toctou_collector::{
    decode_k8s_audit, decode_logs, decode_traces, logs_from_json, traces_from_json, RejectReason,
};

fn inputs() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/fuzz"));
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// What fuzz/fuzz_targets/<target>.rs checks, for one input.
fn replay(target: &str, raw: &[u8]) {
    match target {
        "otlp_http_protobuf_traces" => {
            if let (Some(read), Ok(full)) =
                (wire_traces(raw), ExportTraceServiceRequest::decode(raw))
            {
                assert_eq!(read, decode_traces(&full));
            }
        }
        "otlp_http_protobuf_logs" => {
            if let (Some(read), Ok(full)) = (wire_logs(raw), ExportLogsServiceRequest::decode(raw))
            {
                assert_eq!(read, decode_logs(&full));
            }
        }
        "otlp_json" => {
            let Some((&signal, body)) = raw.split_first() else {
                return;
            };
            if signal & 1 == 0 {
                if let Ok(request) = traces_from_json(body) {
                    decode_traces(&request);
                }
            } else if let Ok(request) = logs_from_json(body) {
                decode_logs(&request);
            }
        }
        "k8s_audit" => {
            let _ = decode_k8s_audit(raw);
        }
        other => panic!("no fuzz target {other}"),
    }
}

#[test]
fn every_recorded_fuzz_input_passes_its_targets_checks() {
    let all = inputs();
    assert!(!all.is_empty(), "testdata/fuzz is empty");
    for (name, raw) in all {
        let target = name
            .rsplit_once('-')
            .map(|(target, _)| target)
            .unwrap_or_else(|| panic!("{name}: not <target>-<hash>.bin"));
        eprintln!("replaying {name}");
        replay(target, &raw);
    }
}

/// A key-value with its key field twice, the first one a key toctou does not read: prost
/// takes the last, so this span's `toctou.phase` is there and, with no resource, the span is
/// refused; the wire reader once took the first key, dropped the attribute and ignored the
/// span (a hostile client could hide data from the check that way). It now leaves any
/// repeated field in a kept attribute to prost.
#[test]
fn a_repeated_attribute_key_is_read_as_prost_reads_it() {
    let raw = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/fuzz/otlp_http_protobuf_traces-241ae86cd20f6061.bin"
    ))
    .unwrap();
    assert_eq!(wire_traces(&raw), None, "left to prost");
    let decoded = decode_traces(&ExportTraceServiceRequest::decode(raw.as_slice()).unwrap());
    assert_eq!(decoded.rejected.len(), 1, "{decoded:?}");
    assert_eq!(decoded.rejected[0].reason, RejectReason::MissingResource);
}
