//! Connections on every listener (the receivers', the API's): how many may be open at once,
//! how long a client may take to send its headers, how many HTTP/2 streams one connection
//! may open, and the counters that say when a limit refused someone, with the collector
//! that serves them on /metrics.
//!
//! Without these a client needs no token to hurt the process: connections that never
//! finish their headers hold a file descriptor each until the fd table is full (then
//! `/healthz` and every port stop answering), and one HTTP/2 connection can open streams
//! without end. Each listener has its own cap, well below the process's fd limit, so a
//! flood of one port leaves the others (the API and `/healthz` above all) reachable.
//! A connection over the cap is answered `503` (readable by HTTP/1 clients), closed at
//! once, and counted.

use crate::receivers::ConnShare;
use axum::serve::Listener;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections open at once per listener: three listeners' worth stays under the common
/// hard fd limit of 65,536 with room to spare (toctou raises its soft limit to the hard one).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// How long a client may take to send a request's headers (HTTP/1; hyper's own default,
/// which `axum::serve` never applied: it runs hyper without a timer).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams one HTTP/2 connection may have open at once (gRPC exporters use a handful;
/// tonic advertises no limit of its own).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
/// How long a gRPC call may take as a whole, its message included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings: a peer that does not answer one within this is gone.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// The connection limits of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once; more are refused.
    pub max_connections: usize,
    /// Time to receive a request's headers (HTTP/1).
    pub header_read_timeout: Duration,
    /// HTTP/2 streams open at once per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Time for a whole gRPC call, message included.
    pub request_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The listeners of a process, as the connection metrics name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    OtlpGrpc,
    OtlpHttp,
    Api,
}

impl ListenerKind {
    const ALL: [ListenerKind; 3] = [
        ListenerKind::OtlpGrpc,
        ListenerKind::OtlpHttp,
        ListenerKind::Api,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::OtlpGrpc => "otlp_grpc",
            ListenerKind::OtlpHttp => "otlp_http",
            ListenerKind::Api => "api",
        }
    }
}

/// Open and refused connections per listener kind; process-wide, like the ports.
struct Counts {
    open: AtomicU64,
    refused: AtomicU64,
    /// Requests refused for their `Host` (the binary's allow-list against DNS rebinding).
    host_refused: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Counts = Counts {
    open: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    host_refused: AtomicU64::new(0),
};
static COUNTS: [Counts; 3] = [ZERO; 3];

toctou_schema::families! {
    /// `toctou_connections_open`, `toctou_connections_refused_total` and
    /// `toctou_host_refused_total`, by listener.
    static FAMILIES: Families {
        open = gauge("toctou_connections_open", "Connections open now, per listener.", &["listener"]);
        refused = counter("toctou_connections_refused_total", "Connections closed at once because the listener had --max-connections open.", &["listener"]);
        host_refused = counter("toctou_host_refused_total", "Requests answered 403 because their Host is not a name the listener answers to (--allowed-hosts; DNS rebinding).", &["listener"]);
    }
}

/// Reads the process-wide connection counts into a node's registry.
pub struct ConnectionsCollector;

impl Collector for ConnectionsCollector {
    fn desc(&self) -> Vec<&Desc> {
        FAMILIES.descs()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = &*FAMILIES;
        let per_listener = |pick: fn(&Counts) -> &AtomicU64| {
            ListenerKind::ALL.map(|l| {
                let n = pick(&COUNTS[l as usize]).load(Ordering::Relaxed);
                ([l.as_str()], n as f64)
            })
        };
        vec![
            f.open.values(per_listener(|c| &c.open)),
            f.refused.values(per_listener(|c| &c.refused)),
            f.host_refused.values(per_listener(|c| &c.host_refused)),
        ]
    }
}

/// Counts a request refused on `listener` for its `Host`.
pub fn count_host_refused(listener: ListenerKind) {
    COUNTS[listener as usize]
        .host_refused
        .fetch_add(1, Ordering::Relaxed);
}

/// Connections refused so far on `listener`.
pub fn refused(listener: ListenerKind) -> u64 {
    COUNTS[listener as usize].refused.load(Ordering::Relaxed)
}

/// The door of one listener: a connection gets in while fewer than the cap are open.
#[derive(Clone)]
pub(crate) struct Gate {
    slots: Arc<Semaphore>,
    kind: ListenerKind,
}

/// A connection's place behind the gate; counted open until dropped.
pub(crate) struct Admitted {
    _slot: OwnedSemaphorePermit,
    kind: ListenerKind,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        COUNTS[self.kind as usize]
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    pub(crate) fn new(kind: ListenerKind, limits: &ConnLimits) -> Gate {
        Gate {
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            kind,
        }
    }

    /// A place for one more connection, or `None` (counted) when the listener is full.
    pub(crate) fn admit(&self) -> Option<Admitted> {
        let counts = &COUNTS[self.kind as usize];
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                counts.open.fetch_add(1, Ordering::Relaxed);
                Some(Admitted {
                    _slot: slot,
                    kind: self.kind,
                })
            }
            Err(_) => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// What a connection over the cap reads before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\
Content-Type: text/plain\r\nRetry-After: 1\r\nContent-Length: 51\r\n\r\n\
too many connections open on this listener, retry\r\n";

/// Answers a connection over the cap and closes it, in a task of its own and within a
/// second, so a client that does not read cannot hold the accept loop.
fn refuse<IO: AsyncWrite + Unpin + Send + 'static>(mut io: IO, kind: ListenerKind) {
    tracing::debug!(
        listener = kind.as_str(),
        "connection refused: too many open"
    );
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = io.write_all(REFUSAL).await;
            let _ = io.shutdown().await;
        })
        .await;
    });
}

/// Serves `router` on `listener` (HTTP/1 and HTTP/2) until `shutdown`, then lets the open
/// connections finish. Unlike `axum::serve`, hyper runs with a timer, so the header read
/// timeout and HTTP/2 keep-alive apply, and connections are capped.
pub async fn serve_router<L>(
    mut listener: L,
    router: axum::Router,
    kind: ListenerKind,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener,
{
    let gate = Gate::new(kind, &limits);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let Some(io) = gate.admit_io(io, limits.header_read_timeout) else {
            continue;
        };
        // Its requests carry the connection's share of the receive budget.
        let share = io.share.clone();
        // A wrapper around the router, not `Router::layer`, which would rebuild every route.
        let service =
            TowerToHyperService::new(tower::Layer::layer(&axum::Extension(share), router.clone()));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::trace!(listener = kind.as_str(), error = %err, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

impl Gate {
    /// `io` with its place behind the gate and a deadline for its first byte, or `None`
    /// when the listener is full (the connection is then refused).
    fn admit_io<IO>(&self, io: IO, first_byte: Duration) -> Option<Gated<IO>>
    where
        IO: AsyncWrite + Unpin + Send + 'static,
    {
        match self.admit() {
            Some(admitted) => Some(Gated {
                io,
                _admitted: admitted,
                share: ConnShare::default(),
                opening: Some(Box::pin(tokio::time::sleep(first_byte))),
                to_open: OPENING,
            }),
            None => {
                refuse(io, self.kind);
                None
            }
        }
    }
}

/// The connections of a tonic server behind `gate`: each admitted one carries its place
/// until it closes, and must send its first byte within `first_byte`; the others are
/// refused and skipped.
pub(crate) fn gated<S, IO, IE>(
    incoming: S,
    gate: Gate,
    first_byte: Duration,
) -> impl futures::Stream<Item = Result<Gated<IO>, IE>>
where
    S: futures::Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use futures::StreamExt;
    incoming.filter_map(move |conn| {
        let admitted = conn.map(|io| gate.admit_io(io, first_byte)).transpose();
        std::future::ready(admitted)
    })
}

/// The bytes a connection opens with before its deadline is lifted: the HTTP/2 preface
/// and a frame header (an HTTP/1 request line and headers are longer).
const OPENING: usize = 24 + 9;

/// A connection admitted by a [`Gate`]. Until it has sent [`OPENING`] bytes it runs
/// against the header read timeout: hyper's own starts only once HTTP/1 is recognised,
/// and HTTP/2 has none, so a connection that stops in its preface would otherwise hold
/// its place for good.
pub(crate) struct Gated<IO> {
    io: IO,
    _admitted: Admitted,
    /// Its requests' share of the receive budget.
    share: ConnShare,
    opening: Option<Pin<Box<tokio::time::Sleep>>>,
    to_open: usize,
}

/// What tonic puts in each request of a gated connection: the connection's share of the
/// receive budget (nothing here reads the transport's own connection info).
impl<IO> tonic::transport::server::Connected for Gated<IO> {
    type ConnectInfo = ConnShare;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.share.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Gated<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = &mut this.opening {
            match read {
                Poll::Ready(_) => {
                    let got = buf.filled().len() - before;
                    this.to_open = this.to_open.saturating_sub(got);
                    if this.to_open == 0 || got == 0 {
                        this.opening = None;
                    }
                }
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "nothing received within the header read timeout",
                        )));
                    }
                }
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Gated<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_up_to_the_cap_and_counts_the_rest() {
        let limits = ConnLimits {
            max_connections: 2,
            ..Default::default()
        };
        let gate = Gate::new(ListenerKind::Api, &limits);
        let before = refused(ListenerKind::Api);
        let a = gate.admit().unwrap();
        let _b = gate.admit().unwrap();
        assert!(gate.admit().is_none());
        assert_eq!(refused(ListenerKind::Api), before + 1);
        drop(a);
        assert!(gate.admit().is_some());
        let out = toctou_schema::metrics::encode_one(ConnectionsCollector);
        assert!(
            out.contains("toctou_connections_refused_total{listener=\"api\"}"),
            "{out}"
        );
    }

    #[test]
    fn the_refusal_declares_its_length() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{text}"
        );
    }
}
