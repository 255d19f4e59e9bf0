//! The one reader of inputs that hold several JSON documents in a row, pretty-printed or one
//! per line (JSON lines): replay files, and JSON lines on the Kubernetes audit webhook. It
//! finds each document and where it starts, and places every error at the input's line (and
//! column).
//!
//! A stretch that is not JSON is one error, and reading goes on at the next line: a log
//! shipper forwards an audit log with a truncated line as it is, and the lines after it are
//! good. What an error means is the caller's to say (replay: the file is wrong, say where;
//! the webhook: one rejected line).

use crate::decoded::RejectReason;
use crate::error::DecodeError;
use crate::json::unplaced_message;
use serde_json::value::RawValue;

/// One document of the input, and where it starts (line and column from 1).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Document<'a> {
    pub raw: &'a [u8],
    pub line: usize,
    pub column: usize,
}

impl Document<'_> {
    /// `e`, met while decoding this document, placed in the input
    /// ([`DecodeError::AtLine`]).
    pub fn locate(&self, e: DecodeError) -> DecodeError {
        place(self.line, self.column, e)
    }
}

/// A bad document: a stretch that is not JSON (what the reader yields), or JSON that its
/// decoder refused. Placing it in the input formats a message, so that waits until asked
/// ([`Bad::into_error`]): a body of a million bad lines is told about only the first few.
#[derive(Debug)]
pub(crate) enum Bad<'a> {
    NotJson {
        error: serde_json::Error,
        line: usize,
        column: usize,
    },
    Refused {
        doc: Document<'a>,
        error: DecodeError,
    },
}

impl Bad<'_> {
    pub fn reason(&self) -> RejectReason {
        match self {
            Bad::NotJson { .. } => RejectReason::MalformedJson,
            Bad::Refused { error, .. } => error.reason(),
        }
    }

    /// The error, placed in the input ([`DecodeError::AtLine`]).
    pub fn into_error(self) -> DecodeError {
        match self {
            Bad::Refused { doc, error } => doc.locate(error),
            // The parser gave up lines below, in what a truncated line swallowed: the error
            // is the broken document's, named by the line it starts on.
            Bad::NotJson { error, line, .. } if error.line() > 1 => {
                let gave_up = format!(
                    "{} at line {}, column {}",
                    unplaced_message(&error),
                    line + error.line() - 1,
                    error.column()
                );
                DecodeError::AtLine {
                    line,
                    column: None,
                    source: Box::new(DecodeError::JsonInFile(gave_up)),
                }
            }
            Bad::NotJson {
                error,
                line,
                column,
            } => place(line, column, DecodeError::Json(error)),
        }
    }
}

/// `e` from a document starting at `line` and `column`, placed in the input: serde's own
/// position counts from the document's start.
fn place(line: usize, column: usize, e: DecodeError) -> DecodeError {
    let (line, column, source) = match e {
        DecodeError::Json(j) if j.line() > 0 => {
            let at = match j.line() {
                1 => column - 1 + j.column(),
                _ => j.column(),
            };
            let message = DecodeError::JsonInFile(unplaced_message(&j));
            (line + j.line() - 1, Some(at), message)
        }
        other => (line, None, other),
    };
    DecodeError::AtLine {
        line,
        column,
        source: Box::new(source),
    }
}

/// The documents of `input` in order, and a [`Bad::NotJson`] for each stretch that is not
/// JSON. Whitespace and blank lines between documents are skipped.
pub(crate) fn documents(input: &[u8]) -> Documents<'_> {
    Documents {
        input,
        pos: 0,
        line: 1,
        line_start: 0,
        single_lines_until: 0,
    }
}

pub(crate) struct Documents<'a> {
    input: &'a [u8],
    /// The next byte to read; it is on line `line`, which starts at byte `line_start`.
    pos: usize,
    line: usize,
    line_start: usize,
    /// The end of the furthest line a failed document was read to. A truncated line
    /// swallows the lines after it as nested values until the parser gives up (serde skips a
    /// raw value without a depth limit, so possibly at the end of the input); it is reported
    /// on its own line, and the lines it swallowed are then read one at a time, so no byte is
    /// parsed more than twice however the bad lines nest.
    single_lines_until: usize,
}

impl<'a> Iterator for Documents<'a> {
    type Item = Result<Document<'a>, Bad<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.skip_whitespace();
        let start = self.pos;
        if start == self.input.len() {
            return None;
        }
        let (line, column) = (self.line, start - self.line_start + 1);
        let end = if start < self.single_lines_until {
            self.end_of_line(start)
        } else {
            self.input.len()
        };
        let mut stream =
            serde_json::Deserializer::from_slice(&self.input[start..end]).into_iter::<&RawValue>();
        // Not None: `start` is on something other than whitespace.
        match stream.next()? {
            Ok(raw) => {
                // The document starts at `start`: there was no whitespace for serde to skip.
                let len = raw.get().len();
                self.advance_to(start + len);
                Some(Ok(Document {
                    raw: &self.input[start..start + len],
                    line,
                    column,
                }))
            }
            Err(error) => {
                if error.line() > 1 {
                    let reached = self.line_start_after(start, error.line() - 1);
                    self.single_lines_until =
                        self.single_lines_until.max(self.end_of_line(reached));
                }
                let next_line = (self.end_of_line(start) + 1).min(self.input.len());
                self.advance_to(next_line);
                Some(Err(Bad::NotJson {
                    error,
                    line,
                    column,
                }))
            }
        }
    }
}

impl Documents<'_> {
    fn skip_whitespace(&mut self) {
        while let Some(&b) = self.input.get(self.pos) {
            match b {
                b'\n' => {
                    self.line += 1;
                    self.line_start = self.pos + 1;
                }
                b' ' | b'\t' | b'\r' => {}
                _ => return,
            }
            self.pos += 1;
        }
    }

    /// Moves to `to`, counting the lines passed: every byte is counted once.
    fn advance_to(&mut self, to: usize) {
        let passed = &self.input[self.pos..to];
        if let Some(last) = passed.iter().rposition(|&b| b == b'\n') {
            self.line += passed.iter().filter(|&&b| b == b'\n').count();
            self.line_start = self.pos + last + 1;
        }
        self.pos = to;
    }

    /// The newline ending the line `from` is on, or the end of the input.
    fn end_of_line(&self, from: usize) -> usize {
        self.input[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.input.len(), |i| from + i)
    }

    /// The start of the line `lines` lines below the one `from` is on.
    fn line_start_after(&self, from: usize, lines: usize) -> usize {
        self.input[from..]
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(lines - 1)
            .map_or(self.input.len(), |(i, _)| from + i + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (line, column, raw) of each document, or the error's text.
    fn read(input: &str) -> Vec<Result<(usize, usize, &str), String>> {
        documents(input.as_bytes())
            .map(|d| {
                d.map(|d| (d.line, d.column, std::str::from_utf8(d.raw).unwrap()))
                    .map_err(|e| e.into_error().to_string())
            })
            .collect()
    }

    #[test]
    fn documents_one_per_line_pretty_or_side_by_side() {
        let input = "{\"a\":1}\n\n  {\"b\":\n  2}\r\n[3] {\"c\":4}\n";
        assert_eq!(
            read(input),
            vec![
                Ok((1, 1, "{\"a\":1}")),
                Ok((3, 3, "{\"b\":\n  2}")),
                Ok((5, 1, "[3]")),
                Ok((5, 5, "{\"c\":4}")),
            ]
        );
        assert!(read(" \n\t\r\n").is_empty());
    }

    #[test]
    fn a_bad_line_is_one_error_and_the_next_line_is_read() {
        // Line 2 is truncated: the parser takes line 3 as the value of "stage" and gives up
        // on line 4; line 3 is then read on its own, and so is everything after it.
        let input = "{\"n\":1}\n{\"stage\":\n{\"n\":3}\n{\"n\":4}\n{\"n\":5} x\n{\"n\":6}";
        let got = read(input);
        assert_eq!(got[0], Ok((1, 1, "{\"n\":1}")));
        assert_eq!(
            got[1],
            Err("line 2: malformed json: expected `,` or `}` at line 4, column 1".into())
        );
        assert_eq!(got[2], Ok((3, 1, "{\"n\":3}")));
        assert_eq!(got[3], Ok((4, 1, "{\"n\":4}")));
        assert_eq!(got[4], Ok((5, 1, "{\"n\":5}")));
        assert_eq!(
            got[5],
            Err("line 5, column 9: malformed json: expected value".into())
        );
        assert_eq!(got[6], Ok((6, 1, "{\"n\":6}")));
        assert_eq!(got.len(), 7);
    }

    #[test]
    fn errors_inside_a_document_are_placed_in_the_input() {
        let input = "{}\n  {\"a\":\n  \"x\"}";
        let doc = documents(input.as_bytes()).nth(1).unwrap().unwrap();
        let e =
            serde_json::from_slice::<std::collections::HashMap<String, u8>>(doc.raw).unwrap_err();
        let placed = doc.locate(DecodeError::Json(e));
        assert_eq!(
            placed.to_string(),
            "line 3, column 5: malformed json: invalid type: string \"x\", expected u8"
        );
        let e = serde_json::from_slice::<u8>(b"\"y\"").unwrap_err();
        let placed = Document {
            raw: b"",
            line: 7,
            column: 5,
        }
        .locate(DecodeError::Json(e));
        assert_eq!(
            placed.to_string(),
            "line 7, column 7: malformed json: invalid type: string \"y\", expected u8"
        );
        let other = DecodeError::UnknownDocument("kind \"Pod\"".into());
        assert_eq!(
            doc.locate(other).to_string(),
            "line 2: unrecognized document: kind \"Pod\""
        );
    }

    #[test]
    fn lines_a_bad_line_swallowed_are_read_one_at_a_time() {
        // Every line opens an array that the next one nests into. serde skips a raw value
        // without recursing, so a parse from any line reads to the end of the input: read
        // afresh from every line, n lines would cost n²/2 lines of parsing.
        let lines = 1_000;
        let input = "[0,\n".repeat(lines);
        let errors: Vec<String> = documents(input.as_bytes())
            .map(|d| d.unwrap_err().into_error().to_string())
            .collect();
        assert_eq!(errors.len(), lines);
        assert_eq!(
            errors[0],
            format!(
                "line 1: malformed json: EOF while parsing a value at line {}, column 0",
                lines + 1
            )
        );
        // Each of the others is read on its own, to its own end.
        for (i, e) in errors.iter().enumerate().skip(1) {
            let own = format!(
                "line {}, column 3: malformed json: EOF while parsing a value",
                i + 1
            );
            assert_eq!(*e, own);
        }
    }
}
