//! The batched ClickHouse sink: findings, events and inference's risks in RowBinary
//! inserts, at least once.
//!
//! One thread owns the buffers and the client. The correlator hands it rows through a
//! bounded channel; the thread flushes a table when it holds `max_rows` rows or its oldest
//! row is `max_age` old (ClickHouse's guidance: thousands of rows, about one insert per
//! second per table). A failed insert is retried with backoff and jitter when the error
//! is transient (connection refused, timeouts, too many parts...) and given up, loudly,
//! when retrying cannot help (unknown table or column, a type mismatch). While it retries
//! it reads nothing, so the channel fills, the correlator blocks on it, the receivers'
//! queue fills and ingest pushes back (HTTP 503, gRPC UNAVAILABLE): memory stays bounded
//! and nothing is dropped. Storage is idempotent (ReplacingMergeTree on deterministic keys),
//! so a batch retried after an ambiguous failure collapses to one row per finding (per risk
//! and write, for risks).

pub mod metrics;

use super::rows::{event_columns, write_event, FindingRow, RiskRow};
use bytes::Bytes;
use clickhouse::Client;
pub use metrics::{BatchResult, SinkCollector, SinkMetrics, Table};
use rand::Rng;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use toctou_schema::{Event, Finding};

/// Rows per insert at most.
pub const DEFAULT_MAX_ROWS: usize = 10_000;
/// Oldest buffered row's age that triggers an insert.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(1);
/// Batches waiting in the channel; with the buffers, the sink's whole memory.
pub const DEFAULT_CHANNEL_BATCHES: usize = 256;
/// First retry delay; doubled each attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At shutdown, how long the remaining rows may keep being retried.
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
pub struct SinkConfig {
    pub max_rows: usize,
    pub max_age: Duration,
    pub channel_batches: usize,
    pub shutdown_deadline: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            max_rows: DEFAULT_MAX_ROWS,
            max_age: DEFAULT_MAX_AGE,
            channel_batches: DEFAULT_CHANNEL_BATCHES,
            shutdown_deadline: DEFAULT_SHUTDOWN_DEADLINE,
        }
    }
}

enum Batch {
    Events(EncodedEvents),
    Findings(Vec<FindingRow>),
    Risks(Vec<RiskRow>),
    /// Write everything handed over before this now, then say whether all of it was written.
    Barrier(tokio::sync::oneshot::Sender<bool>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Events(rows) => rows.len(),
            Batch::Findings(rows) => rows.len(),
            Batch::Risks(rows) => rows.len(),
            Batch::Barrier(_) => 0,
        }
    }
}

/// Rows of one table waiting for their insert.
trait Rows: Default {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn append(&mut self, more: Self);
    /// One insert of all the rows; may be called again with the same rows (a retry).
    async fn insert(&self, client: &Client, table: &str) -> clickhouse::error::Result<()>;
}

/// Rows made as structs (findings, risks), serialized by the client.
impl<R: clickhouse::RowOwned + clickhouse::RowWrite> Rows for Vec<R> {
    fn len(&self) -> usize {
        self.len()
    }

    fn append(&mut self, more: Self) {
        self.extend(more);
    }

    async fn insert(&self, client: &Client, table: &str) -> clickhouse::error::Result<()> {
        let mut insert = client.insert::<R>(table).await?;
        for row in self {
            insert.write(row).await?;
        }
        insert.end().await
    }
}

/// Events already in RowBinary, written on the correlator's thread by
/// [`write_event`]: no row structs, and the sink thread only hands the bytes on.
#[derive(Default)]
struct EncodedEvents {
    /// One chunk per batch handed over; sent as they are (cloning `Bytes` copies nothing).
    chunks: Vec<Bytes>,
    rows: usize,
}

impl Rows for EncodedEvents {
    fn len(&self) -> usize {
        self.rows
    }

    fn append(&mut self, more: Self) {
        self.chunks.extend(more.chunks);
        self.rows += more.rows;
    }

    async fn insert(&self, client: &Client, table: &str) -> clickhouse::error::Result<()> {
        let sql = format!("INSERT INTO {table}({}) FORMAT RowBinary", event_columns());
        let mut insert = client.insert_formatted_with(sql);
        for chunk in &self.chunks {
            insert.send(chunk.clone()).await?;
        }
        insert.end().await
    }
}

/// Rows gathered on the correlator's side between hand-overs to the sink thread.
///
/// Each hand-over is a channel send that wakes the sink thread. Handing over every request's
/// events and every publish's findings as they came, at 10k spans/s over 64 gRPC connections
/// (a request every ~25 ms) the sink thread woke 109 times a second and preempted the
/// correlator 105 times; gathered until [`HANDOVER_ROWS`] rows or the correlator's next tick
/// (100 ms), 68 and 74, and the process's CPU per million spans fell ~3% (bench/HISTORY.md,
/// issue 7). Inserts are made once a second anyway, so rows reach ClickHouse at most a tick
/// later.
#[derive(Default)]
pub struct Handover {
    events: Vec<u8>,
    event_rows: usize,
    findings: Vec<FindingRow>,
    risks: Vec<RiskRow>,
}

/// Rows gathered before a hand-over is due whatever the tick: about two SDK batches, so the
/// channel's bound in batches stays a bound of the same order in rows.
pub const HANDOVER_ROWS: usize = 1024;

impl Handover {
    /// Encodes the events now, on the caller's thread, in RowBinary by [`write_event`]: no
    /// row structs, and the sink thread only hands the bytes on.
    pub fn add_events(&mut self, events: &[Event]) {
        // ~250 bytes an event with the loadgen's mix; one allocation for most batches.
        self.events.reserve(events.len() * 256);
        for e in events {
            if !matches!(e, Event::Db(_)) {
                write_event(e, &mut self.events);
                self.event_rows += 1;
            }
        }
    }

    pub fn add_findings(&mut self, findings: &[Finding]) {
        self.findings.extend(findings.iter().map(FindingRow::from));
    }

    /// Rows of inference's risks, made by their writer (it alone knows the counts it wrote
    /// before: see [`RiskRow`]).
    pub fn add_risks(&mut self, risks: Vec<RiskRow>) {
        self.risks.extend(risks);
    }

    /// Rows gathered and not yet handed over.
    pub fn rows(&self) -> usize {
        self.event_rows + self.findings.len() + self.risks.len()
    }

    /// Whether enough rows wait that they should go now rather than at the next tick.
    pub fn due(&self) -> bool {
        self.rows() >= HANDOVER_ROWS
    }
}

/// What the sink did, returned when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub findings_written: u64,
    pub events_written: u64,
    pub risks_written: u64,
    /// Rows given up on (a permanent error, or still failing at the shutdown deadline).
    pub rows_failed: u64,
    pub retries: u64,
}

/// The correlator's end of the sink.
pub struct Sink {
    tx: SyncSender<Batch>,
    thread: JoinHandle<SinkStats>,
    metrics: Arc<SinkMetrics>,
    /// Batches in the channel, and its capacity: a caller that must not block can see the
    /// push-back coming ([`Sink::congested`]) instead of waiting in `send`.
    in_channel: Arc<AtomicUsize>,
    capacity: usize,
    config: SinkConfig,
    /// Set by `close`/`close_by` to the instant retries give up: from then on, every retry
    /// (also one already under way, and those of batches still in the channel) stops there.
    give_up_at: Arc<OnceLock<Instant>>,
}

impl Sink {
    pub fn spawn(client: Client, config: SinkConfig) -> std::io::Result<Sink> {
        let capacity = config.channel_batches.max(1);
        let (tx, rx) = sync_channel(capacity);
        let metrics = Arc::new(SinkMetrics::default());
        let in_channel = Arc::new(AtomicUsize::new(0));
        let give_up_at = Arc::new(OnceLock::new());
        let thread = {
            let metrics = metrics.clone();
            let in_channel = in_channel.clone();
            let give_up_at = give_up_at.clone();
            std::thread::Builder::new()
                .name("toctou-clickhouse".into())
                .spawn(move || write_loop(client, config, rx, &metrics, &in_channel, &give_up_at))?
        };
        Ok(Sink {
            tx,
            thread,
            metrics,
            in_channel,
            capacity,
            give_up_at,
            config,
        })
    }

    /// The sink's counters, for `/metrics`; they outlive the sink.
    pub fn metrics(&self) -> Arc<SinkMetrics> {
        self.metrics.clone()
    }

    /// Blocks while the sink is full: that is the push-back. Returns false once the sink
    /// thread has ended (it logged why). One batch per call: the correlators gather rows in
    /// a [`Handover`] instead; this and [`Sink::findings`] serve the benchmark
    /// (examples/clickhouse_bench.rs) and the tests.
    pub fn events(&self, events: &[Event]) -> bool {
        let mut handover = Handover::default();
        handover.add_events(events);
        self.hand_over(&mut handover)
    }

    /// Hands over everything `handover` gathered, one batch per table (none when empty);
    /// blocks, and returns, as [`Sink::events`].
    pub fn hand_over(&self, handover: &mut Handover) -> bool {
        let mut sent = true;
        if handover.event_rows > 0 {
            let rows = std::mem::take(&mut handover.event_rows);
            let bytes = std::mem::take(&mut handover.events);
            sent &= self.send(Batch::Events(EncodedEvents {
                chunks: vec![Bytes::from(bytes)],
                rows,
            }));
        }
        if !handover.findings.is_empty() {
            sent &= self.send(Batch::Findings(std::mem::take(&mut handover.findings)));
        }
        if !handover.risks.is_empty() {
            sent &= self.send(Batch::Risks(std::mem::take(&mut handover.risks)));
        }
        sent
    }

    /// As [`Sink::events`], for findings.
    pub fn findings(&self, findings: &[Finding]) -> bool {
        let mut handover = Handover::default();
        handover.add_findings(findings);
        self.hand_over(&mut handover)
    }

    /// As [`Sink::events`], for rows of risks.
    pub fn risks(&self, risks: Vec<RiskRow>) -> bool {
        let mut handover = Handover::default();
        handover.add_risks(risks);
        self.hand_over(&mut handover)
    }

    /// Writes everything handed over before this call now, without waiting for the batch age,
    /// and resolves to whether all of it was written (false: some rows were given up on, or
    /// the sink has ended). What a caller that must know its rows are stored waits for: the
    /// change-stream reader confirms its position only then.
    pub fn barrier(&self) -> tokio::sync::oneshot::Receiver<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A closed sink drops the sender: the receiver then resolves to an error.
        self.send(Batch::Barrier(tx));
        rx
    }

    /// Whether the channel is at least three quarters full. The Kafka poll loop must keep
    /// polling to stay in its consumer group, so it pauses its partitions at this point
    /// rather than block in a send while ClickHouse is down.
    pub fn congested(&self) -> bool {
        self.in_channel.load(Relaxed) * 4 >= self.capacity * 3
    }

    /// Whether the channel is down to a quarter full: input may resume (the gap between
    /// this and [`Sink::congested`] keeps a paused consumer from flapping).
    pub fn relieved(&self) -> bool {
        self.in_channel.load(Relaxed) * 4 <= self.capacity
    }

    fn send(&self, batch: Batch) -> bool {
        let rows = batch.len();
        // Counted before the send, so the sink thread never subtracts rows not yet added.
        self.metrics.queued(rows);
        self.in_channel.fetch_add(1, Relaxed);
        let sent = self.tx.send(batch).is_ok();
        if !sent {
            self.metrics.dequeued(rows);
            self.in_channel.fetch_sub(1, Relaxed);
        }
        sent
    }

    /// Flushes what is buffered (retrying up to the configured shutdown deadline from now)
    /// and ends the thread.
    pub fn close(self) -> SinkStats {
        let deadline = Instant::now() + self.config.shutdown_deadline;
        self.close_by(deadline)
    }

    /// Flushes what is buffered, retrying transient errors until `deadline` at the latest
    /// (rows still failing then are given up and counted in `rows_failed`), and ends the
    /// thread. A process with a shutdown deadline of its own passes it here, so that the
    /// sink gives up in time to say so instead of being cut off mid-retry.
    pub fn close_by(self, deadline: Instant) -> SinkStats {
        let _ = self.give_up_at.set(deadline);
        drop(self.tx);
        self.thread.join().unwrap_or_default()
    }
}

/// Whether an insert that failed this way may succeed if sent again.
pub fn retryable(err: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error;
    match err {
        Error::Network(_) | Error::TimedOut => true,
        Error::BadResponse(msg) => match error_code(msg) {
            Some(code) => RETRYABLE_CODES.contains(&code),
            // No ClickHouse code: a proxy or load balancer in between answered.
            None => true,
        },
        _ => false,
    }
}

/// Server errors that are about load or the moment, not about the statement: timeouts,
/// too many queries or parts, memory, read-only or unreachable replicas, network.
const RETRYABLE_CODES: &[u32] = &[
    3, 159, 164, 202, 203, 209, 210, 236, 241, 242, 252, 285, 319, 425, 999,
];

/// The `Code: N` of a ClickHouse error message.
pub fn error_code(msg: &str) -> Option<u32> {
    let rest = &msg[msg.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

struct Buffer<T> {
    table: Table,
    rows: T,
    since: Option<Instant>,
}

impl<T: Rows> Buffer<T> {
    fn new(table: Table) -> Self {
        Buffer {
            table,
            rows: T::default(),
            since: None,
        }
    }

    fn push(&mut self, rows: T) {
        if self.rows.is_empty() {
            self.since = Some(Instant::now());
        }
        self.rows.append(rows);
    }

    fn due(&self, config: &SinkConfig) -> bool {
        self.rows.len() >= config.max_rows
            || self.since.is_some_and(|t| t.elapsed() >= config.max_age)
    }
}

fn write_loop(
    client: Client,
    config: SinkConfig,
    rx: Receiver<Batch>,
    metrics: &SinkMetrics,
    in_channel: &AtomicUsize,
    give_up_at: &OnceLock<Instant>,
) -> SinkStats {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the clickhouse sink's runtime");
            return SinkStats::default();
        }
    };
    let mut stats = SinkStats::default();
    let mut findings = Buffer::<Vec<FindingRow>>::new(Table::Findings);
    let mut events = Buffer::<EncodedEvents>::new(Table::Events);
    let mut risks = Buffer::<Vec<RiskRow>>::new(Table::Risks);
    let mut closed_at: Option<Instant> = None;
    loop {
        let wait = [findings.since, events.since, risks.since]
            .into_iter()
            .flatten()
            .map(|t| config.max_age.saturating_sub(t.elapsed()))
            .min()
            .unwrap_or(config.max_age);
        let received = rx.recv_timeout(wait);
        if received.is_ok() {
            in_channel.fetch_sub(1, Relaxed);
        }
        let mut barrier = None;
        match received {
            Ok(Batch::Findings(rows)) => findings.push(rows),
            Ok(Batch::Events(rows)) => events.push(rows),
            Ok(Batch::Risks(rows)) => risks.push(rows),
            Ok(Batch::Barrier(tx)) => barrier = Some((tx, stats.rows_failed)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closed_at = Some(Instant::now()),
        }
        // Set before the channel closes by `close_by`; a sink dropped without it gives up
        // the configured deadline after the channel closed.
        let deadline = || {
            give_up_at
                .get()
                .copied()
                .or(closed_at.map(|t| t + config.shutdown_deadline))
        };
        if barrier.is_some() || closed_at.is_some() || findings.due(&config) {
            stats.findings_written +=
                runtime.block_on(flush(&client, &mut findings, deadline, &mut stats, metrics));
        }
        if barrier.is_some() || closed_at.is_some() || events.due(&config) {
            stats.events_written +=
                runtime.block_on(flush(&client, &mut events, deadline, &mut stats, metrics));
        }
        if barrier.is_some() || closed_at.is_some() || risks.due(&config) {
            stats.risks_written +=
                runtime.block_on(flush(&client, &mut risks, deadline, &mut stats, metrics));
        }
        if let Some((tx, failed_before)) = barrier {
            let _ = tx.send(stats.rows_failed == failed_before);
        }
        if closed_at.is_some() {
            return stats;
        }
    }
}

/// Inserts the buffer, retrying transient errors (until
/// `deadline()`, if any: read at each retry, as the sink may start closing meanwhile);
/// returns the rows written. The buffer is empty afterwards.
async fn flush<T>(
    client: &Client,
    buffer: &mut Buffer<T>,
    deadline: impl Fn() -> Option<Instant>,
    stats: &mut SinkStats,
    metrics: &SinkMetrics,
) -> u64
where
    T: Rows,
{
    let rows = std::mem::take(&mut buffer.rows);
    buffer.since = None;
    if rows.is_empty() {
        return 0;
    }
    let table = buffer.table;
    let mut backoff = MIN_BACKOFF;
    loop {
        match rows.insert(client, table.name()).await {
            Ok(()) => {
                metrics.batch(table, BatchResult::Ok, rows.len());
                metrics.dequeued(rows.len());
                return rows.len() as u64;
            }
            Err(err) if retryable(&err) && deadline().is_none_or(|d| Instant::now() < d) => {
                stats.retries += 1;
                metrics.batch(table, BatchResult::Retried, rows.len());
                tracing::warn!(table = table.name(), rows = rows.len(), error = %err, "clickhouse insert failed; retrying");
                let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
                let mut pause = backoff + Duration::from_millis(jitter);
                if let Some(d) = deadline() {
                    // Closing: the last attempt comes at the deadline, not a backoff past it.
                    pause = pause.min(d.saturating_duration_since(Instant::now()));
                }
                tokio::time::sleep(pause).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(err) => {
                stats.rows_failed += rows.len() as u64;
                metrics.batch(table, BatchResult::Failed, rows.len());
                metrics.dequeued(rows.len());
                tracing::error!(table = table.name(), rows = rows.len(), error = %err, "clickhouse insert failed; rows given up");
                return 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error;

    /// With ClickHouse unreachable the sink thread holds its first batch in retries, the
    /// channel fills, and `congested` says so before a send would block; once the sink has
    /// given up and drained, `relieved` says so.
    #[test]
    fn congestion_is_visible_before_a_send_blocks() {
        let client = Client::default().with_url("http://127.0.0.1:1");
        let config = SinkConfig {
            max_rows: 1,
            max_age: Duration::from_millis(10),
            channel_batches: 8,
            shutdown_deadline: Duration::from_millis(200),
        };
        let sink = Sink::spawn(client, config).unwrap();
        let finding = [crate::rows::tests::finding()];
        assert!(sink.findings(&finding));
        // The thread takes the first batch out of the channel and starts retrying it.
        let until = Instant::now() + Duration::from_secs(10);
        while sink.in_channel.load(Relaxed) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        for sent in 1..=6 {
            assert!(!sink.congested(), "congested at {sent} of 8 batches");
            assert!(sink.findings(&finding));
        }
        assert!(sink.congested(), "6 of 8 batches in the channel");
        assert!(!sink.relieved());
        let in_channel = sink.in_channel.clone();
        let stats = sink.close();
        assert_eq!(in_channel.load(Relaxed), 0, "every batch left the channel");
        assert_eq!(stats.rows_failed, 7);
    }

    /// `close_by` gives up at the caller's deadline, not the configured one (an hour here):
    /// a process stopping within its own shutdown timeout learns what was not written.
    #[test]
    fn close_by_gives_up_at_the_callers_deadline() {
        let client = Client::default().with_url("http://127.0.0.1:1");
        let config = SinkConfig {
            max_age: Duration::from_millis(10),
            shutdown_deadline: Duration::from_secs(3600),
            ..SinkConfig::default()
        };
        let sink = Sink::spawn(client, config).unwrap();
        let finding = crate::rows::tests::finding();
        assert!(sink.findings(&[finding.clone(), finding.clone(), finding]));
        let started = Instant::now();
        let stats = sink.close_by(Instant::now() + Duration::from_millis(500));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "close_by waited {:?}",
            started.elapsed()
        );
        assert_eq!(stats.findings_written, 0);
        assert_eq!(stats.rows_failed, 3);
    }

    fn audit(i: u64) -> Event {
        let resource = format!("inventory/{i}");
        toctou_schema::testing::audit_at(toctou_schema::AuditAction::Update, &resource, 1_000 + i)
            .version(&i.to_string())
            .source(&format!("audit-{i}"))
            .ev()
    }

    /// A hand-over gathers rows until it is due, then sends them as one batch per table,
    /// each event encoded by `write_event`, and starts empty again.
    #[test]
    fn a_handover_sends_what_it_gathered_in_one_batch_per_table() {
        let client = Client::default().with_url("http://127.0.0.1:1");
        let config = SinkConfig {
            // Never due by rows or age within the test: the batches stay where they landed.
            max_rows: usize::MAX,
            max_age: Duration::from_secs(3600),
            channel_batches: 8,
            shutdown_deadline: Duration::from_millis(100),
        };
        let sink = Sink::spawn(client, config).unwrap();
        let events: Vec<Event> = (0..HANDOVER_ROWS as u64 - 2).map(audit).collect();
        let mut handover = Handover::default();
        handover.add_events(&events[..10]);
        handover.add_events(&events[10..]);
        assert!(!handover.due());
        handover.add_findings(&[crate::rows::tests::finding()]);
        assert!(!handover.due());
        handover.add_findings(&[crate::rows::tests::finding()]);
        assert!(handover.due());
        let mut expected = Vec::new();
        for e in &events {
            write_event(e, &mut expected);
        }
        assert_eq!(handover.events, expected);

        let queued = sink.metrics.backlog_rows();
        assert!(sink.hand_over(&mut handover));
        assert_eq!(handover.rows(), 0);
        assert!(handover.events.is_empty() && handover.findings.is_empty());
        assert_eq!(sink.metrics.backlog_rows() - queued, HANDOVER_ROWS as u64);
        // Nothing more to send: no empty batches.
        assert!(sink.hand_over(&mut handover));
        assert_eq!(sink.metrics.backlog_rows() - queued, HANDOVER_ROWS as u64);
        let stats = sink.close();
        assert_eq!(stats.rows_failed, HANDOVER_ROWS as u64);
    }

    /// Rows of risks take the path of findings: a batch and a buffer of their own, retried
    /// while the server is unreachable, then given up at the deadline and counted under
    /// their own table.
    #[test]
    fn risks_are_retried_then_given_up_under_their_own_table() {
        let client = Client::default().with_url("http://127.0.0.1:1");
        let config = SinkConfig {
            max_age: Duration::from_millis(10),
            shutdown_deadline: Duration::from_millis(300),
            ..SinkConfig::default()
        };
        let sink = Sink::spawn(client, config).unwrap();
        let metrics = sink.metrics();
        let mut handover = Handover::default();
        handover.add_risks(vec![crate::rows::risks::tests::risk(); 2]);
        assert_eq!(handover.rows(), 2);
        assert!(sink.hand_over(&mut handover));
        assert_eq!(handover.rows(), 0);
        let until = Instant::now() + Duration::from_secs(10);
        while metrics.batches(Table::Risks, BatchResult::Retried) == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(metrics.batches(Table::Risks, BatchResult::Retried) >= 1);
        assert_eq!(
            metrics.backlog_rows(),
            2,
            "held, not dropped, while retrying"
        );
        let stats = sink.close();

        assert_eq!((stats.risks_written, stats.rows_failed), (0, 2));
        assert!(stats.retries >= 1, "{stats:?}");
        assert_eq!(metrics.batches(Table::Risks, BatchResult::Failed), 1);
        assert_eq!(metrics.rows_dropped(Table::Risks), 2);
        assert_eq!(metrics.rows_dropped(Table::Findings), 0);
        assert_eq!(metrics.backlog_rows(), 0, "given-up rows leave the backlog");
    }

    #[test]
    fn codes_are_read_from_both_message_styles() {
        let old = "Code: 60, e.displayText() = DB::Exception: Table toctou.nope doesn't exist.";
        let new = "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)";
        assert_eq!(error_code(old), Some(60));
        assert_eq!(error_code(new), Some(252));
        assert_eq!(error_code("502 Bad Gateway"), None);
    }

    #[test]
    fn table_errors_are_not_retried_and_load_errors_are() {
        let bad = |m: &str| Error::BadResponse(m.to_owned());
        assert!(!retryable(&bad(
            "Code: 60, e.displayText() = DB::Exception: Table x doesn't exist"
        )));
        assert!(!retryable(&bad(
            "Code: 16. DB::Exception: No such column x"
        )));
        assert!(retryable(&bad("Code: 252. DB::Exception: Too many parts")));
        assert!(retryable(&bad(
            "Code: 241. DB::Exception: Memory limit exceeded"
        )));
        assert!(retryable(&bad("upstream connect error")));
        assert!(retryable(&Error::TimedOut));
        assert!(!retryable(&Error::NotEnoughData));
    }

    #[test]
    fn rows_an_unreachable_server_never_takes_are_retried_then_counted_as_dropped() {
        // A port bound and closed again: connections are refused, a transient error.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let client = Client::default()
            .with_url(format!("http://127.0.0.1:{port}"))
            .with_compression(clickhouse::Compression::None);
        let config = SinkConfig {
            max_age: Duration::from_millis(10),
            shutdown_deadline: Duration::from_millis(300),
            ..SinkConfig::default()
        };
        let sink = Sink::spawn(client, config).expect("sink thread");
        let metrics = sink.metrics();
        let finding = super::super::rows::tests::finding();
        assert!(sink.findings(&[finding.clone(), finding]));
        let stats = sink.close();

        assert_eq!(stats.findings_written, 0);
        assert_eq!(stats.rows_failed, 2);
        assert!(stats.retries >= 1, "{stats:?}");
        assert_eq!(metrics.retries(), stats.retries);
        assert_eq!(
            metrics.batches(Table::Findings, BatchResult::Retried),
            stats.retries
        );
        assert_eq!(metrics.batches(Table::Findings, BatchResult::Failed), 1);
        assert_eq!(metrics.batches(Table::Findings, BatchResult::Ok), 0);
        assert_eq!(metrics.rows_dropped(Table::Findings), 2);
        assert_eq!(metrics.rows_written(Table::Findings), 0);
        assert_eq!(metrics.backlog_rows(), 0, "given-up rows leave the backlog");
    }
}
