//! Where decided findings go, by one path for every node: [`FindingsSink`], with the
//! findings store behind the API ([`StoreSink`]), JSON lines to stdout or a file
//! ([`JsonLines`]) and ClickHouse (`run`'s sink feed; the Kafka correlator's outbox, which
//! also counts what it was handed for its commit points). [`publish`] hands a batch to each.
//! A new destination is one more implementation, given to the nodes that should use it.
//!
//! JSON lines are written whole and flushed once per published batch, so a reader tailing
//! the file never sees half a finding and a crash loses at most the batch being written.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::RwLock;
use toctou_schema::Finding;

use crate::store::FindingStore;

/// A destination of findings.
pub trait FindingsSink {
    /// What the logs call it.
    fn name(&self) -> &'static str;

    /// Takes the findings decided since the last call. Blocks only as the destination
    /// pushes back (ClickHouse behind); an error is this destination's alone.
    fn publish(&mut self, findings: &[Finding]) -> io::Result<()>;
}

/// Hands `findings` to every sink in order, then empties it. A sink's error is logged and
/// does not keep the others from their copy: a full disk under `--findings-file` must not
/// stop the API or ClickHouse from getting the findings.
pub fn publish(findings: &mut Vec<Finding>, sinks: &mut [&mut dyn FindingsSink]) {
    if findings.is_empty() {
        return;
    }
    for sink in sinks.iter_mut() {
        if let Err(err) = sink.publish(findings) {
            tracing::warn!(error = %err, sink = sink.name(), "publishing findings failed");
        }
    }
    findings.clear();
}

/// The bounded in-memory store the API and the page read.
pub struct StoreSink<'a>(pub &'a RwLock<FindingStore>);

impl FindingsSink for StoreSink<'_> {
    fn name(&self) -> &'static str {
        "store"
    }

    fn publish(&mut self, findings: &[Finding]) -> io::Result<()> {
        let mut store = self.0.write().unwrap_or_else(|e| e.into_inner());
        for f in findings {
            store.push(f.clone());
        }
        Ok(())
    }
}

/// Findings as JSON lines, one finding per line, to stdout or a file.
pub enum JsonLines {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl JsonLines {
    /// Appends to `path` when given (so restarts do not truncate history), else stdout.
    pub fn open(path: Option<&Path>) -> Result<JsonLines> {
        match path {
            None => Ok(JsonLines::Stdout(BufWriter::new(io::stdout()))),
            Some(p) if p.as_os_str() == "-" => Ok(JsonLines::Stdout(BufWriter::new(io::stdout()))),
            Some(p) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening findings file {}", p.display()))?;
                Ok(JsonLines::File(BufWriter::new(f)))
            }
        }
    }

    fn inner(&mut self) -> &mut dyn Write {
        match self {
            JsonLines::Stdout(w) => w,
            JsonLines::File(w) => w,
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.inner().flush()
    }
}

impl FindingsSink for JsonLines {
    fn name(&self) -> &'static str {
        "json lines"
    }

    fn publish(&mut self, findings: &[Finding]) -> io::Result<()> {
        let w = self.inner();
        for f in findings {
            serde_json::to_writer(&mut *w, f)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::finding;
    use toctou_schema::FindingKind;

    /// A sink that fails, to show the others still get their copy.
    struct Broken(usize);

    impl FindingsSink for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn publish(&mut self, findings: &[Finding]) -> io::Result<()> {
            self.0 += findings.len();
            Err(io::Error::other("disk full"))
        }
    }

    #[test]
    fn every_sink_gets_every_finding_even_beside_a_failing_one() {
        let store = RwLock::new(FindingStore::new(10));
        let path =
            std::env::temp_dir().join(format!("toctou-findings-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut lines = JsonLines::open(Some(&path)).unwrap();
        let mut broken = Broken(0);
        let mut batch = vec![
            finding(1, FindingKind::StaleCheck),
            finding(2, FindingKind::DuplicateUse),
        ];
        publish(
            &mut batch,
            &mut [&mut broken, &mut StoreSink(&store), &mut lines],
        );
        assert!(batch.is_empty());
        assert_eq!(broken.0, 2);
        assert_eq!(store.read().unwrap().len(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Finding>(l).unwrap().id)
            .collect();
        assert_eq!(ids, [format!("{:032x}", 1), format!("{:032x}", 2)]);
        let _ = std::fs::remove_file(&path);
    }
}
