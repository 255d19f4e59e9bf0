//! `--cdc-debezium-topics`: Debezium change events read from Kafka by a consumer group of
//! their own, mapped like every change (`toctou_cdc::debezium::Decoder`), and delivered in
//! batches; the group's offsets are committed only past what was delivered.
//!
//! A change waiting for its transaction's request id (see `toctou_cdc::transactions`) holds
//! its partition's commit back: the offset committed for a partition is that of its oldest
//! held record, else one past the last record read. A restart (or a rebalance) reads again
//! from there, and the engine drops what it already has by the records' `source_id`.
//!
//! One reader should hold all of a connector's topics, its `<prefix>.message` topic with
//! them: a change whose message another group member reads is released after
//! `--cdc-debezium-hold` as a write by another request.

use super::{hand_over, retrying, CdcArgs, CdcMetrics, CdcOutput};
use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use toctou_cdc::debezium::{Decoder, Outcome};
use toctou_cdc::transactions::DEFAULT_MAX_HELD;
use toctou_cdc::Mapping;
use toctou_collector::{IgnoreReason, IgnoredCounts, RejectReason, RejectedCounts};
use toctou_schema::Event;

/// Records read before a batch is delivered, at most.
const MAX_BATCH: usize = 5_000;
/// How long a batch collects records after its first.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// How long the reader waits for a record when it holds nothing.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// Where a record came from: an index into the reader's partitions, and its offset.
#[derive(Clone, Copy, Debug)]
struct Tag {
    partition: u32,
    offset: i64,
}

/// Reads until the output closes (shutdown).
pub async fn read(
    bootstrap: String,
    args: CdcArgs,
    mapping: Mapping,
    output: CdcOutput,
    counts: Arc<toctou_collector::Metrics>,
    metrics: Arc<CdcMetrics>,
) {
    let what = format!("Debezium topics {:?} on {bootstrap}", args.debezium_topics);
    retrying(&what, &metrics, || {
        read_until_error(&bootstrap, &args, &mapping, &output, &counts, &metrics)
    })
    .await
}

/// The partitions a reader has read from, and how far.
#[derive(Default)]
struct Partitions {
    /// Per topic, its partitions' indexes: looked up by the record's borrowed topic name, so
    /// that a record read costs no allocation.
    index: HashMap<String, Vec<(i32, u32)>>,
    names: Vec<(String, i32)>,
    /// One past the last offset read, per partition.
    next: Vec<i64>,
    /// What was last committed, per partition.
    committed: Vec<i64>,
}

impl Partitions {
    fn read(&mut self, topic: &str, partition: i32, offset: i64) -> Tag {
        let known = self
            .index
            .get(topic)
            .and_then(|ps| ps.iter().find(|(p, _)| *p == partition))
            .map(|(_, i)| *i);
        let i = match known {
            Some(i) => i,
            None => {
                let i = self.names.len() as u32;
                self.index
                    .entry(topic.to_string())
                    .or_default()
                    .push((partition, i));
                self.names.push((topic.to_string(), partition));
                self.next.push(0);
                self.committed.push(-1);
                i
            }
        };
        self.next[i as usize] = offset + 1;
        Tag {
            partition: i,
            offset,
        }
    }

    /// The offsets to commit: per partition, its oldest held record, else past its last
    /// record read; only those that moved.
    fn commit_points<'a>(&mut self, held: impl Iterator<Item = &'a Tag>) -> TopicPartitionList {
        let mut points = self.next.clone();
        for tag in held {
            let p = &mut points[tag.partition as usize];
            *p = (*p).min(tag.offset);
        }
        let mut list = TopicPartitionList::new();
        for (i, point) in points.into_iter().enumerate() {
            if point > self.committed[i] {
                let (topic, partition) = &self.names[i];
                list.add_partition_offset(topic, *partition, Offset::Offset(point))
                    .expect("an offset is a valid position");
                self.committed[i] = point;
            }
        }
        list
    }
}

/// Ok once the output has gone (shutdown).
async fn read_until_error(
    bootstrap: &str,
    args: &CdcArgs,
    mapping: &Mapping,
    output: &CdcOutput,
    counts: &toctou_collector::Metrics,
    metrics: &CdcMetrics,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &args.debezium_group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // A pattern's new topics (a table's first change) are found at the next metadata
        // refresh, by default 5 minutes away; read from their start, so nothing is lost.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("log_level", "3")
        .create()
        .context("creating the Debezium topics' consumer")?;
    let topics: Vec<&str> = args.debezium_topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("subscribing to {topics:?}"))?;
    tracing::info!(topics = ?topics, group = %args.debezium_group, %bootstrap, "reading Debezium change events from Kafka");
    let mut decoder = Decoder::<Tag>::new(mapping.clone(), args.debezium_hold, DEFAULT_MAX_HELD);
    if output.row_images() {
        decoder = decoder.keep_row_images();
    }
    let mut partitions = Partitions::default();
    let mut out = Vec::new();
    loop {
        let mut ignored = IgnoredCounts::default();
        let mut rejected = RejectedCounts::default();
        let mut read = 0usize;
        let mut batch_ends = None;
        while read < MAX_BATCH {
            let now = Instant::now();
            let until = batch_ends
                .or(decoder.transactions().next_expiry())
                .unwrap_or(now + IDLE_WAIT)
                .min(now + IDLE_WAIT);
            let wait = until.saturating_duration_since(now);
            let message = match tokio::time::timeout(wait, consumer.recv()).await {
                Err(_) => break,
                Ok(message) => message.context("reading the Debezium topics")?,
            };
            read += 1;
            batch_ends.get_or_insert(now + BATCH_WINDOW);
            let tag = partitions.read(message.topic(), message.partition(), message.offset());
            match decoder.push(message.key(), message.payload(), tag, now, &mut out) {
                Outcome::Taken => {}
                Outcome::Skipped(skip) => ignored.add(IgnoreReason::of_skip(skip)),
                Outcome::Rejected(e) => {
                    rejected.add(RejectReason::of_debezium(e.kind()));
                    tracing::warn!(error = %e, topic = message.topic(), partition = message.partition(), offset = message.offset(), "a Debezium record is not a change event toctou reads; skipped");
                }
            }
        }
        decoder.expire(Instant::now(), &mut out);
        metrics.debezium_records.fetch_add(read as u64, Relaxed);
        counts.record_items(&ignored, &[], &rejected);
        if !out.is_empty() {
            let events: Vec<Event> = out.drain(..).map(|(a, _)| Event::Audit(a)).collect();
            // One each, in the same order, when inference asked for row images; else none.
            let changes = decoder.take_changes();
            if !hand_over(output, events, changes, counts).await? {
                return Ok(());
            }
        }
        let t = decoder.transactions();
        metrics.debezium_held.store(t.held() as u64, Relaxed);
        *metrics
            .debezium_released
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = t.released();
        let points = partitions.commit_points(t.held_tags());
        if points.count() > 0 {
            consumer
                .commit(&points, CommitMode::Async)
                .context("committing the Debezium topics' offsets")?;
        }
    }
}
