//! The versioned ClickHouse schema: the numbered files of `schema/sql/`, embedded in the
//! binary, applied in order and recorded in `schema_migrations`.
//!
//! Applying is idempotent twice over: every statement is `IF NOT EXISTS` (so a run that died
//! between a statement and its record finishes the job when re-run), and versions already
//! recorded are skipped. A database recording a version this binary does not know was
//! migrated by a newer toctou; writing to it could break that release's readers, so it is
//! refused. A recorded checksum that differs from the embedded file means the file was
//! edited after release, which is refused too: a released migration never changes, a new
//! one is added.

use clickhouse::sql::Identifier;
use clickhouse::Client;
use serde::Deserialize;

/// One numbered schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Creates the record of versions; run before anything else, every time.
pub const BOOTSTRAP: &str = include_str!("../../schema/sql/schema_migrations.sql");

/// Every migration this binary knows, in order. Append only.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "findings",
        sql: include_str!("../../schema/sql/0001_findings.sql"),
    },
    Migration {
        version: 2,
        name: "events",
        sql: include_str!("../../schema/sql/0002_events.sql"),
    },
    Migration {
        version: 3,
        name: "rollups",
        sql: include_str!("../../schema/sql/0003_rollups.sql"),
    },
    Migration {
        version: 4,
        name: "risks",
        sql: include_str!("../../schema/sql/0004_risks.sql"),
    },
];

/// The versions recorded, one row each whatever merges have or have not run.
pub const SELECT_APPLIED: &str = "SELECT version, any(name) AS name, any(checksum) AS checksum \
     FROM schema_migrations GROUP BY version ORDER BY version";
/// Records one applied version (binds: version, name, checksum).
pub const RECORD_APPLIED: &str =
    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, now())";
/// Creates toctou's database (bind: its name as an identifier).
pub const CREATE_DATABASE: &str = "CREATE DATABASE IF NOT EXISTS ?";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("invalid database name {0:?}: use letters, digits and underscores")]
    InvalidDatabase(String),
    #[error(
        "database {database} has schema version {found}, newer than the {known} this toctou \
         knows: upgrade toctou (this binary does not write to a schema it does not know)"
    )]
    NewerSchema {
        database: String,
        found: u32,
        known: u32,
    },
    #[error(
        "migration {version} ({name}) was applied with different contents (checksum {recorded}, \
         this binary has {embedded}): released migrations must not change"
    )]
    ChangedMigration {
        version: u32,
        name: String,
        recorded: String,
        embedded: String,
    },
    #[error("{what}: {source}")]
    Clickhouse {
        what: String,
        #[source]
        source: clickhouse::error::Error,
    },
}

fn ch(what: impl Into<String>) -> impl FnOnce(clickhouse::error::Error) -> MigrateError {
    let what = what.into();
    move |source| MigrateError::Clickhouse { what, source }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versions applied by this run, in order; empty when the schema was up to date.
    pub applied: Vec<u32>,
    /// The schema version the database is at now.
    pub version: u32,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Applied {
    version: u32,
    name: String,
    checksum: String,
}

/// The newest version this binary knows.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The fingerprint recorded with a version: 64-bit xxh3 of the file, as 16 hex digits.
pub fn checksum(sql: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(sql.as_bytes()))
}

/// The statements of a SQL file: `--` lines are comments and `;` ends a statement. Kept this
/// simple on purpose (no `;` or `--` inside literals in our files) and mirrored by
/// scripts/chdb_run.py, so both engines are fed exactly the same statements.
pub fn statements(sql: &str) -> Vec<String> {
    let body: Vec<&str> = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect();
    body.join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Database names are spliced into statements as identifiers; anything beyond this set is
/// refused rather than escaped, since it is a configuration mistake.
pub fn validate_database(name: &str) -> Result<(), MigrateError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(MigrateError::InvalidDatabase(name.to_owned()))
    }
}

/// Brings `database` up to [`latest_version`]: creates it when missing, then applies each
/// unrecorded migration and records it. `server` addresses the server's default database,
/// `client` toctou's.
pub async fn migrate(
    server: &Client,
    client: &Client,
    database: &str,
) -> Result<MigrateReport, MigrateError> {
    validate_database(database)?;
    server
        .query(CREATE_DATABASE)
        .bind(Identifier(database))
        .execute()
        .await
        .map_err(ch(format!("creating database {database}")))?;
    for stmt in statements(BOOTSTRAP) {
        client
            .query(&stmt)
            .execute()
            .await
            .map_err(ch("creating schema_migrations"))?;
    }
    let applied: Vec<Applied> = client
        .query(SELECT_APPLIED)
        .fetch_all()
        .await
        .map_err(ch("reading schema_migrations"))?;
    check_applied(&applied, database)?;

    let mut report = MigrateReport {
        applied: Vec::new(),
        version: applied.last().map_or(0, |a| a.version),
    };
    for m in MIGRATIONS {
        if applied.iter().any(|a| a.version == m.version) {
            continue;
        }
        for stmt in statements(m.sql) {
            client
                .query(&stmt)
                .execute()
                .await
                .map_err(ch(format!("migration {} ({})", m.version, m.name)))?;
        }
        client
            .query(RECORD_APPLIED)
            .bind(m.version)
            .bind(m.name)
            .bind(checksum(m.sql))
            .execute()
            .await
            .map_err(ch(format!("recording migration {}", m.version)))?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        report.applied.push(m.version);
        report.version = m.version;
    }
    Ok(report)
}

/// Refuses a schema newer than this binary, or a released migration that changed.
fn check_applied(applied: &[Applied], database: &str) -> Result<(), MigrateError> {
    let known = latest_version();
    if let Some(newest) = applied.iter().map(|a| a.version).max() {
        if newest > known {
            return Err(MigrateError::NewerSchema {
                database: database.to_owned(),
                found: newest,
                known,
            });
        }
    }
    for a in applied {
        let Some(m) = MIGRATIONS.iter().find(|m| m.version == a.version) else {
            continue;
        };
        let embedded = checksum(m.sql);
        if a.checksum != embedded {
            return Err(MigrateError::ChangedMigration {
                version: a.version,
                name: a.name.clone(),
                recorded: a.checksum.clone(),
                embedded,
            });
        }
    }
    Ok(())
}

/// Every statement `toctou migrate` can send, with example values in its binds, in an
/// order that runs on an empty database: what the tests feed to both ClickHouse engines.
pub fn all_statements(client: &Client) -> Vec<String> {
    let mut out = Vec::new();
    out.push(
        client
            .query(CREATE_DATABASE)
            .bind(Identifier("toctou_sql_check"))
            .sql_display()
            .to_string(),
    );
    out.extend(statements(BOOTSTRAP));
    for m in MIGRATIONS {
        out.extend(statements(m.sql));
    }
    out.push(
        client
            .query(RECORD_APPLIED)
            .bind(1u32)
            .bind("findings")
            .bind(checksum(MIGRATIONS[0].sql))
            .sql_display()
            .to_string(),
    );
    out.push(SELECT_APPLIED.to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
            assert!(!statements(m.sql).is_empty(), "{} has no statement", m.name);
        }
    }

    #[test]
    fn every_ddl_statement_is_idempotent() {
        for m in MIGRATIONS {
            for stmt in statements(m.sql) {
                assert!(stmt.contains("IF NOT EXISTS"), "{}: {stmt}", m.name);
            }
        }
    }

    #[test]
    fn statements_split_on_semicolons_and_drop_comment_lines() {
        let sql = "-- a comment; with a semicolon\nSELECT 1;\n\n  -- another\nSELECT\n 2;\n";
        assert_eq!(statements(sql), vec!["SELECT 1", "SELECT\n 2"]);
    }

    #[test]
    fn database_names_are_identifiers() {
        assert!(validate_database("toctou_test_1").is_ok());
        for bad in ["", "1abc", "a-b", "a b", "a`b", "toctou;drop"] {
            assert!(
                matches!(
                    validate_database(bad),
                    Err(MigrateError::InvalidDatabase(_))
                ),
                "{bad:?}"
            );
        }
    }

    fn applied(version: u32, sql: &str) -> Applied {
        Applied {
            version,
            name: "x".into(),
            checksum: checksum(sql),
        }
    }

    #[test]
    fn a_newer_schema_is_refused_with_both_versions() {
        let rows = vec![
            applied(1, MIGRATIONS[0].sql),
            applied(latest_version() + 1, ""),
        ];
        let err = check_applied(&rows, "db").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, MigrateError::NewerSchema { found, .. } if found == latest_version() + 1)
        );
        assert!(msg.contains("newer"), "{msg}");
    }

    #[test]
    fn a_changed_migration_is_refused() {
        let rows = vec![applied(1, "something else")];
        assert!(matches!(
            check_applied(&rows, "db"),
            Err(MigrateError::ChangedMigration { version: 1, .. })
        ));
        assert!(check_applied(&[applied(1, MIGRATIONS[0].sql)], "db").is_ok());
    }

    #[test]
    fn printed_statements_carry_their_binds() {
        let all = all_statements(&Client::default());
        assert!(all.iter().all(|s| !s.contains('?')), "{all:#?}");
        assert!(all.iter().any(|s| s.contains("`toctou_sql_check`")));
    }
}
