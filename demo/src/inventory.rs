//! Inventory reserve: buyers check the stock of a SKU, then reserve one unit. Most reserve
//! blindly (an oversell when another buyer got there first); some compare-and-swap on the
//! version (the race is caught); some abandon their cart after the check (orphan checks);
//! a legacy sync job restocks without checking anything (unchecked uses).

use super::db::Db;
use super::load::{count, rng, sleep_upto, workers, Counts, Load};
use super::telemetry::Service;
use anyhow::{Context as _, Result};
use rand::Rng;
use rusqlite::{params, OptionalExtension};
use std::time::Duration;
use toctou_instrument::{check, use_, Source};

pub const SCHEMA: &str = "
CREATE TABLE stock (
    sku TEXT PRIMARY KEY,
    qty INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TRIGGER stock_audit AFTER UPDATE ON stock BEGIN
    INSERT INTO audit (action, resource, version, request_id)
    VALUES ('update', NEW.sku, NEW.version, NEW.updated_by);
END;
-- One row per checked cart: what the check saw, and what the reservation acted on.
CREATE TABLE orders (
    request_id TEXT PRIMARY KEY,
    sku TEXT NOT NULL,
    checked_version INTEGER NOT NULL,
    checked_qty INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'conflict', 'abandoned')),
    version_before INTEGER,
    qty_before INTEGER
);
CREATE TABLE restocks (
    request_id TEXT PRIMARY KEY,
    sku TEXT NOT NULL,
    version_before INTEGER NOT NULL,
    added INTEGER NOT NULL
);
";

const SKUS: u64 = 6;
const OPENING_STOCK: i64 = 10;

/// What happened, from the tables: a reservation whose pre-image is not the version its
/// check saw acted on a stale check; an abandoned cart is an allowing check never used;
/// every restock is a use nobody checked.
pub fn truth(conn: &rusqlite::Connection) -> Result<Counts> {
    let mut c = Counts::default()
        .kind(
            "stale_check",
            count(
                conn,
                "SELECT count(*) FROM orders WHERE status = 'reserved' AND version_before <> checked_version",
            )?,
        )
        .kind(
            "orphan_check",
            count(conn, "SELECT count(*) FROM orders WHERE status = 'abandoned'")?,
        )
        .kind("unchecked_use", count(conn, "SELECT count(*) FROM restocks")?);
    c.prevented = count(
        conn,
        "SELECT count(*) FROM orders WHERE status = 'conflict'",
    )?;
    c.oversold = count(
        conn,
        "SELECT count(*) FROM orders WHERE status = 'reserved' AND qty_before <= 0",
    )?;
    Ok(c)
}

pub fn run(api: &Service, sync: &Service, db: &Db, load: &Load) -> Result<()> {
    let skus: Vec<String> = (0..SKUS)
        .map(|n| load.resource("inventory", format!("sku-{n}")))
        .collect();
    db.write(|tx| {
        for sku in &skus {
            tx.execute(
                "INSERT INTO stock (sku, qty, version, updated_by) VALUES (?1, ?2, 1, 'opening-stock')",
                params![sku, OPENING_STOCK],
            )?;
        }
        Ok(())
    })
    .context("opening stock")?;
    std::thread::scope(|s| {
        let restocker = s.spawn(|| restock(sync, db, load, &skus));
        let buyers = workers(load.workers, |_| buyer(api, db, load, &skus));
        let restocked = restocker
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the restock job panicked")));
        buyers.and(restocked)
    })
}

fn buyer(api: &Service, db: &Db, load: &Load, skus: &[String]) -> Result<()> {
    let mut rng = rng();
    while load.next_request() {
        let sku = &skus[rng.gen_range(0..skus.len())];
        let req = api.request("POST /cart/reserve");
        let pending = check(&api.tracer, sku.as_str())
            .context(&req.cx)
            .name("check stock")
            .source(Source::Primary);
        let (seen_qty, seen_version): (i64, i64) = db.read(|conn| {
            conn.query_row(
                "SELECT qty, version FROM stock WHERE sku = ?1",
                [sku],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })?;
        let checked = pending.version(seen_version).decide(seen_qty > 0);
        if !checked.is_allowed() {
            req.end();
            continue;
        }
        let request_id = checked.request_id().to_string();
        if rng.gen_bool(0.05) {
            // The buyer walks away: an allowing check that no use follows.
            db.write(|tx| {
                tx.execute(
                    "INSERT INTO orders (request_id, sku, checked_version, checked_qty, status)
                     VALUES (?1, ?2, ?3, ?4, 'abandoned')",
                    params![request_id, sku, seen_version, seen_qty],
                )?;
                Ok(())
            })?;
            req.end();
            continue;
        }
        sleep_upto(&mut rng, load.race_window);
        let compare_and_swap = rng.gen_bool(0.3);
        let use_span = db.write(|tx| {
            // Started under the write lock: span order is commit order.
            let reserve = checked.use_("reserve").name("reserve stock");
            let condition = compare_and_swap.then_some(seen_version);
            let before: Option<(i64, i64)> = tx
                .query_row(
                    "UPDATE stock SET qty = qty - 1, version = version + 1, updated_by = ?1
                     WHERE sku = ?2 AND (?3 IS NULL OR version = ?3)
                     RETURNING qty + 1, version - 1",
                    params![request_id, sku, condition],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let (status, qty_before, version_before) = match before {
                Some((q, v)) => ("reserved", Some(q), v),
                None => {
                    let v: i64 = tx.query_row(
                        "SELECT version FROM stock WHERE sku = ?1",
                        [sku],
                        |r| r.get(0),
                    )?;
                    ("conflict", None, v)
                }
            };
            tx.execute(
                "INSERT INTO orders (request_id, sku, checked_version, checked_qty, status, version_before, qty_before)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![request_id, sku, seen_version, seen_qty, status, version_before, qty_before],
            )?;
            // The compare-and-swap's condition is the version it acted on; a blind write's
            // is the pre-image it returned.
            let acted_on = condition.unwrap_or(version_before);
            Ok((reserve.version(acted_on), status == "reserved"))
        })?;
        match use_span {
            (reserve, true) => reserve.ok(),
            (reserve, false) => reserve.conflict(),
        };
        req.end();
    }
    Ok(())
}

/// A legacy sync job that restocks without checking anything first.
fn restock(sync: &Service, db: &Db, load: &Load, skus: &[String]) -> Result<()> {
    let mut rng = rng();
    let every = load.race_window * 10 + Duration::from_millis(200);
    loop {
        std::thread::sleep(every);
        if !load.running() {
            return Ok(());
        }
        let sku = &skus[rng.gen_range(0..skus.len())];
        let req = sync.request("legacy restock");
        let restock = db.write(|tx| {
            let restock = use_(&sync.tracer, sku.as_str(), "restock").context(&req.cx);
            let before: i64 = tx.query_row(
                "UPDATE stock SET qty = qty + 20, version = version + 1, updated_by = ?1
                 WHERE sku = ?2 RETURNING version - 1",
                params![req.id(), sku],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO restocks (request_id, sku, version_before, added) VALUES (?1, ?2, ?3, 20)",
                params![req.id(), sku, before],
            )?;
            Ok(restock.version(before))
        })?;
        restock.ok();
        req.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_counts_stale_reservations_abandoned_carts_and_restocks() {
        let conn = super::super::db::test_conn(SCHEMA);
        conn.execute_batch(
            "INSERT INTO orders VALUES
                ('fresh', 's1', 3, 5, 'reserved', 3, 5),
                ('stale', 's1', 3, 5, 'reserved', 4, 4),
                ('oversold', 's1', 4, 1, 'reserved', 5, 0),
                ('caught', 's1', 3, 5, 'conflict', 6, NULL),
                ('walked-away', 's2', 1, 9, 'abandoned', NULL, NULL);
             INSERT INTO restocks VALUES ('job-1', 's1', 6, 20), ('job-2', 's2', 1, 20);",
        )
        .unwrap();
        let c = truth(&conn).unwrap();
        assert_eq!(c.get("stale_check"), 2);
        assert_eq!(c.get("orphan_check"), 1);
        assert_eq!(c.get("unchecked_use"), 2);
        assert_eq!(c.prevented, 1);
        assert_eq!(c.oversold, 1);
    }

    #[test]
    fn a_reservation_writes_an_audit_row_with_its_request_and_new_version() {
        let conn = super::super::db::test_conn(SCHEMA);
        conn.execute_batch(
            "INSERT INTO stock VALUES ('inventory/r/sku-1', 2, 1, 'opening-stock');
             UPDATE stock SET qty = qty - 1, version = version + 1, updated_by = 'order-9'
             WHERE sku = 'inventory/r/sku-1';",
        )
        .unwrap();
        let rows = super::super::db::audit_rows_after(&conn, 0).unwrap();
        assert_eq!(rows.len(), 1, "the opening insert is no audited change");
        assert_eq!(rows[0].resource, "inventory/r/sku-1");
        assert_eq!(rows[0].version, Some(2));
        assert_eq!(rows[0].request_id.as_deref(), Some("order-9"));
    }
}
