//! Which request each Debezium row change belongs to, and in what order the changes go on,
//! when a transaction's `toctou.request_id` message, its changes and its end arrive as
//! separate records.
//!
//! Over Debezium Server's HTTP sink the records come one by one in stream order, so a
//! message sent first in its transaction (as the helpers do) precedes the changes it names,
//! and nothing is held (`hold` zero). From Kafka they do not: the message is on
//! `<prefix>.message`, the changes on their tables' topics, and a consumer reads those
//! partitions at their own pace, so a delete of one table can come after a later insert of
//! another, and a change before the message that names it.
//!
//! With transaction metadata (`provide.transaction.metadata`, as
//! deploy/debezium/postgres-connector.json sets it) the transaction topic's END records come
//! in commit order, each saying how many events (changes and messages) its transaction had.
//! Then every change is held until its transaction is complete and every transaction that
//! ended before it has gone: the changes go on in commit order, as PostgreSQL's own slot
//! gives them, each with its transaction's request id. A transaction still incomplete
//! `hold` after its END (an event on a topic not read) goes as it is.
//!
//! Without metadata, a change whose transaction has not named its request is held until the
//! message arrives or for `hold`; order across topics is then the consumer's.
//!
//! Either way at most `max_held` changes are held (past it the oldest transaction goes,
//! whole). Released without a request id, a change is a write by "another request", which is
//! what it is when its transaction sent no message. Request ids of transactions that named
//! one, and with metadata the transactions released, are remembered (at most [`MAX_NAMED`],
//! the oldest forgotten first): a change that arrives after its transaction was released
//! goes at once, named as its transaction was.

use crate::change::RowChange;
use crate::change::REQUEST_ID_PREFIX;
use crate::debezium::Record;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Transactions whose request ids (or, with metadata, whose release) are remembered.
pub const MAX_NAMED: usize = 65_536;

/// How long a change waits for its transaction's message or end by default (`toctou`'s
/// `--cdc-debezium-hold`).
pub const DEFAULT_HOLD: Duration = Duration::from_secs(10);

/// Changes held at most by default: a 100,000-row transaction fits whole.
pub const DEFAULT_MAX_HELD: usize = 200_000;

/// How long, in units of `hold`, a change waits for an END record that has not come when
/// others have: its transaction's END is behind on the transaction topic.
const UNENDED_HOLDS: u32 = 10;

/// How changes left the assembler without a request id, for the counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Their transaction was complete (its END record and every event it counted).
    pub complete: u64,
    /// Released after `hold`.
    pub timed_out: u64,
    /// Released early because too many changes were held.
    pub evicted: u64,
}

struct Open<T> {
    held: Vec<(RowChange, T)>,
    /// Changes and messages of the transaction seen so far.
    seen: u64,
    /// Events the END record announced.
    expected: Option<u64>,
    /// When its first record (or END) arrived.
    since: Instant,
    /// When its END arrived.
    ended: Option<Instant>,
}

impl<T> Open<T> {
    fn complete(&self) -> bool {
        self.expected.is_some_and(|n| self.seen >= n)
    }
}

/// Row changes, tagged with where they came from (`T`: a Kafka offset, say), joined with
/// their transactions' request ids, in commit order where the stream says it.
pub struct Assembler<T> {
    hold: Duration,
    max_held: usize,
    open: HashMap<String, Open<T>>,
    /// Open transactions by the time they opened (oldest first); entries of transactions
    /// since released are skipped when met.
    order: VecDeque<(Instant, String)>,
    /// Transactions by the arrival of their END records: commit order.
    ends: VecDeque<String>,
    /// END records have been seen: release in their order.
    ordered: bool,
    held: usize,
    /// Transactions that named their request (`Some`), and, with metadata, those released
    /// without one (`None`): a late change of either goes at once, as it would have in time.
    known: HashMap<String, Option<String>>,
    known_order: VecDeque<String>,
    released: Released,
}

impl<T> Assembler<T> {
    /// `hold`: how long a change waits for its message or its transaction's end; zero
    /// releases at once (records in stream order, the HTTP sink).
    pub fn new(hold: Duration, max_held: usize) -> Self {
        Assembler {
            hold,
            max_held: max_held.max(1),
            open: HashMap::new(),
            order: VecDeque::new(),
            ends: VecDeque::new(),
            ordered: false,
            held: 0,
            known: HashMap::new(),
            known_order: VecDeque::new(),
            released: Released::default(),
        }
    }

    /// Takes one parsed record; changes ready to go are appended to `out`. Skips and other
    /// records are the caller's to count.
    pub fn push(&mut self, record: Record, tag: T, now: Instant, out: &mut Vec<(RowChange, T)>) {
        match record {
            Record::Change(mut change) => {
                if let Some(Some(request)) = self.known.get(&change.tx) {
                    change.request_id = Some(request.clone());
                }
                let go_now = self.hold.is_zero()
                    || (!self.ordered && change.request_id.is_some())
                    || (self.ordered && self.was_released(&change.tx));
                if go_now {
                    // Still one of the events its END will count.
                    if let Some(open) = self.open.get_mut(&change.tx) {
                        open.seen += 1;
                    }
                    out.push((change, tag));
                    return;
                }
                let tx = change.tx.clone();
                let open = self.open_tx(&tx, now);
                open.seen += 1;
                open.held.push((change, tag));
                self.held += 1;
                self.release_ready(&tx, out);
                self.evict(out);
            }
            Record::Message {
                tx: Some(tx),
                prefix,
                content,
            } if prefix == REQUEST_ID_PREFIX => {
                let request = String::from_utf8_lossy(&content).into_owned();
                self.name(&tx, request.clone());
                if self.hold.is_zero() {
                    return;
                }
                let open = self.open_tx(&tx, now);
                open.seen += 1;
                for (c, _) in &mut open.held {
                    c.request_id = Some(request.clone());
                }
                self.release_ready(&tx, out);
            }
            Record::Message { .. } => {}
            Record::TransactionEnd { tx, events } => {
                if self.hold.is_zero() || events == 0 {
                    return;
                }
                self.ordered = true;
                let open = self.open_tx(&tx, now);
                open.expected = Some(events);
                open.ended = Some(now);
                self.ends.push_back(tx.clone());
                self.release_ready(&tx, out);
            }
            Record::Skip(_) => {}
        }
    }

    /// Releases what has waited too long: without metadata, changes held for `hold`; with
    /// it, the oldest ended transaction still incomplete `hold` after its END (and whatever
    /// that lets go), and changes whose END has not come for ten times `hold`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<(RowChange, T)>) {
        if self.ordered {
            while let Some(tx) = self.ends.front() {
                let late = self.open.get(tx).is_none_or(|o| {
                    o.ended
                        .is_some_and(|e| now.saturating_duration_since(e) >= self.hold)
                });
                if !late {
                    break;
                }
                let tx = self.ends.pop_front().expect("front exists");
                if let Some(o) = self.open.get(&tx) {
                    tracing::debug!(tx, seen = o.seen, expected = ?o.expected, held = o.held.len(), "transaction incomplete after its END and the hold: released as it is");
                }
                self.release(&tx, Why::TimedOut, out);
                self.drain(out);
            }
        }
        let wait = if self.ordered {
            self.hold * UNENDED_HOLDS
        } else {
            self.hold
        };
        while let Some((since, tx)) = self.order.front() {
            if now.saturating_duration_since(*since) < wait {
                break;
            }
            let (since, tx) = (*since, tx.clone());
            self.order.pop_front();
            let stale = self
                .open
                .get(&tx)
                .is_some_and(|o| o.since == since && o.ended.is_none());
            if stale {
                self.release(&tx, Why::TimedOut, out);
            }
        }
    }

    /// When [`Assembler::expire`] may next have something to release.
    pub fn next_expiry(&self) -> Option<Instant> {
        let ended = self
            .ends
            .front()
            .and_then(|tx| self.open.get(tx))
            .and_then(|o| o.ended)
            .map(|e| e + self.hold);
        let wait = if self.ordered {
            self.hold * UNENDED_HOLDS
        } else {
            self.hold
        };
        let opened = self.order.front().map(|(since, _)| *since + wait);
        match (ended, opened) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The tags of the changes still held (a Kafka consumer commits below the lowest).
    pub fn held_tags(&self) -> impl Iterator<Item = &T> {
        self.open
            .values()
            .flat_map(|o| o.held.iter().map(|(_, tag)| tag))
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// Changes released without a request id so far, by why.
    pub fn released(&self) -> Released {
        self.released
    }

    fn open_tx(&mut self, tx: &str, now: Instant) -> &mut Open<T> {
        if !self.open.contains_key(tx) {
            self.order.push_back((now, tx.to_string()));
            self.open.insert(
                tx.to_string(),
                Open {
                    held: Vec::new(),
                    seen: 0,
                    expected: None,
                    since: now,
                    ended: None,
                },
            );
        }
        self.open.get_mut(tx).expect("inserted above")
    }

    /// Whether a transaction's changes have gone already (its END passed): a late change of
    /// it goes at once, as it would have had it come in time.
    fn was_released(&self, tx: &str) -> bool {
        !self.open.contains_key(tx) && self.known.contains_key(tx)
    }

    /// Releases what `tx`'s news lets go: without metadata, a named transaction's changes;
    /// with it, complete transactions at the front of the commit order.
    fn release_ready(&mut self, tx: &str, out: &mut Vec<(RowChange, T)>) {
        if self.ordered {
            self.drain(out);
            return;
        }
        let Some(open) = self.open.get_mut(tx) else {
            return;
        };
        if open.complete() {
            self.release(tx, Why::Complete, out);
        } else if matches!(self.known.get(tx), Some(Some(_))) {
            let held = std::mem::take(&mut open.held);
            self.held -= held.len();
            out.extend(held);
        }
    }

    /// Releases complete transactions from the front of the commit order.
    fn drain(&mut self, out: &mut Vec<(RowChange, T)>) {
        while let Some(tx) = self.ends.front() {
            if !self.open.get(tx).is_none_or(Open::complete) {
                break;
            }
            let tx = self.ends.pop_front().expect("front exists");
            self.release(&tx, Why::Complete, out);
        }
    }

    /// Past `max_held`: the oldest transaction goes, in commit order where known.
    fn evict(&mut self, out: &mut Vec<(RowChange, T)>) {
        while self.held > self.max_held {
            if let Some(tx) = self.ends.pop_front() {
                self.release(&tx, Why::Evicted, out);
                continue;
            }
            let Some((since, oldest)) = self.order.pop_front() else {
                break;
            };
            if self.open.get(&oldest).is_some_and(|o| o.since == since) {
                self.release(&oldest, Why::Evicted, out);
            }
        }
    }

    fn release(&mut self, tx: &str, why: Why, out: &mut Vec<(RowChange, T)>) {
        let Some(open) = self.open.remove(tx) else {
            return;
        };
        self.held -= open.held.len();
        let unnamed = open
            .held
            .iter()
            .filter(|(c, _)| c.request_id.is_none())
            .count() as u64;
        match why {
            Why::Complete => self.released.complete += unnamed,
            Why::TimedOut => self.released.timed_out += unnamed,
            Why::Evicted => self.released.evicted += unnamed,
        }
        if self.ordered && !self.known.contains_key(tx) {
            self.remember(tx, None);
        }
        out.extend(open.held);
    }

    fn name(&mut self, tx: &str, request: String) {
        self.remember(tx, Some(request));
    }

    fn remember(&mut self, tx: &str, request: Option<String>) {
        if self.known.insert(tx.to_string(), request).is_none() {
            self.known_order.push_back(tx.to_string());
            while self.known_order.len() > MAX_NAMED {
                if let Some(old) = self.known_order.pop_front() {
                    self.known.remove(&old);
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Why {
    Complete,
    TimedOut,
    Evicted,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Op;

    fn change(tx: &str, key: &str) -> Record {
        Record::Change(RowChange {
            columns: Vec::new(),
            op: Op::Update,
            schema: "public".into(),
            table: "inventory".into(),
            key: vec![("sku".into(), key.into())],
            row_version: None,
            position: 1,
            index: 0,
            tx: tx.into(),
            request_id: None,
            commit_time_ns: 1,
        })
    }

    fn message(tx: &str, request: &str) -> Record {
        Record::Message {
            tx: Some(tx.into()),
            prefix: REQUEST_ID_PREFIX.into(),
            content: request.as_bytes().to_vec(),
        }
    }

    fn requests(out: &[(RowChange, u32)]) -> Vec<(u32, Option<&str>)> {
        out.iter()
            .map(|(c, tag)| (*tag, c.request_id.as_deref()))
            .collect()
    }

    #[test]
    fn a_change_read_before_its_message_waits_for_it() {
        let t0 = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(2), 100);
        let mut out = Vec::new();
        a.push(change("7", "a"), 1, t0, &mut out);
        a.push(change("7", "b"), 2, t0, &mut out);
        assert!(out.is_empty());
        assert_eq!(a.held_tags().copied().collect::<Vec<_>>(), [1, 2]);
        a.push(message("7", "req-1"), 3, t0, &mut out);
        assert_eq!(requests(&out), [(1, Some("req-1")), (2, Some("req-1"))]);
        // A later change of the same transaction is named at once.
        out.clear();
        a.push(change("7", "c"), 4, t0, &mut out);
        assert_eq!(requests(&out), [(4, Some("req-1"))]);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn the_end_record_releases_a_transaction_that_sent_no_message() {
        let t0 = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(2), 100);
        let mut out = Vec::new();
        // The END can be read before the changes it counts (another topic).
        a.push(
            Record::TransactionEnd {
                tx: "8".into(),
                events: 2,
            },
            0,
            t0,
            &mut out,
        );
        a.push(change("8", "a"), 1, t0, &mut out);
        assert!(out.is_empty(), "one of two events seen");
        a.push(change("8", "b"), 2, t0, &mut out);
        assert_eq!(requests(&out), [(1, None), (2, None)]);
        assert_eq!(a.released().complete, 2);
        out.clear();
        a.expire(t0 + Duration::from_secs(60), &mut out);
        assert!(out.is_empty(), "nothing left to release");
        assert_eq!(a.next_expiry(), None);
    }

    fn end(tx: &str, events: u64) -> Record {
        Record::TransactionEnd {
            tx: tx.into(),
            events,
        }
    }

    #[test]
    fn with_metadata_changes_go_on_in_commit_order() {
        let t0 = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(2), 100);
        let mut out = Vec::new();
        // The transaction topic says: 1 committed, then 2. Transaction 2 (named) is read
        // whole first; transaction 1's change (a plain delete, say) comes last.
        a.push(end("1", 1), 0, t0, &mut out);
        a.push(end("2", 2), 0, t0, &mut out);
        a.push(message("2", "req-2"), 0, t0, &mut out);
        a.push(change("2", "b"), 21, t0, &mut out);
        assert!(out.is_empty(), "2 waits for 1, complete as it is");
        assert_eq!(a.held_tags().copied().collect::<Vec<_>>(), [21]);
        a.push(change("1", "a"), 11, t0, &mut out);
        assert_eq!(requests(&out), [(11, None), (21, Some("req-2"))]);
        // A late change of a released, named transaction goes at once, named.
        out.clear();
        a.push(change("2", "c"), 22, t0, &mut out);
        assert_eq!(requests(&out), [(22, Some("req-2"))]);
        assert_eq!(a.held(), 0);
        assert_eq!(a.released().complete, 1);
    }

    #[test]
    fn a_transaction_of_100_000_rows_goes_whole_and_in_order() {
        let t0 = Instant::now();
        let mut a = Assembler::new(DEFAULT_HOLD, DEFAULT_MAX_HELD);
        let mut out = Vec::new();
        a.push(end("0", 1), 0, t0, &mut out);
        a.push(end("big", 100_001), 0, t0, &mut out);
        a.push(message("big", "req-big"), 0, t0, &mut out);
        for i in 1..=100_000u32 {
            a.push(change("big", &i.to_string()), i, t0, &mut out);
        }
        assert!(out.is_empty(), "behind transaction 0");
        assert_eq!(a.held(), 100_000);
        a.push(change("0", "first"), 0, t0, &mut out);
        assert_eq!(out.len(), 100_001);
        assert!(out.iter().map(|(_, tag)| *tag).eq(0..=100_000));
        assert!(out[1..]
            .iter()
            .all(|(c, _)| c.request_id.as_deref() == Some("req-big")));
        assert_eq!(
            a.released(),
            Released {
                complete: 1,
                ..Released::default()
            }
        );
    }

    #[test]
    fn the_first_end_record_counts_what_went_before_it() {
        let t0 = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(2), 100);
        let mut out = Vec::new();
        // No END seen yet: a named change goes at once, and still counts for its END.
        a.push(message("1", "req-1"), 0, t0, &mut out);
        a.push(change("1", "a"), 11, t0, &mut out);
        a.push(end("1", 2), 0, t0, &mut out);
        a.push(change("2", "b"), 21, t0, &mut out);
        a.push(end("2", 1), 0, t0, &mut out);
        assert_eq!(requests(&out), [(11, Some("req-1")), (21, None)]);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn with_metadata_an_incomplete_transaction_goes_after_hold_and_lets_the_next_go() {
        let t0 = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(2), 100);
        let mut out = Vec::new();
        // Transaction 1 counted an event of a topic nobody reads.
        a.push(change("1", "a"), 11, t0, &mut out);
        a.push(end("1", 2), 0, t0, &mut out);
        a.push(change("2", "b"), 21, t0, &mut out);
        a.push(end("2", 1), 0, t0 + Duration::from_secs(1), &mut out);
        assert!(out.is_empty());
        assert_eq!(a.next_expiry(), Some(t0 + Duration::from_secs(2)));
        a.expire(t0 + Duration::from_millis(1999), &mut out);
        assert!(out.is_empty());
        a.expire(t0 + Duration::from_secs(2), &mut out);
        assert_eq!(requests(&out), [(11, None), (21, None)]);
        assert_eq!(a.released().timed_out, 1);
        assert_eq!(a.released().complete, 1);
        // Its missing event, late: it goes at once, as it would have in time.
        out.clear();
        a.push(change("1", "a2"), 12, t0 + Duration::from_secs(3), &mut out);
        assert_eq!(requests(&out), [(12, None)]);
        // A change whose END never comes while others do waits ten holds.
        out.clear();
        a.push(change("3", "c"), 31, t0 + Duration::from_secs(3), &mut out);
        a.expire(t0 + Duration::from_secs(22), &mut out);
        assert!(out.is_empty());
        a.expire(t0 + Duration::from_secs(23), &mut out);
        assert_eq!(requests(&out), [(31, None)]);
    }

    #[test]
    fn a_message_counts_as_one_of_the_events_the_end_announced() {
        let t0 = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(2), 100);
        let mut out = Vec::new();
        a.push(change("9", "a"), 1, t0, &mut out);
        a.push(
            Record::TransactionEnd {
                tx: "9".into(),
                events: 2,
            },
            2,
            t0,
            &mut out,
        );
        assert!(out.is_empty(), "the message is still to come");
        a.push(message("9", "req-9"), 3, t0, &mut out);
        assert_eq!(requests(&out), [(1, Some("req-9"))]);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn without_metadata_a_change_waits_for_hold_then_goes_unnamed() {
        let t0 = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(2), 100);
        let mut out = Vec::new();
        a.push(change("10", "a"), 1, t0, &mut out);
        a.push(change("11", "b"), 2, t0 + Duration::from_secs(1), &mut out);
        a.expire(t0 + Duration::from_millis(1999), &mut out);
        assert!(out.is_empty());
        a.expire(t0 + Duration::from_secs(2), &mut out);
        assert_eq!(requests(&out), [(1, None)]);
        assert_eq!(a.next_expiry(), Some(t0 + Duration::from_secs(3)));
        assert_eq!(a.released().timed_out, 1);
    }

    #[test]
    fn holding_is_bounded_oldest_transaction_first() {
        let t0 = Instant::now();
        let mut a = Assembler::new(Duration::from_secs(60), 3);
        let mut out = Vec::new();
        a.push(change("1", "a"), 1, t0, &mut out);
        a.push(change("1", "b"), 2, t0, &mut out);
        a.push(change("2", "c"), 3, t0, &mut out);
        assert!(out.is_empty());
        a.push(change("3", "d"), 4, t0, &mut out);
        assert_eq!(requests(&out), [(1, None), (2, None)]);
        assert_eq!(a.held(), 2);
        assert_eq!(a.released().evicted, 2);
    }

    #[test]
    fn with_no_hold_records_in_stream_order_go_at_once() {
        let t0 = Instant::now();
        let mut a = Assembler::new(Duration::ZERO, 100);
        let mut out = Vec::new();
        a.push(change("5", "a"), 1, t0, &mut out);
        a.push(message("6", "req-6"), 2, t0, &mut out);
        a.push(change("6", "b"), 3, t0, &mut out);
        assert_eq!(requests(&out), [(1, None), (3, Some("req-6"))]);
        assert_eq!(a.held(), 0);
        assert_eq!(a.next_expiry(), None);
    }

    #[test]
    fn names_are_remembered_within_a_bound() {
        let t0 = Instant::now();
        let mut a = Assembler::<u32>::new(Duration::ZERO, 100);
        let mut out = Vec::new();
        for i in 0..MAX_NAMED + 10 {
            a.push(message(&i.to_string(), "r"), 0, t0, &mut out);
        }
        assert_eq!(a.known.len(), MAX_NAMED);
        assert!(!a.known.contains_key("0"));
    }
}
