//! The partitions a correlator owns and what happens to them: one engine, ledger, replay
//! mode and reading (`catchup`) per partition; messages in, findings and events out to the
//! sink, commit points taken and committed once the sink caught up, and the handover on
//! revocation and assignment (librdkafka calls the hooks of `group`'s [`GroupContext`] on
//! the polling thread, inside `poll`).
//!
//! Rows for the sink are gathered across messages and handed over in batches of
//! `HANDOVER_ROWS` or at the next tick, as in `toctou run`: a new owner re-reading its
//! backlog reads thousands of small messages a second, and one sink batch per message filled
//! the sink's channel (256 batches) within a second of catch-up, which paused and resumed
//! every partition over and over.
//!
//! The rule itself (which offset, what metadata) is in `offsets`; this file applies it.

use super::catchup::{CaughtUp, Reading};
use super::ends::Ends;
use super::group::GroupContext;
use super::metrics::{ConsumerMetrics, DecodeFailure};
use super::offsets::{CommitPoint, Ledger, Replay};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use toctou_clickhouse::sink::{Handover, Sink, SinkMetrics, Table};
use toctou_correlator::{Engine, Input, Stats};
use toctou_kafka::codec::{self, CodecError};
use toctou_schema::Finding;

/// Commit points waiting for the sink; beyond it the oldest is dropped (a newer one covers it).
const MAX_PENDING_POINTS: usize = 64;
/// How long the consumer's metadata calls (committed offsets) may take.
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rows handed to the sink so far, per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Rows {
    findings: u64,
    events: u64,
}

/// Rows for the sink: those gathered and not handed over yet, and how many were handed so
/// far, the gathered ones included, so that no commit point taken meanwhile counts as
/// written before they are.
#[derive(Default)]
struct Outbox {
    rows: Handover,
    handed: Rows,
}

/// Commit points taken at one instant, with the rows handed to the sink by then.
struct Pending {
    handed: Rows,
    points: Vec<(i32, CommitPoint)>,
}

/// One assigned partition.
struct Part {
    engine: Engine,
    ledger: Ledger,
    replay: Replay,
    reading: Reading,
}

/// Everything the poll loop and the rebalance callbacks share.
pub(super) struct Partitions {
    parts: HashMap<i32, Part>,
    config: toctou_correlator::Config,
    pub(super) topic: String,
    /// `None` only after shutdown took it.
    sink: Option<Sink>,
    sink_metrics: Arc<SinkMetrics>,
    outbox: Outbox,
    pending: VecDeque<Pending>,
    pub(super) metrics: Arc<ConsumerMetrics>,
    revoke_deadline: Duration,
    out: Vec<Finding>,
    /// Late events of the engines of partitions given away (their stats go with them).
    late_events_before: u64,
}

impl Partitions {
    pub(super) fn new(
        config: toctou_correlator::Config,
        topic: String,
        sink: Sink,
        metrics: Arc<ConsumerMetrics>,
        revoke_deadline: Duration,
    ) -> Partitions {
        Partitions {
            parts: HashMap::new(),
            config,
            topic,
            sink_metrics: sink.metrics(),
            sink: Some(sink),
            outbox: Outbox::default(),
            pending: VecDeque::new(),
            metrics,
            revoke_deadline,
            out: Vec::new(),
            late_events_before: 0,
        }
    }

    pub(super) fn on_message(&mut self, partition: i32, offset: i64, payload: Option<&[u8]>) {
        let Some(part) = self.parts.get_mut(&partition) else {
            // Revoked between the fetch and now: the next owner reads it.
            return;
        };
        self.metrics.consumed_messages.fetch_add(1, Relaxed);
        let replaying = matches!(part.replay, Replay::Until(p) if offset <= p.last_read);
        if replaying {
            self.metrics.replayed_messages.fetch_add(1, Relaxed);
        }
        match codec::decode(payload.unwrap_or_default()) {
            Ok(batch) => {
                let newest = batch.events.iter().map(|e| e.event_time_ns()).max();
                part.ledger.record(offset, newest.unwrap_or(0));
                let caught = part
                    .reading
                    .read(offset, batch.events.len(), Instant::now());
                report(partition, caught, &part.engine, &self.metrics);
                self.metrics
                    .consumed_events
                    .fetch_add(batch.events.len() as u64, Relaxed);
                // Events the predecessor had read are in ClickHouse already (its commit
                // waited for them); a broadcast copy is stored by its original.
                if !replaying && !batch.broadcast_copy {
                    self.outbox.rows.add_events(&batch.events);
                    self.outbox.handed.events += batch.events.len() as u64;
                }
                let now = toctou_schema::now_ns();
                for event in batch.events {
                    part.engine.ingest(event, now, &mut self.out);
                }
            }
            Err(err) => {
                let why = match err {
                    CodecError::UnknownVersion(_) => DecodeFailure::UnknownVersion,
                    _ => DecodeFailure::Malformed,
                };
                part.ledger.record(offset, 0);
                let caught = part.reading.read(offset, 0, Instant::now());
                report(partition, caught, &part.engine, &self.metrics);
                // A re-read message was counted by the owner that read it first.
                if !replaying {
                    self.metrics.decode_failed(why);
                    tracing::warn!(partition, offset, error = %err, "skipping a message that cannot be decoded");
                }
            }
        }
        publish(part, &mut self.out, &mut self.outbox, &self.metrics);
        if part.replay.done_after(offset) {
            finish_replay(part, &mut self.out, &mut self.outbox, &self.metrics);
        }
        if self.outbox.rows.due() {
            self.hand_over();
        }
    }

    /// Ticks every engine with how far its partition is known to be read (`catchup`, from
    /// the broker's latest `ends`): one whose partition has records waiting does not advance
    /// its watermark by the wall clock.
    pub(super) fn tick(&mut self, ends: Option<&Ends>) {
        let now = toctou_schema::now_ns();
        let now_instant = Instant::now();
        let mut behind = 0;
        for (&p, part) in self.parts.iter_mut() {
            if let Some((asked_at, end)) = ends.and_then(|e| Some((e.asked_at, e.of(p)?))) {
                let caught = part.reading.probed(asked_at, end, now_instant);
                report(p, caught, &part.engine, &self.metrics);
            }
            behind += part.reading.behind() as i64;
            let input = match part.reading.read_until() {
                Some(t) => {
                    let ago = now_instant.saturating_duration_since(t).as_nanos() as u64;
                    Input::ReadUntil(now.saturating_sub(ago))
                }
                None => Input::Behind,
            };
            part.engine.tick_input(now, input, &mut self.out);
            publish(part, &mut self.out, &mut self.outbox, &self.metrics);
        }
        self.metrics.partitions_behind.store(behind, Relaxed);
    }

    /// Hands the gathered rows to the sink (blocks while its channel is full; the poll loop
    /// pauses consumption well before that).
    pub(super) fn hand_over(&mut self) {
        if let Some(sink) = &self.sink {
            sink.hand_over(&mut self.outbox.rows);
        }
    }

    /// The engines' stats summed; late events also over the partitions given away, into
    /// `toctou_kafka_late_events_total`.
    pub(super) fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for part in self.parts.values() {
            total.add(part.engine.stats());
        }
        self.metrics
            .late_events
            .store(self.late_events_before + total.late_events, Relaxed);
        total
    }

    /// Takes the current commit point of every partition that is not replaying.
    pub(super) fn take_point(&mut self) {
        let mut points = Vec::new();
        for (&p, part) in self.parts.iter_mut() {
            if let Some(point) = current_point(part) {
                points.push((p, point));
            }
        }
        if points.is_empty() {
            return;
        }
        if self.pending.len() >= MAX_PENDING_POINTS {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            handed: self.outbox.handed,
            points,
        });
    }

    fn written(&self) -> Rows {
        let m = &self.sink_metrics;
        Rows {
            findings: m.rows_written(Table::Findings) + m.rows_dropped(Table::Findings),
            events: m.rows_written(Table::Events) + m.rows_dropped(Table::Events),
        }
    }

    /// Whether the sink is nearly full (see [`Sink::congested`]); with no sink, never.
    pub(super) fn sink_congested(&self) -> bool {
        self.sink.as_ref().is_some_and(Sink::congested)
    }

    /// Whether the sink has drained enough for input to resume.
    pub(super) fn sink_relieved(&self) -> bool {
        self.sink.as_ref().is_none_or(Sink::relieved)
    }

    /// Commits the newest pending points the sink has caught up with.
    pub(super) fn commit_written(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        mode: CommitMode,
    ) {
        let written = self.written();
        let mut newest = None;
        while let Some(front) = self.pending.front() {
            if front.handed.findings > written.findings || front.handed.events > written.events {
                break;
            }
            newest = self.pending.pop_front();
        }
        if let Some(p) = newest {
            self.commit(consumer, &p.points, mode);
        }
    }

    fn commit(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        points: &[(i32, CommitPoint)],
        mode: CommitMode,
    ) {
        let mut tpl = TopicPartitionList::new();
        for (p, point) in points {
            if !self.parts.contains_key(p) {
                continue;
            }
            if tpl
                .add_partition_offset(&self.topic, *p, Offset::Offset(point.offset))
                .is_err()
            {
                continue;
            }
            if let Some(mut elem) = tpl.find_partition(&self.topic, *p) {
                elem.set_metadata(point.metadata());
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                self.metrics.commits_ok.fetch_add(1, Relaxed);
            }
            Err(err) => {
                self.metrics.commits_failed.fetch_add(1, Relaxed);
                tracing::warn!(error = %err, "committing offsets failed (retried at the next interval)");
            }
        }
    }

    /// At shutdown: hands every partition over as on a revocation and gives the sink back
    /// for its final flush.
    pub(super) fn release_all(&mut self, consumer: &BaseConsumer<GroupContext>) -> Option<Sink> {
        let owned: Vec<i32> = self.parts.keys().copied().collect();
        self.revoke(consumer, &owned);
        self.sink.take()
    }

    /// Hands `revoked` over: waits for the sink, commits, drops the engines.
    pub(super) fn revoke(&mut self, consumer: &BaseConsumer<GroupContext>, revoked: &[i32]) {
        self.hand_over();
        let mut points = Vec::new();
        for p in revoked {
            if let Some(part) = self.parts.get_mut(p) {
                if let Some(point) = current_point(part) {
                    points.push((*p, point));
                }
            }
        }
        let target = self.outbox.handed;
        let deadline = Instant::now() + self.revoke_deadline;
        let caught_up = loop {
            let w = self.written();
            if w.findings >= target.findings && w.events >= target.events {
                break true;
            }
            if Instant::now() >= deadline || self.sink.is_none() {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if caught_up {
            self.commit(consumer, &points, CommitMode::Sync);
        } else {
            tracing::warn!(
                deadline = ?self.revoke_deadline,
                "clickhouse has not taken every finding of the revoked partitions; committing the last point it did"
            );
            self.commit_written(consumer, CommitMode::Sync);
        }
        for p in revoked {
            if let Some(part) = self.parts.remove(p) {
                self.late_events_before += part.engine.stats().late_events;
                self.metrics.assigned_partitions.fetch_sub(1, Relaxed);
            }
        }
        for pending in self.pending.iter_mut() {
            pending.points.retain(|(p, _)| !revoked.contains(p));
        }
        tracing::info!(partitions = ?revoked, "partitions revoked");
    }

    pub(super) fn assign(&mut self, consumer: &BaseConsumer<GroupContext>, assigned: &[i32]) {
        let mut tpl = TopicPartitionList::new();
        for p in assigned {
            tpl.add_partition(&self.topic, *p);
        }
        let committed = match consumer.committed_offsets(tpl, KAFKA_CALL_TIMEOUT) {
            Ok(list) => list,
            Err(err) => {
                // Without the metadata a rebuild could report what its predecessor's partial
                // state would wrongly conclude; better to say so loudly than to guess.
                tracing::error!(error = %err, "cannot read committed offsets; partitions start without rebuild information");
                TopicPartitionList::new()
            }
        };
        for p in assigned {
            if self.parts.contains_key(p) {
                // Already ours (an assignment repeated without a revocation): its engine
                // holds more than a rebuild from the committed offset would.
                continue;
            }
            let (position, point) = match committed
                .find_partition(&self.topic, *p)
                .map(|e| (e.offset(), e))
            {
                Some((Offset::Offset(o), e)) => (Some(o), CommitPoint::parse(o, e.metadata())),
                _ => (None, None),
            };
            let engine = match Engine::new(self.config.clone()) {
                Ok(e) => e,
                Err(err) => {
                    tracing::error!(error = %err, "invalid correlator config");
                    continue;
                }
            };
            let mut part = Part {
                engine,
                ledger: Ledger::new(),
                replay: Replay::from_commit(point),
                reading: Reading::assigned(Instant::now(), position),
            };
            if let Some(point) = point {
                if point.last_read < point.offset {
                    // Nothing to re-read: only the watermark carries over.
                    finish_replay(&mut part, &mut self.out, &mut self.outbox, &self.metrics);
                }
            }
            tracing::info!(partition = p, from = ?point, "partition assigned");
            self.parts.insert(*p, part);
            self.metrics.assigned_partitions.fetch_add(1, Relaxed);
        }
    }
}

/// The partition's commit point now, unless it is still re-reading its predecessor's part
/// (a point taken then would carry a watermark behind the one already committed).
fn current_point(part: &mut Part) -> Option<CommitPoint> {
    if part.replay != Replay::Live {
        return None;
    }
    let oldest = part.engine.oldest_state_ns();
    part.ledger.commit_point(oldest, part.engine.watermark_ns())
}

/// Counts and logs a new owner's catch-up (`catchup`).
fn report(partition: i32, caught: Option<CaughtUp>, engine: &Engine, metrics: &ConsumerMetrics) {
    let Some(caught) = caught else {
        return;
    };
    metrics.catchups.fetch_add(1, Relaxed);
    metrics
        .catchup_events
        .fetch_add(caught.backlog.events, Relaxed);
    metrics
        .catchup_micros
        .fetch_add(caught.elapsed.as_micros() as u64, Relaxed);
    tracing::info!(
        partition,
        messages = caught.backlog.messages,
        events = caught.backlog.events,
        seconds = caught.elapsed.as_secs_f64(),
        events_per_second = caught.events_per_second().round(),
        late_events = engine.stats().late_events,
        "partition caught up"
    );
}

/// Gathers the findings in `out` for the sink, holding back those a rebuilding engine
/// decided before its predecessor's committed watermark.
fn publish(part: &Part, out: &mut Vec<Finding>, outbox: &mut Outbox, metrics: &ConsumerMetrics) {
    if out.is_empty() {
        return;
    }
    let before = out.len();
    out.retain(|f| part.replay.reports(f.event_time_ns));
    metrics
        .held_back_findings
        .fetch_add((before - out.len()) as u64, Relaxed);
    crate::findings::publish(out, &mut [outbox]);
}

/// ClickHouse, the correlator's one destination: the rows wait in the outbox for the next
/// hand-over, counted as handed at once so that no commit point taken meanwhile passes them.
impl crate::findings::FindingsSink for Outbox {
    fn name(&self) -> &'static str {
        "clickhouse"
    }

    fn publish(&mut self, findings: &[Finding]) -> std::io::Result<()> {
        self.rows.add_findings(findings);
        self.handed.findings += findings.len() as u64;
        Ok(())
    }
}

/// The re-read has reached the predecessor's last offset: the watermark moves to the
/// committed one (deciding, silently, what the predecessor had decided) and reporting starts.
fn finish_replay(
    part: &mut Part,
    out: &mut Vec<Finding>,
    outbox: &mut Outbox,
    metrics: &ConsumerMetrics,
) {
    let Replay::Until(point) = part.replay else {
        return;
    };
    part.engine
        .advance_watermark(point.watermark_ns, toctou_schema::now_ns(), out);
    publish(part, out, outbox, metrics);
    part.replay = Replay::Live;
    tracing::info!(watermark_ns = point.watermark_ns, "partition rebuilt");
}
