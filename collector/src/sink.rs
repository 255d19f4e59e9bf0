//! Where decoded events go: the [`EventSink`] trait the receivers hand batches to, and
//! [`ChannelSink`], the bounded channel into the in-process correlator.
//!
//! The receivers answer a client only after the sink accepted its batch (end-to-end
//! acknowledgement), so a sink that pushes back makes the client retry rather than letting
//! events pile up in memory.

use crate::error::SinkError;
use futures::future::BoxFuture;
use std::time::Duration;
use toctou_schema::Event;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;

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

/// A sink over a bounded `tokio::sync::mpsc` channel of batches.
#[derive(Clone, Debug)]
pub struct ChannelSink {
    tx: mpsc::Sender<Vec<Event>>,
    /// The longest a submit waits for room in the channel before answering `Full`.
    wait: Duration,
    retry_after: Duration,
}

impl ChannelSink {
    /// A sink that waits up to [`DEFAULT_CHANNEL_WAIT`] for room.
    pub fn new(tx: mpsc::Sender<Vec<Event>>) -> Self {
        ChannelSink {
            tx,
            wait: DEFAULT_CHANNEL_WAIT,
            retry_after: DEFAULT_RETRY_AFTER,
        }
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
            match self.tx.send_timeout(events, self.wait).await {
                Ok(()) => Ok(()),
                Err(SendTimeoutError::Timeout(_)) => Err(SinkError::Full {
                    retry_after: self.retry_after,
                }),
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
