//! What the stage counted, for /metrics.

use std::collections::BTreeMap;

/// The reasons a call is not understood ([`Stats::not_understood`]).
pub const NOT_UNDERSTOOD: [&str; 5] = [
    "syntax",
    "unsupported",
    "several_statements",
    "parameters",
    "too_many_calls",
];
/// The outcomes of a pair ([`Stats::pairs`]).
pub const PAIR_OUTCOMES: [&str; 5] = [
    "matched",
    "unmatched",
    "protected",
    "prevented",
    "other_rows",
];
/// What becomes of a change record ([`Stats::changes`]).
pub const CHANGE_FATES: [&str; 4] = ["attributed", "unattributed", "passed", "evicted"];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Database calls read (spans with a statement).
    pub statements: u64,
    /// Calls whose statement was not understood, by reason (`syntax`, `unsupported`,
    /// `several_statements`, `parameters`, `too_many_calls`).
    pub not_understood: BTreeMap<&'static str, u64>,
    /// Read-then-write pairs, by outcome: `matched` (the write's own change found; check and
    /// use handed to the engine), `unmatched` (no change record within the hold: rolled back,
    /// or not in the stream), `protected` (locked, compared, guarded, on conflict,
    /// serializable), `prevented` (the write failed with a serialization failure),
    /// `other_rows` (a read pinned by other columns than the key did not read the row
    /// written, its change's row image says).
    pub pairs: BTreeMap<&'static str, u64>,
    /// Change records, by what became of them: `attributed` (to a request's write),
    /// `unattributed` (released after the hold without one), `passed` (of a table no pair
    /// writes: not held), `evicted` (released early, too many held).
    pub changes: BTreeMap<&'static str, u64>,
    /// Matched pairs that no version decides and whose row had another commit during the
    /// read (or stamped within the visibility lag before it): whether the read saw it cannot
    /// be told from times, so the engine's verdict rests on the commits after the read and a
    /// race there can go unreported.
    pub undecided: u64,
    /// Parse cache.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Requests dropped early (too many at once).
    pub traces_evicted: u64,
    /// Change records held and writes waiting now.
    pub held_changes: u64,
    pub pending_writes: u64,
}

impl Stats {
    pub(crate) fn pair(&mut self, outcome: &'static str) {
        *self.pairs.entry(outcome).or_default() += 1;
    }

    pub(crate) fn change(&mut self, what: &'static str) {
        *self.changes.entry(what).or_default() += 1;
    }

    pub(crate) fn not_understood(&mut self, reason: &'static str) {
        *self.not_understood.entry(reason).or_default() += 1;
    }
}
