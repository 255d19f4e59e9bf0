//! PostgreSQL's `pgoutput` logical decoding messages (protocol version 1, as the SQL function
//! `pg_logical_slot_peek_binary_changes` returns them, one message per row), decoded without
//! copying: what `crate::postgres` turns into row changes.
//!
//! The format is the one in PostgreSQL's documentation, "Logical Replication Message Formats".
//! Written here rather than taken from a crate: the Rust decoders of it are either parts of
//! replication clients we do not use (we read the slot over plain SQL, see
//! `crate::postgres`) or pre-1.0 single-author crates; the format is small and fixed, and the
//! tests below run it on what a real server sends (tests/cdc_postgres.rs).
//!
//! Streaming (protocol 2) and two-phase messages are not asked for, so never sent; an
//! unknown message type is an error naming it, not a guess.

use thiserror::Error;

/// A pgoutput message, borrowing from its bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01 UTC.
        commit_time_us: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time_us: i64,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        transactional: bool,
        lsn: u64,
        prefix: &'a str,
        content: &'a [u8],
    },
    Relation(Relation<'a>),
    Insert {
        relation: u32,
        new: Tuple<'a>,
    },
    Update {
        relation: u32,
        /// The old key (replica identity `DEFAULT`/`INDEX`, when the key changed) or the
        /// whole old row (`FULL`).
        old: Option<Tuple<'a>>,
        new: Tuple<'a>,
    },
    Delete {
        relation: u32,
        old: Tuple<'a>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Replication origin and type messages: nothing toctou uses.
    Origin,
    Type,
}

/// A table as a `Relation` message describes it (sent before its first change in each
/// decoding call).
#[derive(Debug, Clone, PartialEq)]
pub struct Relation<'a> {
    pub id: u32,
    pub namespace: &'a str,
    pub name: &'a str,
    /// `relreplident`: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column<'a> {
    /// Part of the replica identity (the primary key, by default).
    pub key: bool,
    pub name: &'a str,
    pub type_oid: u32,
}

/// A row's column values, in the relation's column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuple<'a>(pub Vec<Value<'a>>);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    /// A TOASTed value that did not change (and so was not sent).
    Unchanged,
    /// The value in PostgreSQL's text output format.
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("pgoutput message ends early: {0}")]
    Truncated(&'static str),
    #[error("unknown pgoutput message type {0:?}")]
    UnknownType(char),
    #[error("unknown tuple marker {0:?} in a pgoutput {1} message")]
    UnknownMarker(char, &'static str),
    #[error("pgoutput {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} bytes left over after a pgoutput {1} message")]
    Trailing(usize, &'static str),
}

/// Decodes one message.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut r = Reader { buf: bytes };
    let tag = r.u8("message type")?;
    let (what, message) = match tag {
        b'B' => (
            "Begin",
            Message::Begin {
                final_lsn: r.u64("Begin")?,
                commit_time_us: r.i64("Begin")?,
                xid: r.u32("Begin")?,
            },
        ),
        b'C' => {
            let _flags = r.u8("Commit")?;
            (
                "Commit",
                Message::Commit {
                    commit_lsn: r.u64("Commit")?,
                    end_lsn: r.u64("Commit")?,
                    commit_time_us: r.i64("Commit")?,
                },
            )
        }
        b'M' => {
            let flags = r.u8("Message")?;
            let lsn = r.u64("Message")?;
            let prefix = r.str("Message prefix")?;
            let len = r.u32("Message")? as usize;
            let content = r.bytes(len, "Message content")?;
            (
                "Message",
                Message::Message {
                    transactional: flags & 1 == 1,
                    lsn,
                    prefix,
                    content,
                },
            )
        }
        b'R' => {
            let id = r.u32("Relation")?;
            let namespace = r.str("Relation namespace")?;
            let name = r.str("Relation name")?;
            let replica_identity = r.u8("Relation")?;
            let n = r.u16("Relation")? as usize;
            let mut columns = Vec::with_capacity(n.min(1600));
            for _ in 0..n {
                let flags = r.u8("Relation column")?;
                let name = r.str("Relation column name")?;
                let type_oid = r.u32("Relation column")?;
                let _typmod = r.u32("Relation column")?;
                columns.push(Column {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                });
            }
            (
                "Relation",
                Message::Relation(Relation {
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                }),
            )
        }
        b'I' => {
            let relation = r.u32("Insert")?;
            match r.u8("Insert")? {
                b'N' => {}
                m => return Err(DecodeError::UnknownMarker(m as char, "Insert")),
            }
            (
                "Insert",
                Message::Insert {
                    relation,
                    new: r.tuple("Insert")?,
                },
            )
        }
        b'U' => {
            let relation = r.u32("Update")?;
            let (old, new) = match r.u8("Update")? {
                b'K' | b'O' => {
                    let old = r.tuple("Update")?;
                    match r.u8("Update")? {
                        b'N' => (Some(old), r.tuple("Update")?),
                        m => return Err(DecodeError::UnknownMarker(m as char, "Update")),
                    }
                }
                b'N' => (None, r.tuple("Update")?),
                m => return Err(DecodeError::UnknownMarker(m as char, "Update")),
            };
            ("Update", Message::Update { relation, old, new })
        }
        b'D' => {
            let relation = r.u32("Delete")?;
            match r.u8("Delete")? {
                b'K' | b'O' => {}
                m => return Err(DecodeError::UnknownMarker(m as char, "Delete")),
            }
            (
                "Delete",
                Message::Delete {
                    relation,
                    old: r.tuple("Delete")?,
                },
            )
        }
        b'T' => {
            let n = r.u32("Truncate")? as usize;
            let _options = r.u8("Truncate")?;
            // Each id takes 4 bytes: a count beyond what is left is a lie, not an allocation.
            if n > r.buf.len() / 4 {
                return Err(DecodeError::Truncated("Truncate"));
            }
            let relations = (0..n)
                .map(|_| r.u32("Truncate"))
                .collect::<Result<_, _>>()?;
            ("Truncate", Message::Truncate { relations })
        }
        b'O' => {
            let _lsn = r.u64("Origin")?;
            let _name = r.str("Origin name")?;
            ("Origin", Message::Origin)
        }
        b'Y' => {
            let _oid = r.u32("Type")?;
            let _namespace = r.str("Type namespace")?;
            let _name = r.str("Type name")?;
            ("Type", Message::Type)
        }
        other => return Err(DecodeError::UnknownType(other as char)),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::Trailing(r.buf.len(), what));
    }
    Ok(message)
}

/// Big-endian fields off the front of a message.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self.bytes(N, what)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// A null-terminated string.
    fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated(what))?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| DecodeError::NotUtf8(what))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    fn tuple(&mut self, what: &'static str) -> Result<Tuple<'a>, DecodeError> {
        let n = self.u16(what)? as usize;
        // Every column takes at least its 1-byte kind.
        if n > self.buf.len() {
            return Err(DecodeError::Truncated(what));
        }
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            values.push(match self.u8(what)? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32(what)? as usize;
                    Value::Text(self.bytes(len, what)?)
                }
                b'b' => {
                    let len = self.u32(what)? as usize;
                    Value::Binary(self.bytes(len, what)?)
                }
                m => return Err(DecodeError::UnknownMarker(m as char, what)),
            });
        }
        Ok(Tuple(values))
    }
}

/// PostgreSQL's epoch (2000-01-01 UTC) in Unix seconds.
const PG_EPOCH_UNIX_S: i64 = 946_684_800;

/// A pgoutput timestamp (microseconds since 2000-01-01 UTC) in Unix nanoseconds; 0 before 1970.
pub fn unix_ns(pg_time_us: i64) -> u64 {
    let ns = (pg_time_us as i128 + PG_EPOCH_UNIX_S as i128 * 1_000_000) * 1_000;
    ns.clamp(0, u64::MAX as i128) as u64
}

/// An LSN in PostgreSQL's text form (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// An LSN from its text form.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message in bytes, built field by field.
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn str(mut self, s: &str) -> Self {
            self.0.extend(s.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, s: &str) -> Self {
            let mut b = self.u8(b't').u32(s.len() as u32);
            b.0.extend(s.as_bytes());
            b
        }
    }

    #[test]
    fn a_transaction_of_every_kind_decodes() {
        let begin = Bytes::default().u8(b'B').u64(0x1516FE0).u64(5).u32(728);
        assert_eq!(
            decode(&begin.0).unwrap(),
            Message::Begin {
                final_lsn: 0x1516FE0,
                commit_time_us: 5,
                xid: 728
            }
        );
        let message = Bytes::default()
            .u8(b'M')
            .u8(1)
            .u64(7)
            .str("toctou.request_id")
            .u32(6);
        let mut message = message.0;
        message.extend(b"req-42");
        assert_eq!(
            decode(&message).unwrap(),
            Message::Message {
                transactional: true,
                lsn: 7,
                prefix: "toctou.request_id",
                content: b"req-42"
            }
        );
        let relation = Bytes::default()
            .u8(b'R')
            .u32(16384)
            .str("public")
            .str("inventory")
            .u8(b'd')
            .u16(2)
            .u8(1)
            .str("sku")
            .u32(25)
            .u32(u32::MAX)
            .u8(0)
            .str("stock")
            .u32(23)
            .u32(u32::MAX);
        let Message::Relation(r) = decode(&relation.0).unwrap() else {
            panic!("relation")
        };
        assert_eq!((r.id, r.namespace, r.name), (16384, "public", "inventory"));
        assert_eq!(r.columns.len(), 2);
        assert!(r.columns[0].key && !r.columns[1].key);
        let update = Bytes::default()
            .u8(b'U')
            .u32(16384)
            .u8(b'K')
            .u16(2)
            .text("sku-0")
            .u8(b'n')
            .u8(b'N')
            .u16(2)
            .text("sku-1")
            .u8(b'u');
        assert_eq!(
            decode(&update.0).unwrap(),
            Message::Update {
                relation: 16384,
                old: Some(Tuple(vec![Value::Text(b"sku-0"), Value::Null])),
                new: Tuple(vec![Value::Text(b"sku-1"), Value::Unchanged]),
            }
        );
        let commit = Bytes::default().u8(b'C').u8(0).u64(1).u64(2).u64(3);
        assert_eq!(
            decode(&commit.0).unwrap(),
            Message::Commit {
                commit_lsn: 1,
                end_lsn: 2,
                commit_time_us: 3
            }
        );
        let truncate = Bytes::default().u8(b'T').u32(2).u8(0).u32(1).u32(2);
        assert_eq!(
            decode(&truncate.0).unwrap(),
            Message::Truncate {
                relations: vec![1, 2]
            }
        );
    }

    #[test]
    fn damaged_messages_are_errors_not_panics() {
        let insert = Bytes::default().u8(b'I').u32(1).u8(b'N').u16(1).text("x").0;
        assert!(decode(&insert).is_ok());
        // Every prefix of a valid message is an error, and so is a byte too many.
        for n in 0..insert.len() {
            assert!(decode(&insert[..n]).is_err(), "{n} bytes");
        }
        let mut longer = insert.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(DecodeError::Trailing(1, "Insert")));
        assert_eq!(decode(b"Z"), Err(DecodeError::UnknownType('Z')));
        // Counts larger than the message cannot make it allocate.
        let lying = Bytes::default().u8(b'T').u32(u32::MAX).u8(0).0;
        assert_eq!(decode(&lying), Err(DecodeError::Truncated("Truncate")));
        let lying = Bytes::default().u8(b'I').u32(1).u8(b'N').u16(u16::MAX).0;
        assert_eq!(decode(&lying), Err(DecodeError::Truncated("Insert")));
    }

    #[test]
    fn times_and_positions() {
        // 2000-01-01T00:00:00.000001Z.
        assert_eq!(unix_ns(1), 946_684_800_000_001_000);
        assert_eq!(unix_ns(i64::MIN), 0);
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/1516FE0"), Some(0x1516FE0));
        assert_eq!(parse_lsn("x"), None);
    }
}
