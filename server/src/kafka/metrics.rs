//! The `toctou_kafka_*` metrics of the collector (producing) and the correlator (consuming),
//! declared in one place, and the collectors that read them into each node's registry. Labels are closed sets; no topic, key or partition is a label
//! (partitions are unbounded in number and reassigned freely).

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// The producer side, shared by every request of a collector.
#[derive(Debug, Default)]
pub struct ProducerMetrics {
    /// Messages Kafka acknowledged.
    pub produced_messages: AtomicU64,
    /// Events in acknowledged messages.
    pub produced_events: AtomicU64,
    /// Messages Kafka refused or that timed out (their request was answered 503).
    pub failed_messages: AtomicU64,
    /// Messages librdkafka refused to queue (its queue full, or the producer failed).
    pub enqueue_failures: AtomicU64,
    /// Requests answered 503/UNAVAILABLE because the in-flight bytes were at their limit.
    pub pushed_back: AtomicU64,
    /// Bytes handed to Kafka and not yet acknowledged or failed.
    pub inflight_bytes: AtomicI64,
    /// Request batches waiting for their acknowledgements.
    pub inflight_batches: AtomicI64,
    /// librdkafka producers replaced after a fatal error.
    pub replaced_fatal: AtomicU64,
    /// librdkafka producers replaced for delivering nothing to a cluster that answers.
    pub replaced_stuck: AtomicU64,
    /// Database spans received and not sent on: inference runs in `toctou run` only.
    pub db_spans_dropped: AtomicU64,
}

toctou_schema::families! {
    /// The producer's families, each declared once.
    static PRODUCER: ProducerFamilies {
        produced_messages = counter("toctou_kafka_produced_messages_total", "Messages Kafka acknowledged.", &[]);
        produced_events = counter("toctou_kafka_produced_events_total", "Events in messages Kafka acknowledged.", &[]);
        produce_failures = counter("toctou_kafka_produce_failures_total", "Messages not acknowledged, by stage (the request was answered with a retryable error).", &["stage"]);
        replacements = counter("toctou_kafka_producer_replacements_total", "Kafka producers replaced because they could no longer deliver, by reason.", &["reason"]);
        db_spans_dropped = counter("toctou_kafka_db_spans_dropped_total", "Database client and server spans received and not sent on: inference from them runs in toctou run only (docs/INFERENCE.md).", &[]);
        pushed_back = counter("toctou_kafka_pushed_back_total", "Requests pushed back because the bytes in flight to Kafka were at their limit.", &[]);
        inflight_bytes = gauge("toctou_kafka_inflight_bytes", "Bytes handed to Kafka and not yet acknowledged.", &[]);
        inflight_batches = gauge("toctou_kafka_inflight_batches", "Request batches waiting for Kafka's acknowledgement.", &[]);
    }
}

/// Reads [`ProducerMetrics`] into the collector node's registry.
pub struct ProducerCollector(pub Arc<ProducerMetrics>);

impl Collector for ProducerCollector {
    fn desc(&self) -> Vec<&Desc> {
        PRODUCER.descs()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (f, m) = (&*PRODUCER, &self.0);
        vec![
            f.produced_messages.value(get(&m.produced_messages)),
            f.produced_events.value(get(&m.produced_events)),
            f.produce_failures.values([
                (["delivery"], get(&m.failed_messages)),
                (["enqueue"], get(&m.enqueue_failures)),
            ]),
            f.replacements.values([
                (["fatal"], get(&m.replaced_fatal)),
                (["stuck"], get(&m.replaced_stuck)),
            ]),
            f.pushed_back.value(get(&m.pushed_back)),
            f.db_spans_dropped.value(get(&m.db_spans_dropped)),
            f.inflight_bytes
                .value(m.inflight_bytes.load(Relaxed) as f64),
            f.inflight_batches
                .value(m.inflight_batches.load(Relaxed) as f64),
        ]
    }
}

/// Why a consumed message was not correlated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeFailure {
    UnknownVersion,
    Malformed,
}

/// The consumer side of one correlator process.
#[derive(Debug, Default)]
pub struct ConsumerMetrics {
    pub consumed_messages: AtomicU64,
    pub consumed_events: AtomicU64,
    /// Messages re-read after a handover (up to the predecessor's last read offset).
    pub replayed_messages: AtomicU64,
    /// Findings a rebuilding engine decided that its predecessor had already reported.
    pub held_back_findings: AtomicU64,
    pub decode_unknown_version: AtomicU64,
    pub decode_malformed: AtomicU64,
    pub commits_ok: AtomicU64,
    pub commits_failed: AtomicU64,
    pub assigned_partitions: AtomicI64,
    pub rebalances: AtomicU64,
    /// Messages in the owned partitions not yet read (from librdkafka's statistics); not
    /// served until the first statistics arrived, so that 0 never stands for "unknown".
    pub lag: AtomicI64,
    pub lag_known: AtomicBool,
    /// 1 while consumption is paused because the ClickHouse sink is nearly full.
    pub paused: AtomicI64,
    /// Times consumption was paused for the sink.
    pub pauses: AtomicU64,
    /// Owned partitions whose last end (asked of the broker) lies beyond the read position,
    /// or whose end is not known yet: records wait (server/src/kafka/catchup.rs).
    pub partitions_behind: AtomicI64,
    /// Partitions read to an end the broker gave after their assignment, the events read
    /// until then and the time it took (in microseconds): the catch-up of new owners.
    pub catchups: AtomicU64,
    pub catchup_events: AtomicU64,
    pub catchup_micros: AtomicU64,
    /// Late events over every partition this process owned, also those it gave away (the
    /// engines' own `toctou_late_events_total` covers the partitions owned now).
    pub late_events: AtomicU64,
}

impl ConsumerMetrics {
    pub fn decode_failed(&self, why: DecodeFailure) {
        match why {
            DecodeFailure::UnknownVersion => &self.decode_unknown_version,
            DecodeFailure::Malformed => &self.decode_malformed,
        }
        .fetch_add(1, Relaxed);
    }
}

toctou_schema::families! {
    /// The consumer's families, each declared once.
    static CONSUMER: ConsumerFamilies {
        lag = gauge("toctou_kafka_consumer_lag_messages", "Messages in the partitions this correlator owns that it has not read yet.", &[]);
        paused = gauge("toctou_kafka_consumer_paused", "1 while consumption is paused because the ClickHouse sink is nearly full.", &[]);
        pauses = counter("toctou_kafka_consumer_pauses_total", "Times consumption was paused because the ClickHouse sink was nearly full.", &[]);
        partitions_behind = gauge("toctou_kafka_partitions_behind", "Owned partitions with records waiting to be read (or whose end is not known yet).", &[]);
        catchups = counter("toctou_kafka_catchups_total", "Partitions read to their end after being assigned to this correlator (catch-ups).", &[]);
        catchup_events = counter("toctou_kafka_catchup_events_total", "Events read between a partition's assignment and its end.", &[]);
        catchup_seconds = counter("toctou_kafka_catchup_seconds_total", "Time from a partition's assignment to its end.", &[]);
        late_events = counter("toctou_kafka_late_events_total", "Events older than their partition's watermark on arrival, over every partition this correlator owned.", &[]);
        consumed_messages = counter("toctou_kafka_consumed_messages_total", "Messages read from the events topic.", &[]);
        consumed_events = counter("toctou_kafka_consumed_events_total", "Events in the messages read.", &[]);
        replayed_messages = counter("toctou_kafka_replayed_messages_total", "Messages re-read to rebuild a partition's state after a handover.", &[]);
        held_back_findings = counter("toctou_kafka_held_back_findings_total", "Findings a rebuilding engine decided that the partition's previous owner had reported.", &[]);
        decode_errors = counter("toctou_kafka_decode_errors_total", "Messages that could not be decoded, by reason (skipped).", &["reason"]);
        commits = counter("toctou_kafka_commits_total", "Offset commits, by result.", &["result"]);
        assigned_partitions = gauge("toctou_kafka_assigned_partitions", "Partitions this correlator owns.", &[]);
        rebalances = counter("toctou_kafka_rebalances_total", "Partition assignments and revocations.", &[]);
    }
}

/// Reads [`ConsumerMetrics`] into the correlator node's registry.
pub struct ConsumerCollector(pub Arc<ConsumerMetrics>);

impl Collector for ConsumerCollector {
    fn desc(&self) -> Vec<&Desc> {
        CONSUMER.descs()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (f, m) = (&*CONSUMER, &self.0);
        let mut families = Vec::with_capacity(16);
        // Not served until the first statistics arrived, so that 0 never stands for
        // "unknown".
        if m.lag_known.load(Relaxed) {
            families.push(f.lag.value(m.lag.load(Relaxed) as f64));
        }
        families.extend([
            f.paused.value(m.paused.load(Relaxed) as f64),
            f.pauses.value(get(&m.pauses)),
            f.partitions_behind
                .value(m.partitions_behind.load(Relaxed) as f64),
            f.catchups.value(get(&m.catchups)),
            f.catchup_events.value(get(&m.catchup_events)),
            f.catchup_seconds.value(get(&m.catchup_micros) / 1e6),
            f.late_events.value(get(&m.late_events)),
            f.consumed_messages.value(get(&m.consumed_messages)),
            f.consumed_events.value(get(&m.consumed_events)),
            f.replayed_messages.value(get(&m.replayed_messages)),
            f.held_back_findings.value(get(&m.held_back_findings)),
            f.decode_errors.values([
                (["unknown_version"], get(&m.decode_unknown_version)),
                (["malformed"], get(&m.decode_malformed)),
            ]),
            f.commits.values([
                (["ok"], get(&m.commits_ok)),
                (["failed"], get(&m.commits_failed)),
            ]),
            f.assigned_partitions
                .value(m.assigned_partitions.load(Relaxed) as f64),
            f.rebalances.value(get(&m.rebalances)),
        ]);
        families
    }
}

fn get(counter: &AtomicU64) -> f64 {
    counter.load(Relaxed) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_once_with_its_type() {
        let consumer = ConsumerMetrics::default();
        consumer.lag_known.store(true, Relaxed);
        let registry = prometheus::Registry::new();
        let producer = ProducerCollector(Arc::default());
        registry.register(Box::new(producer)).unwrap();
        let consumer = ConsumerCollector(Arc::new(consumer));
        registry.register(Box::new(consumer)).unwrap();
        let out = toctou_schema::metrics::encode(&registry).unwrap();
        let mut names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a metric declared twice:\n{out}");
        assert!(names.iter().all(|n| n.starts_with("toctou_kafka_")));
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(names.contains(&name), "{name} has no TYPE line");
        }
        assert!(names.contains(&"toctou_kafka_consumer_lag_messages"));
    }

    #[test]
    fn the_lag_is_not_served_before_it_is_known() {
        let out = toctou_schema::metrics::encode_one(ConsumerCollector(Arc::default()));
        assert!(!out.contains("toctou_kafka_consumer_lag_messages"), "{out}");
        assert!(out.contains("\ntoctou_kafka_consumer_paused 0\n"), "{out}");
    }
}
