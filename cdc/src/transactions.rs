//! Which request each Debezium row change belongs to, when the transaction's
//! `toctou.request_id` message and its changes arrive as separate records.
//!
//! Over Debezium Server's HTTP sink the records come one by one in stream order, so a
//! message sent first in its transaction (as the helpers do) precedes the changes it names.
//! From Kafka they do not: the message is on `<prefix>.message`, the changes on their tables'
//! topics, and a consumer reads those partitions at their own pace (after an outage, one can
//! be minutes ahead of another). So a change whose transaction has not named its request yet
//! is held until one of:
//! - the message arrives: the held changes are released with its request id;
//! - the transaction is known complete: its END record (`provide.transaction.metadata`) said
//!   how many events it had and that many (changes and messages) have arrived;
//! - it has been held for `hold` (no metadata, or a record that never comes), or more than
//!   `max_held` changes are held (the oldest transaction goes first, whole).
//!
//! Released without a request id, a change is a write by "another request", which is what
//! it is when its transaction sent no message. Request ids of transactions that named one are
//! remembered (at most [`MAX_NAMED`], the oldest forgotten first) for changes that arrive
//! after their transaction was released.

use crate::change::RowChange;
use crate::change::REQUEST_ID_PREFIX;
use crate::debezium::Record;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Transactions whose request ids are remembered after release.
pub const MAX_NAMED: usize = 65_536;

/// How long a change waits for its transaction's message by default.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(2);

/// Changes held at most by default: a 100,000-row transaction fits whole.
pub const DEFAULT_MAX_HELD: usize = 200_000;

/// How a change left the assembler without a request id, for the counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Released by its transaction's END record.
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
    since: Instant,
}

/// Row changes, tagged with where they came from (`T`: a Kafka offset, say), joined with
/// their transactions' request ids.
pub struct Assembler<T> {
    hold: Duration,
    max_held: usize,
    open: HashMap<String, Open<T>>,
    /// Open transactions by the time their first change was held (oldest first); entries
    /// of transactions since released are skipped when met.
    order: VecDeque<(Instant, String)>,
    held: usize,
    named: HashMap<String, String>,
    named_order: VecDeque<String>,
    released: Released,
}

impl<T> Assembler<T> {
    /// `hold`: how long a change waits for its message; zero releases at once (records in
    /// stream order, the HTTP sink).
    pub fn new(hold: Duration, max_held: usize) -> Self {
        Assembler {
            hold,
            max_held: max_held.max(1),
            open: HashMap::new(),
            order: VecDeque::new(),
            held: 0,
            named: HashMap::new(),
            named_order: VecDeque::new(),
            released: Released::default(),
        }
    }

    /// Takes one parsed record; changes ready to go are appended to `out`, in arrival order
    /// within a transaction. Skips and other records are the caller's to count.
    pub fn push(&mut self, record: Record, tag: T, now: Instant, out: &mut Vec<(RowChange, T)>) {
        match record {
            Record::Change(mut change) => {
                if let Some(request) = self.named.get(&change.tx) {
                    change.request_id = Some(request.clone());
                    out.push((change, tag));
                    return;
                }
                if self.hold.is_zero() {
                    out.push((change, tag));
                    return;
                }
                let tx = change.tx.clone();
                let open = self.open_tx(&tx, now);
                open.seen += 1;
                open.held.push((change, tag));
                self.held += 1;
                self.release_if_complete(&tx, out);
                while self.held > self.max_held {
                    let Some((since, oldest)) = self.order.pop_front() else {
                        break;
                    };
                    if self.open.get(&oldest).is_some_and(|o| o.since == since) {
                        let open = self.open.remove(&oldest).expect("checked above");
                        self.held -= open.held.len();
                        self.released.evicted += open.held.len() as u64;
                        out.extend(open.held);
                    }
                }
            }
            Record::Message {
                tx: Some(tx),
                prefix,
                content,
            } if prefix == REQUEST_ID_PREFIX => {
                let request = String::from_utf8_lossy(&content).into_owned();
                self.name(&tx, request.clone());
                if let Some(open) = self.open.get_mut(&tx) {
                    open.seen += 1;
                    let held = std::mem::take(&mut open.held);
                    self.held -= held.len();
                    out.extend(held.into_iter().map(|(mut c, tag)| {
                        c.request_id = Some(request.clone());
                        (c, tag)
                    }));
                    self.release_if_complete(&tx, out);
                } else if !self.hold.is_zero() {
                    // Its changes may still come: the END record closes it.
                    self.open_tx(&tx, now).seen += 1;
                }
            }
            Record::Message { .. } => {}
            Record::TransactionEnd { tx, events } => {
                if let Some(open) = self.open.get_mut(&tx) {
                    open.expected = Some(events);
                    self.release_if_complete(&tx, out);
                } else if !self.hold.is_zero() && events > 0 {
                    let open = self.open_tx(&tx, now);
                    open.expected = Some(events);
                }
            }
            Record::Skip(_) => {}
        }
    }

    /// Releases, without request ids, the changes held for `hold` or longer.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<(RowChange, T)>) {
        while let Some((since, _)) = self.order.front() {
            if now.saturating_duration_since(*since) < self.hold {
                break;
            }
            let (since, tx) = self.order.pop_front().expect("front exists");
            // An entry of a transaction released since, or released and opened again later.
            if self.open.get(&tx).is_some_and(|o| o.since == since) {
                let open = self.open.remove(&tx).expect("checked above");
                self.held -= open.held.len();
                self.released.timed_out += open.held.len() as u64;
                out.extend(open.held);
            }
        }
    }

    /// When [`Assembler::expire`] next has something to release.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.order.front().map(|(since, _)| *since + self.hold)
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
                },
            );
        }
        self.open.get_mut(tx).expect("inserted above")
    }

    fn release_if_complete(&mut self, tx: &str, out: &mut Vec<(RowChange, T)>) {
        let complete = self
            .open
            .get(tx)
            .is_some_and(|o| o.expected.is_some_and(|n| o.seen >= n));
        if complete {
            let open = self.open.remove(tx).expect("checked above");
            self.held -= open.held.len();
            self.released.complete += open.held.len() as u64;
            out.extend(open.held);
        }
    }

    fn name(&mut self, tx: &str, request: String) {
        if self.named.insert(tx.to_string(), request).is_none() {
            self.named_order.push_back(tx.to_string());
            while self.named_order.len() > MAX_NAMED {
                if let Some(old) = self.named_order.pop_front() {
                    self.named.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Op;

    fn change(tx: &str, key: &str) -> Record {
        Record::Change(RowChange {
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
        assert_eq!(a.next_expiry(), Some(t0 + Duration::from_secs(2)));
        out.clear();
        a.expire(t0 + Duration::from_secs(3), &mut out);
        assert!(out.is_empty(), "nothing left to release");
        assert_eq!(a.next_expiry(), None);
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
        assert_eq!(a.named.len(), MAX_NAMED);
        assert!(!a.named.contains_key("0"));
    }
}
