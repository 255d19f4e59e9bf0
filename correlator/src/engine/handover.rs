//! What a partition handover needs from the engine: how far back in event time its open
//! state reaches ([`Engine::oldest_state_ns`]), a way to move a rebuilt engine's watermark
//! to where the previous owner's stood ([`Engine::advance_watermark`]), and a way to say
//! that events still wait to be read ([`Input`]), so that a new owner catching up with a
//! backlog never takes silence for idleness.
//!
//! In distributed mode a correlator owns a Kafka partition, commits offsets only up to the
//! oldest event its state still needs, and a new owner re-reads from there. Every state
//! record carries the event time of the event that made it, and every kind of record leaves
//! on a timer set at that time plus a fixed lifetime, so the head of each timer queue minus
//! its lifetime is the oldest such record (a stale timer head only makes the answer older,
//! which is safe). Policy histories are left out on purpose: they keep each policy's version
//! in force indefinitely, and counting them would pin the offsets forever.

use super::Engine;
use toctou_schema::Finding;

/// How far the caller's input has been read, for [`Engine::tick_input`].
///
/// The idle rule (no arrival for the allowed lateness: event time moves on with the wall
/// clock) holds only for silence while nothing waits to be read. A correlator catching up
/// with a Kafka partition's backlog can see no message of that partition for a while (its
/// fetch is behind another's, consumption was paused, the broker is slow) although the
/// backlog holds plenty: advancing by the wall clock then would make the rest of the backlog
/// late. Only the caller knows where its input ends; the engine reads no clock and no lag of
/// its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Everything written to the input before this wall-clock instant (ns) has been read
    /// (a receiver's input at every tick: now; a Kafka partition: when the partition's end
    /// was last found at or before its read position). Silence counts as idleness up to it.
    ReadUntil(u64),
    /// Events wait to be read, or where the input ends is not known: silence is not
    /// idleness, and the watermark moves only with arrivals.
    Behind,
}

impl Engine {
    /// The event time of the oldest event that the engine's open state (buffered events,
    /// uses waiting for their write, pending checks and tombstones, pending creates, idempotency keys, audit history and
    /// redelivery identities) was built from; `None` when it holds none.
    pub fn oldest_state_ns(&mut self) -> Option<u64> {
        let ttl = self.ttl_ns;
        let candidates = [
            self.buffer.peek_time(),
            self.waiting.oldest(),
            head_minus(self.checks.expiry.head(), ttl),
            // A tombstone's removal is set a TTL after its expiry, itself a TTL after the check.
            head_minus(self.checks.removal.head(), ttl.saturating_mul(2)),
            head_minus(self.creates.deadlines.head(), ttl),
            head_minus(self.keys.expiry.head(), self.key_ttl_ns),
            head_minus(self.audits.prune.head(), self.history_window_ns),
            self.dedupe.oldest_time(),
        ];
        candidates.into_iter().flatten().min()
    }

    /// Raises the watermark to `target` (never lowers it) as if event time had reached it:
    /// buffered events before it are processed and timers due before it fire, findings to
    /// `out`. A rebuilt engine calls this with its predecessor's committed watermark once it
    /// has re-read what that one had read, so that nothing it decides depends on how far
    /// the replay happened to advance.
    pub fn advance_watermark(&mut self, target: u64, now_ns: u64, out: &mut Vec<Finding>) {
        self.now = now_ns;
        self.advance(target, out);
        self.update_gauges();
    }
}

/// The creation time of the record whose timer is `head`, or `None` for an empty queue.
fn head_minus(head: u64, lifetime: u64) -> Option<u64> {
    (head != u64::MAX).then(|| head.saturating_sub(lifetime))
}

#[cfg(test)]
mod tests {
    use crate::{Config, Engine, Input};
    use std::time::Duration;
    use toctou_schema::testing::span_at;
    use toctou_schema::{AuditAction, AuditEvent, CheckSource, Event, Phase};

    const S: u64 = 1_000_000_000;

    fn config() -> Config {
        Config {
            allowed_lateness: Duration::from_secs(2),
            pair_ttl: Duration::from_secs(30),
            key_ttl: Duration::from_secs(600),
            dedupe_window: Duration::from_secs(60),
            // These tests pass no wall clock (0): every event would be ahead of it.
            max_clock_skew: Duration::ZERO,
            ..Config::default()
        }
    }

    fn span(phase: Phase, resource: &str, request: &str, t: u64, key: Option<&str>) -> Event {
        let mut s = span_at(phase, resource, request, t)
            .version("1")
            .ids([request.len() as u8; 16], [(t / S) as u8 + phase as u8; 8])
            .service("svc", "op")
            .source(CheckSource::Primary)
            .lasting_ns(0);
        s.0.idempotency_key = key.map(Into::into);
        s.ev()
    }

    #[test]
    fn empty_engine_holds_no_state() {
        let mut e = Engine::new(config()).unwrap();
        assert_eq!(e.oldest_state_ns(), None);
    }

    #[test]
    fn a_buffered_event_is_state() {
        let mut e = Engine::new(config()).unwrap();
        let mut out = Vec::new();
        e.ingest(span(Phase::Check, "r", "q", 100 * S, None), 0, &mut out);
        assert_eq!(e.oldest_state_ns(), Some(100 * S));
    }

    #[test]
    fn a_pending_check_holds_its_time_until_it_expires() {
        let mut e = Engine::new(config()).unwrap();
        let mut out = Vec::new();
        e.ingest(span(Phase::Check, "r", "q", 100 * S, None), 0, &mut out);
        // Later traffic on another resource moves the watermark past the check.
        e.ingest(span(Phase::Check, "other", "x", 110 * S, None), 0, &mut out);
        assert_eq!(e.oldest_state_ns(), Some(100 * S));
        // Past expiry (30 s) and tombstone (another 30 s) the first check is gone; the second
        // is a tombstone still (matchable by a late use), so its time is what is needed.
        e.ingest(span(Phase::Check, "third", "y", 165 * S, None), 0, &mut out);
        assert_eq!(e.oldest_state_ns(), Some(110 * S));
    }

    #[test]
    fn an_idempotency_key_holds_its_use_time_for_the_key_ttl() {
        let mut e = Engine::new(config()).unwrap();
        let mut out = Vec::new();
        e.ingest(
            span(Phase::Check, "r", "q", 100 * S, Some("k")),
            0,
            &mut out,
        );
        e.ingest(span(Phase::Use, "r", "q", 101 * S, Some("k")), 0, &mut out);
        // Far past the pair TTL and the dedupe window, within the key TTL (600 s).
        e.ingest(span(Phase::Check, "z", "w", 400 * S, None), 0, &mut out);
        assert_eq!(e.oldest_state_ns(), Some(101 * S));
    }

    #[test]
    fn audit_history_is_state() {
        let mut e = Engine::new(config()).unwrap();
        let mut out = Vec::new();
        e.ingest(
            Event::Audit(AuditEvent {
                action: AuditAction::Update,
                resource: "r".into(),
                version: Some("2".into()),
                request_id: None,
                actor: None,
                time_ns: 50 * S,
                service: "db".into(),
                source_id: Some("a1".into()),
                trace_id: [0; 16],
                span_id: [0; 8],
            }),
            0,
            &mut out,
        );
        e.ingest(span(Phase::Check, "z", "w", 60 * S, None), 0, &mut out);
        assert_eq!(e.oldest_state_ns(), Some(50 * S));
    }

    #[test]
    fn advance_watermark_fires_due_timers_and_never_lowers_it() {
        let mut e = Engine::new(config()).unwrap();
        let mut out = Vec::new();
        e.ingest(span(Phase::Check, "r", "q", 100 * S, None), 0, &mut out);
        e.advance_watermark(200 * S, 0, &mut out);
        assert_eq!(e.watermark_ns(), 200 * S);
        assert_eq!(
            out.len(),
            1,
            "the unused check is reported once no late use can match it"
        );
        assert_eq!(out[0].kind.as_str(), "orphan_check");
        assert_eq!(out[0].event_time_ns, 160 * S);
        assert_eq!(e.oldest_state_ns(), None);
        e.advance_watermark(150 * S, 0, &mut out);
        assert_eq!(e.watermark_ns(), 200 * S);
    }

    #[test]
    fn silence_is_idleness_only_up_to_where_the_input_is_known_read() {
        let mut e = Engine::new(config()).unwrap();
        let mut out = Vec::new();
        let wall = 1_000 * S;
        e.ingest(span(Phase::Check, "r", "q", 100 * S, None), wall, &mut out);
        assert_eq!(e.watermark_ns(), 98 * S);
        // Ten seconds without an arrival while the input is behind: the watermark stays,
        // and the check is still buffered (a backlog may hold its use).
        e.tick_input(wall + 10 * S, Input::Behind, &mut out);
        assert_eq!(e.watermark_ns(), 98 * S);
        assert_eq!(e.stats().buffered_events, 1);
        // Known read only up to a second after the arrival: idle for less than the lateness.
        e.tick_input(wall + 10 * S, Input::ReadUntil(wall + S), &mut out);
        assert_eq!(e.watermark_ns(), 98 * S);
        // The backlog's next event (the check's use) is on time, although ten seconds of
        // wall time passed: counting them as idle would have put the watermark at 108 s.
        e.ingest(
            span(Phase::Use, "r", "q", 101 * S, None),
            wall + 10 * S,
            &mut out,
        );
        assert_eq!(e.stats().late_events, 0);
        assert_eq!(e.watermark_ns(), 99 * S);
        // Read up to three seconds after that arrival: idle for one second past the lateness.
        e.tick_input(wall + 20 * S, Input::ReadUntil(wall + 13 * S), &mut out);
        assert_eq!(e.watermark_ns(), 102 * S);
        // A claim beyond the wall clock counts only up to it.
        e.tick_input(wall + 14 * S, Input::ReadUntil(wall + 30 * S), &mut out);
        assert_eq!(e.watermark_ns(), 103 * S);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(e.stats().late_events, 0);
    }
}
