//! Where decoded events go: the [`EventSink`] trait the receivers hand batches to, and
//! [`ChannelSink`], the bounded channel into the in-process correlator, bounded in batches
//! and (with [`QueueBytes`]) in bytes.
//!
//! The receivers answer a client only after the sink accepted its batch (end-to-end
//! acknowledgement), so a sink that pushes back makes the client retry rather than letting
//! events pile up in memory.

use crate::error::SinkError;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use toctou_schema::Event;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::sync::{mpsc, Semaphore};

pub trait EventSink: Send + Sync + 'static {
    /// Hand one decoded batch downstream. Resolves once the batch is accepted (in `toctou
    /// run`: enqueued to the correlator). Err(SinkError::Full{retry_after}) = push back.
    fn submit(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), SinkError>>;
}

/// How long [`ChannelSink`] waits for room by default: long enough to ride out a burst the
/// consumer drains in a moment, short enough that a stuck consumer pushes back quickly.
pub const DEFAULT_CHANNEL_WAIT: Duration = Duration::from_millis(200);
/// What [`ChannelSink`] tells clients to wait before retrying when the channel stays full.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The bytes of decoded events (as [`Event::approx_bytes`] counts them) handed to a
/// [`ChannelSink`] and not yet given back by its consumer. A bound in batches alone lets a
/// queue of fat batches (each up to the decoding budget of a `--max-request-bytes` request)
/// grow to gigabytes while the consumer falls behind.
#[derive(Clone, Debug)]
pub struct QueueBytes {
    permits: Arc<Semaphore>,
    max: usize,
}

impl QueueBytes {
    /// A bound of `max` bytes (at least 1, at most `u32::MAX`).
    pub fn new(max: usize) -> QueueBytes {
        let max = max.clamp(1, u32::MAX as usize);
        QueueBytes {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// What a batch holds of the bound: its bytes, or the whole bound for a batch larger
    /// than it (which then waits for an empty queue instead of never fitting).
    pub fn charge(&self, events: &[Event]) -> usize {
        events
            .iter()
            .map(Event::approx_bytes)
            .sum::<usize>()
            .min(self.max)
    }

    /// Gives back what [`QueueBytes::charge`] said a batch taken off the channel held.
    pub fn give_back(&self, charge: usize) {
        self.permits.add_permits(charge);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.max - self.permits.available_permits().min(self.max)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// A sink over a bounded `tokio::sync::mpsc` channel of batches.
#[derive(Clone, Debug)]
pub struct ChannelSink {
    tx: mpsc::Sender<Vec<Event>>,
    /// The longest a submit waits for room in the channel before answering `Full`.
    wait: Duration,
    retry_after: Duration,
    /// The byte bound, when the consumer gives back what it takes.
    bytes: Option<QueueBytes>,
}

impl ChannelSink {
    /// A sink that waits up to [`DEFAULT_CHANNEL_WAIT`] for room.
    pub fn new(tx: mpsc::Sender<Vec<Event>>) -> Self {
        ChannelSink {
            tx,
            wait: DEFAULT_CHANNEL_WAIT,
            retry_after: DEFAULT_RETRY_AFTER,
            bytes: None,
        }
    }

    /// Bounds the queued batches in bytes too: a submit waits (up to the same wait) for
    /// room in `bytes` as well as in the channel. The consumer must give back each batch's
    /// [`QueueBytes::charge`] once it has taken it.
    pub fn with_queue_bytes(mut self, bytes: QueueBytes) -> Self {
        self.bytes = Some(bytes);
        self
    }

    /// The longest a submit waits for room before answering `Full`.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The `retry_after` reported when the channel is full.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }
}

impl EventSink for ChannelSink {
    fn submit(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let full = SinkError::Full {
                retry_after: self.retry_after,
            };
            let started = tokio::time::Instant::now();
            let mut charge = 0;
            if let Some(bytes) = &self.bytes {
                charge = bytes.charge(&events);
                let n = u32::try_from(charge).expect("charges are at most u32::MAX");
                match tokio::time::timeout(self.wait, bytes.permits.acquire_many(n)).await {
                    Ok(Ok(permit)) => permit.forget(),
                    Ok(Err(_)) => return Err(SinkError::Closed),
                    Err(_) => return Err(full),
                }
            }
            let wait = self.wait.saturating_sub(started.elapsed());
            let result = self.tx.send_timeout(events, wait).await;
            if result.is_err() {
                if let Some(bytes) = &self.bytes {
                    bytes.give_back(charge);
                }
            }
            match result {
                Ok(()) => Ok(()),
                Err(SendTimeoutError::Timeout(_)) => Err(full),
                Err(SendTimeoutError::Closed(_)) => Err(SinkError::Closed),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toctou_schema::{AuditAction, AuditEvent};

    fn batch() -> Vec<Event> {
        vec![Event::Audit(AuditEvent {
            action: AuditAction::Delete,
            resource: "r".into(),
            version: None,
            request_id: None,
            actor: None,
            time_ns: 1,
            service: "s".into(),
            source_id: None,
            trace_id: [0; 16],
            span_id: [0; 8],
        })]
    }

    #[tokio::test(start_paused = true)]
    async fn full_after_waiting_then_closed() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = ChannelSink::new(tx)
            .with_wait(Duration::from_millis(50))
            .with_retry_after(Duration::from_secs(3));
        sink.submit(batch()).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            sink.submit(batch()).await,
            Err(SinkError::Full {
                retry_after: Duration::from_secs(3)
            })
        );
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!(rx.recv().await.unwrap(), batch());
        sink.submit(batch()).await.unwrap();
        drop(rx);
        assert_eq!(sink.submit(batch()).await, Err(SinkError::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_in_bytes_until_the_consumer_gives_them_back() {
        let one = QueueBytes::new(usize::MAX).charge(&batch());
        let bytes = QueueBytes::new(3 * one);
        let (tx, mut rx) = mpsc::channel(100);
        let sink = ChannelSink::new(tx)
            .with_wait(Duration::from_millis(50))
            .with_queue_bytes(bytes.clone());
        for _ in 0..3 {
            sink.submit(batch()).await.unwrap();
        }
        assert_eq!(bytes.held(), 3 * one);
        // Room in the channel, none in bytes.
        assert!(matches!(
            sink.submit(batch()).await,
            Err(SinkError::Full { .. })
        ));
        assert_eq!(bytes.held(), 3 * one);
        let taken = rx.recv().await.unwrap();
        bytes.give_back(bytes.charge(&taken));
        sink.submit(batch()).await.unwrap();
        assert_eq!(bytes.held(), 3 * one);
        // A batch larger than the whole bound is charged the bound: it passes once the
        // queue is empty.
        while let Ok(b) = rx.try_recv() {
            bytes.give_back(bytes.charge(&b));
        }
        assert_eq!(bytes.held(), 0);
        let big: Vec<Event> = (0..10).flat_map(|_| batch()).collect();
        assert_eq!(bytes.charge(&big), 3 * one);
        sink.submit(big).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_the_channel_refuses_gives_its_bytes_back() {
        let bytes = QueueBytes::new(1 << 20);
        let (tx, _rx) = mpsc::channel(1);
        let sink = ChannelSink::new(tx)
            .with_wait(Duration::from_millis(50))
            .with_queue_bytes(bytes.clone());
        sink.submit(batch()).await.unwrap();
        let one = bytes.held();
        assert!(one > 0);
        assert!(matches!(
            sink.submit(batch()).await,
            Err(SinkError::Full { .. })
        ));
        assert_eq!(bytes.held(), one);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_room_within_the_limit() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = ChannelSink::new(tx).with_wait(Duration::from_millis(100));
        sink.submit(batch()).await.unwrap();
        let drain = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            rx.recv().await.unwrap();
            rx
        });
        sink.submit(batch()).await.unwrap();
        let mut rx = drain.await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), batch());
    }
}
