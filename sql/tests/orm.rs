//! The interpreter over real statements: the database client spans that Django's ORM,
//! SQLAlchemy 2 (ORM and Core) and plain psycopg 3 produced against PostgreSQL, recorded by
//! OpenTelemetry's psycopg instrumentation with parameter capture
//! (`testdata/capture.py` wrote `testdata/orm_spans.jsonl`).
//!
//! Each line's expectation is written out here by its `what` (the ORM call that made the
//! span), as the correct reading of the statement: what it does, to which table, by which
//! key, with which parameter values, and what protects it. Statements that are no read or
//! write of one table (savepoints, `SHOW`, `SELECT version()`) must say "unsupported".

use std::collections::BTreeMap;

use toctou_sql::{
    interpret, parse_params, parse_params_for, Condition, DbCall, Operation, Param, Protection,
    TableName, ValueRef,
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/orm_spans.jsonl");

struct Span {
    source: String,
    what: String,
    attributes: BTreeMap<String, String>,
}

impl Span {
    fn text(&self) -> &str {
        self.attributes
            .get("db.statement")
            .or_else(|| self.attributes.get("db.query.text"))
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{}: neither db.statement nor db.query.text", self.what))
    }

    fn rendered(&self) -> Option<&str> {
        self.attributes
            .get("db.statement.parameters")
            .map(String::as_str)
    }
}

fn spans() -> Vec<Span> {
    let data = std::fs::read_to_string(FIXTURE).expect("testdata/orm_spans.jsonl");
    data.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("orm_spans.jsonl line {}: {e}", n + 1));
            let field = |k: &str| {
                v[k].as_str()
                    .unwrap_or_else(|| panic!("line {}: no {k}", n + 1))
                    .to_string()
            };
            let attributes = v["attributes"]
                .as_object()
                .unwrap_or_else(|| panic!("line {}: no attributes", n + 1))
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect();
            Span {
                source: field("source"),
                what: field("what"),
                attributes,
            }
        })
        .collect()
}

/// The correct reading of one DML statement.
struct Expect {
    operation: Operation,
    schema: Option<&'static str>,
    table: &'static str,
    /// The whole top-level `column = value` conjunction, in order.
    conditions: Vec<(&'static str, ValueRef)>,
    /// `UPDATE`'s `SET` / `INSERT`'s columns with their values, when checked.
    writes: Option<Vec<(&'static str, ValueRef)>>,
    /// Only the columns written, when the values are not checked.
    write_columns: Option<Vec<&'static str>>,
    protection: Protection,
    params: usize,
    /// (parameter index, its value) as `parse_params` reads the rendered parameters.
    values: Vec<(usize, &'static str)>,
}

fn dml(operation: Operation, table: &'static str, params: usize) -> Expect {
    Expect {
        operation,
        schema: None,
        table,
        conditions: Vec::new(),
        writes: None,
        write_columns: None,
        protection: Protection::None,
        params,
        values: Vec::new(),
    }
}

fn select(table: &'static str, params: usize) -> Expect {
    dml(Operation::Select, table, params)
}
fn insert(table: &'static str, params: usize) -> Expect {
    dml(Operation::Insert, table, params)
}
fn update(table: &'static str, params: usize) -> Expect {
    dml(Operation::Update, table, params)
}
fn delete(table: &'static str, params: usize) -> Expect {
    dml(Operation::Delete, table, params)
}

fn p(i: usize) -> ValueRef {
    ValueRef::Param(i)
}

impl Expect {
    fn schema(mut self, schema: &'static str) -> Self {
        self.schema = Some(schema);
        self
    }
    /// `column = value` in the predicate's top-level conjunction.
    fn by(mut self, column: &'static str, value: ValueRef) -> Self {
        self.conditions.push((column, value));
        self
    }
    fn value(mut self, index: usize, value: &'static str) -> Self {
        self.values.push((index, value));
        self
    }
    fn writes(mut self, writes: Vec<(&'static str, ValueRef)>) -> Self {
        self.writes = Some(writes);
        self
    }
    fn write_columns(mut self, columns: Vec<&'static str>) -> Self {
        self.write_columns = Some(columns);
        self
    }
    fn protected(mut self, protection: Protection) -> Self {
        self.protection = protection;
        self
    }
}

/// What each recorded span's statement is, by the ORM call that made it. `None`: no read or
/// write of one table, which the interpreter must refuse as "unsupported".
fn expectation(what: &str) -> Option<Expect> {
    // Not a glob: `Protection::None` would shadow `Option::None`.
    use Protection::{
        ForUpdate, GuardedRelative, InsertWhereNotExists, OnConflict, VersionPredicate,
    };
    let e = match what {
        // ---- Django 5.2 (psycopg 3, client-side binding: `%s`, a tuple) ----
        // Django sets the session time zone when it connects.
        "connect" => return None,
        "StockRecord.objects.get(product_id=...)" => select("partner_stockrecord", 1)
            .by("product_id", p(0))
            .value(0, "1"),
        // The lost update: every column written back, keyed by the primary key only.
        "stockrecord.save() full row" => update("partner_stockrecord", 5)
            .writes(vec![
                ("product_id", p(0)),
                ("partner_sku", p(1)),
                ("num_in_stock", p(2)),
                ("price", p(3)),
            ])
            .by("id", p(4))
            .value(2, "4")
            .value(3, "19.90")
            .value(4, "1"),
        "stockrecord.save(update_fields=[num_in_stock])" => update("partner_stockrecord", 2)
            .writes(vec![("num_in_stock", p(0))])
            .by("id", p(1))
            .value(0, "3")
            .value(1, "1"),
        "select_for_update().get(product_id=...) in atomic: SELECT" => {
            select("partner_stockrecord", 1)
                .by("product_id", p(0))
                .value(0, "1")
                .protected(ForUpdate)
        }
        "select_for_update().get(product_id=...) in atomic: UPDATE" => {
            update("partner_stockrecord", 2)
                .writes(vec![("num_in_stock", p(0))])
                .by("id", p(1))
                .value(1, "1")
        }
        // SET "num_in_stock" = ("partner_stockrecord"."num_in_stock" - %s)
        // WHERE ("partner_stockrecord"."num_in_stock" >= %s AND ..."product_id" = %s)
        "filter(product_id=..., num_in_stock__gte=1).update(num_in_stock=F()-1)" => {
            update("partner_stockrecord", 3)
                .writes(vec![("num_in_stock", ValueRef::Computed)])
                .by("product_id", p(2))
                .value(0, "1")
                .value(1, "1")
                .value(2, "2")
                .protected(GuardedRelative("num_in_stock".into()))
        }
        "Voucher.objects.get_or_create(code=...) new, in atomic: SELECT"
        | "Voucher.objects.get_or_create(code=...) existing" => {
            let code = if what.ends_with("existing") {
                "SUMMER10"
            } else {
                "WINTER20"
            };
            select("voucher_voucher", 1).by("code", p(0)).value(0, code)
        }
        "Voucher.objects.get_or_create(code=...) new, in atomic: SAVEPOINT"
        | "Voucher.objects.get_or_create(code=...) new, in atomic: RELEASE SAVEPOINT"
        | "Voucher.objects.create(code=existing) in atomic, IntegrityError caught: SAVEPOINT"
        | "Voucher.objects.create(code=existing) in atomic, IntegrityError caught: ROLLBACK TO"
        | "Voucher.objects.create(code=existing) in atomic, IntegrityError caught: RELEASE SAVEPOINT" => {
            return None
        }
        // The insert after the check: nothing in the statement protects it (the unique
        // constraint on code does, out of the statement's sight).
        "Voucher.objects.get_or_create(code=...) new, in atomic: INSERT"
        | "Voucher.objects.create(code=existing) in atomic, IntegrityError caught: INSERT" => {
            let code = if what.starts_with("Voucher.objects.create") {
                "SUMMER10"
            } else {
                "WINTER20"
            };
            insert("voucher_voucher", 2)
                .writes(vec![("code", p(0)), ("used", p(1))])
                .value(0, code)
                .value(1, "false")
        }
        "Voucher.objects.filter(code=...).update(used=True)" => update("voucher_voucher", 2)
            .writes(vec![("used", p(0))])
            .by("code", p(1))
            .value(0, "true")
            .value(1, "SUMMER10"),
        // DELETE ... WHERE "voucher_voucher"."id" IN (%s): the collector deletes by a list of
        // primary keys, here of one, which pins the column as `=` would.
        "voucher.delete()" => delete("voucher_voucher", 1)
            .by("id", p(0))
            .value(0, "2"),
        // Django 5.2's bulk insert: INSERT ... SELECT * FROM UNNEST((%s)::varchar[], ...),
        // one array parameter per column.
        "Basket.objects.bulk_create(3 rows)" => {
            insert("basket_basket", 2).write_columns(vec!["owner_email", "status"])
        }
        "StockRecord.objects.select_related(product).get(pk=...)" => {
            select("partner_stockrecord", 1)
                .by("id", p(0))
                .value(0, "1")
        }
        // WHERE "catalogue_product"."upc" = %s: a column of the joined table, not of
        // partner_stockrecord; no column of the table read is pinned by the statement.
        "StockRecord.objects.select_related(product).get(product__upc=...)" => {
            select("partner_stockrecord", 1)
        }
        // SELECT %s AS "a" FROM "basket_basket" WHERE (... = %s AND ... = %s) LIMIT 1
        "Basket.objects.filter(owner_email=..., status=Open).exists() then create(): SELECT" => {
            select("basket_basket", 3)
                .by("owner_email", p(1))
                .by("status", p(2))
                .value(1, "new@example.com")
                .value(2, "Open")
        }
        "Basket.objects.filter(owner_email=..., status=Open).exists() then create(): INSERT" => {
            insert("basket_basket", 2)
                .writes(vec![("owner_email", p(0)), ("status", p(1))])
                .value(0, "new@example.com")
        }
        "Basket.objects.filter(status=...).delete()" => delete("basket_basket", 1)
            .by("status", p(0))
            .value(0, "Closed"),

        // ---- SQLAlchemy 2 (psycopg dialect: `%(name)s`, a dict) ----
        "engine.connect() first connection: SELECT"
        | "engine.connect() first connection: SELECT #2"
        | "engine.connect() first connection: SHOW"
        | "engine.connect() first connection: SHOW #2" => return None,
        "session.get(Account, 1) then balance -= 10, commit: SELECT" => select("accounts", 1)
            .by("id", p(0))
            .value(0, "1"),
        // The unit of work's UPDATE: the balance computed in Python, keyed by id alone.
        "session.get(Account, 1) then balance -= 10, commit: UPDATE" => update("accounts", 2)
            .writes(vec![("balance", p(0))])
            .by("id", p(1))
            .value(0, "90.00")
            .value(1, "1"),
        "select(Account).where(owner == ...) then balance += 10, commit: SELECT" => {
            select("accounts", 1).by("owner", p(0)).value(0, "bob")
        }
        "select(Account).where(owner == ...) then balance += 10, commit: UPDATE" => {
            update("accounts", 2)
                .writes(vec![("balance", p(0))])
                .by("id", p(1))
                .value(0, "60.00")
                .value(1, "2")
        }
        "select(Account).where(id == ...).with_for_update() then commit: SELECT" => {
            select("accounts", 1)
                .by("id", p(0))
                .value(0, "2")
                .protected(ForUpdate)
        }
        "select(Account).where(id == ...).with_for_update() then commit: UPDATE" => {
            update("accounts", 2)
                .writes(vec![("balance", p(0))])
                .by("id", p(1))
                .value(1, "2")
        }
        "version_id_col: select(Item).where(sku == ...) then qty -= 1, commit: SELECT" => {
            select("items", 1)
                .schema("shop")
                .by("sku", p(0))
                .value(0, "KETTLE")
        }
        // SET qty=..., version_id=... WHERE shop.items.id = ... AND shop.items.version_id = ...
        "version_id_col: select(Item).where(sku == ...) then qty -= 1, commit: UPDATE" => {
            update("items", 4)
                .schema("shop")
                .writes(vec![("qty", p(0)), ("version_id", p(1))])
                .by("id", p(2))
                .by("version_id", p(3))
                .value(0, "4")
                .value(1, "2")
                .value(2, "1")
                .value(3, "1")
                .protected(VersionPredicate("version_id".into()))
        }
        "insert(User).values(email=...).on_conflict_do_nothing()" => insert("users", 1)
            .writes(vec![("email", p(0))])
            .value(0, "a@example.com")
            .protected(OnConflict),
        // SET qty=(shop.items.qty - %(qty_1)s) WHERE ... sku = %(sku_1)s AND qty >= %(qty_2)s
        "core update(Item).where(sku == ..., qty >= 2).values(qty=qty - 2)" => {
            update("items", 3)
                .schema("shop")
                .writes(vec![("qty", ValueRef::Computed)])
                .by("sku", p(1))
                .value(1, "KETTLE")
                .value(2, "2")
                .protected(GuardedRelative("qty".into()))
        }
        "session.delete(session.get(Hold, 1)), commit: SELECT" => select("holds", 1)
            .by("id", p(0))
            .value(0, "1"),
        "session.delete(session.get(Hold, 1)), commit: DELETE" => delete("holds", 1)
            .by("id", p(0))
            .value(0, "1"),
        "core delete(User).where(email == ...)" => delete("users", 1)
            .by("email", p(0))
            .value(0, "a@example.com"),

        // ---- plain psycopg 3 (older and current semantic conventions) ----
        "transfer: read both balances, two UPDATEs: SELECT"
        | "transfer: read both balances, two UPDATEs (semconv database): SELECT" => {
            select("wallets", 1).by("id", p(0)).value(0, "1")
        }
        "transfer: read both balances, two UPDATEs: SELECT #2"
        | "transfer: read both balances, two UPDATEs (semconv database): SELECT #2" => {
            select("wallets", 1).by("id", p(0)).value(0, "2")
        }
        // Balances computed in Python from the reads: nothing protects the writes.
        "transfer: read both balances, two UPDATEs: UPDATE"
        | "transfer: read both balances, two UPDATEs (semconv database): UPDATE" => {
            update("wallets", 2)
                .writes(vec![("balance", p(0))])
                .by("id", p(1))
                .value(1, "1")
        }
        "transfer: read both balances, two UPDATEs: UPDATE #2"
        | "transfer: read both balances, two UPDATEs (semconv database): UPDATE #2" => {
            update("wallets", 2)
                .writes(vec![("balance", p(0))])
                .by("id", p(1))
                .value(1, "2")
        }
        "INSERT ... SELECT ... WHERE NOT EXISTS"
        | "INSERT ... SELECT ... WHERE NOT EXISTS (semconv database)" => insert("seats", 3)
            .writes(vec![("seat", p(0)), ("holder", p(1))])
            .value(0, "12A")
            .value(1, "alice")
            .value(2, "12A")
            .protected(InsertWhereNotExists),
        // SET balance = balance - %(amount)s WHERE id = %(id)s AND balance >= %(amount)s
        "guarded debit with named parameters"
        | "guarded debit with named parameters (semconv database)" => update("wallets", 2)
            .writes(vec![("balance", ValueRef::Computed)])
            .by("id", p(1))
            .value(0, "2.25")
            .value(1, "1")
            .protected(GuardedRelative("balance".into())),
        other => panic!("orm_spans.jsonl: no expectation written for {other:?}"),
    };
    Some(e)
}

fn conditions(pairs: &[(&'static str, ValueRef)]) -> Vec<Condition> {
    pairs
        .iter()
        .map(|(c, v)| Condition {
            column: c.to_string(),
            value: v.clone(),
        })
        .collect()
}

/// Every mismatch of one span, described (all are collected, then reported together).
fn check(span: &Span, failures: &mut Vec<String>) {
    let text = span.text();
    let mut fail = |msg: String| {
        failures.push(format!(
            "[{}] {}\n    statement: {}\n    parameters: {}\n    {msg}",
            span.source,
            span.what,
            text,
            span.rendered().unwrap_or("(none)")
        ))
    };
    let Some(want) = expectation(&span.what) else {
        match interpret(text) {
            Ok(s) => fail(format!("read as {s:?}; want an \"unsupported\" refusal")),
            Err(e) if e.reason() != "unsupported" => fail(format!(
                "refused with reason {:?} ({e}); want \"unsupported\"",
                e.reason()
            )),
            Err(_) => {}
        }
        return;
    };
    let got = match interpret(text) {
        Ok(s) => s,
        Err(e) => {
            fail(format!("not read: {} ({e})", e.reason()));
            return;
        }
    };
    if got.operation != want.operation {
        fail(format!(
            "operation {:?}, want {:?}",
            got.operation, want.operation
        ));
    }
    let table = TableName {
        schema: want.schema.map(str::to_string),
        name: want.table.to_string(),
    };
    if got.table != table {
        fail(format!("table {:?}, want {table:?}", got.table));
    }
    let want_conditions = conditions(&want.conditions);
    if got.conditions != want_conditions {
        fail(format!(
            "conditions {:?}, want {want_conditions:?}",
            got.conditions
        ));
    }
    if let Some(writes) = &want.writes {
        let want_writes = conditions(writes);
        if got.writes != want_writes {
            fail(format!("writes {:?}, want {want_writes:?}", got.writes));
        }
    }
    if let Some(columns) = &want.write_columns {
        let got_columns: Vec<&str> = got.writes.iter().map(|w| w.column.as_str()).collect();
        if got_columns != *columns {
            fail(format!("written columns {got_columns:?}, want {columns:?}"));
        }
    }
    if got.protection != want.protection {
        fail(format!(
            "protection {:?}, want {:?}",
            got.protection, want.protection
        ));
    }
    if got.params != want.params {
        fail(format!("{} parameters, want {}", got.params, want.params));
    }
    if want.values.is_empty() {
        return;
    }
    let Some(rendered) = span.rendered() else {
        fail("no db.statement.parameters recorded".into());
        return;
    };
    match parse_params_for(rendered, &got.names) {
        Err(e) => fail(format!("parse_params: {e}")),
        Ok(values) => {
            for (index, value) in &want.values {
                let want_value = Param::Text(value.to_string());
                if values.get(*index) != Some(&want_value) {
                    fail(format!(
                        "parameter {index} is {:?}, want {want_value:?}",
                        values.get(*index)
                    ));
                }
            }
        }
    }
}

#[test]
fn real_orm_statements_read_as_what_they_do() {
    let spans = spans();
    let mut failures = Vec::new();
    for span in &spans {
        check(span, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} of {} recorded statements misread:\n\n{}",
        failures.len(),
        spans.len(),
        failures.join("\n\n")
    );
}

/// Every rendering the instrumentation recorded is a list of parameters, the same length as
/// the statement's placeholders: psycopg's tuples with driver wrappers (`Int4(4)`,
/// `Decimal('19.90')`), Django's lists, the dicts of named parameters (SQLAlchemy, psycopg
/// with `%(name)s`), and the renderings of none at all (`None`, SQLAlchemy's
/// `immutabledict({})`).
#[test]
fn every_recorded_parameter_rendering_reads() {
    let spans = spans();
    let mut failures = Vec::new();
    for span in &spans {
        let Some(rendered) = span.rendered() else {
            continue;
        };
        match parse_params(rendered) {
            Err(e) => failures.push(format!("{}: {rendered:?}: {e}", span.what)),
            Ok(values) => {
                let want = match expectation(&span.what) {
                    Some(e) => e.params,
                    // Django's `SELECT set_config('TimeZone', %s, false)`, ['UTC'].
                    None if span.what == "connect" => 1,
                    None => 0,
                };
                if values.len() != want {
                    failures.push(format!(
                        "{}: {rendered:?}: {} values, want {want}",
                        span.what,
                        values.len()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} renderings misread:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The fixture is what the instrumentations write: both conventions, every source, each
/// span a database call `DbCall` takes.
#[test]
fn the_fixture_is_real_spans_of_each_source() {
    let spans = spans();
    for source in ["django", "sqlalchemy", "psycopg"] {
        assert!(
            spans.iter().filter(|s| s.source == source).count() >= 10,
            "few spans of {source}"
        );
    }
    let current = spans
        .iter()
        .filter(|s| s.attributes.contains_key("db.query.text"))
        .count();
    assert!(current > 0, "no span under the current conventions");
    for span in &spans {
        let call = DbCall::from_attributes(
            span.attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .unwrap_or_else(|| panic!("{}: not a database call", span.what));
        assert_eq!(call.system, Some("postgresql"), "{}", span.what);
        assert_eq!(call.namespace, Some("toctou_orm"), "{}", span.what);
        assert_eq!(call.text, Some(span.text()), "{}", span.what);
        if span.attributes.contains_key("db.query.text") {
            assert!(
                !span.attributes.contains_key("db.statement"),
                "{}: the current conventions only",
                span.what
            );
        }
    }
}
