//! [`KafkaSink`]: the receivers' [`EventSink`] in `toctou collector`. A request's events are
//! grouped by resource into messages keyed by the resource (policy changes go to every
//! partition), and the submit resolves only once Kafka acknowledged every message of the
//! batch (idempotent producer, `acks=all`): the OTLP client's success means the events are
//! in Kafka.
//!
//! Memory is bounded by bytes in flight: a batch takes permits for its encoded size before
//! it is handed to librdkafka, and gives them back only when the last of its messages is
//! acknowledged or failed, even when the client stopped waiting. When Kafka is slow or down
//! the permits run out and submits answer `Full` (HTTP 503 + Retry-After, gRPC
//! UNAVAILABLE) after a short wait; a batch whose delivery fails answers `Full` too. The
//! client then sends it again: a batch may reach Kafka twice, and the correlator's
//! redelivery window drops the copy.

use super::codec;
use super::metrics::ProducerMetrics;
use super::KafkaArgs;
use futures::future::BoxFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use toctou_collector::{EventSink, SinkError};
use toctou_schema::{AuditAction, Event};
use tokio::sync::{oneshot, Semaphore};

/// Bytes in flight to Kafka at most, per collector.
pub const DEFAULT_MAX_INFLIGHT_BYTES: usize = 64 << 20;
/// Events per message at most: keeps a message well under Kafka's 1 MB default limit.
pub const MAX_EVENTS_PER_MESSAGE: usize = 500;
/// How long a submit waits for in-flight room before pushing back.
pub const DEFAULT_INFLIGHT_WAIT: Duration = Duration::from_millis(200);
/// What a pushed-back client is told to wait.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Permits are KiB, so that the semaphore's u32 counts cover gigabytes.
const PERMIT_BYTES: usize = 1024;

/// Producer tuning (flags of `toctou collector`).
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub max_inflight_bytes: usize,
    pub inflight_wait: Duration,
    /// How long librdkafka keeps trying to deliver a message (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// How long librdkafka waits to fill a batch (`linger.ms`).
    pub linger: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            inflight_wait: DEFAULT_INFLIGHT_WAIT,
            delivery_timeout: Duration::from_secs(30),
            linger: Duration::from_millis(5),
        }
    }
}

/// One message to send.
#[derive(Debug, PartialEq)]
pub struct Outgoing {
    pub key: String,
    /// Set for broadcast copies; otherwise the key's hash picks the partition.
    pub partition: Option<i32>,
    pub payload: Vec<u8>,
    pub events: usize,
}

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    partitions: usize,
    permits: Arc<Semaphore>,
    max_permits: u32,
    config: ProducerConfig,
    metrics: Arc<ProducerMetrics>,
}

impl KafkaSink {
    /// A producer for `kafka.topic`, which has `partitions` partitions.
    pub fn new(
        kafka: &KafkaArgs,
        partitions: usize,
        config: ProducerConfig,
    ) -> Result<KafkaSink, rdkafka::error::KafkaError> {
        let producer: FutureProducer = kafka
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", config.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().max(1).to_string(),
            )
            // librdkafka's own queue is bounded by our in-flight limit plus headroom, so
            // its refusal is a backstop, never the normal push-back.
            .set(
                "queue.buffering.max.kbytes",
                (config.max_inflight_bytes / 1024 * 2).max(1024).to_string(),
            )
            .create()?;
        let max_permits = (config.max_inflight_bytes / PERMIT_BYTES).max(1) as u32;
        Ok(KafkaSink {
            producer,
            topic: kafka.topic.clone(),
            partitions: partitions.max(1),
            permits: Arc::new(Semaphore::new(max_permits as usize)),
            max_permits,
            config,
            metrics: Arc::new(ProducerMetrics::default()),
        })
    }

    pub fn metrics(&self) -> Arc<ProducerMetrics> {
        self.metrics.clone()
    }

    /// Waits up to `timeout` for queued messages to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        if let Err(err) = self.producer.flush(timeout) {
            tracing::warn!(error = %err, "messages still undelivered at shutdown");
        }
    }

    async fn send(&self, events: Vec<Event>) -> Result<(), SinkError> {
        let messages = plan(events, self.partitions);
        let bytes: usize = messages.iter().map(|m| m.payload.len() + m.key.len()).sum();
        let permits = (bytes / PERMIT_BYTES + 1).min(self.max_permits as usize) as u32;
        let acquire = self.permits.clone().acquire_many_owned(permits);
        let permit = match tokio::time::timeout(self.config.inflight_wait, acquire).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(SinkError::Closed),
            Err(_) => {
                self.metrics.pushed_back.fetch_add(1, Relaxed);
                return Err(SinkError::Full {
                    retry_after: RETRY_AFTER,
                });
            }
        };
        let mut deliveries = Vec::with_capacity(messages.len());
        let mut enqueued_all = true;
        for m in &messages {
            let mut record = FutureRecord::to(&self.topic)
                .key(m.key.as_str())
                .payload(m.payload.as_slice());
            if let Some(p) = m.partition {
                record = record.partition(p);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push((delivery, m.events)),
                Err((err, _)) => {
                    self.metrics.enqueue_failures.fetch_add(1, Relaxed);
                    tracing::warn!(error = %err, "kafka refused to queue a message; pushing back");
                    enqueued_all = false;
                    break;
                }
            }
        }
        // The acknowledgements are awaited on a task of their own that holds the permits, so
        // that a client giving up (the receivers' submit timeout drops this future) does not
        // free room for bytes librdkafka still holds.
        let metrics = self.metrics.clone();
        metrics.inflight_bytes.fetch_add(bytes as i64, Relaxed);
        metrics.inflight_batches.fetch_add(1, Relaxed);
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(async move {
            let _permit = permit;
            let mut all_ok = true;
            for (delivery, events) in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {
                        metrics.produced_messages.fetch_add(1, Relaxed);
                        metrics.produced_events.fetch_add(events as u64, Relaxed);
                    }
                    Ok(Err((err, _))) => {
                        metrics.failed_messages.fetch_add(1, Relaxed);
                        tracing::warn!(error = %err, "kafka did not acknowledge a message; the request is pushed back");
                        all_ok = false;
                    }
                    Err(_) => {
                        metrics.failed_messages.fetch_add(1, Relaxed);
                        all_ok = false;
                    }
                }
            }
            metrics.inflight_bytes.fetch_sub(bytes as i64, Relaxed);
            metrics.inflight_batches.fetch_sub(1, Relaxed);
            let _ = done_tx.send(all_ok);
        });
        if !enqueued_all {
            return Err(SinkError::Full {
                retry_after: RETRY_AFTER,
            });
        }
        match done_rx.await {
            Ok(true) => Ok(()),
            _ => Err(SinkError::Full {
                retry_after: RETRY_AFTER,
            }),
        }
    }
}

impl EventSink for KafkaSink {
    fn submit(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(self.send(events))
    }
}

/// Groups a request's events into messages: per resource, in first-seen order, at most
/// [`MAX_EVENTS_PER_MESSAGE`] each; a policy change once per partition, the copy on
/// partition 0 marked as the original.
pub fn plan(events: Vec<Event>, partitions: usize) -> Vec<Outgoing> {
    let mut groups: Vec<(String, Vec<Event>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for event in events {
        if let Event::Audit(a) = &event {
            if a.action == AuditAction::PolicyChange {
                for p in 0..partitions {
                    let batch = std::slice::from_ref(&event);
                    out.push(Outgoing {
                        key: a.resource.clone(),
                        partition: Some(p as i32),
                        payload: codec::encode(batch, p != 0),
                        events: usize::from(p == 0),
                    });
                }
                continue;
            }
        }
        let resource = event.resource().to_owned();
        let i = match index.get(&resource) {
            Some(&i) => i,
            None => {
                groups.push((resource.clone(), Vec::new()));
                index.insert(resource, groups.len() - 1);
                groups.len() - 1
            }
        };
        groups[i].1.push(event);
    }
    for (key, events) in groups {
        for chunk in events.chunks(MAX_EVENTS_PER_MESSAGE) {
            out.push(Outgoing {
                key: key.clone(),
                partition: None,
                payload: codec::encode(chunk, false),
                events: chunk.len(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use toctou_schema::AuditEvent;

    fn audit(action: AuditAction, resource: &str, t: u64) -> Event {
        Event::Audit(AuditEvent {
            action,
            resource: resource.into(),
            version: None,
            request_id: None,
            actor: None,
            time_ns: t,
            service: "db".into(),
            source_id: Some(format!("{resource}-{t}")),
            trace_id: [0; 16],
            span_id: [0; 8],
        })
    }

    #[test]
    fn groups_by_resource_keeping_order() {
        let events = vec![
            audit(AuditAction::Update, "a", 1),
            audit(AuditAction::Update, "b", 2),
            audit(AuditAction::Update, "a", 3),
        ];
        let out = plan(events, 4);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].key, "a");
        assert_eq!(out[0].partition, None);
        let a = codec::decode(&out[0].payload).unwrap();
        assert_eq!(
            a.events
                .iter()
                .map(|e| e.event_time_ns())
                .collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(out[1].key, "b");
        assert_eq!(out.iter().map(|m| m.events).sum::<usize>(), 3);
    }

    #[test]
    fn splits_large_groups() {
        let events = (0..1_201)
            .map(|t| audit(AuditAction::Update, "a", t))
            .collect();
        let out = plan(events, 1);
        assert_eq!(
            out.iter().map(|m| m.events).collect::<Vec<_>>(),
            vec![500, 500, 201]
        );
    }

    #[test]
    fn policy_changes_go_to_every_partition_once_as_original() {
        let out = plan(vec![audit(AuditAction::PolicyChange, "pol", 1)], 3);
        assert_eq!(out.len(), 3);
        let copies: Vec<(Option<i32>, bool)> = out
            .iter()
            .map(|m| {
                (
                    m.partition,
                    codec::decode(&m.payload).unwrap().broadcast_copy,
                )
            })
            .collect();
        assert_eq!(
            copies,
            vec![(Some(0), false), (Some(1), true), (Some(2), true)]
        );
        assert_eq!(out.iter().map(|m| m.events).sum::<usize>(), 1);
    }
}
