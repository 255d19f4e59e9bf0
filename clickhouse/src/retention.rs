//! Retention by dropping whole daily partitions.
//!
//! 18.16 has no table `TTL`, so retention is a job: every table is partitioned by day
//! (`toYYYYMMDD`), and a partition whose day is entirely older than the table's retention
//! is dropped, which is cheap (files are unlinked, nothing is rewritten). `toctou migrate
//! --apply-retention` runs it; a cron or the sink can run it daily.

use clickhouse::sql::Identifier;
use clickhouse::Client;
use serde::Deserialize;
use std::time::Duration;

/// Default retention of the events table.
pub const DEFAULT_EVENTS: Duration = Duration::from_secs(7 * 86_400);
/// Default retention of the findings tables (`findings`, `findings_lookup`) and of
/// inference's `risks`, which are what inference reports where it cannot report findings.
pub const DEFAULT_FINDINGS: Duration = Duration::from_secs(90 * 86_400);
/// Default retention of the per-minute rollups.
pub const DEFAULT_ROLLUPS: Duration = Duration::from_secs(400 * 86_400);

/// The partitioned tables of our database, as `system.parts` names them.
pub const LIST_PARTITIONS: &str = "SELECT DISTINCT table, partition FROM system.parts \
     WHERE database = currentDatabase() AND active \
     AND table IN ('events', 'findings', 'findings_lookup', 'risks', 'rollup_minute') \
     ORDER BY table, partition";
/// Drops one day (binds: table as identifier, the day as YYYYMMDD).
pub const DROP_PARTITION: &str = "ALTER TABLE ? DROP PARTITION ?";

/// How long each table keeps its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub events: Duration,
    /// `findings`, `findings_lookup` and `risks`.
    pub findings: Duration,
    pub rollups: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            events: DEFAULT_EVENTS,
            findings: DEFAULT_FINDINGS,
            rollups: DEFAULT_ROLLUPS,
        }
    }
}

impl Retention {
    fn of(&self, table: &str) -> Option<Duration> {
        match table {
            "events" => Some(self.events),
            "findings" | "findings_lookup" | "risks" => Some(self.findings),
            "rollup_minute" => Some(self.rollups),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("{what}: {source}")]
    Clickhouse {
        what: String,
        #[source]
        source: clickhouse::error::Error,
    },
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Partition {
    table: String,
    partition: String,
}

/// One partition to drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub table: String,
    pub day: u32,
}

/// The civil date (proleptic Gregorian, UTC) of a Unix time, as YYYYMMDD; the same number
/// `toYYYYMMDD` gives with the server's time zone set to UTC, as scripts/clickhouse does.
pub fn yyyymmdd(unix_secs: u64) -> u32 {
    // Howard Hinnant's days-to-civil algorithm.
    let z = (unix_secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y * 10_000 + m * 100 + d) as u32
}

/// The partitions entirely older than their table's retention at `now_secs`: a day is kept
/// while any of it is younger than the cutoff, so the cutoff's own day always stays.
pub fn expired(
    partitions: &[(String, String)],
    retention: &Retention,
    now_secs: u64,
) -> Vec<Expired> {
    let mut out = Vec::new();
    for (table, partition) in partitions {
        let (Some(keep), Ok(day)) = (retention.of(table), partition.trim().parse::<u32>()) else {
            continue;
        };
        let cutoff = yyyymmdd(now_secs.saturating_sub(keep.as_secs()));
        if day < cutoff {
            out.push(Expired {
                table: table.clone(),
                day,
            });
        }
    }
    out
}

/// Drops every expired partition of toctou's tables; returns what it dropped.
pub async fn apply(
    client: &Client,
    retention: &Retention,
    now_secs: u64,
) -> Result<Vec<Expired>, RetentionError> {
    let parts: Vec<Partition> =
        client
            .query(LIST_PARTITIONS)
            .fetch_all()
            .await
            .map_err(|source| RetentionError::Clickhouse {
                what: "listing partitions".into(),
                source,
            })?;
    let parts: Vec<(String, String)> = parts.into_iter().map(|p| (p.table, p.partition)).collect();
    let todo = expired(&parts, retention, now_secs);
    for e in &todo {
        client
            .query(DROP_PARTITION)
            .bind(Identifier(&e.table))
            .bind(e.day)
            .execute()
            .await
            .map_err(|source| RetentionError::Clickhouse {
                what: format!("dropping partition {} of {}", e.day, e.table),
                source,
            })?;
        tracing::info!(table = %e.table, day = e.day, "dropped expired partition");
    }
    Ok(todo)
}

/// The retention statements with example binds, for the tests that run every statement on
/// both engines.
pub fn all_statements(client: &Client) -> Vec<String> {
    vec![
        LIST_PARTITIONS.to_owned(),
        client
            .query(DROP_PARTITION)
            .bind(Identifier("events"))
            .bind(19_700_101u32)
            .sql_display()
            .to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(yyyymmdd(0), 19_700_101);
        assert_eq!(yyyymmdd(951_782_400), 20_000_229);
        assert_eq!(yyyymmdd(1_795_651_200 - 1), 20_261_125);
        assert_eq!(yyyymmdd(1_795_651_200), 20_261_126);
    }

    #[test]
    fn only_whole_days_past_the_cutoff_expire() {
        let now = 1_795_651_200 + 3_600; // 2026-11-26 01:00 UTC
        let parts: Vec<(String, String)> = [
            ("events", "20261119"), // 7 days back: the cutoff's own day, kept
            ("events", "20261118"),
            ("findings", "20261118"),
            ("findings_lookup", "20260827"),
            ("risks", "20260828"), // 90 days back: kept
            ("risks", "20260827"),
            ("rollup_minute", "20260827"),
            ("schema_migrations", "tuple()"),
        ]
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
        let got = expired(&parts, &Retention::default(), now);
        assert_eq!(
            got,
            vec![
                Expired {
                    table: "events".into(),
                    day: 20_261_118
                },
                Expired {
                    table: "findings_lookup".into(),
                    day: 20_260_827
                },
                Expired {
                    table: "risks".into(),
                    day: 20_260_827
                },
            ]
        );
    }
}
