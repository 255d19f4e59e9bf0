//! ClickHouse storage: the connection flags and client, and the versioned schema.
//!
//! # Layout
//! - this module: [`ClickhouseArgs`] (URL, user, password, database by flag or environment)
//!   and the client built from them.
//! - [`migrations`]: the numbered SQL files of `schema/sql/`, embedded in the binary, and
//!   applying them idempotently with a record of versions.
//! - [`retention`]: dropping daily partitions past each table's retention.
//! - [`rows`]: the RowBinary rows of `findings` and `events`, mapped from the schema types.
//! - [`sink`]: the batched, retrying, bounded writer `toctou run --clickhouse-url` uses.
//!   Its counters, rendered on `/metrics`, are [`sink::metrics`].
//!
//! Every statement sent here must be accepted by Debian's ClickHouse 18.16 and by current
//! releases; `toctou migrate --print-sql` prints them all so the tests run each on both.
//! That is also why the client reads plain `RowBinary` (18.16 predates the typed header
//! format the crate validates rows with) and asks for no response compression.

pub mod migrations;
pub mod retention;
pub mod rows;
pub mod sink;

use clap::Args;
use std::fmt;

/// Where ClickHouse is and who to be there.
#[derive(Args, Clone)]
pub struct ClickhouseArgs {
    /// ClickHouse HTTP interface, e.g. http://127.0.0.1:8123. `toctou run` writes findings
    /// and events there when it is set.
    #[arg(long = "clickhouse-url", env = "TOCTOU_CLICKHOUSE_URL")]
    pub url: Option<String>,
    /// ClickHouse user.
    #[arg(
        long = "clickhouse-user",
        env = "TOCTOU_CLICKHOUSE_USER",
        default_value = "default"
    )]
    pub user: String,
    /// ClickHouse password (prefer the environment variable: a flag shows in `ps`).
    #[arg(
        long = "clickhouse-password",
        env = "TOCTOU_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub password: String,
    /// Database holding toctou's tables; `toctou migrate` creates it when missing.
    #[arg(
        long = "clickhouse-database",
        env = "TOCTOU_CLICKHOUSE_DATABASE",
        default_value = "toctou"
    )]
    pub database: String,
}

/// By hand so that the password never reaches a log line or an error message.
impl fmt::Debug for ClickhouseArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickhouseArgs")
            .field("url", &self.url)
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("database", &self.database)
            .finish()
    }
}

impl ClickhouseArgs {
    /// The URL, which `toctou migrate` cannot do without.
    pub fn require_url(&self) -> anyhow::Result<&str> {
        self.url.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--clickhouse-url (or TOCTOU_CLICKHOUSE_URL) is required")
        })
    }

    /// A client for toctou's database.
    pub fn client(&self) -> clickhouse::Client {
        self.server_client().with_database(&self.database)
    }

    /// A client for the server as a whole (its `default` database), to create ours.
    pub fn server_client(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(self.url.as_deref().unwrap_or_default())
            .with_user(&self.user)
            .with_password(&self.password)
            .with_compression(clickhouse::Compression::None)
            .with_validation(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let args = ClickhouseArgs {
            url: Some("http://127.0.0.1:8123".into()),
            user: "toctou".into(),
            password: "hunter2".into(),
            database: "toctou".into(),
        };
        let shown = format!("{args:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
