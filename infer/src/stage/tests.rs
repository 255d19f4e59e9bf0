//! The stage fed by hand-made spans and change records, its output decided by the real
//! engine: what a lost update, a check-then-insert and their protected forms come to, in
//! either arrival order.

use super::*;
use std::collections::BTreeMap;
use toctou_correlator::{Config as EngineConfig, Engine};
use toctou_schema::{DbStatement, FindingKind};

const MS: u64 = 1_000_000;
/// Wall time the tests run at: far from the events' own times, as a replay would be.
const NOW: u64 = 1_000_000 * MS;

fn trace(n: u8) -> TraceId {
    [n; 16]
}

fn db(t: u8, span: u8, start_ms: u64, end_ms: u64, sql: &str, params: &str) -> DbSpanEvent {
    DbSpanEvent {
        trace_id: trace(t),
        span_id: [span; 8],
        root: false,
        start_ns: start_ms * MS,
        end_ns: end_ms * MS,
        service: "shop".into(),
        request_id: None,
        route: None,
        statement: Some(DbStatement {
            system: "postgresql".into(),
            text: sql.into(),
            params: if params.is_empty() {
                DbParams::None
            } else {
                DbParams::Rendered(params.into())
            },
            status: None,
            failed: false,
        }),
    }
}

fn root(t: u8, route: &str) -> DbSpanEvent {
    DbSpanEvent {
        trace_id: trace(t),
        span_id: [0xee; 8],
        root: true,
        start_ns: 0,
        end_ns: 100 * MS,
        service: "shop".into(),
        request_id: None,
        route: Some(route.into()),
        statement: None,
    }
}

/// A committed change of `table` with key `id`, its row's columns, at `at_ms`.
fn change(
    op: Op,
    table: &str,
    id: &str,
    columns: &[(&str, &str)],
    at_ms: u64,
    tx: u32,
) -> (AuditEvent, RowChange) {
    let c = RowChange {
        op,
        schema: "public".into(),
        table: table.into(),
        key: vec![("id".into(), id.into())],
        row_version: columns
            .iter()
            .find(|(c, _)| *c == "version")
            .map(|(_, v)| v.to_string()),
        position: u64::from(tx) * 100,
        index: 0,
        tx: tx.to_string(),
        request_id: None,
        commit_time_ns: at_ms * MS,
        columns: columns
            .iter()
            .map(|(c, v)| (c.to_string(), v.to_string()))
            .collect(),
    };
    let audit = toctou_cdc::Mapping::new("postgres").audit(&c);
    (audit, c)
}

struct Run {
    stage: Inference,
    engine: Engine,
    findings: Vec<Finding>,
}

impl Run {
    fn new() -> Run {
        Run {
            stage: Inference::new(Config {
                hold: std::time::Duration::from_millis(500),
                settle: std::time::Duration::from_millis(250),
                ..Config::default()
            }),
            engine: Engine::new(EngineConfig::default()).unwrap(),
            findings: Vec::new(),
        }
    }

    fn feed(&mut self, events: Vec<Event>) {
        for e in events {
            self.engine.ingest(e, NOW, &mut self.findings);
        }
    }

    fn span(&mut self, d: DbSpanEvent) {
        let mut out = Vec::new();
        self.stage.on_db(d, NOW, &mut out);
        self.feed(out);
    }

    fn change(&mut self, (audit, c): (AuditEvent, RowChange)) {
        let mut out = Vec::new();
        self.stage.on_change(audit, Some(c), NOW, &mut out);
        self.feed(out);
    }

    /// The change records and the spans, the ones or the others first.
    fn both(
        &mut self,
        changes: impl IntoIterator<Item = (AuditEvent, RowChange)>,
        spans: impl IntoIterator<Item = DbSpanEvent>,
        changes_first: bool,
    ) {
        let (changes, spans): (Vec<_>, Vec<_>) =
            (changes.into_iter().collect(), spans.into_iter().collect());
        if changes_first {
            changes.into_iter().for_each(|c| self.change(c));
            spans.into_iter().for_each(|d| self.span(d));
        } else {
            spans.into_iter().for_each(|d| self.span(d));
            changes.into_iter().for_each(|c| self.change(c));
        }
    }

    fn finish(mut self) -> (Vec<Finding>, Stats, RiskReport) {
        let mut out = Vec::new();
        self.stage.tick(NOW + 10_000 * MS, &mut out);
        self.stage.flush(&mut out);
        self.feed(out);
        self.engine.flush(NOW + 20_000 * MS, &mut self.findings);
        self.stage.annotate(&mut self.findings);
        (self.findings, self.stage.stats(), self.stage.risks())
    }
}

const READ: &str = "SELECT stock, version FROM items WHERE id = %s";
const SAVE: &str = "UPDATE items SET stock = %s, version = %s WHERE id = %s";

fn item(stock: &str, version: &str, at_ms: u64, tx: u32) -> (AuditEvent, RowChange) {
    change(
        Op::Update,
        "items",
        "1",
        &[("id", "1"), ("stock", stock), ("version", version)],
        at_ms,
        tx,
    )
}

/// Two requests read version 4 of item 1; A's save commits first, B's replaces it.
fn lost_update(r: &mut Run, b_stock: &str, changes_first: bool) {
    // Version 4 committed before anyone read it (a table nothing pairs yet: passed on).
    r.change(item("10", "4", 5, 1));
    let spans = [
        db(1, 1, 10, 11, READ, "(1,)"),
        db(2, 1, 12, 13, READ, "(1,)"),
        db(1, 2, 20, 21, SAVE, "(9, 5, 1)"),
        db(2, 2, 22, 28, SAVE, &format!("({b_stock}, 5, 1)")),
    ];
    if changes_first {
        // The table is paired once a pair was seen: a first request makes it so.
        r.span(db(9, 1, 1, 2, READ, "(7,)"));
        r.span(db(9, 2, 3, 4, SAVE, "(1, 2, 7)"));
        r.change(item("9", "5", 21, 2));
        r.change(item(b_stock, "5", 29, 3));
        for s in spans {
            r.span(s);
        }
    } else {
        for s in spans {
            r.span(s);
        }
        r.change(item("9", "5", 21, 2));
        r.change(item(b_stock, "5", 29, 3));
    }
    r.span(root(1, "/buy/<id>"));
    r.span(root(2, "/buy/<id>"));
}

#[test]
fn a_lost_update_is_the_second_save_in_either_arrival_order() {
    for changes_first in [false, true] {
        let mut r = Run::new();
        lost_update(&mut r, "8", changes_first);
        let (findings, stats, risks) = r.finish();
        assert_eq!(findings.len(), 1, "{changes_first}: {findings:#?}");
        let f = &findings[0];
        assert_eq!(f.kind, FindingKind::StaleCheck);
        assert_eq!(f.trace_id, hex_id(&trace(2)));
        assert_eq!(f.resource, "public.items/1");
        assert_eq!(f.checked_version.as_deref(), Some("4"));
        assert_eq!(f.used_version.as_deref(), Some("5"));
        assert_eq!(f.intervening.len(), 1);
        assert_eq!(
            f.intervening[0].request_id.as_deref(),
            Some(hex_id(&trace(1)).as_str())
        );
        let inferred = f.inferred.as_ref().expect("marked inferred");
        assert_eq!(inferred.statements, [READ, SAVE]);
        assert_eq!(inferred.matched_by, "key_and_values");
        assert_eq!(stats.pairs.get("matched"), Some(&2), "{stats:?}");
        let buy: Vec<_> = risks
            .risks
            .iter()
            .filter(|r| r.endpoint == "/buy/<id>")
            .collect();
        assert_eq!(buy.len(), 1, "{risks:#?}");
        assert_eq!(buy[0].kind, "lost_update");
        assert_eq!(buy[0].requests, 2);
    }
}

#[test]
fn saves_alike_are_told_apart_by_time_and_say_so() {
    let mut r = Run::new();
    lost_update(&mut r, "9", false);
    let (findings, _, _) = r.finish();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let f = &findings[0];
    assert_eq!(f.kind, FindingKind::StaleCheck);
    assert_eq!(
        f.trace_id,
        hex_id(&trace(2)),
        "the later write takes the later commit"
    );
    assert_eq!(
        f.inferred.as_ref().unwrap().matched_by,
        "key_and_values, then time among 2 writes alike"
    );
}

#[test]
fn a_check_then_insert_twice_is_one_duplicate() {
    let mut r = Run::new();
    let check = "SELECT 1 FROM users WHERE email = %s";
    let insert = "INSERT INTO users (email) VALUES (%s)";
    for t in [1, 2] {
        let at = 10 + u64::from(t);
        r.span(db(t, 1, at, at + 1, check, "('a@example.com',)"));
        r.span(db(t, 2, at + 10, at + 11, insert, "('a@example.com',)"));
    }
    let user = |id: &str, at_ms: u64, tx: u32| {
        change(
            Op::Insert,
            "users",
            id,
            &[("id", id), ("email", "a@example.com")],
            at_ms,
            tx,
        )
    };
    r.change(user("17", 22, 5));
    r.change(user("18", 23, 6));
    let (findings, stats, _) = r.finish();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let f = &findings[0];
    assert_eq!(f.kind, FindingKind::DuplicateUse);
    assert_eq!(f.resource, "public.users[email=a@example.com]");
    assert_eq!(f.trace_id, hex_id(&trace(2)));
    assert_eq!(f.prior_use.as_ref().unwrap().trace_id, hex_id(&trace(1)));
    assert_eq!(
        f.inferred.as_ref().unwrap().matched_by,
        "values, then time among 2 writes alike"
    );
    assert_eq!(stats.pairs.get("matched"), Some(&2));
}

#[test]
fn protected_pairs_and_rolled_back_writes_are_no_findings() {
    let mut r = Run::new();
    let locked = "SELECT stock, version FROM items WHERE id = %s FOR UPDATE";
    r.span(db(1, 1, 10, 11, locked, "(1,)"));
    r.span(db(1, 2, 20, 21, SAVE, "(9, 5, 1)"));
    r.span(db(
        2,
        1,
        10,
        11,
        "SELECT 1 FROM users WHERE email = %s",
        "('b@example.com',)",
    ));
    let on_conflict = "INSERT INTO users (email) VALUES (%s) ON CONFLICT (email) DO NOTHING";
    r.span(db(2, 2, 20, 21, on_conflict, "('b@example.com',)"));
    r.span(db(
        3,
        1,
        10,
        11,
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "",
    ));
    r.span(db(3, 2, 12, 13, READ, "(2,)"));
    r.span(db(3, 3, 20, 21, SAVE, "(9, 5, 2)"));
    // Read, then a write whose transaction rolled back: no change ever comes.
    r.span(db(4, 1, 10, 11, READ, "(3,)"));
    r.span(db(4, 2, 20, 21, SAVE, "(9, 5, 3)"));
    let mut refused = db(5, 2, 20, 21, SAVE, "(9, 5, 4)");
    let st = refused.statement.as_mut().unwrap();
    st.status = Some("40001".into());
    st.failed = true;
    r.span(db(5, 1, 10, 11, READ, "(4,)"));
    r.span(refused);
    r.change(item("9", "5", 21, 2));
    let (findings, stats, risks) = r.finish();
    assert_eq!(findings, [], "nothing raced");
    assert_eq!(stats.pairs.get("protected"), Some(&3), "{stats:?}");
    assert_eq!(stats.pairs.get("unmatched"), Some(&1), "{stats:?}");
    assert_eq!(stats.pairs.get("prevented"), Some(&1), "{stats:?}");
    // Risks: only the unprotected read then write that went through (request 4; request
    // 5's write was refused).
    assert_eq!(risks.risks.len(), 1, "{risks:#?}");
    assert_eq!(risks.risks[0].requests, 1);
    assert_eq!(risks.risks[0].endpoint, "unknown");
}

#[test]
fn without_parameters_risks_only() {
    let mut r = Run::new();
    r.span(db(1, 1, 10, 11, READ, ""));
    r.span(db(1, 2, 20, 21, SAVE, ""));
    r.span(root(1, "/buy/<id>"));
    r.change(item("9", "5", 21, 2));
    let (findings, stats, risks) = r.finish();
    assert_eq!(findings, []);
    assert_eq!(stats.pairs.get("matched"), None);
    assert_eq!(risks.risks.len(), 1);
    assert_eq!(risks.risks[0].endpoint, "/buy/<id>");
}

#[test]
fn write_spans_later_than_the_hold_still_pair_where_versions_decide() {
    let mut r = Run::new();
    // Database calls were seen before: changes are held.
    r.span(db(9, 1, 1, 2, "SELECT 1", ""));
    r.change(item("10", "4", 5, 1));
    r.change(item("9", "5", 21, 2));
    r.change(item("8", "5", 29, 3));
    // The hold runs out before any span of the two requests arrives.
    let mut out = Vec::new();
    r.stage.tick(NOW + 1_000 * MS, &mut out);
    r.feed(out);
    for s in [
        db(1, 1, 10, 11, READ, "(1,)"),
        db(2, 1, 12, 13, READ, "(1,)"),
        db(1, 2, 20, 21, SAVE, "(9, 5, 1)"),
        db(2, 2, 22, 28, SAVE, "(8, 5, 1)"),
    ] {
        r.span(s);
    }
    let (findings, stats, _) = r.finish();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let f = &findings[0];
    assert_eq!(f.kind, FindingKind::StaleCheck);
    assert_eq!(f.trace_id, hex_id(&trace(2)));
    assert_eq!(
        f.inferred.as_ref().unwrap().matched_by,
        "key_and_values, after its change record went on"
    );
    assert_eq!(stats.pairs.get("matched"), Some(&2), "{stats:?}");
    assert_eq!(stats.changes.get("unattributed"), Some(&3), "{stats:?}");
}

#[test]
fn four_buyers_of_one_version_three_lost() {
    for changes_first in [false, true] {
        let mut r = Run::new();
        r.span(db(9, 1, 1, 2, "SELECT 1", ""));
        r.change(item("967", "16", 5, 1));
        let writes = [("966", 1u8), ("964", 2), ("964", 3), ("965", 4)];
        let mut spans = Vec::new();
        for (stock, t) in writes {
            spans.push(db(t, 1, 10 + u64::from(t), 11 + u64::from(t), READ, "(2,)"));
            spans.push(db(
                t,
                2,
                20 + u64::from(t),
                40,
                SAVE,
                &format!("({stock}, 17, 2)"),
            ));
        }
        let changes = [
            item("966", "17", 30, 2),
            item("964", "17", 31, 3),
            item("965", "17", 32, 4),
            item("964", "17", 33, 5),
        ];
        let changes: Vec<_> = changes
            .into_iter()
            .map(|(mut a, mut c)| {
                a.resource = "public.items/2".into();
                c.key = vec![("id".into(), "2".into())];
                (a, c)
            })
            .collect();
        r.both(changes, spans, changes_first);
        let (findings, stats, _) = r.finish();
        assert_eq!(findings.len(), 3, "{changes_first} {stats:?} {findings:#?}");
    }
}

#[test]
fn hashed_keys_name_no_tested_value() {
    let mut r = Run::new();
    r.stage = Inference::new(Config {
        hold: std::time::Duration::from_millis(500),
        settle: std::time::Duration::from_millis(250),
        hash_keys: true,
        ..Config::default()
    });
    let check = "SELECT 1 FROM users WHERE email = %s";
    let insert = "INSERT INTO users (email) VALUES (%s)";
    for t in [1, 2] {
        let at = 10 + u64::from(t);
        r.span(db(t, 1, at, at + 1, check, "('a@example.com',)"));
        r.span(db(t, 2, at + 10, at + 11, insert, "('a@example.com',)"));
    }
    for (id, tx) in [("17", 5), ("18", 6)] {
        r.change(change(
            Op::Insert,
            "users",
            id,
            &[("id", id), ("email", "a@example.com")],
            22,
            tx,
        ));
    }
    let (findings, _, _) = r.finish();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let resource = &findings[0].resource;
    assert!(resource.starts_with("public.users[email=#"), "{resource}");
    assert!(!resource.contains("example.com"), "{resource}");
}

const ALLOCATE: &str = "UPDATE items SET stock = stock - %s WHERE id = %s";

/// A change of item 1 with only its stock (no version column).
fn stock(stock: &str, at_ms: u64, tx: u32) -> (AuditEvent, RowChange) {
    change(
        Op::Update,
        "items",
        "1",
        &[("id", "1"), ("stock", stock)],
        at_ms,
        tx,
    )
}

/// Three unguarded decrements of one row, alike (no value the change can show): A's
/// started first but waited for the lock longest, so it committed last. Each change is its
/// writer's that ended last by the commit (a waiting statement returns only after the
/// holder committed), not the one that started first. B checked before any commit: fresh;
/// C saw none of B's; A saw neither B's nor C's.
#[test]
fn decrements_alike_are_told_apart_by_lock_order_not_start() {
    for changes_first in [false, true] {
        let mut r = Run::new();
        r.change(stock("30", 1, 1));
        let spans = [
            db(1, 1, 10, 11, READ, "(1,)"),
            db(2, 1, 12, 13, READ, "(1,)"),
            db(3, 1, 14, 15, READ, "(1,)"),
            db(2, 2, 21, 22, ALLOCATE, "(2, 1)"),
            db(3, 2, 22, 24, ALLOCATE, "(2, 1)"),
            db(1, 2, 20, 26, ALLOCATE, "(2, 1)"),
        ];
        let changes = [stock("28", 23, 2), stock("26", 25, 3), stock("24", 27, 4)];
        r.span(db(9, 1, 0, 1, "SELECT 1", ""));
        r.both(changes, spans, changes_first);
        let (findings, stats, _) = r.finish();
        let stale: BTreeMap<String, usize> = findings
            .iter()
            .map(|f| {
                assert_eq!(f.kind, FindingKind::StaleCheck, "{f:#?}");
                (f.trace_id.clone(), f.intervening.len())
            })
            .collect();
        let expected = BTreeMap::from([(hex_id(&trace(1)), 2), (hex_id(&trace(3)), 1)]);
        assert_eq!(stale, expected, "{changes_first}: {findings:#?}");
        assert_eq!(
            stats.pairs.get("matched"),
            Some(&3),
            "{changes_first}: {stats:?}"
        );
        assert_eq!(stats.undecided, 0);
    }
}

/// A read during which another request's commit landed, with no version to tell whether it
/// saw it: counted undecided, not reported.
#[test]
fn a_commit_during_a_versionless_read_is_undecided() {
    let mut r = Run::new();
    r.span(db(1, 1, 20, 25, READ, "(1,)"));
    r.change(stock("28", 23, 2));
    r.span(db(1, 2, 30, 31, ALLOCATE, "(2, 1)"));
    r.change(stock("26", 32, 3));
    let (findings, stats, _) = r.finish();
    assert_eq!(findings, []);
    assert_eq!(stats.pairs.get("matched"), Some(&1), "{stats:?}");
    assert_eq!(stats.undecided, 1);
}

/// An ORM reading a stock record by its product, then saving it by its key: the read pairs
/// with the write through its filter, when the written row's image shows the product; a
/// read of another product's records did not read it.
#[test]
fn a_read_by_another_column_pairs_through_the_row_image() {
    let read = "SELECT stock.id, stock.qty FROM stock WHERE stock.product_id = %s";
    let save = "UPDATE stock SET qty = %s WHERE stock.id = %s";
    let row = |qty: &str, at_ms: u64, tx: u32| {
        change(
            Op::Update,
            "stock",
            "9",
            &[("id", "9"), ("product_id", "3"), ("qty", qty)],
            at_ms,
            tx,
        )
    };
    let mut r = Run::new();
    r.span(db(1, 1, 10, 11, read, "(3,)"));
    r.span(db(2, 1, 12, 13, read, "(3,)"));
    r.span(db(3, 1, 12, 13, read, "(4,)"));
    r.span(db(1, 2, 20, 21, save, "(9, 9)"));
    r.span(db(2, 2, 23, 24, save, "(8, 9)"));
    r.span(db(3, 2, 27, 28, save, "(7, 9)"));
    r.change(row("9", 22, 2));
    r.change(row("8", 25, 3));
    r.change(row("7", 29, 4));
    let (findings, stats, _) = r.finish();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let f = &findings[0];
    assert_eq!(f.kind, FindingKind::StaleCheck);
    assert_eq!(
        f.trace_id,
        hex_id(&trace(2)),
        "read product 3 before 1's save"
    );
    assert_eq!(f.resource, "public.stock/9");
    assert_eq!(f.intervening.len(), 1);
    assert_eq!(stats.pairs.get("matched"), Some(&2), "{stats:?}");
    assert_eq!(stats.pairs.get("other_rows"), Some(&1), "{stats:?}");
}

/// Autocommit decrements of one row from two processes, each exporting its own spans: B's
/// statement waited for A's lock, so it ends after A's; B's spans arrive first. Each
/// statement's commit falls inside it, so nothing but the order of their ends tells whose
/// change is whose: the changes wait for their settle (a statement that ended after the
/// commit leaves it in doubt), then the first to end takes the first commit. B read before
/// A's commit: B's check was stale, not A's.
#[test]
fn alike_writes_of_two_processes_wait_for_their_settle() {
    for changes_first in [true, false] {
        let mut r = Run::new();
        r.change(stock("30", 1, 1));
        r.span(db(9, 1, 0, 1, "SELECT 1", ""));
        let spans = [
            // Process 2 (B) exports first.
            db(2, 1, 12, 13, READ, "(1,)"),
            db(2, 2, 21, 26, ALLOCATE, "(2, 1)"),
            // Then process 1 (A).
            db(1, 1, 10, 11, READ, "(1,)"),
            db(1, 2, 20, 23, ALLOCATE, "(2, 1)"),
        ];
        let changes = [stock("28", 22, 2), stock("26", 25, 3)];
        r.both(changes, spans, changes_first);
        let (findings, stats, _) = r.finish();
        assert_eq!(findings.len(), 1, "{changes_first}: {findings:#?}");
        assert_eq!(findings[0].trace_id, hex_id(&trace(2)), "{changes_first}");
        assert_eq!(
            findings[0].intervening[0].request_id.as_deref(),
            Some(hex_id(&trace(1)).as_str())
        );
        assert_eq!(stats.pairs.get("matched"), Some(&2), "{stats:?}");
    }
}
