//! The racing workload of the change-stream tests, whatever carries the database's changes to
//! toctou (its own slot reader, Debezium through Kafka, Debezium's HTTP sink), and the check
//! of toctou's findings against the database's own account of what happened.
//!
//! Two tables. On `inventory` (four rows), flows 0-3 read a row's version (the check span),
//! wait a little, then decrement its stock in a transaction that names its request
//! (`toctou.request_id`), `RETURNING version` telling which version the write acted on (the
//! use span carries it); flow 4 writes only if the version is still the one read
//! (compare-and-swap); flow 5 reads under the row's lock (`SELECT ... FOR UPDATE`) and writes
//! in the same transaction. A plain writer, with no span and no message, updates the same
//! rows: an actor nothing instruments. On `claims` (three keys), flows 6-7 check whether a
//! key is claimed (absent: version 0), wait, then claim it with an upsert; a plain deleter
//! releases claims now and then. Two flows claiming one free key insert it twice (the second
//! upsert updates what the first inserted); a claim deleted under a check is created again.
//!
//! Ground truth is the database's: a flow's check was stale exactly when the version its
//! write acted on is not the one it read. toctou must report a `stale_check` for exactly those
//! flows and nothing else, with the database's writes as the evidence.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use toctou_schema::now_ns;
use tokio_postgres::{Client, NoTls};

pub fn pg_url() -> String {
    std::env::var("TOCTOU_TEST_POSTGRES_URL")
        .expect("TOCTOU_TEST_POSTGRES_URL: start one with scripts/postgres start")
}

pub async fn client() -> Client {
    let (client, conn) = tokio_postgres::connect(&pg_url(), NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

/// Waits until the reader of `toctou` has created its slot and reads it: its own log line says
/// so once `pg_create_logical_replication_slot` has returned, that is once the slot is
/// consistent. (The slot's row in `pg_replication_slots` appears while it is still being
/// created, waiting for the transactions running then to end.)
pub async fn wait_for_slot(admin: &Client, slot: &str, toctou: &super::Toctou) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !toctou
        .log()
        .contains("reading the PostgreSQL change stream")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the reader did not start in 30 s:\n{}",
            toctou.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = admin
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    assert!(
        listed.is_some(),
        "the reader reads no slot {slot}; log:\n{}",
        toctou.log()
    );
}

/// Drops a test's replication slot (it keeps WAL otherwise). A reader stopped a moment ago
/// may still hold it: tried for up to 5 s.
pub async fn drop_slot(admin: &Client, slot: &str) {
    for _ in 0..50 {
        let dropped = admin
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await;
        if dropped.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A suffix unique to this test process and moment, for tables, slots and publications.
pub fn suffix() -> String {
    format!("{}_{}", std::process::id(), now_ns() % 1_000_000_000)
}

fn span(phase: &str, resource: &str, request: &str, version: i64, start: u64, end: u64) -> Value {
    let attr = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let outcome = if version < 0 { "conflict" } else { "ok" };
    let version = version.abs();
    let trace = format!("{:032x}", fnv(request));
    let span_id = format!("{:016x}", fnv(&format!("{request}/{phase}")) as u64);
    json!({
        "traceId": trace, "spanId": span_id, "name": phase, "kind": 1,
        "startTimeUnixNano": start.to_string(), "endTimeUnixNano": end.to_string(),
        "attributes": [
            attr("toctou.phase", phase), attr("toctou.resource", resource),
            attr("toctou.request_id", request), attr("toctou.resource.version", &version.to_string()),
            attr("toctou.operation", "reserve"), attr("toctou.use.outcome", outcome),
        ]
    })
}

/// A stable 128-bit hash (FNV-1a), for ids derived from the request id.
fn fnv(s: &str) -> u128 {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in s.bytes() {
        h ^= b as u128;
        h = h.wrapping_mul(0x0000000001000000000000000000013b);
    }
    h | 1
}

/// The workload's tables.
#[derive(Clone, Debug)]
pub struct Tables {
    pub inventory: String,
    pub claims: String,
}

/// Creates the tables (and, with `publication`, `pub_<suffix>` for them).
pub async fn create_tables(admin: &Client, suffix: &str, publication: bool) -> Tables {
    let t = Tables {
        inventory: format!("inventory_{suffix}"),
        claims: format!("claims_{suffix}"),
    };
    let (inventory, claims) = (&t.inventory, &t.claims);
    admin
        .batch_execute(&format!(
            "CREATE TABLE {inventory} (sku text PRIMARY KEY, stock int NOT NULL, version bigint NOT NULL);
             INSERT INTO {inventory} SELECT 'sku-' || g, 1000000, 1 FROM generate_series(1, 4) g;
             CREATE TABLE {claims} (k text PRIMARY KEY, version bigint NOT NULL);"
        ))
        .await
        .unwrap();
    if publication {
        admin
            .batch_execute(&format!(
                "CREATE PUBLICATION pub_{suffix} FOR TABLE {inventory}, {claims};"
            ))
            .await
            .unwrap();
    }
    t
}

/// What one flow did, by the database's account.
#[derive(Debug)]
pub struct Flow {
    pub request: String,
    pub resource: String,
    pub checked: i64,
    /// The version the write acted on (its RETURNING version minus one; 0: it created the
    /// row).
    pub acted_on: i64,
    /// A compare-and-swap that found another version, and so wrote nothing.
    pub conflict: bool,
    /// 0-3: check then write; 4: compare-and-swap; 5: under the row's lock; 6-7: claims.
    pub style: usize,
    /// The end of its check span, and the start of its use span.
    pub check_end: u64,
    pub use_start: u64,
}

/// What the workload did, by its own record.
#[derive(Debug)]
pub struct Workload {
    pub flows: Vec<Flow>,
    /// The plain writer's (resource, version) on `inventory`.
    pub produced: BTreeSet<(String, i64)>,
    /// The plain deleter's deletes of a claim: its resource, and when the DELETE was sent (it
    /// committed after).
    pub deletes: Vec<(String, u64)>,
}

impl Workload {
    /// Row changes the database committed: every flow's write but refused swaps, and the
    /// plain actors'.
    pub fn changes(&self) -> usize {
        self.flows.iter().filter(|f| !f.conflict).count() + self.produced.len() + self.deleted()
    }

    /// Claims the plain deleter deleted.
    pub fn deleted(&self) -> usize {
        self.deletes.len()
    }

    pub fn stale(&self) -> BTreeMap<&str, &Flow> {
        self.flows
            .iter()
            .filter(|f| f.acted_on != f.checked)
            .map(|f| (f.request.as_str(), f))
            .collect()
    }
}

/// Sends one OTLP/JSON traces body to toctou.
pub type Post = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Runs the flows and the plain actors to their end; `rounds` per flow.
pub async fn run(tables: &Tables, rounds: usize, post: Post) -> Workload {
    let stop = Arc::new(AtomicBool::new(false));
    let plain = {
        let (table, stop) = (tables.inventory.clone(), stop.clone());
        tokio::spawn(async move {
            let c = client().await;
            let mut produced = BTreeSet::new();
            let mut i = 0;
            while !stop.load(Relaxed) {
                let sku = format!("sku-{}", i % 4 + 1);
                let row = c
                    .query_one(
                        &format!("UPDATE {table} SET stock = stock + 1, version = version + 1 WHERE sku = $1 RETURNING version"),
                        &[&sku],
                    )
                    .await
                    .unwrap();
                produced.insert((format!("public.{table}/{sku}"), row.get(0)));
                i += 1;
                tokio::time::sleep(Duration::from_millis(37)).await;
            }
            produced
        })
    };
    let deleter = {
        let (table, stop) = (tables.claims.clone(), stop.clone());
        tokio::spawn(async move {
            let c = client().await;
            let (mut deletes, mut i) = (Vec::new(), 0);
            while !stop.load(Relaxed) {
                let k = format!("k-{}", i % 3 + 1);
                let sent = now_ns();
                let n = c
                    .execute(&format!("DELETE FROM {table} WHERE k = $1"), &[&k])
                    .await
                    .unwrap();
                if n > 0 {
                    deletes.push((format!("public.{table}/{k}"), sent));
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(53)).await;
            }
            deletes
        })
    };
    let mut flows = Vec::new();
    for f in 0..8 {
        let (tables, post) = (tables.clone(), post.clone());
        flows.push(tokio::spawn(async move {
            let mut c = client().await;
            let mut done = Vec::new();
            for i in 0..rounds {
                let request = format!("req-{f}-{i}");
                let flow = if f < 6 {
                    inventory_round(&mut c, &tables.inventory, f, i, &request).await
                } else {
                    claim_round(&mut c, &tables.claims, f, i, &request).await
                };
                let (flow, check, use_) = flow;
                let body = json!({"resourceSpans": [{
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]},
                    "scopeSpans": [{"spans": [check, use_]}]
                }]});
                post(body.to_string()).await;
                done.push(flow);
            }
            done
        }));
    }
    let mut all = Vec::new();
    for f in flows {
        all.extend(f.await.unwrap());
    }
    stop.store(true, Relaxed);
    Workload {
        flows: all,
        produced: plain.await.unwrap(),
        deletes: deleter.await.unwrap(),
    }
}

async fn inventory_round(
    c: &mut Client,
    table: &str,
    f: usize,
    i: usize,
    request: &str,
) -> (Flow, Value, Value) {
    let sku = format!("sku-{}", (f + i) % 4 + 1);
    let resource = format!("public.{table}/{sku}");
    let locked = f == 5;
    let tx = c.transaction().await.unwrap();
    let check_start = now_ns();
    let lock = if locked { " FOR UPDATE" } else { "" };
    let checked: i64 = tx
        .query_one(
            &format!("SELECT version FROM {table} WHERE sku = $1{lock}"),
            &[&sku],
        )
        .await
        .unwrap()
        .get(0);
    let check_end = now_ns();
    let tx = if locked {
        tx
    } else {
        tx.commit().await.unwrap();
        c.transaction().await.unwrap()
    };
    tokio::time::sleep(Duration::from_millis(20 + (i as u64 * 7) % 40)).await;
    let use_start = now_ns();
    tx.execute(toctou_instrument::REQUEST_ID_SQL, &[&request])
        .await
        .unwrap();
    let cas = if f == 4 {
        " AND version = $2"
    } else {
        " AND $2::bigint > 0"
    };
    let new: Option<i64> = tx
        .query_opt(
            &format!("UPDATE {table} SET stock = stock - 1, version = version + 1 WHERE sku = $1{cas} RETURNING version"),
            &[&sku, &checked],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    tx.commit().await.unwrap();
    let use_end = now_ns();
    // A compare-and-swap that found another version wrote nothing: a conflict.
    let (acted_on, used) = match new {
        Some(n) => (n - 1, n - 1),
        None => (checked, -checked),
    };
    (
        Flow {
            request: request.into(),
            resource: resource.clone(),
            checked,
            acted_on,
            conflict: new.is_none(),
            style: f,
            check_end,
            use_start,
        },
        span("check", &resource, request, checked, check_start, check_end),
        span("use", &resource, request, used, use_start, use_end),
    )
}

async fn claim_round(
    c: &mut Client,
    table: &str,
    f: usize,
    i: usize,
    request: &str,
) -> (Flow, Value, Value) {
    // Both claim flows take the same key each round, so they race for it; every fourth
    // round a key nobody has held, which both find free: one of them inserts it twice.
    let k = match i % 4 {
        3 => format!("new-{i}"),
        _ => format!("k-{}", i % 3 + 1),
    };
    let resource = format!("public.{table}/{k}");
    let check_start = now_ns();
    let checked: i64 = c
        .query_opt(&format!("SELECT version FROM {table} WHERE k = $1"), &[&k])
        .await
        .unwrap()
        .map_or(0, |r| r.get(0));
    let check_end = now_ns();
    tokio::time::sleep(Duration::from_millis(15 + (i as u64 * 11) % 45)).await;
    let use_start = now_ns();
    let tx = c.transaction().await.unwrap();
    tx.execute(toctou_instrument::REQUEST_ID_SQL, &[&request])
        .await
        .unwrap();
    let new: i64 = tx
        .query_one(
            &format!("INSERT INTO {table} VALUES ($1, 1) ON CONFLICT (k) DO UPDATE SET version = {table}.version + 1 RETURNING version"),
            &[&k],
        )
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    let use_end = now_ns();
    (
        Flow {
            request: request.into(),
            resource: resource.clone(),
            checked,
            acted_on: new - 1,
            conflict: false,
            style: f,
            check_end,
            use_start,
        },
        span("check", &resource, request, checked, check_start, check_end),
        span("use", &resource, request, new - 1, use_start, use_end),
    )
}

/// A finding as the API serves it, or as ClickHouse's row becomes in that shape.
pub fn from_clickhouse_row(row: &Value) -> Value {
    let n = row["intervening.action"].as_array().map_or(0, Vec::len);
    let intervening: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "action": row["intervening.action"][i],
                "version": row["intervening.version"][i],
                "request_id": row["intervening.request_id"][i],
                "actor": row["intervening.actor"][i],
            })
        })
        .collect();
    json!({
        "kind": row["kind"], "request_id": row["request_id"], "resource": row["resource"],
        "intervening": intervening,
    })
}

/// What the check counted, for the test's report line.
#[derive(Debug)]
pub struct Verdict {
    pub flows: usize,
    pub conflicts: usize,
    pub stale: usize,
    pub plain_named: usize,
    pub duplicate_inserts: usize,
    pub deletes_under_check: usize,
}

/// Asserts that `findings` are exactly the stale checks of `w`, with the database's writes as
/// their evidence. `log` is printed on failure.
pub fn assert_exact(findings: &[Value], w: &Workload, log: &dyn Fn() -> String) -> Verdict {
    assert_exact_with(findings, w, log, &|_| true)
}

/// [`assert_exact`], the evidence checked only for the requests `evidence_of` names (after a
/// restart, a pair decided again lacks the writes the first process had confirmed).
pub fn assert_exact_with(
    findings: &[Value],
    w: &Workload,
    log: &dyn Fn() -> String,
    evidence_of: &dyn Fn(&str) -> bool,
) -> Verdict {
    // Compare-and-swap and locked flows never act on a version they did not check: the
    // database refused the swap (a prevented race) or the lock kept others out.
    assert!(w
        .flows
        .iter()
        .filter(|f| f.style == 4 || f.style == 5)
        .all(|f| f.acted_on == f.checked));
    let stale = w.stale();
    assert!(
        !stale.is_empty(),
        "the workload raced nowhere: nothing to find"
    );
    assert!(
        stale.len() < w.flows.len(),
        "every flow raced: nothing to leave alone"
    );
    let found: BTreeMap<&str, &Value> = findings
        .iter()
        .filter(|f| f["kind"] == "stale_check")
        .map(|f| (f["request_id"].as_str().unwrap(), f))
        .collect();
    let missing: Vec<_> = stale.keys().filter(|r| !found.contains_key(*r)).collect();
    let extra: Vec<_> = found.keys().filter(|r| !stale.contains_key(*r)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "stale checks by request: missing {missing:?} (stale by the database), extra {extra:?}; flows: {:?}; log:\n{}",
        missing.iter().chain(&extra).filter_map(|r| w.flows.iter().find(|f| f.request == **r)).collect::<Vec<_>>(),
        log()
    );
    let others: Vec<&Value> = findings
        .iter()
        .filter(|f| f["kind"] != "stale_check")
        .collect();
    assert!(others.is_empty(), "no other kind: {others:#?}");
    let (mut plain_named, mut duplicate_inserts, mut deletes_under_check) = (0, 0, 0);
    for (request, flow) in &stale {
        let f = found[request];
        assert_eq!(f["resource"], json!(flow.resource));
        if !evidence_of(request) {
            continue;
        }
        let intervening = f["intervening"].as_array().unwrap();
        for w in intervening {
            assert_ne!(w["request_id"], json!(request), "its own write: {f:#}");
            assert!(w["actor"].as_str().unwrap().starts_with("txid:"), "{w}");
        }
        if flow.style < 6 {
            // The intervening writes are the database's: versions in (checked, acted on],
            // and the plain writer's transactions among them wherever it produced one.
            assert!(!intervening.is_empty(), "{f:#}");
            for w in intervening {
                let v: i64 = w["version"].as_str().unwrap().parse().unwrap();
                assert!(
                    v > flow.checked && v <= flow.acted_on,
                    "{w} outside ({}, {}]",
                    flow.checked,
                    flow.acted_on
                );
            }
            let by_plain: BTreeSet<i64> = (flow.checked + 1..=flow.acted_on)
                .filter(|v| w.produced.contains(&(flow.resource.clone(), *v)))
                .collect();
            let named: BTreeSet<i64> = intervening
                .iter()
                .filter(|w| w["request_id"].is_null())
                .map(|w| w["version"].as_str().unwrap().parse().unwrap())
                .collect();
            assert_eq!(named, by_plain, "the plain writer's writes in {f:#}");
            plain_named += named.len();
        } else if flow.checked == 0 {
            // Claimed a free key that another flow inserted meanwhile: that insert is the
            // evidence.
            duplicate_inserts += 1;
            assert!(
                intervening
                    .iter()
                    .any(|w| w["action"] == "create" && !w["request_id"].is_null()),
                "a duplicate insert without the other insert: {f:#}"
            );
        } else if flow.acted_on == 0 {
            // Its claim was deleted under the check and created again. A delete sent between
            // the check's end and the use's start is between them by any clock: it must be
            // named. (One that committed between the check's read and the end of its span is
            // before the check by the span's clock: the verdict, by versions, stands; the
            // evidence may lack it.)
            deletes_under_check += 1;
            let named = intervening
                .iter()
                .any(|w| w["action"] == "delete" && w["request_id"].is_null());
            let after_check = w.deletes.iter().any(|(resource, sent)| {
                *resource == flow.resource && flow.check_end < *sent && *sent < flow.use_start
            });
            assert!(
                named || !after_check,
                "a delete sent between the check and the use, not named: {f:#}"
            );
        }
    }
    assert!(plain_named > 0, "the plain writer never intervened");
    assert!(
        duplicate_inserts > 0,
        "no two flows ever inserted one claim"
    );
    Verdict {
        flows: w.flows.len(),
        conflicts: w.flows.iter().filter(|f| f.conflict).count(),
        stale: stale.len(),
        plain_named,
        duplicate_inserts,
        deletes_under_check,
    }
}

/// Sends each body to `url` (an OTLP/HTTP traces endpoint), with a bearer token when given;
/// every one must be answered 2xx.
pub fn post_to(url: String, token: Option<String>) -> Post {
    let http = reqwest::Client::new();
    Arc::new(move |body| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        Box::pin(async move {
            let mut request = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let resp = request.send().await.expect("posting OTLP/JSON");
            assert!(resp.status().is_success(), "{url}: {}", resp.status());
        })
    })
}

/// Waits up to `seconds` until `counted` reaches `target`; says `what` and the log if not.
pub async fn wait_for_count(
    counted: impl AsyncFn() -> f64,
    target: f64,
    seconds: u64,
    what: &str,
    log: &dyn Fn() -> String,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let n = counted().await;
        if n >= target {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {n} of {target} in {seconds} s; log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The series `toctou run` counts the change stream's audit records in.
pub const CDC_EVENTS: &str = "toctou_events_total{signal=\"cdc\",phase=\"audit\"}";

/// For a `toctou run` that got the workload `w`, `before` change-stream records counted
/// before it: waits until every change has arrived and the stale checks are decided, checks
/// the findings against the database (see [`assert_exact`]) and that each change came once.
/// Returns the verdict and the metrics text.
pub async fn assert_run_exact(
    toctou: &super::Toctou,
    w: &Workload,
    before: f64,
) -> (Verdict, String) {
    let events = || async { toctou.metric(CDC_EVENTS).await };
    wait_for_count(
        events,
        before + w.changes() as f64,
        120,
        "changes arrived",
        &|| toctou.log(),
    )
    .await;
    let stale = w.stale().len();
    toctou
        .wait_for(Duration::from_secs(60), |f| {
            f.iter().filter(|f| f["kind"] == "stale_check").count() >= stale
        })
        .await;
    // A little longer: nothing more may come.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let findings = toctou.findings().await;
    let verdict = assert_exact(&findings, w, &|| toctou.log());
    let text = toctou.metrics().await;
    assert_eq!(
        super::metric(&text, CDC_EVENTS),
        before + w.changes() as f64,
        "each change once"
    );
    (verdict, text)
}

/// Polls ClickHouse's findings (under FINAL, in the API's shape) until `stale` stale checks
/// are there or 90 s pass, then a little longer, so that an extra one would show too.
pub async fn clickhouse_findings(url: &str, db: &str, stale: usize) -> Vec<Value> {
    let query = "SELECT kind, request_id, resource, intervening.action, intervening.version, \
                 intervening.request_id, intervening.actor FROM findings FINAL FORMAT JSONEachRow";
    let read = || async {
        super::clickhouse::sql(url, db, query)
            .await
            .lines()
            .map(|l| from_clickhouse_row(&serde_json::from_str(l).unwrap()))
            .collect::<Vec<Value>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let found = read().await;
        let n = found.iter().filter(|f| f["kind"] == "stale_check").count();
        if n >= stale || std::time::Instant::now() > deadline {
            tokio::time::sleep(Duration::from_secs(3)).await;
            return read().await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Distributed mode around a change-stream reader: a broker, ClickHouse, the events topic, a
/// collector given `reader` (its change-stream flags) and a correlator writing findings to
/// ClickHouse with `lateness`.
pub struct Distributed {
    pub collector: super::kafka::Node,
    pub clickhouse: super::clickhouse::PrivateServer,
    pub db: String,
    _correlator: super::kafka::Node,
}

impl Distributed {
    /// On `broker` (the test's own, which may carry Debezium's topics too).
    pub fn start(
        broker: &super::kafka::Broker,
        suffix: &str,
        reader: &[String],
        lateness: &str,
    ) -> Distributed {
        let clickhouse = super::clickhouse::PrivateServer::start("cdcd");
        let db = format!("cdcd_{suffix}");
        let topic = "toctou.events";
        broker.create_topic(topic, 4);
        let args: Vec<String> = [
            "collector",
            "--kafka-bootstrap",
            &broker.bootstrap,
            "--kafka-topic",
            topic,
        ]
        .into_iter()
        .chain(super::EPHEMERAL_PORTS)
        .map(String::from)
        .chain(reader.iter().cloned())
        .collect();
        let collector = super::kafka::Node::start(&args, "toctou collector listening");
        let group = format!("g_{suffix}");
        let correlator = super::kafka::correlator_with_lateness(
            &broker.bootstrap,
            topic,
            &group,
            &clickhouse.url,
            &db,
            lateness,
        );
        Distributed {
            collector,
            clickhouse,
            db,
            _correlator: correlator,
        }
    }

    /// Spans to the collector's OTLP/HTTP receiver.
    pub fn post(&self) -> Post {
        post_to(
            format!("http://{}/v1/traces", self.collector.addr("otlp_http")),
            None,
        )
    }

    /// Change-stream records the collector published.
    pub async fn published(&self) -> f64 {
        super::metric(&self.collector.metrics().await, CDC_EVENTS)
    }

    /// Waits until the collector published `before` + the workload's changes, then checks
    /// ClickHouse's findings against the database.
    pub async fn assert_exact(&self, w: &Workload, before: f64) -> Verdict {
        let log = || self.collector.log();
        let published = || self.published();
        wait_for_count(
            published,
            before + w.changes() as f64,
            120,
            "changes published",
            &log,
        )
        .await;
        let findings = clickhouse_findings(&self.clickhouse.url, &self.db, w.stale().len()).await;
        assert_exact(&findings, w, &log)
    }
}
