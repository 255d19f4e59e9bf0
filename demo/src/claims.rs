//! A claims controller with two replicas reconciling the same pods: each checks that the
//! pod has no claim, creates one, provisions it and marks it finalized. Both replicas can
//! pass the check; the create is an upsert, so the second silently re-creates the claim
//! (a duplicate create) and restarts its provisioning; a replica that dies while
//! provisioning leaves the claim half-made (created, never finalized).

use super::db::Db;
use super::load::{count, rng, sleep_upto, workers, Counts, Load};
use super::telemetry::Service;
use anyhow::Result;
use rand::Rng;
use rusqlite::{params, OptionalExtension};
use std::sync::atomic::{AtomicU64, Ordering};
use toctou_instrument::{check, Source};
use toctou_schema::conventions::OPERATION_CREATE;

pub const SCHEMA: &str = "
CREATE TABLE claims (
    pod TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    creates INTEGER NOT NULL,
    finalized INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TRIGGER claims_created AFTER INSERT ON claims BEGIN
    INSERT INTO audit (action, resource, version, request_id)
    VALUES ('create', NEW.pod, NEW.version, NEW.updated_by);
END;
CREATE TRIGGER claims_recreated AFTER UPDATE OF creates ON claims
WHEN NEW.creates > OLD.creates BEGIN
    INSERT INTO audit (action, resource, version, request_id)
    VALUES ('create', NEW.pod, NEW.version, NEW.updated_by);
END;
CREATE TRIGGER claims_finalized AFTER UPDATE OF finalized ON claims
WHEN NEW.finalized = 1 BEGIN
    INSERT INTO audit (action, resource, version, request_id)
    VALUES ('finalize', NEW.pod, NEW.version, NEW.updated_by);
END;
";

/// How often a replica dies between the create and the finalize.
const CRASH_RATE: f64 = 0.1;

/// What happened, from the table: every create of a pod's claim beyond the first is a
/// duplicate; a claim whose last create was not finalized is half-made.
pub fn truth(conn: &rusqlite::Connection) -> Result<Counts> {
    Ok(Counts::default()
        .kind(
            "duplicate_use",
            count(conn, "SELECT coalesce(sum(creates - 1), 0) FROM claims")?,
        )
        .kind(
            "partial_create",
            count(conn, "SELECT count(*) FROM claims WHERE finalized = 0")?,
        ))
}

pub fn run(replicas: [&Service; 2], db: &Db, load: &Load) -> Result<()> {
    let next = AtomicU64::new(0);
    workers(load.workers, |_| {
        while load.next_request() {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let pod = load.resource("claims", format!("pod-{n:06}"));
            // Both replicas see the new pod and reconcile it at about the same time.
            std::thread::scope(|s| {
                let handles: Vec<_> = replicas
                    .iter()
                    .map(|replica| {
                        let pod = &pod;
                        s.spawn(move || reconcile(replica, db, load, pod))
                    })
                    .collect();
                handles.into_iter().try_for_each(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a replica panicked")))
                })
            })?;
        }
        Ok(())
    })
}

fn reconcile(replica: &Service, db: &Db, load: &Load, pod: &str) -> Result<()> {
    let mut rng = rng();
    sleep_upto(&mut rng, load.race_window);
    let req = replica.request("reconcile pod");
    let pending = check(&replica.tracer, pod)
        .context(&req.cx)
        .name("claim exists?")
        .source(Source::Primary);
    let seen: Option<i64> = db.read(|conn| {
        conn.query_row("SELECT version FROM claims WHERE pod = ?1", [pod], |r| {
            r.get(0)
        })
        .optional()
    })?;
    let checked = pending.version(seen.unwrap_or(0)).decide(seen.is_none());
    if !checked.is_allowed() {
        req.end();
        return Ok(());
    }
    sleep_upto(&mut rng, load.race_window);
    let request_id = checked.request_id().to_string();
    let create = db.write(|tx| {
        let create = checked.use_(OPERATION_CREATE).name("create claim");
        let before: i64 = tx.query_row(
            "INSERT INTO claims (pod, owner, creates, finalized, version, updated_by)
             VALUES (?1, ?2, 1, 0, 1, ?2)
             ON CONFLICT (pod) DO UPDATE SET
                 owner = excluded.owner, creates = creates + 1, finalized = 0,
                 version = version + 1, updated_by = excluded.updated_by
             RETURNING version - 1",
            params![pod, request_id],
            |r| r.get(0),
        )?;
        Ok(create.version(before))
    })?;
    create.ok();
    if rng.gen_bool(CRASH_RATE) {
        // The replica dies while provisioning: no finalize ever comes.
        req.end();
        return Ok(());
    }
    sleep_upto(&mut rng, load.race_window);
    db.write(|tx| {
        tx.execute(
            "UPDATE claims SET finalized = 1, version = version + 1, updated_by = ?1 WHERE pod = ?2",
            params![request_id, pod],
        )?;
        Ok(())
    })?;
    req.end();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_counts_extra_creates_and_unfinalized_claims() {
        let conn = super::super::db::test_conn(SCHEMA);
        conn.execute_batch(
            "INSERT INTO claims VALUES
                ('claims/r/pod-1', 'a', 1, 1, 2, 'a'),
                ('claims/r/pod-2', 'b', 2, 1, 4, 'a'),
                ('claims/r/pod-3', 'a', 1, 0, 1, 'a'),
                ('claims/r/pod-4', 'b', 2, 0, 3, 'b');",
        )
        .unwrap();
        let c = truth(&conn).unwrap();
        assert_eq!(c.get("duplicate_use"), 2);
        assert_eq!(c.get("partial_create"), 2);
    }

    #[test]
    fn triggers_audit_creates_recreates_and_finalizes_in_order() {
        let conn = super::super::db::test_conn(SCHEMA);
        let upsert = "INSERT INTO claims (pod, owner, creates, finalized, version, updated_by)
             VALUES ('p', ?1, 1, 0, 1, ?1)
             ON CONFLICT (pod) DO UPDATE SET
                 owner = excluded.owner, creates = creates + 1, finalized = 0,
                 version = version + 1, updated_by = excluded.updated_by";
        conn.execute(upsert, ["a"]).unwrap();
        conn.execute(
            "UPDATE claims SET finalized = 1, version = version + 1, updated_by = 'a' WHERE pod = 'p'",
            [],
        )
        .unwrap();
        conn.execute(upsert, ["b"]).unwrap();
        let rows = super::super::db::audit_rows_after(&conn, 0).unwrap();
        let seen: Vec<_> = rows
            .iter()
            .map(|r| (r.action.as_str(), r.version, r.request_id.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("create", Some(1), Some("a")),
                ("finalize", Some(2), Some("a")),
                ("create", Some(3), Some("b")),
            ]
        );
        // b's re-create left the claim unfinished again.
        assert_eq!(truth(&conn).unwrap().get("partial_create"), 1);
    }
}
