//! Races found with no toctou code at all (issue 26): the shop of examples/python/shop (Flask
//! and psycopg, traced only by OpenTelemetry's auto-instrumentation, parameters captured)
//! sends its spans to `toctou run`, which reads the database's change stream. Concurrent
//! clients (examples/python/shop/hammer.py) hammer the plain endpoints (read, decide in
//! Python, save the row back) and their safe twins (a row lock, a compare-and-swap, `ON
//! CONFLICT`, SERIALIZABLE with retries), with both cores busy.
//!
//! The truth comes from the database, never from toctou: triggers record which version each
//! `UPDATE` replaced, in which transaction, and the client ties transactions to its requests'
//! trace ids (it sent each `traceparent`). Every race that happened must be reported, with
//! the right kind, on the right row, by a request that took part in it; nothing for the safe
//! endpoints; and the risks must name exactly the plain endpoints. With parameters off: no
//! findings, the same risks.
//!
//! Needs PostgreSQL (`TOCTOU_TEST_POSTGRES_URL`, scripts/postgres) and the Python packages of
//! examples/python/requirements.txt (scripts/otel-python).

mod common;

use common::cdc::{self, client, pg_url, wait_for_slot};
use common::debezium::Scripted;
use common::kafka::Broker;
use common::Toctou;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const APP: &str = "examples/python/shop/app.py";
const HAMMER: &str = "examples/python/shop/hammer.py";
/// The same shop's stock through SQLAlchemy's ORM: statements as the ORM writes them.
const ORM_APP: &str = "examples/python/orm_shop/app.py";
const ORM_HAMMER: &str = "examples/python/orm_shop/hammer.py";
/// The shop again in Node.js (express, pg), traced by OpenTelemetry JS's instrumentations:
/// `$1` placeholders, parameters as an array attribute, starts in whole milliseconds.
const NODE_APP: &str = "examples/node/shop/app.js";

/// The `node` that finds the Node shop's packages (scripts/otel-node).
fn otel_node() -> String {
    let out = Command::new(repo().join("scripts/otel-node"))
        .arg("path")
        .output()
        .expect("scripts/otel-node");
    assert!(
        out.status.success(),
        "run scripts/otel-node install: {out:?}"
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
const PLAIN_ROUTES: [&str; 4] = [
    "/buy/<int:item_id>",
    "/redeem/<code>",
    "/signup",
    "/transfer",
];

/// Endpoints, as `Shop::risks` names them.
fn routes(r: &[&str]) -> BTreeSet<String> {
    r.iter().map(|r| r.to_string()).collect()
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The test's own database (the shop's tables have fixed names), its slot, and `toctou run`.
struct Shop {
    db: String,
    url: String,
    slot: String,
    toctou: Toctou,
    app: &'static str,
    hammer: &'static str,
    /// Debezium's connector in Kafka Connect and its broker, when the change stream comes
    /// through them (stopped before the slot is dropped).
    debezium: Option<(Scripted, Broker)>,
}

/// Where `toctou run` reads the change stream from.
#[derive(Clone, Copy, PartialEq)]
enum Stream {
    /// The slot, itself.
    Slot,
    /// Debezium's PostgreSQL connector through Kafka (deploy/debezium's connector config).
    Debezium,
}

/// What runs an app: Python's, or Node's for a `.js` one.
fn runtime(app: &str) -> String {
    if app.ends_with(".js") {
        otel_node()
    } else {
        common::otel_python()
    }
}

impl Shop {
    async fn start(tag: &str) -> Shop {
        Shop::start_app(tag, APP, HAMMER).await
    }

    async fn start_app(tag: &str, app: &'static str, hammer: &'static str) -> Shop {
        Shop::start_from(tag, app, hammer, Stream::Slot).await
    }

    async fn start_from(
        tag: &str,
        app: &'static str,
        hammer: &'static str,
        stream: Stream,
    ) -> Shop {
        let admin = client().await;
        let db = format!("shop_{tag}_{}", cdc::suffix());
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let base = pg_url();
        let url = format!("{}/{db}", &base[..base.rfind('/').unwrap()]);
        // The schema is the Python shop's; the ORM shop adds to it.
        let setup = if app.ends_with(".js") { APP } else { app };
        let out = Command::new(common::otel_python())
            .arg(repo().join(setup))
            .args(["--dsn", &url, "--setup"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let slot = format!("slot_{db}");
        let shop_admin = {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        };
        if stream == Stream::Debezium {
            return Shop::start_debezium(db, url, slot, shop_admin, app, hammer).await;
        }
        let toctou = Toctou::start(&[
            "--cdc-postgres",
            &url,
            "--cdc-slot",
            &slot,
            "--cdc-publication",
            &format!("pub_{db}"),
            "--cdc-poll-interval",
            "50ms",
            "--infer-hold",
            "3s",
        ]);
        wait_for_slot(&shop_admin, &slot, &toctou).await;
        Shop {
            db,
            url,
            slot,
            toctou,
            app,
            hammer,
            debezium: None,
        }
    }

    /// The connector on the shop's database, its topics made beforehand (one per table,
    /// and its transaction and message topics) so that `toctou run` reads them from its
    /// start, then `toctou run --cdc-debezium-topics`. Debezium's records come a second or
    /// more after their commits: the hold allows for it.
    async fn start_debezium(
        db: String,
        url: String,
        slot: String,
        shop_admin: tokio_postgres::Client,
        app: &'static str,
        hammer: &'static str,
    ) -> Shop {
        shop_admin
            .batch_execute("CREATE PUBLICATION dbz_publication FOR ALL TABLES")
            .await
            .unwrap();
        let broker = Broker::start();
        let prefix = format!("dbz_{db}");
        let tables = shop_admin
            .query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public'",
                &[],
            )
            .await
            .unwrap();
        for t in &tables {
            let table: String = t.get(0);
            broker.create_topic(&format!("{prefix}.public.{table}"), 1);
        }
        for topic in ["transaction", "message"] {
            broker.create_topic(&format!("{prefix}.{topic}"), 1);
        }
        let connect = Scripted::connect(&broker.bootstrap, &url, &prefix, &slot);
        let toctou = Toctou::start(&[
            "--cdc-debezium-topics",
            &format!("^{prefix}\\..*"),
            "--cdc-debezium-bootstrap",
            &broker.bootstrap,
            "--cdc-debezium-group",
            &format!("toctou-{db}"),
            "--infer-hold",
            "10s",
            "--allowed-lateness",
            "5s",
        ]);
        Shop {
            db,
            url,
            slot,
            toctou,
            app,
            hammer,
            debezium: Some((connect, broker)),
        }
    }

    /// Serves the shop, hammers it for `seconds` with both cores busy, stops it (its spans
    /// flushed), and returns the client's record with the database's truth.
    fn hammer(&self, seconds: u32, app_args: &[&str]) -> Value {
        self.hammer_only(seconds, app_args, &[])
    }

    /// [`Shop::hammer`] on some endpoints only (`--only`).
    fn hammer_only(&self, seconds: u32, app_args: &[&str], only: &[&str]) -> Value {
        self.hammer_instances(1, seconds, app_args, only)
    }

    /// [`Shop::hammer_only`] with `instances` processes of the app, each exporting its own
    /// spans, the clients spread over them.
    fn hammer_instances(
        &self,
        instances: usize,
        seconds: u32,
        app_args: &[&str],
        only: &[&str],
    ) -> Value {
        let mut apps: Vec<Child> = (0..instances)
            .map(|_| {
                Command::new(runtime(self.app))
                    .arg(repo().join(self.app))
                    .args(["--dsn", &self.url, "--port", "0"])
                    .args(app_args)
                    .env("OTEL_EXPORTER_OTLP_ENDPOINT", self.toctou.http_url(""))
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let shop_url = apps.iter_mut().map(listening).collect::<Vec<_>>().join(",");
        let record = std::env::temp_dir().join(format!("toctou-shop-{}.json", self.db));
        let out = {
            let _burn = common::burner::every_core();
            Command::new(common::otel_python())
                .arg(repo().join(self.hammer))
                .args(["--url", &shop_url, "--dsn", &self.url])
                .args(["--seconds", &seconds.to_string(), "--threads", "8"])
                .args(["--seed", "7", "--out"])
                .arg(&record)
                .args(if only.is_empty() {
                    Vec::new()
                } else {
                    vec!["--only".to_string(), only.join(",")]
                })
                .output()
                .unwrap()
        };
        assert!(out.status.success(), "{out:?}");
        // SIGTERM: the app exports what its span processor still holds, then exits.
        for mut app in apps {
            let _ = Command::new("kill")
                .args(["-TERM", &app.id().to_string()])
                .status();
            let _ = app.wait();
        }
        let text = std::fs::read_to_string(&record).unwrap();
        let _ = std::fs::remove_file(&record);
        serde_json::from_str(&text).unwrap()
    }

    /// Waits until inference holds nothing and the engine has decided what it was handed.
    async fn settle(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = self.toctou.metrics().await;
            let idle = common::metric(&m, "toctou_inferred_held_changes") == 0.0
                && common::metric(&m, "toctou_inferred_pending_writes") == 0.0;
            if idle {
                break;
            }
            assert!(Instant::now() < deadline, "inference never settled:\n{m}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The engine decides a use once the watermark passed it: the allowed lateness (2 s)
        // after input went quiet, and a waiting use's own wait.
        tokio::time::sleep(Duration::from_secs(6)).await;
        self.toctou.findings().await
    }

    /// Settles, and asserts that the findings are exactly the races the database recorded
    /// (the buys, redeems and sign-ups among them having raced at all); returns them.
    async fn exactly_the_races_of(&self, record: &Value) -> Vec<Value> {
        let truth = &record["truth"];
        for kind in ["lost_buys", "lost_redeems", "duplicate_signups"] {
            assert!(
                !truth[kind].as_array().unwrap().is_empty(),
                "{kind}: {truth:#}"
            );
        }
        let findings = self.settle().await;
        assert_eq!(
            found(&findings),
            expected(truth),
            "findings (left) against the database's truth (right)\nlog:\n{}",
            self.toctou.log()
        );
        findings
    }

    async fn risks(&self) -> BTreeSet<String> {
        let body: Value = reqwest::get(self.toctou.api_url("/api/v1/risks"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["risks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["endpoint"].as_str().unwrap().to_string())
            .collect()
    }

    async fn finish(self) {
        let Shop {
            db,
            slot,
            toctou,
            debezium,
            ..
        } = self;
        drop(toctou);
        // The connector first: it holds its slot.
        drop(debezium);
        let admin = client().await;
        let (c, conn) = tokio_postgres::connect(
            &format!("{}/{db}", &pg_url()[..pg_url().rfind('/').unwrap()]),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        let task = tokio::spawn(conn);
        cdc::drop_slot(&c, &slot).await;
        drop(c);
        let _ = task.await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await
            .ok();
    }
}

/// The shop's address, from its start-up line.
fn listening(app: &mut Child) -> String {
    let stderr = app.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("shop: listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(url.to_string());
                }
            } else {
                eprintln!("shop: {line}");
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the shop did not start in 30 s")
}

/// (kind, resource) → how many findings the truth says.
fn expected(truth: &Value) -> BTreeMap<(String, String), usize> {
    let mut e = BTreeMap::new();
    let mut add = |kind: &str, resource: String, n: usize| {
        if n > 0 {
            *e.entry((kind.to_string(), resource)).or_insert(0) += n;
        }
    };
    for b in truth["lost_buys"].as_array().unwrap() {
        add("stale_check", format!("public.items/{}", b["item_id"]), 1);
    }
    for r in truth["lost_redeems"].as_array().unwrap() {
        let k = r["k"].as_u64().unwrap() as usize;
        add(
            "stale_check",
            format!("public.vouchers/{}", r["code"].as_str().unwrap()),
            k - 1,
        );
    }
    for s in truth["duplicate_signups"].as_array().unwrap() {
        let k = s["k"].as_u64().unwrap() as usize;
        add(
            "duplicate_use",
            format!("public.users[email={}]", s["email"].as_str().unwrap()),
            k - 1,
        );
    }
    for t in truth["lost_transfers"].as_array().unwrap() {
        for l in t["lost"].as_array().unwrap() {
            add(
                "stale_check",
                format!("public.accounts/{}", l["account"]),
                1,
            );
        }
    }
    e
}

fn found(findings: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut f = BTreeMap::new();
    for x in findings {
        let key = (
            x["kind"].as_str().unwrap().to_string(),
            x["resource"].as_str().unwrap().to_string(),
        );
        *f.entry(key).or_insert(0) += 1;
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_race_of_an_uninstrumented_shop_is_found_and_nothing_else() {
    let shop = Shop::start("params").await;
    let record = shop.hammer(10, &[]);
    let truth = &record["truth"];
    let findings = shop.settle().await;

    // The workload raced for real on every plain endpoint, and never on the safe ones.
    for kind in [
        "lost_buys",
        "lost_redeems",
        "duplicate_signups",
        "lost_transfers",
    ] {
        assert!(
            !truth[kind].as_array().unwrap().is_empty(),
            "no {kind} happened: {truth:#}"
        );
    }
    let safe = &truth["safe"];
    assert_eq!(safe["buy_safe"]["lost_updates"], 0, "{safe:#}");
    assert_eq!(safe["redeem_safe"]["redeemed_twice"], 0, "{safe:#}");
    assert_eq!(safe["signup_safe"]["duplicates"], 0, "{safe:#}");
    assert_eq!(
        safe["transfer_safe"]["balance_total"],
        safe["transfer_safe"]["balance_expected"]
    );

    // Exactly the races that happened, kind and row.
    let want = expected(truth);
    let got = found(&findings);
    assert_eq!(
        got,
        want,
        "findings (left) against the database's truth (right)\nlog:\n{}",
        shop.toctou.log()
    );

    // Each finding names a request that took part in its race, says it was inferred, and
    // carries its statements.
    let lost_buys: BTreeSet<String> = truth["lost_buys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["trace_id"].as_str().unwrap().to_string())
        .collect();
    let lost_transfers: BTreeSet<String> = truth["lost_transfers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["trace_id"].as_str().unwrap().to_string())
        .collect();
    let participants = |code_or_email: &str, key: &str| -> BTreeSet<String> {
        truth[key]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["code"] == code_or_email || x["email"] == code_or_email)
            .flat_map(|x| x["trace_ids"].as_array().unwrap().clone())
            .map(|t| t.as_str().unwrap_or_default().to_string())
            .collect()
    };
    for f in &findings {
        let inferred = &f["inferred"];
        assert_eq!(inferred["statements"].as_array().unwrap().len(), 2, "{f:#}");
        let matched_by = inferred["matched_by"].as_str().unwrap();
        let trace = f["trace_id"].as_str().unwrap().to_string();
        let resource = f["resource"].as_str().unwrap();
        assert_eq!(f["service"], "shop");
        if resource.starts_with("public.items/") {
            // Each lost save, and only those, even among saves alike (the same row, the same
            // values): those are told apart by time, and say so. The other write it lost to
            // is named.
            assert!(lost_buys.contains(&trace), "{matched_by}: {f:#}");
            assert!(
                f["intervening"].as_array().is_some_and(|i| !i.is_empty()),
                "{f:#}"
            );
        } else if resource.starts_with("public.accounts/") {
            assert!(lost_transfers.contains(&trace), "{matched_by}: {f:#}");
        } else if let Some(code) = resource.strip_prefix("public.vouchers/") {
            assert!(participants(code, "lost_redeems").contains(&trace), "{f:#}");
        } else if let Some(email) = resource
            .strip_prefix("public.users[email=")
            .and_then(|r| r.strip_suffix(']'))
        {
            let creators = participants(email, "duplicate_signups");
            assert!(creators.contains(&trace), "{f:#}");
            let prior = f["prior_use"]["trace_id"].as_str().unwrap().to_string();
            assert!(creators.contains(&prior) && prior != trace, "{f:#}");
        } else {
            panic!("a finding on no plain endpoint's data: {f:#}");
        }
    }

    // The safe endpoints' races were prevented: serialization failures counted as such.
    let m = shop.toctou.metrics().await;
    assert!(
        common::metric(&m, "toctou_prevented_races_total") > 0.0,
        "transfer_safe retried: {}",
        safe["transfer_safe"]
    );
    assert!(common::metric(&m, "toctou_inferred_pairs_total{outcome=\"protected\"}") > 0.0);
    let hits = common::metric(&m, "toctou_inferred_parse_cache_hits_total");
    let misses = common::metric(&m, "toctou_inferred_parse_cache_misses_total");
    eprintln!(
        "parse cache: {hits} hits, {misses} misses ({:.4} hit rate)",
        hits / (hits + misses)
    );
    assert!(
        misses <= 40.0,
        "each distinct statement parsed once: {misses}"
    );

    // The risks name exactly the plain endpoints.
    let plain = routes(&PLAIN_ROUTES);
    assert_eq!(shop.risks().await, plain);

    // The page shows them, and a finding's statements.
    let seen = common::page::Browser::find()
        .visit(
            &shop.toctou,
            json!({"open": "kind:stale_check", "polls": 2}),
        )
        .await;
    common::page::assert_clean(&seen);
    let shown: BTreeSet<String> = seen["risks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(shown, plain, "{seen:#}");
    let detail = seen["detail"].as_str().unwrap();
    assert!(
        detail.contains("Inferred from database spans") && detail.contains("UPDATE "),
        "{detail}"
    );
    shop.finish().await;
}

/// SQLAlchemy's ORM: a full-row save (`session.get`, change, flush), its optimistic twin
/// (`version_id_col`), an allocation checked in one transaction and made in another by an
/// unguarded relative decrement (stock can go below zero), with its guarded twin, and a
/// stock record read by its product (not its key) and saved by its key, with its `FOR
/// UPDATE` twin. Two processes of the app serve it, each exporting its own spans on its own
/// schedule (as a service's workers do): writes alike of one row arrive out of the order
/// they ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_races_of_orm_generated_statements_are_found() {
    let shop = Shop::start_app("orm", ORM_APP, ORM_HAMMER).await;
    let record = shop.hammer_instances(2, 10, &[], &[]);
    let truth = &record["truth"];
    let findings = shop.settle().await;
    let traces = |key: &str| -> BTreeSet<String> {
        truth[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["trace_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (lost_buys, raced) = (traces("lost_buys"), traces("raced_allocations"));
    let lost_restocks = traces("lost_restocks");
    assert!(
        !lost_buys.is_empty() && !raced.is_empty() && !lost_restocks.is_empty(),
        "{truth:#}"
    );
    assert_eq!(truth["safe"]["buy_safe"]["lost_updates"], 0, "{truth:#}");
    assert_eq!(
        truth["safe"]["restock_safe"]["lost_updates"], 0,
        "{truth:#}"
    );
    // Every finding is a lost save, a raced allocation or a lost restock the database
    // recorded, each once.
    let mut named = BTreeSet::new();
    for f in &findings {
        assert_eq!(f["kind"], "stale_check", "{f:#}");
        assert_eq!(f["service"], "orm-shop");
        let trace = f["trace_id"].as_str().unwrap().to_string();
        let resource = f["resource"].as_str().unwrap();
        if resource == "public.items/5" {
            assert!(raced.contains(&trace), "{f:#}");
        } else if resource.starts_with("public.stock_records/") {
            // Read by its product, saved by its key: paired through the row image.
            let request = record["requests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["trace_id"] == trace.as_str());
            assert!(
                lost_restocks.contains(&trace),
                "{f:#}\nits request: {request:#?}\nlost: {:#}",
                truth["lost_restocks"]
            );
        } else {
            assert!(
                resource == "public.items/1" || resource == "public.items/2",
                "{f:#}"
            );
            assert!(lost_buys.contains(&trace), "{f:#}");
        }
        assert!(named.insert(trace), "reported twice: {f:#}");
    }
    let on = |r: &str| findings.iter().filter(|f| f["resource"] == r).count();
    // Allocations and restocks have no version to compare: the other commits are placed by
    // time, and one after the read's end is certain. One stamped during the read (or just
    // before it: a commit is visible only after its flush) may or may not have been seen:
    // such pairs are counted undecided and not reported. Every raced allocation and lost
    // restock is reported or counted so.
    let allocations = on("public.items/5");
    let restocks = on("public.stock_records/11") + on("public.stock_records/12");
    let m = shop.toctou.metrics().await;
    let undecided = common::metric(&m, "toctou_inferred_undecided_total") as usize;
    let unmatched = common::metric(&m, "toctou_inferred_pairs_total{outcome=\"unmatched\"}");
    let other_rows = common::metric(&m, "toctou_inferred_pairs_total{outcome=\"other_rows\"}");
    eprintln!(
        "allocations: {allocations} of {} raced reported; restocks: {restocks} of {} lost \
         reported; {undecided} undecided, {unmatched} unmatched, {other_rows} other rows",
        raced.len(),
        lost_restocks.len()
    );
    assert!(allocations >= 1 && restocks >= 1, "{findings:#?}");
    assert!(
        allocations + restocks + undecided >= raced.len() + lost_restocks.len(),
        "reported {allocations} + {restocks}, {undecided} undecided, against {} + {} raced",
        raced.len(),
        lost_restocks.len()
    );
    assert_eq!(other_rows, 0.0, "every restock read its own record");
    assert_eq!(
        on("public.items/1") + on("public.items/2"),
        lost_buys.len(),
        "saves: {findings:#?}"
    );
    assert_eq!(
        shop.risks().await,
        routes(&[
            "/orm/allocate/<int:item_id>",
            "/orm/buy/<int:item_id>",
            "/orm/restock/<int:product_id>"
        ])
    );
    shop.finish().await;
}

/// Node.js: the same findings from another instrumentation's spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_races_from_node_pg_spans() {
    let shop = Shop::start_app("node", NODE_APP, HAMMER).await;
    let endpoints = [
        "buy",
        "buy_safe",
        "redeem",
        "redeem_safe",
        "signup",
        "signup_safe",
    ];
    let record = shop.hammer_only(8, &[], &endpoints);
    let findings = shop.exactly_the_races_of(&record).await;
    for f in &findings {
        assert_eq!(f["service"], "shop-node", "{f:#}");
    }
    assert_eq!(
        shop.risks().await,
        routes(&["/buy/:item_id", "/redeem/:code", "/signup"])
    );
    shop.finish().await;
}

/// The Flask shop again, its change stream through Debezium's PostgreSQL connector and Kafka
/// (deploy/debezium's connector config: no schema envelope, decimals as strings): the row
/// images that match writes to their changes, inserts of tested values included, are
/// Debezium's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_races_through_debezium() {
    let shop = Shop::start_from("dbz", APP, HAMMER, Stream::Debezium).await;
    let record = shop.hammer(8, &[]);
    shop.exactly_the_races_of(&record).await;
    let plain = routes(&PLAIN_ROUTES);
    assert_eq!(shop.risks().await, plain);
    shop.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_parameters_risks_only() {
    let shop = Shop::start("noparams").await;
    let record = shop.hammer(5, &["--no-params"]);
    assert!(!record["truth"]["lost_buys"].as_array().unwrap().is_empty());
    let findings = shop.settle().await;
    assert_eq!(
        findings,
        Vec::<Value>::new(),
        "nothing says a race happened"
    );
    assert_eq!(shop.risks().await, routes(&PLAIN_ROUTES));
    shop.finish().await;
}
