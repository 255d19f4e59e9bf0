//! Findings as JSON lines, one finding per line, to stdout or a file.
//!
//! Lines are written whole and flushed once per correlated batch, so a reader tailing the
//! file never sees half a finding and a crash loses at most the batch being written.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use toctou_schema::Finding;

pub enum FindingsWriter {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl FindingsWriter {
    /// Appends to `path` when given (so restarts do not truncate history), else stdout.
    pub fn open(path: Option<&Path>) -> Result<FindingsWriter> {
        match path {
            None => Ok(FindingsWriter::Stdout(BufWriter::new(io::stdout()))),
            Some(p) if p.as_os_str() == "-" => {
                Ok(FindingsWriter::Stdout(BufWriter::new(io::stdout())))
            }
            Some(p) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening findings file {}", p.display()))?;
                Ok(FindingsWriter::File(BufWriter::new(f)))
            }
        }
    }

    fn inner(&mut self) -> &mut dyn Write {
        match self {
            FindingsWriter::Stdout(w) => w,
            FindingsWriter::File(w) => w,
        }
    }

    pub fn write(&mut self, finding: &Finding) -> io::Result<()> {
        let w = self.inner();
        serde_json::to_writer(&mut *w, finding)?;
        w.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.inner().flush()
    }
}
