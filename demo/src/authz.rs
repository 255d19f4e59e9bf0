//! Document editing under an access policy that an admin keeps changing: a request is
//! authorized against the policy's current version, then the grant may be revoked before
//! the edit. Half the handlers re-check at the write and are refused (403); the others edit
//! under a policy that no longer holds. Edits also race each other (stale checks).

use super::db::Db;
use super::load::{count, rng, sleep_upto, workers, Counts, Load};
use super::telemetry::Service;
use anyhow::{Context as _, Result};
use rand::Rng;
use rusqlite::{params, OptionalExtension, Transaction};
use std::time::Duration;
use toctou_instrument::{check, Source};

pub const SCHEMA: &str = "
CREATE TABLE policies (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TRIGGER policies_changed AFTER UPDATE ON policies BEGIN
    INSERT INTO audit (action, resource, version, request_id)
    VALUES ('policy_change', NEW.name, NEW.version, NEW.updated_by);
END;
CREATE TABLE grants (
    policy TEXT NOT NULL,
    user TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    PRIMARY KEY (policy, user)
);
CREATE TABLE docs (
    doc TEXT PRIMARY KEY,
    edits INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE TRIGGER docs_inserted AFTER INSERT ON docs BEGIN
    INSERT INTO audit (action, resource, version, request_id)
    VALUES ('update', NEW.doc, NEW.version, NEW.updated_by);
END;
CREATE TRIGGER docs_updated AFTER UPDATE ON docs BEGIN
    INSERT INTO audit (action, resource, version, request_id)
    VALUES ('update', NEW.doc, NEW.version, NEW.updated_by);
END;
-- One row per authorized edit request: what the check saw, what held at the write.
CREATE TABLE edits (
    request_id TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    user TEXT NOT NULL,
    checked_policy_version INTEGER NOT NULL,
    checked_version INTEGER NOT NULL,
    policy_version_at_use INTEGER NOT NULL,
    version_before INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('edited', 'refused'))
);
";

const USERS: usize = 6;
const DOCS: u64 = 50;

/// What happened, from the tables: an edit refused at the write after an allowing check,
/// or made under another policy version than the one checked, acted on a revoked
/// authorization; an edit under the checked policy whose pre-image is not the checked
/// version acted on a stale check.
pub fn truth(conn: &rusqlite::Connection) -> Result<Counts> {
    Ok(Counts::default()
        .kind(
            "authz_drift",
            count(
                conn,
                "SELECT count(*) FROM edits
                 WHERE outcome = 'refused' OR policy_version_at_use <> checked_policy_version",
            )?,
        )
        .kind(
            "stale_check",
            count(
                conn,
                "SELECT count(*) FROM edits
                 WHERE outcome = 'edited' AND policy_version_at_use = checked_policy_version
                   AND version_before <> checked_version",
            )?,
        ))
}

pub fn run(api: &Service, db: &Db, load: &Load) -> Result<()> {
    let policy = load.resource("policies", "docs-acl");
    db.write(|tx| {
        tx.execute(
            "INSERT INTO policies (name, version, updated_by) VALUES (?1, 1, 'setup')",
            [&policy],
        )?;
        for u in 0..USERS {
            tx.execute(
                "INSERT INTO grants (policy, user, allowed) VALUES (?1, ?2, 1)",
                params![policy, format!("user-{u}")],
            )?;
        }
        Ok(())
    })
    .context("setting up the docs policy")?;
    std::thread::scope(|s| {
        let admin = s.spawn(|| admin(db, load, &policy));
        let editors = workers(load.workers, |_| editor(api, db, load, &policy));
        let admin = admin
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the admin panicked")));
        editors.and(admin)
    })
}

/// An admin toggling one user's grant now and then: each change is a new policy version.
fn admin(db: &Db, load: &Load, policy: &str) -> Result<()> {
    let mut rng = rng();
    let every = load.race_window * 4 + Duration::from_millis(50);
    let mut n = 0u64;
    loop {
        std::thread::sleep(every);
        if !load.running() {
            return Ok(());
        }
        n += 1;
        let user = format!("user-{}", rng.gen_range(0..USERS));
        db.write(|tx| {
            tx.execute(
                "UPDATE grants SET allowed = 1 - allowed WHERE policy = ?1 AND user = ?2",
                params![policy, user],
            )?;
            tx.execute(
                "UPDATE policies SET version = version + 1, updated_by = ?2 WHERE name = ?1",
                params![policy, format!("admin-change-{n}")],
            )?;
            Ok(())
        })?;
    }
}

/// The policy version and whether `user` may edit, as of `conn`'s snapshot.
fn authorization(
    conn: &rusqlite::Connection,
    policy: &str,
    user: &str,
) -> rusqlite::Result<(i64, bool)> {
    conn.query_row(
        "SELECT p.version, g.allowed FROM policies p JOIN grants g ON g.policy = p.name
         WHERE p.name = ?1 AND g.user = ?2",
        params![policy, user],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? == 1)),
    )
}

fn doc_version(conn: &rusqlite::Connection, doc: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT version FROM docs WHERE doc = ?1", [doc], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}

fn editor(api: &Service, db: &Db, load: &Load, policy: &str) -> Result<()> {
    let mut rng = rng();
    while load.next_request() {
        let user = format!("user-{}", rng.gen_range(0..USERS));
        let doc = load.resource("docs", format!("doc-{}", rng.gen_range(0..DOCS)));
        let req = api.request("PUT /docs/:id");
        let pending = check(&api.tracer, doc.as_str())
            .context(&req.cx)
            .name("authorize")
            .actor(user.as_str())
            .source(Source::Primary);
        // One snapshot for the policy and the document.
        let (policy_version, allowed, seen_version) = db.read(|conn| {
            let tx = conn.unchecked_transaction()?;
            let (pv, allowed) = authorization(&tx, policy, &user)?;
            let v = doc_version(&tx, &doc)?;
            tx.finish()?;
            Ok((pv, allowed, v))
        })?;
        let checked = pending
            .policy(policy, policy_version)
            .version(seen_version)
            .decide(allowed);
        if !checked.is_allowed() {
            req.end();
            continue;
        }
        sleep_upto(&mut rng, load.race_window);
        let recheck = rng.gen_bool(0.5);
        let request_id = checked.request_id().to_string();
        let (edit, refused) = db.write(|tx| {
            // Under the write lock, so the policy in force at the use's start is the one in
            // force when the edit commits: admin changes are writes too.
            let edit = checked.use_("edit").name("edit doc");
            let (policy_now, allowed_now) = authorization(tx, policy, &user)?;
            let refused = recheck && !allowed_now;
            let before = if refused {
                doc_version(tx, &doc)?
            } else {
                upsert_doc(tx, &doc, &request_id)?
            };
            tx.execute(
                "INSERT INTO edits (request_id, doc, user, checked_policy_version, checked_version,
                                    policy_version_at_use, version_before, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    request_id,
                    doc,
                    user,
                    policy_version,
                    seen_version,
                    policy_now,
                    before,
                    if refused { "refused" } else { "edited" }
                ],
            )?;
            Ok((edit.version(before), refused))
        })?;
        if refused {
            edit.denied();
        } else {
            edit.ok();
        }
        req.end();
    }
    Ok(())
}

/// Applies one edit; returns the version it overwrote (0: the document is new).
fn upsert_doc(tx: &Transaction<'_>, doc: &str, request_id: &str) -> rusqlite::Result<i64> {
    tx.query_row(
        "INSERT INTO docs (doc, edits, version, updated_by) VALUES (?1, 1, 1, ?2)
         ON CONFLICT (doc) DO UPDATE SET
             edits = edits + 1, version = version + 1, updated_by = excluded.updated_by
         RETURNING version - 1",
        params![doc, request_id],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_counts_refusals_and_policy_drift_before_staleness() {
        let conn = super::super::db::test_conn(SCHEMA);
        conn.execute_batch(
            "INSERT INTO edits VALUES
                ('fresh', 'd1', 'u', 3, 5, 3, 5, 'edited'),
                ('stale', 'd1', 'u', 3, 5, 3, 6, 'edited'),
                ('drift', 'd1', 'u', 3, 5, 4, 5, 'edited'),
                ('drift-and-stale', 'd1', 'u', 3, 5, 4, 7, 'edited'),
                ('refused', 'd2', 'u', 3, 1, 4, 1, 'refused');",
        )
        .unwrap();
        let c = truth(&conn).unwrap();
        assert_eq!(c.get("authz_drift"), 3);
        assert_eq!(c.get("stale_check"), 1);
    }

    #[test]
    fn a_policy_change_is_audited_as_policy_change_with_its_new_version() {
        let conn = super::super::db::test_conn(SCHEMA);
        conn.execute_batch(
            "INSERT INTO policies VALUES ('policies/r/docs-acl', 1, 'setup');
             INSERT INTO grants VALUES ('policies/r/docs-acl', 'user-1', 1);",
        )
        .unwrap();
        assert_eq!(
            authorization(&conn, "policies/r/docs-acl", "user-1").unwrap(),
            (1, true)
        );
        conn.execute_batch(
            "UPDATE grants SET allowed = 0 WHERE user = 'user-1';
             UPDATE policies SET version = version + 1, updated_by = 'admin-change-1';",
        )
        .unwrap();
        assert_eq!(
            authorization(&conn, "policies/r/docs-acl", "user-1").unwrap(),
            (2, false)
        );
        let rows = super::super::db::audit_rows_after(&conn, 0).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].action.as_str(), "policy_change");
        assert_eq!(rows[0].resource, "policies/r/docs-acl");
        assert_eq!(rows[0].version, Some(2));
    }
}
