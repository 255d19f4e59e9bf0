//! Account postings on a few hot accounts: a teller checks an account's balance (the check
//! carries the version it read), then posts a withdrawal or a deposit to it. A
//! standing-orders job posts to the same accounts at a low rate, from a service of its own.
//!
//! Unlike the other workloads, a posting's use span starts *before* the write lock is taken,
//! as an application's span around its `UPDATE` does: while another posting holds the lock,
//! the wait is inside the use span, so other requests' writes commit after the use started
//! and before its own write, which is exactly when a race happens. A posting names the
//! version it acted on (the pre-image its `UPDATE` returned), or names none (then only the
//! database's audit record of its own write, same request id, says what it overwrote), or
//! makes its write conditional on the version it checked (compare-and-swap: a conflict,
//! prevented, never a finding).

use super::db::Db;
use super::load::{count, rng, sleep_upto, workers, Counts, Load};
use super::telemetry::Service;
use anyhow::{Context as _, Result};
use rand::rngs::StdRng;
use rand::Rng;
use rusqlite::{params, OptionalExtension};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use toctou_instrument::{check, Source};

pub const SCHEMA: &str = "
CREATE TABLE accounts (
    account TEXT PRIMARY KEY,
    balance_cents INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TRIGGER accounts_audit AFTER UPDATE ON accounts BEGIN
    INSERT INTO audit (action, resource, version, request_id)
    VALUES ('update', NEW.account, NEW.version, NEW.updated_by);
END;
-- One row per allowed posting: what its check saw, how it wrote, and what its write acted on
-- (the pre-image's version; on a conflict, the version that refused the write).
CREATE TABLE postings (
    request_id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    account TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    checked_version INTEGER NOT NULL,
    checked_balance INTEGER NOT NULL,
    write TEXT NOT NULL CHECK (write IN ('versioned', 'unversioned', 'compare_and_swap')),
    use_started_ns INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('posted', 'conflict')),
    version_before INTEGER NOT NULL,
    balance_before INTEGER
);
-- The ground truth finds the first write after a check by its version.
CREATE INDEX audit_by_version ON audit (resource, version);
";

/// Hot rows: every posting lands on one of these few accounts, so most of them race.
const ACCOUNTS: u64 = 3;
const OPENING_BALANCE: i64 = 500_000;
/// A posting is allowed when the balance stays within [0, LIMIT] after it.
const LIMIT: i64 = 1_000_000;
/// The standing-orders job posts this often: a low-rate service beside the tellers.
const STANDING_ORDERS_EVERY: Duration = Duration::from_millis(100);

/// What happened, from the tables: a posting whose pre-image is not the version its check
/// read acted on a stale check, whatever it told toctou; a conditional posting that was
/// refused is a race prevented.
pub fn truth(conn: &rusqlite::Connection) -> Result<Counts> {
    let mut c = Counts::default().kind(
        "stale_check",
        count(
            conn,
            "SELECT count(*) FROM postings WHERE status = 'posted' AND version_before <> checked_version",
        )?,
    );
    c.prevented = count(
        conn,
        "SELECT count(*) FROM postings WHERE status = 'conflict'",
    )?;
    // Versions grow by one per write, so the first write after the check has the checked
    // version + 1 and the earliest commit of all the writes in between.
    c.raced_in_lock_wait = count(
        conn,
        "SELECT count(*) FROM postings p JOIN audit a
            ON a.resource = p.account AND a.version = p.checked_version + 1
         WHERE p.status = 'posted' AND p.write = 'unversioned'
           AND p.version_before <> p.checked_version AND a.committed_ns > p.use_started_ns",
    )?;
    Ok(c)
}

/// How a posting writes, and what its use span says it acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    /// A blind `UPDATE`; the use carries the pre-image's version it returned.
    Versioned,
    /// A blind `UPDATE`; the use carries no version.
    Unversioned,
    /// `UPDATE ... WHERE version = <checked>`; the use carries the checked version.
    CompareAndSwap,
}

impl Write {
    fn pick(rng: &mut StdRng) -> Write {
        match rng.gen_range(0..10) {
            0..=3 => Write::Versioned,
            4..=7 => Write::Unversioned,
            _ => Write::CompareAndSwap,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Write::Versioned => "versioned",
            Write::Unversioned => "unversioned",
            Write::CompareAndSwap => "compare_and_swap",
        }
    }
}

pub fn run(tellers: &Service, standing_orders: &Service, db: &Db, load: &Load) -> Result<()> {
    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|n| load.resource("accounts", format!("acct-{n}")))
        .collect();
    db.write(|tx| {
        for account in &accounts {
            tx.execute(
                "INSERT INTO accounts (account, balance_cents, version, updated_by)
                 VALUES (?1, ?2, 1, 'account-opening')",
                params![account, OPENING_BALANCE],
            )?;
        }
        Ok(())
    })
    .context("opening the accounts")?;
    std::thread::scope(|s| {
        let job = s.spawn(|| {
            let mut rng = rng();
            loop {
                std::thread::sleep(STANDING_ORDERS_EVERY);
                if !load.running() {
                    return Ok(());
                }
                load.requests.fetch_add(1, Ordering::Relaxed);
                post(
                    standing_orders,
                    "standing order",
                    db,
                    load,
                    &accounts,
                    &mut rng,
                )?;
            }
        });
        let tellers = workers(load.workers, |_| {
            let mut rng = rng();
            while load.next_request() {
                post(
                    tellers,
                    "POST /accounts/posting",
                    db,
                    load,
                    &accounts,
                    &mut rng,
                )?;
            }
            Ok(())
        });
        let job = job
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the standing-orders job panicked")));
        tellers.and(job)
    })
}

/// One posting: check the balance, wait up to the race window, post.
fn post(
    service: &Service,
    route: &'static str,
    db: &Db,
    load: &Load,
    accounts: &[String],
    rng: &mut StdRng,
) -> Result<()> {
    let account = &accounts[rng.gen_range(0..accounts.len())];
    let amount: i64 = rng.gen_range(100..=10_000) * if rng.gen_bool(0.5) { -1 } else { 1 };
    let req = service.request(route);
    let pending = check(&service.tracer, account.as_str())
        .context(&req.cx)
        .name("check balance")
        .source(Source::Primary);
    let (balance, version): (i64, i64) = db.read(|conn| {
        conn.query_row(
            "SELECT balance_cents, version FROM accounts WHERE account = ?1",
            [account],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    })?;
    let checked = pending
        .version(version)
        .decide((0..=LIMIT).contains(&(balance + amount)));
    if !checked.is_allowed() {
        req.end();
        return Ok(());
    }
    sleep_upto(rng, load.race_window);
    let write = Write::pick(rng);
    let request_id = checked.request_id().to_string();
    // The use starts here, before the lock: the wait for it is part of the use.
    let use_started = SystemTime::now();
    let posting = checked
        .use_("post")
        .name("post to account")
        .started_at(use_started);
    let use_started_ns = use_started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let (posted, version_before) = db.write(|tx| {
        let condition = (write == Write::CompareAndSwap).then_some(version);
        let before: Option<(i64, i64)> = tx
            .query_row(
                "UPDATE accounts SET balance_cents = balance_cents + ?1, version = version + 1,
                     updated_by = ?2
                 WHERE account = ?3 AND (?4 IS NULL OR version = ?4)
                 RETURNING balance_cents - ?1, version - 1",
                params![amount, request_id, account, condition],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (status, balance_before, version_before) = match before {
            Some((b, v)) => ("posted", Some(b), v),
            None => {
                let v: i64 = tx.query_row(
                    "SELECT version FROM accounts WHERE account = ?1",
                    [account],
                    |r| r.get(0),
                )?;
                ("conflict", None, v)
            }
        };
        tx.execute(
            "INSERT INTO postings (request_id, service, account, amount_cents, checked_version,
                 checked_balance, write, use_started_ns, status, version_before, balance_before)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                request_id,
                service.name,
                account,
                amount,
                version,
                balance,
                write.as_str(),
                use_started_ns,
                status,
                version_before,
                balance_before
            ],
        )?;
        Ok((status == "posted", version_before))
    })?;
    let posting = match write {
        Write::Versioned => posting.version(version_before),
        Write::Unversioned => posting,
        // What the write was conditional on: the version it acts on if it succeeds.
        Write::CompareAndSwap => posting.version(version),
    };
    if posted {
        posting.ok();
    } else {
        posting.conflict();
    }
    req.end();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_counts_stale_postings_conflicts_and_races_inside_the_lock_wait() {
        let conn = super::super::db::test_conn(SCHEMA);
        conn.execute_batch(
            "INSERT INTO postings VALUES
                ('fresh', 'a', 'acct-0', -5, 3, 50, 'versioned', 100, 'posted', 3, 50),
                ('stale', 'a', 'acct-0', -5, 3, 50, 'versioned', 100, 'posted', 5, 40),
                ('stale-early', 'a', 'acct-0', 5, 3, 50, 'unversioned', 100, 'posted', 5, 40),
                ('stale-waiting', 'a', 'acct-0', 5, 3, 50, 'unversioned', 90, 'posted', 4, 45),
                ('caught', 'a', 'acct-0', 5, 3, 50, 'compare_and_swap', 100, 'conflict', 6, NULL),
                ('swapped', 'a', 'acct-0', 5, 6, 40, 'compare_and_swap', 100, 'posted', 6, 40);
             INSERT INTO audit (action, resource, version, request_id, committed_ns) VALUES
                ('update', 'acct-0', 4, 'x', 95),
                ('update', 'acct-0', 5, 'y', 120);",
        )
        .unwrap();
        let c = truth(&conn).unwrap();
        assert_eq!(c.get("stale_check"), 3);
        assert_eq!(c.prevented, 1);
        // Version 4 committed at 95: after 'stale-waiting' started its use (90), before
        // 'stale-early' did (100).
        assert_eq!(c.raced_in_lock_wait, 1);
    }

    #[test]
    fn a_posting_writes_an_audit_row_with_its_request_and_new_version() {
        let conn = super::super::db::test_conn(SCHEMA);
        conn.execute_batch(
            "INSERT INTO accounts VALUES ('accounts/r/acct-1', 100, 1, 'account-opening');
             UPDATE accounts SET balance_cents = balance_cents - 5, version = version + 1,
                 updated_by = 'posting-9'
             WHERE account = 'accounts/r/acct-1';",
        )
        .unwrap();
        let rows = super::super::db::audit_rows_after(&conn, 0).unwrap();
        assert_eq!(rows.len(), 1, "opening an account is no audited change");
        assert_eq!(rows[0].version, Some(2));
        assert_eq!(rows[0].request_id.as_deref(), Some("posting-9"));
    }
}
