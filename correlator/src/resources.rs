//! Per-resource state: the recent audit writes (to find writes between a check and its use)
//! and the pending create.
//!
//! The history keeps writes for `2 * pair_ttl + allowed_lateness` after their commit time:
//! long enough for any use that can still pair (a tombstone lives until `2 * pair_ttl` after
//! its check) to see every write since its check. One global timer queue, one timer per
//! write, prunes the histories in commit-time order and bounds them all together by
//! `max_audit_history`. Every write holds a reference on its resource, so a resource's
//! state lives exactly as long as something refers to it.

use crate::compact::{Compact, LongStrings, RenderBuf};
use crate::creates::PendingCreate;
use crate::engine::Engine;
use crate::item::AuditItem;
use crate::metrics::EvictedState;
use crate::timer::TimerQueue;
use std::collections::VecDeque;
use std::ops::Range;
use toctou_schema::{AuditAction, AuditRef, Version};

/// Evidence lists stop here; a finding's reason says how many there were in all.
pub(crate) const MAX_EVIDENCE: usize = 100;
/// Evidence lists also stop before their entries pass this many bytes (strings included):
/// a hundred writes with four values at the receivers' 4 KiB limit would otherwise make one
/// finding 1.6 MB. The first entry is always listed; it is itself bounded by that limit.
pub(crate) const MAX_EVIDENCE_BYTES: usize = 32 * 1024;

/// The first entries of an evidence list that fit both [`MAX_EVIDENCE`] and
/// [`MAX_EVIDENCE_BYTES`]; the caller says how many were left out (see `decide::listed`).
pub(crate) fn evidence(refs: impl Iterator<Item = AuditRef>) -> Vec<AuditRef> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for r in refs.take(MAX_EVIDENCE) {
        let size = r.approx_bytes();
        if !out.is_empty() && bytes + size > MAX_EVIDENCE_BYTES {
            break;
        }
        bytes += size;
        out.push(r);
    }
    out
}

#[derive(Default)]
pub(crate) struct ResourceState {
    /// Writes sorted by commit time.
    pub history: VecDeque<AuditWrite>,
    /// Some write since the history was last empty had a version that is not an integer in
    /// `i64`, or lower than an earlier write's. While this is false (resources whose versions
    /// only grow, the usual case) the writes are sorted by version too, and the stale-check
    /// rule finds its writes by binary search instead of reading the whole history.
    pub unordered: bool,
    pub create: Option<Box<PendingCreate>>,
}

impl ResourceState {
    /// Inserts a write in commit-time order.
    fn insert(&mut self, write: AuditWrite) {
        // Writes arrive in commit order but for late ones: the newest write, just touched,
        // answers most inserts without a search through a hot resource's history.
        let at = match self.history.back() {
            Some(last) if last.time > write.time => {
                self.history.partition_point(|w| w.time <= write.time)
            }
            _ => self.history.len(),
        };
        let v = write.version_int.plain();
        let fits = v.is_some_and(|v| {
            let after_prev = at == 0 || self.history[at - 1].version_int.plain() <= Some(v);
            let before_next = self
                .history
                .get(at)
                .is_none_or(|n| n.version_int.plain() >= Some(v));
            after_prev && before_next
        });
        self.unordered |= !fits;
        self.history.insert(at, write);
    }
}

pub(crate) struct AuditWrite {
    pub time: u64,
    pub action: AuditAction,
    pub version: Compact,
    pub request: Compact,
    pub actor: Compact,
    /// `version` as an integer, read once here: the stale-check rule compares a pair's
    /// versions with every write in the history, and on a hot resource that is thousands of
    /// writes per stale pair.
    version_int: VersionInt,
}

/// An integer version in 8 bytes: the value, or one of two marks for "not an integer" and
/// "an integer outside `i64`" (read again from the string when needed).
#[derive(Clone, Copy)]
struct VersionInt(i64);

impl VersionInt {
    const NONE: i64 = i64::MIN;
    const WIDE: i64 = i64::MIN + 1;

    fn of(c: &Compact, long: &LongStrings) -> VersionInt {
        VersionInt(match c.version_int(long) {
            None => Self::NONE,
            Some(v) => match i64::try_from(v) {
                Ok(v) if v > Self::WIDE => v,
                _ => Self::WIDE,
            },
        })
    }

    /// The value when it is an integer in `i64`.
    fn plain(self) -> Option<i64> {
        (self.0 > Self::WIDE).then_some(self.0)
    }

    fn get(self, c: &Compact, long: &LongStrings) -> Option<i128> {
        match self.0 {
            Self::NONE => None,
            Self::WIDE => c.version_int(long),
            v => Some(i128::from(v)),
        }
    }
}

impl AuditWrite {
    /// The write of audit event `a`, taking its own references on the strings.
    pub fn new(a: &AuditItem, long: &mut LongStrings) -> AuditWrite {
        AuditWrite {
            time: a.time,
            action: a.action,
            version_int: VersionInt::of(&a.version, long),
            version: a.version.share(long),
            request: a.request.share(long),
            actor: a.actor.share(long),
        }
    }

    pub fn version_int(&self, long: &LongStrings) -> Option<i128> {
        self.version_int.get(&self.version, long)
    }

    pub fn to_ref(&self, resource: &str, long: &LongStrings) -> AuditRef {
        AuditRef {
            action: self.action,
            resource: resource.to_owned(),
            version: self.version.to_string_opt(long),
            request_id: self.request.to_string_opt(long),
            actor: self.actor.to_string_opt(long),
            time_ns: self.time,
        }
    }

    /// Written by another request than `request` (a write with no request id always is).
    fn by_other(&self, request: &Compact) -> bool {
        self.request.is_none() || self.request != *request
    }
}

/// Pruning timers for the histories: (resource slot, resource generation).
pub(crate) struct AuditLog {
    pub prune: TimerQueue<(u32, u32)>,
    pub len: usize,
}

impl AuditLog {
    pub fn new() -> AuditLog {
        AuditLog {
            prune: TimerQueue::new(),
            len: 0,
        }
    }
}

/// A use's own audit record (same request, same resource): where its write took effect.
pub(crate) struct OwnWrite {
    pub time: u64,
    /// Its version, when an integer.
    pub version: Option<i128>,
}

/// What the check and use said, for the stale-check rule.
pub(crate) struct Pair<'a> {
    pub check_time: u64,
    /// When the use took effect: its own write's commit time, else its span's end.
    pub use_time: u64,
    /// The own write's version (an integer): writes by version stop below it.
    pub own_version: Option<i128>,
    pub checked: &'a Compact,
    pub used: &'a Compact,
    pub request: &'a Compact,
}

/// The stale-check verdict and its evidence (indices into the resource's history).
pub(crate) enum Staleness {
    Fresh,
    Stale {
        intervening: Vec<usize>,
    },
    /// A version missing and no audit stream: nothing to decide on.
    Indeterminate,
}

/// Versions equal as the conventions define it (integers by value, else byte for byte).
pub(crate) fn same_version(a: &Compact, b: &Compact, long: &LongStrings) -> bool {
    if a == b {
        // The same string (the encoding is canonical).
        return !a.is_none();
    }
    let (mut ba, mut bb): (RenderBuf, RenderBuf) = ([0; 36], [0; 36]);
    match (a.as_str(long, &mut ba), b.as_str(long, &mut bb)) {
        (Some(x), Some(y)) => Version(x).same(&Version(y)),
        _ => false,
    }
}

/// Applies the stale-check rule of `docs/CORRELATOR.md` to a pair on one resource.
///
/// The evidence is the writes by another request committed between the check and the use,
/// by time or (integer versions) by version. The history is sorted by time, and while its
/// versions only grow (`!unordered`) by version too, so each of those is a run of it found
/// by binary search; otherwise the whole history is read. On a hot resource that is
/// thousands of writes per pair: 7% of `toctou run`'s samples at saturation went to the
/// scan (bench/HISTORY.md, issue 7).
pub(crate) fn staleness(state: &ResourceState, p: &Pair<'_>, long: &LongStrings) -> Staleness {
    rule(&state.history, p, long, !state.unordered)
}

/// [`staleness`] by reading every write, whatever the history: the reference the binary
/// searches are held to.
#[cfg(test)]
fn staleness_scan(history: &VecDeque<AuditWrite>, p: &Pair<'_>, long: &LongStrings) -> Staleness {
    rule(history, p, long, false)
}

/// The rule, finding its evidence by binary search when `search` (the history's versions
/// only grow) and by reading every write otherwise.
fn rule(
    history: &VecDeque<AuditWrite>,
    p: &Pair<'_>,
    long: &LongStrings,
    search: bool,
) -> Staleness {
    let checked_int = p.checked.version_int(long);
    // Index of the first write whose version is above `v` (searchable histories only).
    let above = |v: i128| history.partition_point(|w| i128::from(w.version_int.0) <= v);
    let by_others = |runs: &mut dyn Iterator<Item = usize>| -> Vec<usize> {
        runs.filter(|&i| history[i].by_other(p.request)).collect()
    };
    if !p.checked.is_none() && !p.used.is_none() {
        if same_version(p.checked, p.used, long) {
            return Staleness::Fresh;
        }
        let used_int = p.used.version_int(long);
        let in_time = |w: &AuditWrite| p.check_time < w.time && w.time < p.use_time;
        let intervening = match (checked_int, used_int) {
            (Some(c), Some(u)) if !search => by_others(&mut (0..history.len()).filter(|&i| {
                let w = &history[i];
                in_time(w) || w.version_int(long).is_some_and(|v| c < v && v <= u)
            })),
            (c, u) => {
                let in_time = history.partition_point(|w| w.time <= p.check_time)
                    ..history.partition_point(|w| w.time < p.use_time);
                let in_versions = match (c, u) {
                    (Some(c), Some(u)) => above(c)..above(u),
                    // A version that is not an integer orders nothing.
                    _ => 0..0,
                };
                by_others(&mut union(in_time, in_versions))
            }
        };
        return Staleness::Stale { intervening };
    }
    if history.is_empty() {
        return Staleness::Indeterminate;
    }
    // Committed after the check and before the use took effect: by version where the
    // checked version and the write's are integers (clocks of the application and the
    // system of record need not agree), up to the own write's version where it has one,
    // else by time.
    let before_use = history.partition_point(|w| w.time < p.use_time);
    let intervening = match (checked_int, p.own_version) {
        (Some(c), own) if !search => by_others(&mut (0..history.len()).filter(|&i| {
            let w = &history[i];
            match (w.version_int(long), own) {
                (Some(v), Some(o)) => c < v && v < o,
                (Some(v), None) => c < v && w.time < p.use_time,
                (None, _) => p.check_time < w.time && w.time < p.use_time,
            }
        })),
        (Some(c), Some(o)) => by_others(&mut (above(c)..above(o - 1))),
        (Some(c), None) => by_others(&mut (above(c)..before_use)),
        (None, _) => {
            by_others(&mut (history.partition_point(|w| w.time <= p.check_time)..before_use))
        }
    };
    if intervening.is_empty() {
        Staleness::Fresh
    } else {
        Staleness::Stale { intervening }
    }
}

/// The indices in either range, ascending, each once.
fn union(a: Range<usize>, b: Range<usize>) -> impl Iterator<Item = usize> {
    let (a, b) = match (a.is_empty(), b.is_empty()) {
        (true, _) => (b, 0..0),
        (_, true) => (a, 0..0),
        _ if a.start <= b.start => (a, b),
        _ => (b, a),
    };
    if b.start <= a.end {
        // Overlapping or adjacent: one run.
        let end = a.end.max(b.end);
        (a.start..end).chain(0..0)
    } else {
        a.chain(b)
    }
}

impl Engine {
    /// Adds an audit write to its resource's history (in commit-time order).
    pub(crate) fn record_write(&mut self, a: &AuditItem) {
        let write = AuditWrite::new(a, &mut self.sym.long);
        let slot = self.sym.resources.retain(a.resource);
        let gen = self.sym.resources.gen(slot);
        self.sym.resources.value_mut(slot).insert(write);
        self.audits
            .prune
            .push(a.time.saturating_add(self.history_window_ns), (slot, gen));
        self.audits.len += 1;
        while self.audits.len > self.config.max_audit_history {
            if !self.evict_oldest_write() {
                break;
            }
        }
    }

    /// Forgets the write committed longest ago (of any resource); false if none is kept.
    pub(crate) fn evict_oldest_write(&mut self) -> bool {
        while let Some((_, (slot, gen))) = self.audits.prune.pop() {
            if self.drop_oldest_write(slot, gen, u64::MAX) {
                self.stats.count_evicted(EvictedState::Audit);
                return true;
            }
        }
        false
    }

    /// Pruning timer: the resource's oldest write has left the history window.
    pub(crate) fn fire_history_prune(&mut self, deadline: u64, slot: u32, gen: u32) {
        self.drop_oldest_write(slot, gen, deadline);
    }

    /// Drops the resource's oldest write if its window ended by `deadline`.
    fn drop_oldest_write(&mut self, slot: u32, gen: u32, deadline: u64) -> bool {
        let window = self.history_window_ns;
        let Some(state) = self.sym.resources.live_mut(slot, gen) else {
            return false;
        };
        match state.history.front() {
            Some(w) if w.time.saturating_add(window) <= deadline => {}
            _ => return false,
        }
        let w = state.history.pop_front().expect("front exists");
        if state.history.is_empty() {
            state.unordered = false;
            if state.history.capacity() > 64 {
                state.history = VecDeque::new();
            }
        }
        for c in [w.version, w.request, w.actor] {
            c.release(&mut self.sym.long);
        }
        self.audits.len -= 1;
        self.sym.resources.release(slot);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::long_strings;

    fn verdict(s: Staleness) -> (u8, Vec<usize>) {
        match s {
            Staleness::Fresh => (0, vec![]),
            Staleness::Indeterminate => (1, vec![]),
            Staleness::Stale { intervening } => (2, intervening),
        }
    }

    /// The binary searches of `staleness` against the full scan, over random histories:
    /// versions that only grow (the fast path), and mixed ones (some lower, some not
    /// integers), which must fall back to the scan.
    #[test]
    fn the_stale_check_search_finds_exactly_what_the_scan_finds() {
        let mut long = long_strings();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let requests: Vec<Compact> = ["a", "b", "c"]
            .iter()
            .map(|r| Compact::encode(r, &mut long))
            .chain([Compact::none()])
            .collect();
        let mut fast_paths = 0;
        for round in 0..400 {
            let growing = round % 2 == 0;
            let mut state = ResourceState::default();
            let n = rand(40);
            for _ in 0..n {
                let time = rand(100);
                let version = if growing {
                    // Versions follow time, as a real resource's do (writes of one
                    // instant in any order, so of one version).
                    (time * 3).to_string()
                } else {
                    match rand(6) {
                        0 => "etag-x".to_string(),
                        _ => rand(300).to_string(),
                    }
                };
                let version = Compact::encode(&version, &mut long);
                state.insert(AuditWrite {
                    time,
                    action: AuditAction::Update,
                    version_int: VersionInt::of(&version, &long),
                    version,
                    request: requests[rand(4) as usize].share(&mut long),
                    actor: Compact::none(),
                });
            }
            if growing {
                assert!(
                    !state.unordered,
                    "growing versions keep the history ordered"
                );
            }
            fast_paths += usize::from(!state.unordered);
            for _ in 0..20 {
                let mut version = |long: &mut LongStrings| match rand(5) {
                    0 => Compact::none(),
                    1 => Compact::encode("etag-y", long),
                    _ => Compact::encode(&rand(320).to_string(), long),
                };
                let (checked, used) = (version(&mut long), version(&mut long));
                let request = &requests[rand(4) as usize];
                let own_version = match rand(3) {
                    0 => Some(i128::from(rand(320) as u32)),
                    _ => None,
                };
                let pair = Pair {
                    check_time: rand(110),
                    use_time: rand(110),
                    own_version,
                    checked: &checked,
                    used: &used,
                    request,
                };
                assert_eq!(
                    verdict(staleness(&state, &pair, &long)),
                    verdict(staleness_scan(&state.history, &pair, &long)),
                    "round {round}"
                );
            }
        }
        assert!(fast_paths >= 200, "{fast_paths}");
    }

    #[test]
    fn a_write_keeps_its_version_as_the_integer_version_as_int_reads() {
        let mut long = long_strings();
        for s in [
            "42",
            "0000001795699491900955",
            "-7",
            "9223372036854775807",
            "-9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999999",
            "v2",
            "",
        ] {
            let c = Compact::encode(s, &mut long);
            let v = VersionInt::of(&c, &long);
            assert_eq!(v.get(&c, &long), Version(s).as_int(), "{s:?}");
            c.release(&mut long);
        }
        let none = Compact::none();
        assert_eq!(VersionInt::of(&none, &long).get(&none, &long), None);
    }
}
