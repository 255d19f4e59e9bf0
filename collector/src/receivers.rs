//! The state every receiver shares ([`Receivers`]) and the steps common to HTTP and gRPC:
//! take a slot, decode (HTTP: off the reactor when the work is large; gRPC decodes in its
//! codec), hand the events to the sink, count what happened.
//!
//! The transports are thin layers over this: they turn wire bytes into events or a body,
//! and turn the outcome into their own responses.

use crate::config::ReceiverConfig;
use crate::debezium::DebeziumHttp;
use crate::decoded::{rejection_summary, Decoded, Signal, MAX_LISTED_ERRORS};
use crate::error::{IngestError, SinkError};
use crate::metrics::{EventPhase, Metrics};
use crate::sink::{EventSink, DEFAULT_RETRY_AFTER};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Above this much input, decoding can take longer than ~0.5 ms and moves to the blocking
/// pool so it does not stall other connections on the reactor.
pub(crate) const BLOCKING_THRESHOLD: usize = 64 * 1024;

/// Cloneable handle to the sink, the configuration and the metrics; one per process,
/// shared by the HTTP and gRPC servers.
#[derive(Clone)]
pub struct Receivers {
    inner: Arc<Inner>,
}

struct Inner {
    sink: Arc<dyn EventSink>,
    config: ReceiverConfig,
    metrics: Arc<Metrics>,
    /// Bounds the requests that hold a body or decoded events at once: the memory bound of
    /// the receivers. Taken before the body is read, so excess load waits at the door.
    slots: Arc<Semaphore>,
    /// Bytes of bodies held while being read, one permit a byte (`max_receive_bytes`).
    budget: Arc<Semaphore>,
    /// `POST /v1/cdc/debezium`'s decoder (its mapping set by [`Receivers::with_debezium`]).
    debezium: Arc<DebeziumHttp>,
}

/// One connection's share of the receive budget: what the bodies of all its requests may
/// hold together (`max_connection_receive_bytes`). An HTTP/2 connection carries up to
/// `--max-concurrent-streams` calls at once; without a share one client whose messages
/// never end (each announcing 19 MB, so each holding 19 MB of the budget) took all of it,
/// and every other client waited behind it. The listeners put one in each connection's
/// requests (an HTTP extension; for tonic, the connection's `ConnectInfo`); it is sized
/// by the first request that uses it, from the receivers' configuration.
#[derive(Clone, Debug, Default)]
pub struct ConnShare(Arc<std::sync::OnceLock<Arc<Semaphore>>>);

impl ConnShare {
    fn semaphore(&self, bytes: usize) -> Arc<Semaphore> {
        self.0
            .get_or_init(|| Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
            .clone()
    }
}

/// The bytes of the receive budget one request holds while its body is read (and of its
/// connection's share); given back when dropped.
pub(crate) struct Held {
    budget: Arc<Semaphore>,
    /// The connection's share, when the request came with one.
    share: Option<Arc<Semaphore>>,
    wait: std::time::Duration,
    permit: Option<OwnedSemaphorePermit>,
    share_permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl Held {
    /// A share of a budget of its own, for tests of the readers.
    #[cfg(test)]
    pub(crate) fn with_budget(bytes: usize, wait: std::time::Duration) -> Held {
        Held {
            budget: Arc::new(Semaphore::new(bytes)),
            share: None,
            wait,
            permit: None,
            share_permit: None,
            bytes: 0,
        }
    }

    /// Holds at least `bytes` in all, waiting up to `submit_timeout` for the rest.
    pub(crate) async fn cover(&mut self, bytes: usize) -> Result<(), IngestError> {
        if bytes <= self.bytes {
            return Ok(());
        }
        let more = u32::try_from(bytes - self.bytes).unwrap_or(u32::MAX);
        let started = tokio::time::Instant::now();
        // The connection's share first: a client past its share waits on its own
        // requests, not in the line everyone else waits in for the budget.
        let share_permit = match &self.share {
            Some(share) => Some(
                take(
                    share,
                    more,
                    self.wait,
                    "this connection's requests hold its share of the receive buffer \
                     (--max-connection-receive-bytes) while their bodies are read",
                )
                .await?,
            ),
            None => None,
        };
        let wait = self.wait.saturating_sub(started.elapsed());
        let permit = take(
            &self.budget,
            more,
            wait,
            "the receive buffer is full: other requests' bodies hold \
             --max-receive-bytes while being read",
        )
        .await?;
        merge(&mut self.permit, permit);
        if let Some(p) = share_permit {
            merge(&mut self.share_permit, p);
        }
        self.bytes += more as usize;
        Ok(())
    }
}

/// `n` permits of `semaphore`, waiting up to `wait`; past it the client is pushed back,
/// told `what` is full.
async fn take(
    semaphore: &Arc<Semaphore>,
    n: u32,
    wait: std::time::Duration,
    what: &str,
) -> Result<OwnedSemaphorePermit, IngestError> {
    if let Ok(permit) = semaphore.clone().try_acquire_many_owned(n) {
        return Ok(permit);
    }
    match tokio::time::timeout(wait, semaphore.clone().acquire_many_owned(n)).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) => Err(SinkError::Closed.into()),
        Err(_) => Err(IngestError::Busy {
            what: what.into(),
            retry_after: DEFAULT_RETRY_AFTER,
        }),
    }
}

fn merge(held: &mut Option<OwnedSemaphorePermit>, more: OwnedSemaphorePermit) {
    match held {
        Some(held) => held.merge(more),
        None => *held = Some(more),
    }
}

/// What an accepted request comes to, for the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Receipt {
    pub accepted: usize,
    pub ignored: u64,
    pub rejected: usize,
    /// The partial-success `error_message` (empty when nothing was rejected).
    pub message: String,
    /// The rejection messages, the first [`MAX_LISTED_ERRORS`], for receivers that list them.
    pub errors: Vec<String>,
}

impl Receivers {
    /// Building does not validate (STYLE: `validate()` apart from building): call
    /// [`ReceiverConfig::validate`] first. An unvalidated zero limit refuses every request
    /// rather than misbehaving.
    pub fn new(sink: Arc<dyn EventSink>, config: ReceiverConfig) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_concurrent_requests));
        let budget = Arc::new(Semaphore::new(
            config.max_receive_bytes.min(Semaphore::MAX_PERMITS),
        ));
        Receivers {
            inner: Arc::new(Inner {
                sink,
                config,
                metrics: Arc::new(Metrics::new()),
                slots,
                budget,
                debezium: Arc::default(),
            }),
        }
    }

    /// The same receivers with Debezium records mapped by `mapping` (`--cdc-mapping`,
    /// `--cdc-version-column`); call before cloning.
    pub fn with_debezium(mut self, mapping: toctou_cdc::Mapping) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("with_debezium before any clone");
        inner.debezium = Arc::new(DebeziumHttp::new(mapping));
        self
    }

    pub(crate) fn debezium(&self) -> &Arc<DebeziumHttp> {
        &self.inner.debezium
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn config(&self) -> &ReceiverConfig {
        &self.inner.config
    }

    /// Counts a refused request under its reason. Each transport calls this once per
    /// failure, where it builds the error response.
    pub(crate) fn count_failure(&self, err: &IngestError) {
        self.inner.metrics.add_rejected(err.reason(), 1);
    }

    /// A request's share of the receive budget, empty until its body comes in.
    /// A request's hold on the receive budget, and on its connection's share when it came
    /// with one (see [`ConnShare`]).
    pub(crate) fn budget(&self, connection: Option<&ConnShare>) -> Held {
        let config = &self.inner.config;
        let share_bytes = config
            .max_connection_receive_bytes
            .min(config.max_receive_bytes);
        Held {
            budget: self.inner.budget.clone(),
            share: connection.map(|c| c.semaphore(share_bytes)),
            wait: config.submit_timeout,
            permit: None,
            share_permit: None,
            bytes: 0,
        }
    }

    /// Waits (up to `submit_timeout`) for one of the request slots; when none frees up the
    /// client is pushed back, told that the slots are what is full.
    pub(crate) async fn slot(&self) -> Result<OwnedSemaphorePermit, IngestError> {
        let acquire = self.inner.slots.clone().acquire_owned();
        match tokio::time::timeout(self.inner.config.submit_timeout, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a sink that went away.
            Ok(Err(_)) => Err(SinkError::Closed.into()),
            Err(_) => Err(IngestError::Busy {
                what: format!(
                    "all {} request slots are busy decoding or waiting for room downstream \
                     (--max-concurrent-requests)",
                    self.inner.config.max_concurrent_requests
                ),
                retry_after: DEFAULT_RETRY_AFTER,
            }),
        }
    }

    /// Runs `decode` inline, or on the blocking pool when `heavy`.
    pub(crate) async fn decode<F>(&self, heavy: bool, decode: F) -> Result<Decoded, IngestError>
    where
        F: FnOnce() -> Result<Decoded, IngestError> + Send + 'static,
    {
        if !heavy {
            return decode();
        }
        match tokio::task::spawn_blocking(decode).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => Err(SinkError::Closed.into()),
        }
    }

    /// Hands the events to the sink (waiting at most `submit_timeout`) and counts the
    /// request's items once the sink took them; a pushed-back request counts nothing but
    /// its rejection, since the client will send it again.
    pub(crate) async fn deliver(
        &self,
        signal: Signal,
        decoded: Decoded,
    ) -> Result<Receipt, IngestError> {
        let rejected_total = decoded.rejected_total();
        let Decoded {
            events,
            ignored,
            rejected,
            rejected_unlisted,
        } = decoded;
        let mut phases = [0u64; EventPhase::ALL.len()];
        for e in &events {
            phases[EventPhase::of(e) as usize] += 1;
        }
        let accepted = events.len();
        let items = accepted as u64 + rejected_total + ignored.total();
        if !events.is_empty() {
            let submit = self.inner.sink.submit(events);
            match tokio::time::timeout(self.inner.config.submit_timeout, submit).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(SinkError::Full {
                        retry_after: DEFAULT_RETRY_AFTER,
                    }
                    .into())
                }
            }
        }
        let m = &self.inner.metrics;
        for phase in EventPhase::ALL {
            m.add_events(signal, phase, phases[phase as usize]);
        }
        m.record_items(&ignored, &rejected, &rejected_unlisted);
        let noun = match signal {
            Signal::Traces => "spans",
            Signal::Logs => "log records",
            Signal::K8sAudit | Signal::Cdc => "audit events",
        };
        Ok(Receipt {
            accepted,
            ignored: ignored.total(),
            rejected: rejected_total as usize,
            message: rejection_summary(&rejected, rejected_total, items, noun),
            errors: rejected
                .into_iter()
                .take(MAX_LISTED_ERRORS)
                .map(|r| r.message)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoded::{IgnoreReason, RejectReason, Rejection};
    use crate::sink::ChannelSink;
    use std::time::Duration;
    use toctou_schema::{AuditAction, Event};
    use tokio::sync::mpsc;

    fn audit() -> Event {
        toctou_schema::testing::audit_at(AuditAction::Update, "r", 1).ev()
    }

    fn receivers(capacity: usize) -> (Receivers, mpsc::Receiver<Vec<Event>>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sink = Arc::new(ChannelSink::new(tx).with_wait(Duration::from_millis(10)));
        let config = ReceiverConfig {
            submit_timeout: Duration::from_millis(100),
            max_concurrent_requests: 1,
            ..Default::default()
        };
        (Receivers::new(sink, config), rx)
    }

    #[tokio::test]
    async fn counts_only_what_the_sink_took() {
        let (r, mut rx) = receivers(1);
        let mut d = Decoded::default();
        d.events.push(audit());
        d.ignored.add(IgnoreReason::NoAction);
        d.rejected.push(Rejection::new(
            RejectReason::MissingResource,
            "log record x: missing",
        ));
        let receipt = r.deliver(Signal::Logs, d.clone()).await.unwrap();
        assert_eq!(
            receipt,
            Receipt {
                accepted: 1,
                ignored: 1,
                rejected: 1,
                message: "rejected 1 of 3 log records: log record x: missing".into(),
                errors: vec!["log record x: missing".into()],
            }
        );
        let m = r.metrics();
        assert_eq!(m.events(Signal::Logs, EventPhase::Audit), 1);
        assert_eq!(m.ignored(IgnoreReason::NoAction), 1);
        assert_eq!(m.rejected(RejectReason::MissingResource), 1);

        // The channel is full now: pushed back, nothing more counted.
        let err = r.deliver(Signal::Logs, d.clone()).await.unwrap_err();
        assert_eq!(err.reason(), RejectReason::Backpressure);
        assert_eq!(m.events(Signal::Logs, EventPhase::Audit), 1);
        assert_eq!(m.ignored(IgnoreReason::NoAction), 1);

        assert_eq!(rx.recv().await.unwrap(), vec![audit()]);
        drop(rx);
        let err = r.deliver(Signal::Logs, d).await.unwrap_err();
        assert_eq!(err.reason(), RejectReason::SinkClosed);
    }

    #[tokio::test]
    async fn nothing_to_submit_never_touches_the_sink() {
        let (r, rx) = receivers(1);
        drop(rx);
        let mut d = Decoded::default();
        d.ignored.add(IgnoreReason::NoPhase);
        let receipt = r.deliver(Signal::Traces, d).await.unwrap();
        assert_eq!((receipt.accepted, receipt.ignored), (0, 1));
        assert_eq!(receipt.message, "");
    }

    #[tokio::test]
    async fn slots_push_back_when_all_are_taken() {
        let (r, _rx) = receivers(1);
        let held = r.slot().await.unwrap();
        let err = r.slot().await.unwrap_err();
        assert_eq!(err.reason(), RejectReason::Backpressure);
        drop(held);
        let _again = r.slot().await.unwrap();
    }

    #[tokio::test]
    async fn heavy_decodes_run_on_the_blocking_pool() {
        let (r, _rx) = receivers(1);
        // The test runtime is single-threaded: any other thread is the blocking pool.
        let reactor = std::thread::current().id();
        let d = r
            .decode(true, move || {
                assert_ne!(std::thread::current().id(), reactor);
                Ok(Decoded::default())
            })
            .await
            .unwrap();
        assert!(d.events.is_empty());
        r.decode(false, move || {
            assert_eq!(std::thread::current().id(), reactor);
            Ok(Decoded::default())
        })
        .await
        .unwrap();
        let err = r
            .decode(false, || Err(IngestError::UnsupportedEncoding("br".into())))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), RejectReason::BadEncoding);
    }
}
