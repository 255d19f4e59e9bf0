//! Replay files for `toctou replay`: OTLP JSON traces or logs requests and Kubernetes audit
//! events, one document per file or one per line (as the OpenTelemetry Collector's file
//! exporter and the Kubernetes log backend write them), told apart document by document.
//!
//! Decoding is the same as for live traffic, and documents are found by the reader that
//! also reads JSON lines on the audit webhook (`crate::documents`); only that the first
//! error fails the file, named by file and line, is particular to files.

use crate::decoded::{IgnoredCounts, Rejection};
use crate::documents::documents;
use crate::error::DecodeError;
use crate::json::{self, DocKind};
use crate::k8s;
use crate::transform::{decode_logs, decode_traces};
use std::path::{Path, PathBuf};
use toctou_schema::Event;

/// The events of one file in file order, and what was left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayBatch {
    pub events: Vec<Event>,
    pub ignored: IgnoredCounts,
    /// Items refused, each with the line its document starts on.
    pub rejected: Vec<LocatedRejection>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocatedRejection {
    pub line: usize,
    pub rejection: Rejection,
}

impl ReplayBatch {
    pub fn ignored_total(&self) -> u64 {
        self.ignored.total()
    }

    pub fn rejected_total(&self) -> usize {
        self.rejected.len()
    }
}

/// Reads and decodes one replay file. Syntax errors and documents of unknown kind fail the
/// file with its path and line; items refused inside a good document are returned in
/// [`ReplayBatch::rejected`], as a live receiver would report them.
pub fn read_replay_file(path: &Path) -> Result<ReplayBatch, DecodeError> {
    let bytes = std::fs::read(path).map_err(|source| DecodeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode_replay(path, &bytes)
}

/// [`read_replay_file`] on bytes already read; `path` only names them in errors.
pub fn decode_replay(path: &Path, bytes: &[u8]) -> Result<ReplayBatch, DecodeError> {
    // The reader places errors by line; a file names itself too.
    let in_file = |e: DecodeError| match e {
        DecodeError::AtLine {
            line,
            column,
            source,
        } => DecodeError::InFile {
            path: PathBuf::from(path),
            line,
            column,
            source,
        },
        other => other,
    };
    if let Err(e) = std::str::from_utf8(bytes) {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        return Err(DecodeError::InFile {
            path: PathBuf::from(path),
            line,
            column: None,
            source: Box::new(DecodeError::UnknownDocument(
                "the file is not UTF-8 text".into(),
            )),
        });
    }

    let mut batch = ReplayBatch::default();
    let mut seen = k8s::Seen::new();
    for doc in documents(bytes) {
        let doc = doc.map_err(|bad| in_file(bad.into_error()))?;
        let decoded = decode_document(doc.raw, &mut seen).map_err(|e| in_file(doc.locate(e)))?;
        batch.events.extend(decoded.events);
        batch.ignored.merge(&decoded.ignored);
        batch.rejected.extend(
            decoded
                .rejected
                .into_iter()
                .map(|rejection| LocatedRejection {
                    line: doc.line,
                    rejection,
                }),
        );
    }
    Ok(batch)
}

fn decode_document(
    raw: &[u8],
    seen: &mut k8s::Seen,
) -> Result<crate::decoded::Decoded, DecodeError> {
    match json::detect(raw)? {
        DocKind::Traces => Ok(decode_traces(&json::traces_from_json(raw)?)),
        DocKind::Logs => Ok(decode_logs(&json::logs_from_json(raw)?)),
        DocKind::K8sEvent | DocKind::K8sEventList => {
            let mut out = crate::decoded::Decoded::default();
            k8s::decode_document(raw, seen, &mut out)?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoded::{IgnoreReason, RejectReason};
    use toctou_schema::{AuditAction, Phase};

    fn testdata(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(rel)
    }

    fn compact(path: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(testdata(path)).unwrap()).unwrap();
        v.to_string()
    }

    const CHECK_LINE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"shop"}}]},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","startTimeUnixNano":"10","endTimeUnixNano":"20","attributes":[{"key":"toctou.phase","value":{"stringValue":"check"}},{"key":"toctou.resource","value":{"stringValue":"inventory/sku-1"}},{"key":"toctou.resource.version","value":{"intValue":"4"}}]}]}]}]}"#;
    const AUDIT_LINE: &str = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"15","attributes":[{"key":"toctou.audit.action","value":{"stringValue":"update"}},{"key":"toctou.resource","value":{"stringValue":"inventory/sku-1"}}]},{"attributes":[{"key":"toctou.audit.action","value":{"stringValue":"update"}}]}]}]}]}"#;

    #[test]
    fn official_examples_as_whole_files() {
        let b = read_replay_file(&testdata("otlp/trace.json")).unwrap();
        assert_eq!(
            (b.events.len(), b.ignored.get(IgnoreReason::NoPhase)),
            (0, 1)
        );
        let b = read_replay_file(&testdata("otlp/logs.json")).unwrap();
        assert_eq!(
            (b.events.len(), b.ignored.get(IgnoreReason::NoAction)),
            (0, 1)
        );
        let b = read_replay_file(&testdata("k8s-audit/create_service.json")).unwrap();
        assert_eq!(b.events.len(), 1);
    }

    #[test]
    fn json_lines_of_mixed_documents_keep_file_order() {
        let text = format!(
            "{CHECK_LINE}\n\n{}\n{AUDIT_LINE}\n{}\n{}\n",
            compact("otlp/trace.json"),
            compact("k8s-audit/delete_service.json"),
            compact("k8s-audit/delete_service.json"),
        );
        let b = decode_replay(Path::new("mixed.jsonl"), text.as_bytes()).unwrap();
        assert_eq!(b.events.len(), 3);
        let Event::Span(check) = &b.events[0] else {
            panic!("span first")
        };
        assert_eq!(check.phase, Phase::Check);
        assert_eq!(check.version.as_deref(), Some("4"));
        let Event::Audit(a) = &b.events[1] else {
            panic!("audit second")
        };
        assert_eq!((a.action, a.time_ns), (AuditAction::Update, 15));
        let Event::Audit(k) = &b.events[2] else {
            panic!("k8s third")
        };
        assert_eq!(k.resource, "k8s/services/default/nginx");
        // The repeated audit event (same auditID and stage) is dropped across lines.
        assert_eq!(b.ignored.get(IgnoreReason::Duplicate), 1);
        assert_eq!(b.ignored.get(IgnoreReason::NoPhase), 1);
        assert_eq!(b.rejected_total(), 1);
        assert_eq!(b.rejected[0].line, 4);
        assert_eq!(
            b.rejected[0].rejection.reason,
            RejectReason::MissingResource
        );
        assert_eq!(
            b.rejected[0].rejection.message,
            "log record #1: missing attribute toctou.resource"
        );
    }

    #[test]
    fn all_captured_audit_events_as_json_lines() {
        let mut names: Vec<_> = std::fs::read_dir(testdata("k8s-audit"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let text: String = names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap().trim().to_string() + "\n")
            .collect();
        let b = decode_replay(Path::new("audit.log"), text.as_bytes()).unwrap();
        // Same as the EventList golden: 24 captured, 1 duplicate, 3 ignored otherwise.
        assert_eq!(b.events.len() as u64 + b.ignored_total(), 24);
        assert_eq!(b.ignored.get(IgnoreReason::Duplicate), 1);
        assert!(b.rejected.is_empty());
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let text = format!("{CHECK_LINE}\n{{\"resourceSpans\": [}}\n");
        let err = decode_replay(Path::new("bad.jsonl"), text.as_bytes()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("bad.jsonl:2:"), "{msg}");
        assert_eq!(err.reason(), RejectReason::MalformedJson);

        // A type error inside a well-formed document on line 3.
        let text = format!(
            "{CHECK_LINE}\n{CHECK_LINE}\n{}\n",
            CHECK_LINE.replace("\"10\"", "\"soon\"")
        );
        let err = decode_replay(Path::new("t.jsonl"), text.as_bytes()).unwrap_err();
        let DecodeError::InFile { line, column, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*line, 3, "{err}");
        assert!(column.is_some());

        let text = format!("{CHECK_LINE}\n{}\n", compact("otlp/metrics.json"));
        let err = decode_replay(Path::new("m.jsonl"), text.as_bytes()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("m.jsonl:2: unrecognized document: expected resourceSpans"),
            "{err}"
        );

        let err = decode_replay(Path::new("bin"), b"{}\n\xff").unwrap_err();
        assert!(err.to_string().starts_with("bin:2: "), "{err}");

        let err = read_replay_file(Path::new("/nonexistent/replay.json")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/replay.json"),
            "{err}"
        );
    }

    #[test]
    fn pretty_printed_documents_locate_their_lines() {
        // Two pretty-printed documents back to back; the second is bad at its line 3.
        let good = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(CHECK_LINE).unwrap(),
        )
        .unwrap();
        let lines_of_good = good.lines().count();
        let bad = "{\n  \"resourceSpans\": [\n    {\"scopeSpans\": 5}\n  ]\n}";
        let text = format!("{good}\n{bad}\n");
        let err = decode_replay(Path::new("p.json"), text.as_bytes()).unwrap_err();
        let DecodeError::InFile { line, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*line, lines_of_good + 3, "{err}");
    }

    #[test]
    fn an_empty_file_is_an_empty_batch() {
        let b = decode_replay(Path::new("e"), b"\n  \n").unwrap();
        assert_eq!(b, ReplayBatch::default());
    }
}
