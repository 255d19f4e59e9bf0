//! Black-box tests of `toctou migrate` against real ClickHouse engines: Debian's server
//! (18.16), started through `scripts/clickhouse`, and the current engine embedded in chdb,
//! through `scripts/chdb`.
//!
//! `scripts/test` starts the server and exports its URL as `TOCTOU_TEST_CLICKHOUSE_URL`;
//! without it the tests start one themselves. If no server can be had the tests fail: a
//! storage test that skips proves nothing. Each test works in a database of its own.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_toctou");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(common::clickhouse::server_url)
}

/// A database name private to one test of this process.
fn database(test: &str) -> String {
    format!("toctou_test_{}_{test}", std::process::id())
}

/// One statement over HTTP; panics with the server's message when refused.
fn sql(db: Option<&str>, statement: &str) -> String {
    let url = match db {
        Some(db) => format!("{}/?database={db}", server_url()),
        None => format!("{}/", server_url()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .body(statement.to_owned())
            .send()
            .await
            .unwrap_or_else(|e| panic!("sending {statement:?}: {e}"));
        let status = resp.status();
        let body = resp.text().await.expect("response body");
        assert!(status.is_success(), "{statement}\n=> {status}: {body}");
        body
    })
}

fn migrate(db: &str, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args([
            "migrate",
            "--clickhouse-url",
            server_url(),
            "--clickhouse-database",
            db,
        ])
        .args(extra)
        .env_remove("TOCTOU_CLICKHOUSE_PASSWORD")
        .output()
        .expect("running toctou migrate")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The same split as the binary's and scripts/chdb_run.py's.
use toctou_clickhouse::migrations::statements;

fn printed_sql() -> String {
    let out = Command::new(BIN)
        .args([
            "migrate",
            "--clickhouse-url",
            "http://127.0.0.1:1",
            "--print-sql",
        ])
        .output()
        .expect("running toctou migrate --print-sql");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

const TABLES: &[&str] = &[
    "events",
    "findings",
    "findings_lookup",
    "findings_lookup_mv",
    "risks",
    "rollup_minute",
    "rollup_minute_events_mv",
    "rollup_minute_findings_mv",
    "schema_migrations",
];

#[test]
fn migrate_creates_the_schema_once_and_a_rerun_is_a_no_op() {
    let db = database("idempotent");
    let first = migrate(&db, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("applied migrations 1, 2, 3, 4"),
        "{}",
        stdout(&first)
    );

    let tables = sql(
        None,
        &format!("SELECT name FROM system.tables WHERE database = '{db}' ORDER BY name"),
    );
    assert_eq!(tables.lines().collect::<Vec<_>>(), TABLES);
    let recorded = sql(
        Some(&db),
        "SELECT version, name FROM schema_migrations ORDER BY version",
    );
    assert_eq!(recorded, "1\tfindings\n2\tevents\n3\trollups\n4\trisks\n");

    let second = migrate(&db, &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("up to date at version 4"),
        "{}",
        stdout(&second)
    );
    assert_eq!(
        sql(Some(&db), "SELECT count() FROM schema_migrations"),
        "4\n",
        "a rerun records nothing"
    );
}

#[test]
fn a_schema_newer_than_the_binary_is_refused() {
    let db = database("newer");
    let first = migrate(&db, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    sql(
        Some(&db),
        "INSERT INTO schema_migrations (version, name, checksum, applied_at) \
         VALUES (5, 'from_the_future', '0000000000000000', now())",
    );

    let refused = migrate(&db, &[]);
    assert!(!refused.status.success(), "{}", stdout(&refused));
    let msg = stderr(&refused);
    assert!(
        msg.contains("schema version 5, newer than the 4 this toctou knows"),
        "{msg}"
    );
    assert!(msg.contains("upgrade toctou"), "{msg}");
    assert_eq!(
        sql(Some(&db), "SELECT count() FROM schema_migrations"),
        "5\n"
    );
}

#[test]
fn an_edited_migration_is_refused() {
    let db = database("edited");
    let first = migrate(&db, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    sql(
        Some(&db),
        "ALTER TABLE schema_migrations UPDATE checksum = 'ffffffffffffffff' WHERE version = 2",
    );
    // Mutations are asynchronous; wait until the rewritten part is the active one.
    for _ in 0..100 {
        if sql(
            Some(&db),
            "SELECT any(checksum) FROM schema_migrations WHERE version = 2",
        ) == "ffffffffffffffff\n"
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let refused = migrate(&db, &[]);
    assert!(!refused.status.success(), "{}", stdout(&refused));
    assert!(
        stderr(&refused).contains("migration 2 (events) was applied with different contents"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn retention_drops_only_whole_days_past_each_tables_limit() {
    let db = database("retention");
    let first = migrate(&db, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    // One old and one current event, one old finding and one old and one current row of
    // risks: the MVs add rollups and lookups.
    sql(
        Some(&db),
        "INSERT INTO events (type, service, event_key, event_time, event_time_ns) VALUES \
         ('use', 'svc', 'old', toDateTime('2020-01-01 00:00:00'), 1577836800000000000), \
         ('use', 'svc', 'new', now(), toUInt64(toUInt32(now())) * 1000000000)",
    );
    sql(
        Some(&db),
        "INSERT INTO findings (id, kind, service, trace_id, event_time, event_time_ns, detected_at, detected_at_ns) \
         VALUES ('f1', 'stale_check', 'svc', 'abc', toDateTime('2020-01-01 00:00:00'), 1577836800000000000, \
         toDateTime('2020-01-01 00:00:01'), 1577836801000000000)",
    );
    sql(
        Some(&db),
        "INSERT INTO risks (service, endpoint, kind, table_name, requests, counted_at, counted_at_ns) VALUES \
         ('svc', '/buy', 'lost_update', 'public.items', 3, toDateTime('2020-01-01 00:01:00'), 1577836860000000000), \
         ('svc', '/buy', 'lost_update', 'public.items', 2, now(), toUInt64(toUInt32(now())) * 1000000000)",
    );
    let parts = "SELECT table, partition FROM system.parts WHERE database = currentDatabase() \
                 AND active AND table != 'schema_migrations' GROUP BY table, partition ORDER BY table, partition";
    let before = sql(Some(&db), parts);
    assert!(before.contains("events\t20200101"), "{before}");

    let out = migrate(
        &db,
        &["--apply-retention", "--retention-rollups", "3000days"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("dropped 4 expired partitions"),
        "{}",
        stdout(&out)
    );
    let after = sql(Some(&db), parts);
    let today = sql(None, "SELECT toYYYYMMDD(now())");
    assert_eq!(
        after,
        format!("events\t{today}risks\t{today}rollup_minute\t20200101\nrollup_minute\t{today}")
    );
    assert_eq!(
        sql(Some(&db), "SELECT event_key FROM events"),
        "new\n",
        "the current day stays"
    );
    assert_eq!(
        sql(Some(&db), "SELECT sum(requests) FROM risks"),
        "2\n",
        "risks keep the findings' 90 days"
    );
}

#[test]
fn every_statement_the_binary_sends_runs_on_18_16_and_on_current_chdb() {
    let text = printed_sql();
    let all = statements(&text);
    assert!(all.len() >= 10, "too few statements printed:\n{text}");

    // Debian's 18.16, in a fresh database, in the printed order.
    let db = database("printed");
    sql(None, &format!("CREATE DATABASE {db}"));
    for stmt in &all {
        sql(Some(&db), stmt);
    }
    // The sink's inserts are among them, with their example rows, and the views took them.
    for table in ["findings", "events", "risks"] {
        assert!(
            all.iter()
                .any(|s| s.starts_with(&format!("INSERT INTO {table}(`"))),
            "no insert into {table} printed:\n{text}"
        );
    }
    assert_eq!(sql(Some(&db), ROWS_STORED), "2\t4\t4\t6\t3\t10\n");

    // The current engine, embedded: the whole file in one session.
    let file = std::env::temp_dir().join(format!("toctou-printed-{}.sql", std::process::id()));
    std::fs::write(&file, &text).expect("writing the printed statements");
    let out = Command::new(root().join("scripts/chdb"))
        .arg("run")
        .arg(&file)
        .arg(ROWS_STORED)
        .output()
        .expect("running scripts/chdb (run 'scripts/chdb install' first)");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "chdb refused a statement:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let ran = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("ok ("))
        .count();
    assert_eq!(ran, all.len() + 1, "{}", stdout(&out));
    assert!(
        stdout(&out).ends_with("\n2\t4\t4\t6\t3\t10\n"),
        "the example rows on chdb:\n{}",
        stdout(&out)
    );
}

/// Findings and events rows, the findings' lookup rows (by id and by trace: 2 each), the
/// rollups' sum of checks, uses, audits and findings (1 + 1 + 2 events, 2 findings), and the
/// rows of risks with their requests (7 + 1 + 2).
const ROWS_STORED: &str = "SELECT (SELECT count() FROM findings), (SELECT count() FROM events), \
     (SELECT count() FROM findings_lookup), \
     (SELECT sumMerge(checks) + sumMerge(uses) + sumMerge(audits) + sumMerge(findings) FROM rollup_minute), \
     (SELECT count() FROM risks), (SELECT sum(requests) FROM risks)";

#[test]
fn the_schema_files_are_the_ones_embedded() {
    // Every .sql file under schema/sql is applied by the binary (printed in full).
    let printed = printed_sql();
    let dir: PathBuf = root().join("schema/sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("schema/sql")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).expect("reading a schema file");
        for stmt in statements(&text) {
            assert!(
                printed.contains(&stmt),
                "{} has a statement the binary does not send: {stmt}",
                f.display()
            );
        }
    }
}

/// A small scenario, one row per event and finding, all in the current minute.
const SCENARIO: &[&str] = &[
    "INSERT INTO events (type, service, operation, resource, resource_type, event_key, \
     event_time, event_time_ns, check_source, idempotency_key, outcome) VALUES \
     ('check', 'shop', 'reserve', 'inventory/1', 'inventory', 'e1', now(), 1, 'cache', NULL, ''), \
     ('use', 'shop', 'reserve', 'inventory/1', 'inventory', 'e2', now(), 2, NULL, 'idem-1', 'ok'), \
     ('use', 'shop', 'reserve', 'inventory/1', 'inventory', 'e3', now(), 3, NULL, 'idem-1', 'ok'), \
     ('use', 'shop', 'charge', 'payments/9', 'payments', 'e4', now(), 4, NULL, NULL, 'ok'), \
     ('check', 'ops', 'reconcile', 'k8s/pods/a', 'k8s/pods', 'e5', now(), 5, 'primary', NULL, ''), \
     ('use', 'ops', 'reconcile', 'k8s/pods/a', 'k8s/pods', 'e6', now(), 6, NULL, NULL, 'error'), \
     ('use', 'ops', 'reconcile', 'k8s/pods/a', 'k8s/pods', 'e7', now(), 7, NULL, NULL, 'ok'), \
     ('audit', 'db', '', 'inventory/1', 'inventory', 'e8', now(), 8, NULL, NULL, '')",
    "INSERT INTO findings (id, kind, service, operation, resource, resource_type, trace_id, \
     check_source, idempotency_key, race_window_ns, event_time, event_time_ns, detected_at, \
     detected_at_ns) VALUES \
     ('f1', 'stale_check', 'shop', 'reserve', 'inventory/1', 'inventory', 't1', 'cache', NULL, 1000, now(), 1000000000, now(), 1500000000), \
     ('f2', 'duplicate_use', 'shop', 'reserve', 'inventory/1', 'inventory', 't2', NULL, 'idem-1', NULL, now(), 1000000000, now(), 2000000000), \
     ('f3', 'unchecked_use', 'shop', 'charge', 'payments/9', 'payments', '', NULL, NULL, NULL, now(), 1000000000, now(), 3000000000), \
     ('f4', 'stale_check', 'ops', 'reconcile', 'k8s/pods/a', 'k8s/pods', 't4', 'primary', NULL, 3000, now(), 1000000000, now(), 1100000000)",
];

/// What schema/sql/queries/sli.sql gives on the scenario, query by query.
const SLI_EXPECTED: &[&str] = &[
    "db\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\n\
     ops\t1\t2\t2\t0.5\t0\t0\t0\t0\t0\t0\n\
     shop\t1\t3\t2\t0.5\t0.3333\t0\t0\t0.5\t1\t1\n",
    "ops\t2\t1\t0.5\n",
    "ops\tstale_check\t1\t[3000,3000,3000]\t[100000000,100000000,100000000]\n\
     shop\tduplicate_use\t1\t[0,0,0]\t[1000000000,1000000000,1000000000]\n\
     shop\tstale_check\t1\t[1000,1000,1000]\t[500000000,500000000,500000000]\n\
     shop\tunchecked_use\t1\t[0,0,0]\t[2000000000,2000000000,2000000000]\n",
    "ops\tstale_check\t1\nshop\tduplicate_use\t1\nshop\tstale_check\t1\nshop\tunchecked_use\t1\n",
];

fn sli_queries() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("schema/sql/queries/sli.sql"))
        .expect("schema/sql/queries/sli.sql");
    statements(&text)
}

#[test]
fn the_sli_queries_read_the_rollups_alike_on_18_16_and_on_current_chdb() {
    let queries = sli_queries();
    assert_eq!(queries.len(), SLI_EXPECTED.len());

    let db = database("sli");
    let first = migrate(&db, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    for insert in SCENARIO {
        sql(Some(&db), insert);
    }
    for (q, want) in queries.iter().zip(SLI_EXPECTED) {
        assert_eq!(&sql(Some(&db), q), want, "18.16: {q}");
    }

    let mut args: Vec<String> = vec!["run".into()];
    for f in [
        "schema_migrations.sql",
        "0001_findings.sql",
        "0002_events.sql",
        "0003_rollups.sql",
        "0004_risks.sql",
    ] {
        args.push(root().join("schema/sql").join(f).display().to_string());
    }
    args.extend(SCENARIO.iter().map(|s| s.to_string()));
    args.push(
        root()
            .join("schema/sql/queries/sli.sql")
            .display()
            .to_string(),
    );
    let out = Command::new(root().join("scripts/chdb"))
        .args(&args)
        .output()
        .expect("running scripts/chdb");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    // Each statement's output follows its "ok (...)" line; the SLI queries come last.
    let text = stdout(&out);
    let mut results: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("ok (") {
            results.push(String::new());
        } else if let Some(last) = results.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    let got = &results[results.len() - SLI_EXPECTED.len()..];
    for ((q, want), got) in queries.iter().zip(SLI_EXPECTED).zip(got) {
        assert_eq!(got, want, "chdb: {q}");
    }
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn a_password_in_the_url_reaches_no_log_line_help_or_error_message() {
    const SECRET: &str = "hunter2secret";
    // Nothing listening: migrate and run both fail naming the URL, which must be redacted.
    let refused = format!("http://toctou:{SECRET}@127.0.0.1:{}", closed_port());
    let run: Vec<&str> = std::iter::once("run")
        .chain(common::EPHEMERAL_PORTS)
        .collect();
    for args in [&["migrate"][..], &run[..]] {
        let out = Command::new(BIN)
            .args(args)
            .args(["--clickhouse-url", &refused])
            .env("TOCTOU_LOG", "debug")
            .output()
            .expect("running toctou");
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(!err.contains(SECRET), "{args:?}: {err}");
        assert!(
            err.contains("toctou:<redacted>@127.0.0.1:"),
            "{args:?}: {err}"
        );
    }

    // A user the server does not know: the credentials of the URL were sent (the server
    // refuses that user), and the refusal does not quote the password either.
    let unknown = server_url().replacen("://", &format!("://nobody_here:{SECRET}@"), 1);
    let out = Command::new(BIN)
        .args(["migrate", "--clickhouse-url", &unknown])
        .args(["--clickhouse-database", &database("redact")])
        .env("TOCTOU_LOG", "debug")
        .output()
        .expect("running toctou migrate");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("Unknown user nobody_here") || err.contains("Code: 516"),
        "the server refuses the URL's user: {err}"
    );
    assert!(!err.contains(SECRET), "{err}");

    // clap shows environment values in --help unless told not to.
    let out = Command::new(BIN)
        .args(["run", "--help"])
        .env("TOCTOU_CLICKHOUSE_URL", &refused)
        .output()
        .expect("running toctou run --help");
    let help = stdout(&out);
    assert!(help.contains("--clickhouse-url"), "{help}");
    assert!(!help.contains(SECRET), "{help}");
}
