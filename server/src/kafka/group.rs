//! The consumer context of a correlator: librdkafka calls its rebalance hooks and its
//! statistics callback on the polling thread, inside `poll`. The hooks hand the revoked and
//! assigned partitions to [`Partitions`]; the statistics give the consumer-lag gauge.

use super::partitions::{lock, Partitions};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

/// The consumer context: librdkafka calls the rebalance hooks on the polling thread.
pub struct GroupContext {
    pub(super) state: Mutex<Partitions>,
}

impl ClientContext for GroupContext {
    /// librdkafka's statistics (every `statistics.interval.ms`, on the polling thread): the
    /// consumer lag of the partitions this member owns, i.e. messages in the topic it has not
    /// read yet. librdkafka's own `consumer_lag` counts from the committed offset, which here
    /// trails on purpose (it is where a new owner would rebuild from), so the lag is taken from
    /// the read position instead.
    fn stats(&self, statistics: Statistics) {
        let state = lock(&self.state);
        let lag = statistics
            .topics
            .get(&state.topic)
            .map(|topic| {
                topic
                    .partitions
                    .values()
                    .filter(|p| p.desired && p.partition >= 0)
                    .map(|p| read_lag(p.hi_offset, [p.app_offset, p.committed_offset, p.lo_offset]))
                    .sum()
            })
            .unwrap_or(0);
        state.metrics.lag.store(lag, Relaxed);
        state.metrics.lag_known.store(true, Relaxed);
    }
}

/// Messages of an owned partition not yet read: from its high watermark `hi` back to the
/// first valid offset of `positions` (the application's read position; before the first
/// message, the committed offset; before any commit, the start of the partition). librdkafka
/// reports unknown offsets as negative numbers.
fn read_lag(hi: i64, positions: [i64; 3]) -> i64 {
    if hi < 0 {
        return 0;
    }
    let position = positions.into_iter().find(|&o| o >= 0).unwrap_or(0);
    (hi - position).max(0)
}

/// The partitions of `topic` in a rebalance's list.
fn partitions_of(tpl: &rdkafka::TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect()
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut state = lock(&self.state);
            let revoked = partitions_of(tpl, &state.topic);
            state.metrics.rebalances.fetch_add(1, Relaxed);
            state.revoke(consumer, &revoked);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut state = lock(&self.state);
                let assigned = partitions_of(tpl, &state.topic);
                state.metrics.rebalances.fetch_add(1, Relaxed);
                state.assign(consumer, &assigned);
            }
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

#[cfg(test)]
mod lag_tests {
    use super::read_lag;

    #[test]
    fn lag_counts_from_the_read_position_then_the_commit_then_the_start() {
        // Read up to 90 of 100.
        assert_eq!(read_lag(100, [90, 40, 0]), 10);
        // Nothing read yet (librdkafka's -1001, "invalid"): from the committed offset.
        assert_eq!(read_lag(100, [-1001, 40, 0]), 60);
        // Nor committed: from the partition's start.
        assert_eq!(read_lag(100, [-1001, -1001, 20]), 80);
        // High watermark unknown yet: no claim.
        assert_eq!(read_lag(-1, [5, 5, 0]), 0);
        // A stale high watermark behind the read position is not a negative lag.
        assert_eq!(read_lag(100, [120, 40, 0]), 0);
    }
}
