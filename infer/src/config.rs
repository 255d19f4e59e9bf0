//! What the stage keeps and for how long.

use std::time::Duration;

/// How long a change record waits for the span of the write that made it, and a write for
/// its change record, by default: the SDKs' batch span processors export every 5 s by
/// default, so a write's span can arrive that long after its commit.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Config {
    /// The schema of tables a statement does not qualify (`public`).
    pub default_schema: String,
    /// The column holding a row's version (`--cdc-version-column`).
    pub version_column: String,
    /// [`DEFAULT_HOLD`].
    pub hold: Duration,
    /// How long a change whose writer its times leave in doubt waits for more write spans
    /// before it is attributed among those come (another process's spans are exported on
    /// their own schedule); half the hold by default.
    pub settle: Duration,
    /// Whether a change stream is read. Without one nothing says what was committed: risks
    /// only, never findings.
    pub change_stream: bool,
    /// Hash the values of tested columns in resource names (`public.users[email=#…]`):
    /// they are user data.
    pub hash_keys: bool,
    /// Requests whose calls are kept at once; past it the one seen longest ago goes.
    pub max_traces: usize,
    /// Calls kept per request; later ones are counted and not read.
    pub max_calls_per_trace: usize,
    /// Change records held at once; past it the oldest is released unattributed.
    pub max_held_changes: usize,
    /// Writes waiting for their change record at once; past it the oldest is dropped.
    pub max_pending: usize,
    /// Rows whose last committed version is remembered.
    pub max_versions: usize,
    /// (endpoint, kind, table) risk entries kept.
    pub max_risks: usize,
    /// A request's calls are kept this long after its last span arrived.
    pub trace_idle: Duration,
    /// How far a commit may seem to precede the start of the write that made it (the
    /// application's and the database's clocks).
    pub clock_slack: Duration,
    /// How long before a read a commit may have been stamped and still be unseen by it: the
    /// change stream stamps a commit before its WAL flush, and others see it only after.
    pub visibility_lag: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_schema: "public".into(),
            version_column: toctou_cdc::DEFAULT_VERSION_COLUMN.into(),
            hold: DEFAULT_HOLD,
            settle: DEFAULT_HOLD / 2,
            change_stream: true,
            hash_keys: false,
            max_traces: 100_000,
            max_calls_per_trace: 256,
            max_held_changes: 200_000,
            max_pending: 100_000,
            max_versions: 1_000_000,
            max_risks: 10_000,
            trace_idle: Duration::from_secs(60),
            clock_slack: Duration::from_secs(1),
            visibility_lag: Duration::from_millis(10),
        }
    }
}
