//! Quotes priced from a cache: the check validates the cached price (and its version), a
//! writer keeps repricing items in the database, and the order is placed at a price whose
//! row was rewritten in between: a stale check read from a cache.

use super::db::Db;
use super::load::{count, rng, sleep_upto, workers, Counts, Load};
use super::telemetry::Service;
use anyhow::{Context as _, Result};
use rand::Rng;
use rusqlite::params;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use toctou_instrument::{check, Source};

pub const SCHEMA: &str = "
CREATE TABLE prices (
    item TEXT PRIMARY KEY,
    cents INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TRIGGER prices_audit AFTER UPDATE ON prices BEGIN
    INSERT INTO audit (action, resource, version, request_id)
    VALUES ('update', NEW.item, NEW.version, NEW.updated_by);
END;
CREATE TABLE quotes (
    request_id TEXT PRIMARY KEY,
    item TEXT NOT NULL,
    cached_version INTEGER NOT NULL,
    quoted_cents INTEGER NOT NULL,
    version_at_order INTEGER NOT NULL,
    cents_at_order INTEGER NOT NULL
);
";

const ITEMS: u64 = 8;
/// The cache refreshes lazily: this share of reads goes to the database.
const REFRESH_RATE: f64 = 0.25;

/// What happened, from the tables: an order placed on a price row other than the cached
/// version the check validated.
pub fn truth(conn: &rusqlite::Connection) -> Result<Counts> {
    Ok(Counts::default().kind(
        "stale_check",
        count(
            conn,
            "SELECT count(*) FROM quotes WHERE version_at_order <> cached_version",
        )?,
    ))
}

pub fn run(api: &Service, db: &Db, load: &Load) -> Result<()> {
    let items: Vec<String> = (0..ITEMS)
        .map(|n| load.resource("prices", format!("item-{n}")))
        .collect();
    db.write(|tx| {
        for item in &items {
            tx.execute(
                "INSERT INTO prices (item, cents, version, updated_by) VALUES (?1, 1000, 1, 'setup')",
                [item],
            )?;
        }
        Ok(())
    })
    .context("setting up the price list")?;
    // item -> (cents, version): the cache in front of the prices table.
    let cache: Mutex<HashMap<String, (i64, i64)>> = Mutex::new(HashMap::new());
    std::thread::scope(|s| {
        let writer = s.spawn(|| reprice(api, db, load, &items));
        let quoters = workers(load.workers, |_| quoter(api, db, load, &items, &cache));
        let writer = writer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the price writer panicked")));
        quoters.and(writer)
    })
}

/// The pricing back office, rewriting one price now and then.
fn reprice(api: &Service, db: &Db, load: &Load, items: &[String]) -> Result<()> {
    let mut rng = rng();
    let every = load.race_window * 2 + Duration::from_millis(20);
    loop {
        std::thread::sleep(every);
        if !load.running() {
            return Ok(());
        }
        let item = &items[rng.gen_range(0..items.len())];
        let req = api.request("price update");
        let cents = rng.gen_range(500..2000);
        db.write(|tx| {
            tx.execute(
                "UPDATE prices SET cents = ?1, version = version + 1, updated_by = ?2 WHERE item = ?3",
                params![cents, req.id(), item],
            )?;
            Ok(())
        })?;
        req.end();
    }
}

fn quoter(
    api: &Service,
    db: &Db,
    load: &Load,
    items: &[String],
    cache: &Mutex<HashMap<String, (i64, i64)>>,
) -> Result<()> {
    let mut rng = rng();
    while load.next_request() {
        let item = &items[rng.gen_range(0..items.len())];
        let req = api.request("POST /quote");
        let pending = check(&api.tracer, item.as_str())
            .context(&req.cx)
            .name("validate cached price")
            .source(Source::Cache);
        let cached = cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(item)
            .copied();
        let (cents, version) = match cached {
            Some(hit) if !rng.gen_bool(REFRESH_RATE) => hit,
            _ => {
                let fresh = db.read(|conn| {
                    conn.query_row(
                        "SELECT cents, version FROM prices WHERE item = ?1",
                        [item],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                })?;
                cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(item.clone(), fresh);
                fresh
            }
        };
        let checked = pending.version(version).allow();
        sleep_upto(&mut rng, load.race_window);
        let request_id = checked.request_id().to_string();
        let order = db.write(|tx| {
            let order = checked.use_("quote").name("place order");
            let (cents_now, version_now): (i64, i64) = tx.query_row(
                "SELECT cents, version FROM prices WHERE item = ?1",
                [item],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.execute(
                "INSERT INTO quotes (request_id, item, cached_version, quoted_cents, version_at_order, cents_at_order)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![request_id, item, version, cents, version_now, cents_now],
            )?;
            Ok(order.version(version_now))
        })?;
        order.ok();
        req.end();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_counts_orders_placed_on_another_version_than_the_cached_one() {
        let conn = super::super::db::test_conn(SCHEMA);
        conn.execute_batch(
            "INSERT INTO quotes VALUES
                ('a', 'i1', 3, 1000, 3, 1000),
                ('b', 'i1', 3, 1000, 4, 1200),
                ('c', 'i2', 1, 900, 5, 900);",
        )
        .unwrap();
        assert_eq!(truth(&conn).unwrap().get("stale_check"), 2);
    }
}
