//! Payment webhooks: the provider delivers each event one to three times, concurrently;
//! a handler checks that the event's idempotency key has no charge yet, then charges.
//! Concurrent redeliveries both pass the check: real double charges.

use super::db::Db;
use super::load::{count, rng, sleep_upto, workers, Counts, Load};
use super::telemetry::Service;
use anyhow::Result;
use rand::Rng;
use rusqlite::{params, OptionalExtension};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use toctou_instrument::{check, Source};

pub const SCHEMA: &str = "
-- One row per provider event once it has been charged; every charge bumps its version.
CREATE TABLE payment_events (
    event TEXT PRIMARY KEY,
    charges INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TRIGGER payment_events_inserted AFTER INSERT ON payment_events BEGIN
    INSERT INTO audit (action, resource, version, request_id)
    VALUES ('update', NEW.event, NEW.version, NEW.updated_by);
END;
CREATE TRIGGER payment_events_updated AFTER UPDATE ON payment_events BEGIN
    INSERT INTO audit (action, resource, version, request_id)
    VALUES ('update', NEW.event, NEW.version, NEW.updated_by);
END;
CREATE TABLE charges (
    id INTEGER PRIMARY KEY,
    event TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_id TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    version_before INTEGER NOT NULL
);
";

/// What happened, from the tables: every charge beyond the first of an idempotency key is
/// a double charge.
pub fn truth(conn: &rusqlite::Connection) -> Result<Counts> {
    Ok(Counts::default().kind(
        "duplicate_use",
        count(
            conn,
            "SELECT coalesce(sum(n - 1), 0) FROM
                (SELECT count(*) AS n FROM charges GROUP BY idempotency_key)",
        )?,
    ))
}

pub fn run(api: &Service, db: &Db, load: &Load) -> Result<()> {
    let next = AtomicU64::new(0);
    workers(load.workers, |_| {
        let mut rng = rng();
        while load.next_request() {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let key = format!("evt_{}_{n:07}", load.run);
            let event = load.resource("payments", &key);
            let deliveries = rng.gen_range(1..=3);
            let window = load.race_window;
            // Redeliveries arrive within the race window of each other.
            let delays: Vec<Duration> = (0..deliveries)
                .map(|_| Duration::from_micros(rng.gen_range(0..=window.as_micros() as u64)))
                .collect();
            std::thread::scope(|s| {
                let handlers: Vec<_> = delays
                    .into_iter()
                    .map(|delay| {
                        let (key, event) = (&key, &event);
                        s.spawn(move || {
                            std::thread::sleep(delay);
                            deliver(api, db, load, key, event)
                        })
                    })
                    .collect();
                handlers.into_iter().try_for_each(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a webhook handler panicked")))
                })
            })?;
        }
        Ok(())
    })
}

fn deliver(api: &Service, db: &Db, load: &Load, key: &str, event: &str) -> Result<()> {
    let mut rng = rng();
    let req = api.request("POST /webhooks/payment");
    let pending = check(&api.tracer, event)
        .context(&req.cx)
        .name("idempotency check")
        .idempotency_key(key)
        .source(Source::Primary);
    let seen: Option<(i64, i64)> = db.read(|conn| {
        conn.query_row(
            "SELECT charges, version FROM payment_events WHERE event = ?1",
            [event],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
    })?;
    let (charges, version) = seen.unwrap_or((0, 0));
    let checked = pending.version(version).decide(charges == 0);
    if !checked.is_allowed() {
        req.end();
        return Ok(());
    }
    sleep_upto(&mut rng, load.race_window);
    let request_id = checked.request_id().to_string();
    let amount = rng.gen_range(500..50_000);
    let charge = db.write(|tx| {
        let charge = checked.use_("charge");
        let before: i64 = tx.query_row(
            "INSERT INTO payment_events (event, charges, version, updated_by) VALUES (?1, 1, 1, ?2)
             ON CONFLICT (event) DO UPDATE SET
                 charges = charges + 1, version = version + 1, updated_by = excluded.updated_by
             RETURNING version - 1",
            params![event, request_id],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO charges (event, idempotency_key, request_id, amount_cents, version_before)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![event, key, request_id, amount, before],
        )?;
        Ok(charge.version(before))
    })?;
    charge.ok();
    req.end();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_counts_every_charge_beyond_the_first_of_a_key() {
        let conn = super::super::db::test_conn(SCHEMA);
        conn.execute_batch(
            "INSERT INTO charges (event, idempotency_key, request_id, amount_cents, version_before) VALUES
                ('payments/r/evt_1', 'evt_1', 'a', 100, 0),
                ('payments/r/evt_2', 'evt_2', 'b', 100, 0),
                ('payments/r/evt_2', 'evt_2', 'c', 100, 1),
                ('payments/r/evt_3', 'evt_3', 'd', 100, 0),
                ('payments/r/evt_3', 'evt_3', 'e', 100, 1),
                ('payments/r/evt_3', 'evt_3', 'f', 100, 2);",
        )
        .unwrap();
        assert_eq!(truth(&conn).unwrap().get("duplicate_use"), 3);
        let empty = super::super::db::test_conn(SCHEMA);
        assert_eq!(truth(&empty).unwrap().get("duplicate_use"), 0);
    }

    #[test]
    fn the_upsert_audits_the_first_charge_and_each_redelivery() {
        let conn = super::super::db::test_conn(SCHEMA);
        for req in ["a", "b"] {
            conn.execute(
                "INSERT INTO payment_events (event, charges, version, updated_by) VALUES ('e', 1, 1, ?1)
                 ON CONFLICT (event) DO UPDATE SET
                     charges = charges + 1, version = version + 1, updated_by = excluded.updated_by",
                [req],
            )
            .unwrap();
        }
        let rows = super::super::db::audit_rows_after(&conn, 0).unwrap();
        let seen: Vec<_> = rows
            .iter()
            .map(|r| (r.version, r.request_id.as_deref()))
            .collect();
        assert_eq!(seen, vec![(Some(1), Some("a")), (Some(2), Some("b"))]);
    }
}
