//! The `toctou_kafka_*` metrics of the collector (producing) and the correlator (consuming),
//! declared in one place. Labels are closed sets; no topic, key or partition is a label
//! (partitions are unbounded in number and reassigned freely).

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

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
}

impl ProducerMetrics {
    pub fn render_prometheus(&self, out: &mut String) {
        counter(
            out,
            "toctou_kafka_produced_messages_total",
            "Messages Kafka acknowledged.",
            self.produced_messages.load(Relaxed),
        );
        counter(
            out,
            "toctou_kafka_produced_events_total",
            "Events in messages Kafka acknowledged.",
            self.produced_events.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP toctou_kafka_produce_failures_total Messages not acknowledged, by stage (the request was answered with a retryable error).\n# TYPE toctou_kafka_produce_failures_total counter\ntoctou_kafka_produce_failures_total{{stage=\"delivery\"}} {}\ntoctou_kafka_produce_failures_total{{stage=\"enqueue\"}} {}",
            self.failed_messages.load(Relaxed),
            self.enqueue_failures.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP toctou_kafka_producer_replacements_total Kafka producers replaced because they could no longer deliver, by reason.\n# TYPE toctou_kafka_producer_replacements_total counter\ntoctou_kafka_producer_replacements_total{{reason=\"fatal\"}} {}\ntoctou_kafka_producer_replacements_total{{reason=\"stuck\"}} {}",
            self.replaced_fatal.load(Relaxed),
            self.replaced_stuck.load(Relaxed)
        );
        counter(
            out,
            "toctou_kafka_pushed_back_total",
            "Requests pushed back because the bytes in flight to Kafka were at their limit.",
            self.pushed_back.load(Relaxed),
        );
        gauge(
            out,
            "toctou_kafka_inflight_bytes",
            "Bytes handed to Kafka and not yet acknowledged.",
            self.inflight_bytes.load(Relaxed),
        );
        gauge(
            out,
            "toctou_kafka_inflight_batches",
            "Request batches waiting for Kafka's acknowledgement.",
            self.inflight_batches.load(Relaxed),
        );
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

    pub fn render_prometheus(&self, out: &mut String) {
        if self.lag_known.load(Relaxed) {
            gauge(
                out,
                "toctou_kafka_consumer_lag_messages",
                "Messages in the partitions this correlator owns that it has not read yet.",
                self.lag.load(Relaxed),
            );
        }
        gauge(
            out,
            "toctou_kafka_consumer_paused",
            "1 while consumption is paused because the ClickHouse sink is nearly full.",
            self.paused.load(Relaxed),
        );
        counter(
            out,
            "toctou_kafka_consumer_pauses_total",
            "Times consumption was paused because the ClickHouse sink was nearly full.",
            self.pauses.load(Relaxed),
        );
        gauge(
            out,
            "toctou_kafka_partitions_behind",
            "Owned partitions with records waiting to be read (or whose end is not known yet).",
            self.partitions_behind.load(Relaxed),
        );
        counter(
            out,
            "toctou_kafka_catchups_total",
            "Partitions read to their end after being assigned to this correlator (catch-ups).",
            self.catchups.load(Relaxed),
        );
        counter(
            out,
            "toctou_kafka_catchup_events_total",
            "Events read between a partition's assignment and its end.",
            self.catchup_events.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP toctou_kafka_catchup_seconds_total Time from a partition's assignment to its end.\n# TYPE toctou_kafka_catchup_seconds_total counter\ntoctou_kafka_catchup_seconds_total {}",
            self.catchup_micros.load(Relaxed) as f64 / 1e6
        );
        counter(
            out,
            "toctou_kafka_late_events_total",
            "Events older than their partition's watermark on arrival, over every partition this correlator owned.",
            self.late_events.load(Relaxed),
        );
        counter(
            out,
            "toctou_kafka_consumed_messages_total",
            "Messages read from the events topic.",
            self.consumed_messages.load(Relaxed),
        );
        counter(
            out,
            "toctou_kafka_consumed_events_total",
            "Events in the messages read.",
            self.consumed_events.load(Relaxed),
        );
        counter(
            out,
            "toctou_kafka_replayed_messages_total",
            "Messages re-read to rebuild a partition's state after a handover.",
            self.replayed_messages.load(Relaxed),
        );
        counter(
            out,
            "toctou_kafka_held_back_findings_total",
            "Findings a rebuilding engine decided that the partition's previous owner had reported.",
            self.held_back_findings.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP toctou_kafka_decode_errors_total Messages that could not be decoded, by reason (skipped).\n# TYPE toctou_kafka_decode_errors_total counter\ntoctou_kafka_decode_errors_total{{reason=\"unknown_version\"}} {}\ntoctou_kafka_decode_errors_total{{reason=\"malformed\"}} {}",
            self.decode_unknown_version.load(Relaxed),
            self.decode_malformed.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP toctou_kafka_commits_total Offset commits, by result.\n# TYPE toctou_kafka_commits_total counter\ntoctou_kafka_commits_total{{result=\"ok\"}} {}\ntoctou_kafka_commits_total{{result=\"failed\"}} {}",
            self.commits_ok.load(Relaxed),
            self.commits_failed.load(Relaxed)
        );
        gauge(
            out,
            "toctou_kafka_assigned_partitions",
            "Partitions this correlator owns.",
            self.assigned_partitions.load(Relaxed),
        );
        counter(
            out,
            "toctou_kafka_rebalances_total",
            "Partition assignments and revocations.",
            self.rebalances.load(Relaxed),
        );
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_once_with_its_type() {
        let mut out = String::new();
        ProducerMetrics::default().render_prometheus(&mut out);
        let consumer = ConsumerMetrics::default();
        consumer.lag_known.store(true, Relaxed);
        consumer.render_prometheus(&mut out);
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
    }
}
