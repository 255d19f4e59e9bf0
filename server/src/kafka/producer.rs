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
//!
//! The librdkafka producer itself is replaceable ([`Producers`]). An idempotent producer can
//! end up unable to deliver anything while Kafka is fine: after a fatal error (librdkafka
//! refuses every message from then on), or with its sequence state for a partition out of
//! step with a broker that restarted, which librdkafka does not always recover from on its
//! own. Either way the collector would answer 503 forever, so the sink builds a new producer
//! (a new producer id, fresh sequences) and retires the old one.
use super::metrics::ProducerMetrics;
use super::KafkaArgs;
use futures::future::BoxFuture;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::ClientConfig;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use toctou_collector::{EventSink, SinkError};
use toctou_kafka::codec;
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
/// How long the reachability probe of a producer suspected stuck may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a producer suspected stuck is probed at most.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);

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

/// Why a producer was replaced (the `reason` label of
/// `toctou_kafka_producer_replacements_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// librdkafka raised a fatal error: the instance refuses every message from then on.
    Fatal,
    /// A partition kept failing and acknowledged nothing for longer than the stuck wait
    /// after the cluster was seen answering, and still answers.
    Stuck,
}

/// The partition of a message that never got one (refused before partitioning, or the
/// topic's metadata unknown).
const UNASSIGNED: i32 = -1;

/// The stuck rule's state. It is per partition because the idempotent producer's state that
/// can go wrong (its sequence numbers) is per partition: one stuck partition among healthy
/// ones must still be noticed.
///
/// The rule has two steps, both taken only when a message has just failed:
/// 1. A partition *quiet* for longer than the wait (nothing acknowledged by this producer,
///    which is that old) is a candidate, and the cluster is probed (at most every
///    [`PROBE_INTERVAL`]). If a new producer reaches it, each candidate becomes a *suspect*
///    from then on; if not, Kafka is down, which is no fault of the producer, and every
///    suspicion is dropped.
/// 2. A suspect still failing, with nothing acknowledged, more than the wait after it became
///    one, while the cluster answers, is stuck.
///
/// The second step is what keeps a recovery from looking like a fault: messages queued
/// during an outage keep failing for up to a delivery timeout after Kafka is back, long
/// after their partition's last acknowledgement, and a healthy producer acknowledges within
/// that timeout. An acknowledgement ends a suspicion.
#[derive(Debug, Clone)]
pub struct Clocks {
    /// Each partition's last acknowledgement.
    pub acks: HashMap<i32, Instant>,
    /// When the producer in use was created.
    pub created: Instant,
    pub last_probe: Option<Instant>,
    /// Since when each suspect partition has been failing while the cluster answers.
    pub suspects: HashMap<i32, Instant>,
}

/// What [`Clocks::judge`] concluded from a probe.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy, down, or not yet suspected long enough.
    Wait,
    /// The partition has failed with nothing acknowledged for this long since it became a
    /// suspect.
    Stuck { partition: i32, for_: Duration },
}

impl Clocks {
    fn new(now: Instant) -> Clocks {
        Clocks {
            acks: HashMap::new(),
            created: now,
            last_probe: None,
            suspects: HashMap::new(),
        }
    }

    fn acknowledged(&mut self, partition: i32, now: Instant) {
        self.acks.insert(partition, now);
        self.suspects.remove(&partition);
        self.suspects.remove(&UNASSIGNED);
    }

    /// Since when `partition` has had nothing acknowledged by the producer in use; for
    /// [`UNASSIGNED`], since the last acknowledgement of any partition.
    pub fn quiet_since(&self, partition: i32) -> Instant {
        let ack = if partition == UNASSIGNED {
            self.acks.values().max()
        } else {
            self.acks.get(&partition)
        };
        ack.map_or(self.created, |&t| t.max(self.created))
    }

    /// Step 1: of the partitions whose messages just failed, those quiet for longer than
    /// `wait`, if it is time to probe; the probe is then taken as started.
    pub fn candidates(&mut self, now: Instant, failed: &[i32], wait: Duration) -> Vec<i32> {
        if self
            .last_probe
            .is_some_and(|t| now.saturating_duration_since(t) < PROBE_INTERVAL)
        {
            return Vec::new();
        }
        let quiet: Vec<i32> = failed
            .iter()
            .copied()
            .filter(|&p| now.saturating_duration_since(self.quiet_since(p)) > wait)
            .collect();
        if !quiet.is_empty() {
            self.last_probe = Some(now);
        }
        quiet
    }

    /// Step 2: the probe's answer (whether a new producer reached the cluster) for the
    /// `candidates`.
    pub fn judge(
        &mut self,
        now: Instant,
        candidates: &[i32],
        reachable: bool,
        wait: Duration,
    ) -> Verdict {
        if !reachable {
            self.suspects.clear();
            return Verdict::Wait;
        }
        let mut verdict = Verdict::Wait;
        for &p in candidates {
            // An acknowledgement may have come in while the probe ran.
            if now.saturating_duration_since(self.quiet_since(p)) <= wait {
                continue;
            }
            let since = *self.suspects.entry(p).or_insert(now);
            let for_ = now.saturating_duration_since(since);
            if for_ > wait && verdict == Verdict::Wait {
                verdict = Verdict::Stuck { partition: p, for_ };
            }
        }
        verdict
    }
}

/// The librdkafka producer in use, and how to build its successor.
pub struct Producers {
    config: ClientConfig,
    topic: String,
    current: RwLock<Arc<FutureProducer>>,
    clocks: Mutex<Clocks>,
    /// The stuck rule's wait: a healthy producer acknowledges within the delivery timeout of
    /// Kafka answering, plus a margin.
    stuck_after: Duration,
    metrics: Arc<ProducerMetrics>,
}

impl Producers {
    fn new(
        config: ClientConfig,
        topic: String,
        stuck_after: Duration,
        metrics: Arc<ProducerMetrics>,
    ) -> Result<Producers, rdkafka::error::KafkaError> {
        let producer: FutureProducer = config.create()?;
        Ok(Producers {
            config,
            topic,
            current: RwLock::new(Arc::new(producer)),
            clocks: Mutex::new(Clocks::new(Instant::now())),
            stuck_after,
            metrics,
        })
    }

    /// The producer to send with; a batch keeps it until its deliveries settle.
    pub fn current(&self) -> Arc<FutureProducer> {
        self.current.read().unwrap().clone()
    }

    fn acknowledged(&self, partition: i32) {
        self.clocks
            .lock()
            .unwrap()
            .acknowledged(partition, Instant::now());
    }

    /// After `used` failed messages of the `failed` partitions (refused them, or their
    /// delivery failed): replaces it when it has a fatal error, or when the stuck rule
    /// ([`Clocks`]) says so. The probe asks a new producer for the topic's metadata: failing
    /// because Kafka is down is not being stuck, since a new producer would fail the same
    /// way.
    async fn failed(&self, used: &Arc<FutureProducer>, failed: &[i32]) {
        // A producer already replaced says nothing of the one in use (its purge fails every
        // message it still held); without this, each of those failures would build a
        // producer only to drop it.
        if !Arc::ptr_eq(&self.current(), used) {
            return;
        }
        if let Some((code, reason)) = used.client().fatal_error() {
            let fresh = match self.config.create() {
                Ok(p) => p,
                Err(err) => {
                    tracing::error!(error = %err, "could not create a kafka producer to replace one with a fatal error");
                    return;
                }
            };
            self.replace(
                used,
                fresh,
                Replacement::Fatal,
                &format!("{code:?}: {reason}"),
            );
            return;
        }
        let candidates =
            self.clocks
                .lock()
                .unwrap()
                .candidates(Instant::now(), failed, self.stuck_after);
        if candidates.is_empty() {
            return;
        }
        let (config, topic) = (self.config.clone(), self.topic.clone());
        let probe = tokio::task::spawn_blocking(move || {
            let fresh: FutureProducer = config.create()?;
            let metadata = fresh.client().fetch_metadata(Some(&topic), PROBE_TIMEOUT)?;
            let answers = metadata.topics().iter().any(|t| !t.partitions().is_empty());
            Ok::<_, rdkafka::error::KafkaError>(answers.then_some(fresh))
        })
        .await;
        let fresh = match probe {
            Ok(Ok(fresh)) => fresh,
            _ => None,
        };
        let verdict = self.clocks.lock().unwrap().judge(
            Instant::now(),
            &candidates,
            fresh.is_some(),
            self.stuck_after,
        );
        if let (Verdict::Stuck { partition, for_ }, Some(fresh)) = (verdict, fresh) {
            let detail = format!(
                "partition {partition} failed and acknowledged nothing for {for_:.0?} while the cluster answers"
            );
            self.replace(used, fresh, Replacement::Stuck, &detail);
        }
    }

    /// Puts `fresh` in `used`'s place (unless another failure did already) and purges
    /// `used`, so that its queued messages fail now (their clients retry, through the new
    /// one) and their permits come back.
    fn replace(
        &self,
        used: &Arc<FutureProducer>,
        fresh: FutureProducer,
        why: Replacement,
        detail: &str,
    ) {
        let mut current = self.current.write().unwrap();
        if !Arc::ptr_eq(&current, used) {
            return;
        }
        let old = std::mem::replace(&mut *current, Arc::new(fresh));
        drop(current);
        *self.clocks.lock().unwrap() = Clocks::new(Instant::now());
        match why {
            Replacement::Fatal => &self.metrics.replaced_fatal,
            Replacement::Stuck => &self.metrics.replaced_stuck,
        }
        .fetch_add(1, Relaxed);
        tracing::warn!(reason = ?why, detail, "replaced the kafka producer");
        old.purge(PurgeConfig::default().queue().inflight());
    }
}

pub struct KafkaSink {
    producers: Arc<Producers>,
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
        let mut client_config = kafka.client_config();
        client_config
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
            );
        let metrics = Arc::new(ProducerMetrics::default());
        // A healthy producer acknowledges within the delivery timeout of Kafka coming
        // back; the margin covers the messages queued just before it came back.
        let stuck_after = config.delivery_timeout + Duration::from_secs(10);
        let producers = Producers::new(
            client_config,
            kafka.topic.clone(),
            stuck_after,
            metrics.clone(),
        )?;
        let max_permits = (config.max_inflight_bytes / PERMIT_BYTES).max(1) as u32;
        Ok(KafkaSink {
            producers: Arc::new(producers),
            partitions: partitions.max(1),
            permits: Arc::new(Semaphore::new(max_permits as usize)),
            max_permits,
            config,
            metrics,
        })
    }

    pub fn metrics(&self) -> Arc<ProducerMetrics> {
        self.metrics.clone()
    }

    /// Waits up to `timeout` for queued messages to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(err) = self.producers.current().flush(timeout) {
            tracing::warn!(error = %err, "messages still undelivered at shutdown");
        }
    }

    async fn send(&self, events: Vec<Event>) -> Result<(), SinkError> {
        let db = events.iter().filter(|e| matches!(e, Event::Db(_))).count() as u64;
        if db > 0 && self.metrics.db_spans_dropped.fetch_add(db, Relaxed) == 0 {
            // Once: a service sending database spans to a collector expects races of them.
            tracing::warn!(
                "database spans arrive, but inference from them runs in `toctou run` only; \
                 they are dropped here (toctou_kafka_db_spans_dropped_total)"
            );
        }
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
        let producer = self.producers.current();
        let topic = &self.producers.topic;
        let mut deliveries = Vec::with_capacity(messages.len());
        let mut enqueued_all = true;
        for m in &messages {
            let mut record = FutureRecord::to(topic)
                .key(m.key.as_str())
                .payload(m.payload.as_slice());
            if let Some(p) = m.partition {
                record = record.partition(p);
            }
            match producer.send_result(record) {
                Ok(delivery) => deliveries.push((delivery, m.events)),
                Err((err, _)) => {
                    self.metrics.enqueue_failures.fetch_add(1, Relaxed);
                    tracing::warn!(error = %err, "kafka refused to queue a message; pushing back");
                    enqueued_all = false;
                    break;
                }
            }
        }
        // The acknowledgements are awaited on a task of their own that holds the permits (and
        // the producer, whose purge on drop settles them), so that a client giving up (the
        // receivers' submit timeout drops this future) does not free room for bytes
        // librdkafka still holds.
        let metrics = self.metrics.clone();
        let producers = self.producers.clone();
        metrics.inflight_bytes.fetch_add(bytes as i64, Relaxed);
        metrics.inflight_batches.fetch_add(1, Relaxed);
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(async move {
            let _permit = permit;
            let mut failed = Vec::new();
            if !enqueued_all {
                failed.push(UNASSIGNED);
            }
            for (delivery, events) in deliveries {
                match delivery.await {
                    Ok(Ok(delivered)) => {
                        producers.acknowledged(delivered.partition);
                        metrics.produced_messages.fetch_add(1, Relaxed);
                        metrics.produced_events.fetch_add(events as u64, Relaxed);
                    }
                    Ok(Err((err, message))) => {
                        metrics.failed_messages.fetch_add(1, Relaxed);
                        tracing::warn!(error = %err, partition = message.partition(), "kafka did not acknowledge a message; the request is pushed back");
                        failed.push(message.partition());
                    }
                    Err(_) => {
                        metrics.failed_messages.fetch_add(1, Relaxed);
                        failed.push(UNASSIGNED);
                    }
                }
            }
            metrics.inflight_bytes.fetch_sub(bytes as i64, Relaxed);
            metrics.inflight_batches.fetch_sub(1, Relaxed);
            let _ = done_tx.send(failed.is_empty());
            if !failed.is_empty() {
                failed.sort_unstable();
                failed.dedup();
                producers.failed(&producer, &failed).await;
            }
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
        if let Event::Db(_) = event {
            // Inference runs in `toctou run` only: a database call names no resource, so
            // no partition could bring a request's calls together (issue 26).
            continue;
        }
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

    /// A sink whose broker does not exist: nothing is ever delivered, which the fatal path
    /// does not need, and the stuck path must not mistake for being stuck.
    fn unreachable_sink(delivery_timeout: Duration) -> KafkaSink {
        let kafka = KafkaArgs {
            // Port 9 (discard) on loopback: refused at once.
            bootstrap: "127.0.0.1:9".into(),
            topic: "toctou.events".into(),
        };
        let config = ProducerConfig {
            delivery_timeout,
            ..ProducerConfig::default()
        };
        KafkaSink::new(&kafka, 1, config).unwrap()
    }

    async fn settle(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what} did not happen in 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Database spans are inference's, which runs in `toctou run` only: a collector sends
    /// none on and counts each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_spans_are_counted_not_sent() {
        let sink = unreachable_sink(Duration::from_secs(30));
        let db = |n: u8| {
            Event::Db(toctou_schema::DbSpanEvent {
                trace_id: [n; 16],
                span_id: [n; 8],
                root: true,
                start_ns: 1,
                end_ns: 2,
                service: "shop".into(),
                request_id: None,
                route: Some("/buy".into()),
                statement: None,
            })
        };
        assert_eq!(sink.submit(vec![db(1), db(2)]).await, Ok(()));
        assert_eq!(sink.submit(vec![db(3)]).await, Ok(()));
        let metrics = sink.metrics();
        assert_eq!(metrics.db_spans_dropped.load(Relaxed), 3);
        assert_eq!(metrics.enqueue_failures.load(Relaxed), 0, "nothing sent");
        let out = toctou_schema::metrics::encode_one(crate::kafka::metrics::ProducerCollector(
            metrics.clone(),
        ));
        assert!(
            out.contains("toctou_kafka_db_spans_dropped_total 3\n"),
            "{out}"
        );
    }

    /// librdkafka's own test hook raises a fatal error, the state an idempotent producer
    /// ends in when it can no longer guarantee order (no practical way to cause one for
    /// real, its documentation says). The producer then refuses every message; the sink
    /// must put a new one in its place, give the permits back, and count it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_with_a_fatal_error_is_replaced() {
        let sink = unreachable_sink(Duration::from_secs(30));
        let first = sink.producers.current();
        let reason = std::ffi::CString::new("raised by the test").unwrap();
        let raised = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                first.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            )
        };
        assert_eq!(
            raised,
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        );
        assert!(first.client().fatal_error().is_some());

        let answer = sink.submit(vec![audit(AuditAction::Update, "a", 1)]).await;
        assert!(matches!(answer, Err(SinkError::Full { .. })), "{answer:?}");
        let metrics = sink.metrics();
        settle("the replacement", || {
            metrics.replaced_fatal.load(Relaxed) == 1
        })
        .await;
        let second = sink.producers.current();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.client().fatal_error(), None);
        assert_eq!(metrics.enqueue_failures.load(Relaxed), 1);
        assert_eq!(metrics.replaced_stuck.load(Relaxed), 0);
        settle("the permits' return", || {
            sink.permits.available_permits() == sink.max_permits as usize
        })
        .await;
        let out = toctou_schema::metrics::encode_one(crate::kafka::metrics::ProducerCollector(
            metrics.clone(),
        ));
        assert!(
            out.contains("toctou_kafka_producer_replacements_total{reason=\"fatal\"} 1\n"),
            "{out}"
        );

        // The new producer takes messages (it cannot deliver them: there is no broker).
        let record = FutureRecord::to("toctou.events").key("a").payload("x");
        assert!(second.send_result(record).is_ok());
        // A second failure of the old one does not replace the new one.
        sink.producers.failed(&first, &[UNASSIGNED]).await;
        assert!(Arc::ptr_eq(&second, &sink.producers.current()));
    }

    /// Deliveries that time out because Kafka is down are not a stuck producer: the probe
    /// finds no cluster, and the producer stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_because_kafka_is_down_replaces_nothing() {
        let sink = unreachable_sink(Duration::from_millis(100));
        let first = sink.producers.current();
        // Past the stuck rule's wait (delivery timeout + 10 s) without sleeping through it.
        sink.producers.clocks.lock().unwrap().created = Instant::now() - Duration::from_secs(60);
        let answer = sink.submit(vec![audit(AuditAction::Update, "a", 1)]).await;
        assert!(matches!(answer, Err(SinkError::Full { .. })), "{answer:?}");
        let metrics = sink.metrics();
        settle("the delivery failure", || {
            metrics.failed_messages.load(Relaxed) == 1
        })
        .await;
        settle("the probe", || {
            sink.producers.clocks.lock().unwrap().last_probe.is_some()
        })
        .await;
        // The probe runs for up to PROBE_TIMEOUT against a broker that is not there.
        tokio::time::sleep(PROBE_TIMEOUT + Duration::from_secs(1)).await;
        assert!(Arc::ptr_eq(&first, &sink.producers.current()));
        assert!(sink.producers.clocks.lock().unwrap().suspects.is_empty());
        assert_eq!(metrics.replaced_stuck.load(Relaxed), 0);
        assert_eq!(metrics.replaced_fatal.load(Relaxed), 0);
    }

    /// A broker of its own through scripts/kafka, as the black-box tests start theirs (under
    /// `TOCTOU_KAFKA_TEST_ROOT` when scripts/test set it, so that it stops what is left).
    struct Broker {
        home: std::path::PathBuf,
        bootstrap: String,
    }

    impl Broker {
        fn script(home: &std::path::Path, verb: &str) -> String {
            // `cargo test` sets CARGO_MANIFEST_DIR when it runs a test too: the checkout under
            // test, even when this binary was built from another sharing the target dir.
            let root = std::env::var_os("CARGO_MANIFEST_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
            let out = std::process::Command::new(root.join("../scripts/kafka"))
                .arg(verb)
                .env("TOCTOU_KAFKA_HOME", home)
                .output()
                .expect("running scripts/kafka");
            assert!(
                out.status.success(),
                "scripts/kafka {verb} failed (run 'scripts/kafka install' first?): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }

        fn start() -> Broker {
            let parent = std::env::var_os("TOCTOU_KAFKA_TEST_ROOT")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            let home = parent.join(format!("toctou-kafka-producer-unit-{}", std::process::id()));
            std::fs::create_dir_all(&home).unwrap();
            let bootstrap = Self::script(&home, "start");
            Broker { home, bootstrap }
        }
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            Self::script(&self.home, "stop");
            let _ = std::fs::remove_dir_all(&self.home);
        }
    }

    /// The positive side of the stuck rule, against a real broker: a partition's messages
    /// fail while the cluster answers (sent to a partition the topic does not have), nothing
    /// has been acknowledged there for longer than the rule's wait, even though another
    /// partition is acknowledging, and it goes on failing a wait after the probe found the
    /// cluster answering. The probe's new producer takes the failing one's place; it then
    /// delivers.
    #[test]
    #[cfg_attr(not(feature = "services"), ignore = "needs Kafka: run ./scripts/test")]
    fn a_producer_failing_while_kafka_answers_is_replaced() {
        let broker = Broker::start();
        let kafka = KafkaArgs {
            bootstrap: broker.bootstrap.clone(),
            topic: "toctou.events".into(),
        };
        super::super::admin::init(super::super::admin::InitArgs {
            kafka: kafka.clone(),
            partitions: 1,
            replication_factor: 1,
            retention: Duration::from_secs(3600),
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let sink = KafkaSink::new(&kafka, 1, ProducerConfig::default()).unwrap();
            let metrics = sink.metrics();
            let update = |t| vec![audit(AuditAction::Update, "a", t)];
            assert_eq!(sink.submit(update(1)).await, Ok(()));
            let first = sink.producers.current();
            let fail = || async {
                let record = FutureRecord::to("toctou.events")
                    .key("a")
                    .payload("x")
                    .partition(3);
                match first.send_result(record) {
                    Ok(delivery) => assert!(delivery.await.unwrap().is_err()),
                    Err((err, _)) => assert!(err.rdkafka_error_code().is_some(), "{err}"),
                }
                sink.producers.failed(&first, &[3]).await;
            };

            // A failure from a producer just created is not being stuck.
            fail().await;
            assert!(Arc::ptr_eq(&first, &sink.producers.current()));
            assert!(sink.producers.clocks.lock().unwrap().last_probe.is_none());

            // Past the rule's wait (the delivery timeout + 10 s) without sleeping through it;
            // partition 0 acknowledges again, partition 3 stays quiet.
            sink.producers.clocks.lock().unwrap().created =
                Instant::now() - Duration::from_secs(60);
            assert_eq!(sink.submit(update(2)).await, Ok(()));
            // The first probe finds the cluster answering: partition 3 becomes a suspect.
            fail().await;
            assert!(Arc::ptr_eq(&first, &sink.producers.current()));
            assert!(sink
                .producers
                .clocks
                .lock()
                .unwrap()
                .suspects
                .contains_key(&3));
            // Still failing a wait later (the clocks moved back instead of sleeping): stuck.
            {
                let mut clocks = sink.producers.clocks.lock().unwrap();
                let past = Instant::now() - Duration::from_secs(50);
                clocks.suspects.insert(3, past);
                clocks.last_probe = Some(past);
            }
            fail().await;
            assert_eq!(metrics.replaced_stuck.load(Relaxed), 1);
            assert!(!Arc::ptr_eq(&first, &sink.producers.current()));
            assert_eq!(metrics.replaced_fatal.load(Relaxed), 0);
            assert_eq!(sink.submit(update(3)).await, Ok(()));
            settle("the permits' return", || {
                sink.permits.available_permits() == sink.max_permits as usize
            })
            .await;
        });
        drop(broker);
    }

    /// Step 1 of the stuck rule: which failing partitions are candidates, and how often.
    #[test]
    fn stuck_rule_candidates() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(40);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let clocks = |acks: &[(i32, u64)], created: u64| Clocks {
            acks: acks.iter().map(|&(p, t)| (p, at(t))).collect(),
            created: at(created),
            last_probe: None,
            suspects: HashMap::new(),
        };
        let now = at(100);
        // A recent acknowledgement in the failing partition: none.
        assert!(clocks(&[(0, 90)], 0).candidates(now, &[0], wait).is_empty());
        // Nothing acknowledged there for 50 s, the producer 100 s old: a candidate, even
        // with another partition acknowledging.
        assert_eq!(
            clocks(&[(0, 50), (1, 99)], 0).candidates(now, &[0, 1], wait),
            vec![0]
        );
        // Never acknowledged, the producer old: a candidate; 30 s old: it gets its time.
        assert_eq!(clocks(&[(1, 99)], 0).candidates(now, &[2], wait), vec![2]);
        assert!(clocks(&[], 70).candidates(now, &[2], wait).is_empty());
        // An acknowledgement to the producer before (older than `created`) does not count.
        assert!(clocks(&[(0, 20)], 70)
            .candidates(now, &[0], wait)
            .is_empty());
        // Unassigned messages: quiet since the last acknowledgement of any partition.
        assert!(clocks(&[(0, 20), (1, 95)], 0)
            .candidates(now, &[UNASSIGNED], wait)
            .is_empty());
        assert_eq!(
            clocks(&[(0, 20), (1, 50)], 0).candidates(now, &[UNASSIGNED], wait),
            vec![UNASSIGNED]
        );
        // A probe taken: none again within PROBE_INTERVAL, then again.
        let mut c = clocks(&[(0, 50)], 0);
        assert_eq!(c.candidates(now, &[0], wait), vec![0]);
        assert_eq!(c.last_probe, Some(now));
        assert!(c.candidates(at(105), &[0], wait).is_empty());
        assert_eq!(c.candidates(at(110), &[0], wait), vec![0]);
    }

    /// Step 2, over timelines: Kafka down and back (the stragglers are no fault), a
    /// partition stuck among healthy ones, a suspicion ended by an acknowledgement.
    #[test]
    fn stuck_rule_judgement() {
        let t0 = Instant::now();
        let wait = Duration::from_secs(40); // a 30 s delivery timeout + 10 s
        let at = |s: u64| t0 + Duration::from_secs(s);
        let fresh = |acks: &[(i32, u64)]| Clocks {
            acks: acks.iter().map(|&(p, t)| (p, at(t))).collect(),
            created: t0,
            last_probe: None,
            suspects: HashMap::new(),
        };
        // Outage from 100 to 170 s: messages from 100 on fail from 130 on; the probes at 141,
        // 151 and 161 find no cluster. Back at 170, stragglers (queued up to 170) fail until
        // 200, and the partition acknowledges from 171.
        let mut c = fresh(&[(0, 100)]);
        for t in [141, 151, 161] {
            assert_eq!(c.candidates(at(t), &[0], wait), vec![0]);
            assert_eq!(c.judge(at(t), &[0], false, wait), Verdict::Wait);
        }
        assert_eq!(c.candidates(at(171), &[0], wait), vec![0]);
        assert_eq!(c.judge(at(171), &[0], true, wait), Verdict::Wait);
        assert_eq!(c.suspects.get(&0), Some(&at(171)));
        c.acknowledged(0, at(172));
        assert!(c.suspects.is_empty());
        assert!(c.candidates(at(185), &[0], wait).is_empty());

        // The same outage, but partition 0 never acknowledges again while partition 1 does:
        // a suspect at 171, stuck at the first probe after 211.
        let mut c = fresh(&[(0, 100), (1, 100)]);
        assert_eq!(c.candidates(at(161), &[0, 1], wait), vec![0, 1]);
        assert_eq!(c.judge(at(161), &[0, 1], false, wait), Verdict::Wait);
        assert_eq!(c.candidates(at(171), &[0, 1], wait), vec![0, 1]);
        assert_eq!(c.judge(at(171), &[0, 1], true, wait), Verdict::Wait);
        c.acknowledged(1, at(172));
        for t in [181, 191, 201, 211] {
            assert_eq!(c.candidates(at(t), &[0], wait), vec![0]);
            assert_eq!(c.judge(at(t), &[0], true, wait), Verdict::Wait, "at {t}");
        }
        assert_eq!(c.candidates(at(221), &[0], wait), vec![0]);
        assert_eq!(
            c.judge(at(221), &[0], true, wait),
            Verdict::Stuck {
                partition: 0,
                for_: Duration::from_secs(50)
            }
        );

        // Kafka goes down again while a partition is suspect: the suspicion is dropped.
        let mut c = fresh(&[(0, 100)]);
        c.candidates(at(150), &[0], wait);
        c.judge(at(150), &[0], true, wait);
        c.candidates(at(160), &[0], wait);
        c.judge(at(160), &[0], false, wait);
        assert!(c.suspects.is_empty());
        c.candidates(at(200), &[0], wait);
        assert_eq!(c.judge(at(200), &[0], true, wait), Verdict::Wait);

        // An acknowledgement that came in while the probe ran: no suspicion.
        let mut c = fresh(&[(0, 100)]);
        assert_eq!(c.candidates(at(150), &[0], wait), vec![0]);
        c.acknowledged(0, at(151));
        assert_eq!(c.judge(at(152), &[0], true, wait), Verdict::Wait);
        assert!(c.suspects.is_empty());
    }

    fn audit(action: AuditAction, resource: &str, t: u64) -> Event {
        toctou_schema::testing::audit_at(action, resource, t)
            .source(&format!("{resource}-{t}"))
            .ev()
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
