//! Flags shared by several subcommands, and their mapping onto library configs.
//!
//! Every address and limit is a flag with an environment variable of the same name
//! (`TOCTOU_...`), so a container can be configured without a command line.

use anyhow::{Context, Result};
#[cfg(feature = "cli")]
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;
use toctou_collector::ReceiverConfig;
#[cfg(feature = "cli")]
use toctou_correlator::config as defaults;
use tokio::net::TcpListener;

/// The OTLP receivers' addresses and limits, shared by `run` and `collector` so that both
/// take the same flags.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct ReceiverArgs {
    /// OTLP/gRPC listen address.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_OTLP_GRPC_ADDR", default_value = "127.0.0.1:4317")
    )]
    pub otlp_grpc_addr: SocketAddr,
    /// OTLP/HTTP listen address (also serves the Kubernetes audit webhook, /v1/k8s-audit).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_OTLP_HTTP_ADDR", default_value = "127.0.0.1:4318")
    )]
    pub otlp_http_addr: SocketAddr,
    /// Largest request body accepted, after decompression. Decoding one may allocate at
    /// most 16 times this (more is refused with 413 / RESOURCE_EXHAUSTED), so memory for
    /// requests stays within about 18 times this per request slot.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_REQUEST_BYTES", default_value_t = toctou_collector::DEFAULT_MAX_REQUEST_BYTES))]
    pub max_request_bytes: usize,
    /// Request bodies decoded at once; more wait up to --submit-timeout, then get 503.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_CONCURRENT_REQUESTS", default_value_t = toctou_collector::config::DEFAULT_MAX_CONCURRENT_REQUESTS))]
    pub max_concurrent_requests: usize,
    /// How long a request may wait for room (a decoding slot, the correlator's queue, or
    /// Kafka's acknowledgement) before it is pushed back (503 / UNAVAILABLE).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_SUBMIT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration))]
    pub submit_timeout: Duration,
    /// Bytes of request bodies held while being read, all requests together (bodies are
    /// read before a decoding slot is taken); beyond it requests wait up to
    /// --submit-timeout, then get 503. At least twice --max-request-bytes.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_RECEIVE_BYTES", default_value_t = toctou_collector::config::DEFAULT_MAX_RECEIVE_BYTES))]
    pub max_receive_bytes: usize,
    /// Bytes of --max-receive-bytes the requests of one connection may hold together, so
    /// that one client's never-ending streams cannot hold it all (503 past it). At least
    /// --max-request-bytes.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_CONNECTION_RECEIVE_BYTES", default_value_t = toctou_collector::config::DEFAULT_MAX_CONNECTION_RECEIVE_BYTES))]
    pub max_connection_receive_bytes: usize,
    /// How long an HTTP request body may take to arrive once its headers are in (408).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_BODY_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration))]
    pub body_read_timeout: Duration,
    /// Who may send: tokens per route group and client certificates (server/src/access.rs).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub access: crate::access::ReceiverAccessArgs,
}

impl ReceiverArgs {
    /// The receivers' config, validated.
    pub fn to_config(&self) -> Result<ReceiverConfig> {
        let config = ReceiverConfig {
            max_request_bytes: self.max_request_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
            submit_timeout: self.submit_timeout,
            max_receive_bytes: self.max_receive_bytes,
            max_connection_receive_bytes: self.max_connection_receive_bytes,
            body_read_timeout: self.body_read_timeout,
        };
        config.validate().context("invalid receiver flags")?;
        Ok(config)
    }

    /// Binds the gRPC and HTTP listeners, gRPC first.
    pub async fn bind(&self) -> Result<(TcpListener, TcpListener)> {
        Ok((
            bind(self.otlp_grpc_addr, "OTLP/gRPC").await?,
            bind(self.otlp_http_addr, "OTLP/HTTP").await?,
        ))
    }
}

/// Binds a listener; a port in use fails with the address and its role in the message.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} address {addr}"))
}

/// Correlator tuning, shared by `run` and `replay` so that a replay reproduces a run.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct CorrelatorArgs {
    /// How late (in event time) an event may arrive and still be joined as if in order.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_ALLOWED_LATENESS", default_value = "2s", value_parser = humantime::parse_duration))]
    pub allowed_lateness: Duration,
    /// How long a check waits for its use (and a create for its finalize).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_PAIR_TTL", default_value = "30s", value_parser = humantime::parse_duration))]
    pub pair_ttl: Duration,
    /// Most pending checks held; beyond it the oldest expire early (counted).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_MAX_PENDING", default_value_t = 1_000_000)
    )]
    pub max_pending: usize,
    /// How long an idempotency key is remembered to catch duplicate uses.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_KEY_TTL", default_value = "10m", value_parser = humantime::parse_duration))]
    pub key_ttl: Duration,
    /// How long span and audit identities are remembered to drop redeliveries.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_DEDUPE_WINDOW", default_value = "60s", value_parser = humantime::parse_duration))]
    pub dedupe_window: Duration,
    /// Most expired checks kept matchable by late uses; beyond it the oldest are decided early.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_TOMBSTONES", default_value_t = defaults::DEFAULT_MAX_TOMBSTONES))]
    pub max_tombstones: usize,
    /// Most idempotency keys remembered.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_KEYS", default_value_t = defaults::DEFAULT_MAX_KEYS))]
    pub max_keys: usize,
    /// Most events waiting in the reorder buffer; beyond it the oldest are released early.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_BUFFERED", default_value_t = defaults::DEFAULT_MAX_BUFFERED))]
    pub max_buffered: usize,
    /// Most identities remembered to drop redeliveries.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_DEDUPE", default_value_t = defaults::DEFAULT_MAX_DEDUPE))]
    pub max_dedupe: usize,
    /// Most audit writes remembered across all resources.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_AUDIT_HISTORY", default_value_t = defaults::DEFAULT_MAX_AUDIT_HISTORY))]
    pub max_audit_history: usize,
    /// Most pending creates.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_CREATES", default_value_t = defaults::DEFAULT_MAX_CREATES))]
    pub max_creates: usize,
    /// Most policies whose history is kept.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_POLICIES", default_value_t = defaults::DEFAULT_MAX_POLICIES))]
    pub max_policies: usize,
    /// Bytes of long strings (ids, versions, keys, resource names) all state holds together;
    /// beyond it the oldest state is evicted (counted).
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_INTERNED_BYTES", default_value_t = defaults::DEFAULT_MAX_INTERNED_BYTES))]
    pub max_interned_bytes: usize,
    /// Events further ahead of this host's clock are ordered by their arrival instead
    /// (a producer with a fast clock cannot drag the watermark); counted. 0 turns it off.
    #[cfg_attr(feature = "cli", arg(long, env = "TOCTOU_MAX_CLOCK_SKEW", default_value = "10s", value_parser = humantime::parse_duration))]
    pub max_clock_skew: Duration,
}

impl CorrelatorArgs {
    pub fn to_config(&self) -> toctou_correlator::Config {
        toctou_correlator::Config {
            allowed_lateness: self.allowed_lateness,
            pair_ttl: self.pair_ttl,
            max_pending: self.max_pending,
            key_ttl: self.key_ttl,
            dedupe_window: self.dedupe_window,
            max_tombstones: self.max_tombstones,
            max_keys: self.max_keys,
            max_buffered: self.max_buffered,
            max_dedupe: self.max_dedupe,
            max_audit_history: self.max_audit_history,
            max_creates: self.max_creates,
            max_policies: self.max_policies,
            max_interned_bytes: self.max_interned_bytes,
            max_clock_skew: self.max_clock_skew,
        }
    }
}

/// Where ClickHouse is and who to be there: the flags and environment of
/// [`toctou_clickhouse::ClickhouseConfig`].
#[derive(Clone)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct ClickhouseArgs {
    /// ClickHouse HTTP interface, e.g. http://127.0.0.1:8123. `toctou run` writes findings
    /// and events there when it is set. Credentials in it (http://user:password@host:8123)
    /// take the place of --clickhouse-user and --clickhouse-password.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "clickhouse-url",
            env = "TOCTOU_CLICKHOUSE_URL",
            hide_env_values = true
        )
    )]
    pub url: Option<String>,
    /// ClickHouse user.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "clickhouse-user",
            env = "TOCTOU_CLICKHOUSE_USER",
            default_value = "default"
        )
    )]
    pub user: String,
    /// ClickHouse password (prefer the environment variable: a flag shows in `ps`).
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "clickhouse-password",
            env = "TOCTOU_CLICKHOUSE_PASSWORD",
            default_value = "",
            hide_env_values = true,
            hide_default_value = true
        )
    )]
    pub password: String,
    /// Database holding toctou's tables; `toctou migrate` creates it when missing.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "clickhouse-database",
            env = "TOCTOU_CLICKHOUSE_DATABASE",
            default_value = "toctou"
        )
    )]
    pub database: String,
}

impl ClickhouseArgs {
    pub fn config(&self) -> toctou_clickhouse::ClickhouseConfig {
        toctou_clickhouse::ClickhouseConfig {
            url: self.url.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
        }
    }
}

/// By hand, as the config's: the password never reaches a log line.
impl std::fmt::Debug for ClickhouseArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.config().fmt(f)
    }
}
