//! The change-stream examples of schema/CONVENTIONS.md, run for real: the Python one
//! (examples/python/cdc_inventory.py: psycopg and the OpenTelemetry Python SDK, installed by
//! `scripts/otel-python`) and the Go one (examples/go/cdc: pgx and the OpenTelemetry Go SDK,
//! `go run` with modules from the Go module proxy) race two buyers on a PostgreSQL table and
//! send only spans; `toctou run --cdc-postgres` takes the audit records from the database's
//! change stream and must report the race of the plain write, naming the other buyer's write
//! with its request id (its transaction named it), and nothing for the conditional write.
//! Also checks that CONVENTIONS.md shows both one-line helpers as the examples define them.
//!
//! Needs PostgreSQL (`TOCTOU_TEST_POSTGRES_URL`, scripts/postgres) and Go (`go` on PATH or
//! /usr/local/go/bin/go; TOCTOU_TEST_GO names another).

mod common;

use common::cdc::{self, client, pg_url, wait_for_slot};
use common::{kinds, Toctou};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use tokio_postgres::Client;

const PYTHON_EXAMPLE: &str = "examples/python/cdc_inventory.py";
const GO_EXAMPLE: &str = "examples/go/cdc";
const SKU: &str = "sku-1";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Go command: TOCTOU_TEST_GO, else `go` on PATH, else the one in /usr/local/go.
fn go() -> String {
    if let Ok(g) = std::env::var("TOCTOU_TEST_GO") {
        return g;
    }
    let on_path = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        "go".into()
    } else {
        "/usr/local/go/bin/go".into()
    }
}

/// Go's module and build caches under $HOME/.cache/toctou/go (writable, so that they can be
/// deleted; as scripts/peers sets them for the Collector), and no toolchain download.
fn go_env() -> Vec<(&'static str, String)> {
    let home = PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/toctou/go");
    vec![
        ("GOPATH", home.display().to_string()),
        ("GOCACHE", home.join("build").display().to_string()),
        ("GOFLAGS", "-modcacherw".into()),
        ("GOTOOLCHAIN", "local".into()),
    ]
}

/// A table, publication and slot of this test's own, and a `toctou run` reading them.
struct Setup {
    admin: Client,
    table: String,
    slot: String,
    publication: String,
    toctou: Toctou,
}

impl Setup {
    async fn start(tag: &str) -> Setup {
        let admin = client().await;
        let suffix = format!("{tag}_{}", cdc::suffix());
        let (table, slot, publication) = (
            format!("inventory_{suffix}"),
            format!("slot_{suffix}"),
            format!("pub_{suffix}"),
        );
        // The publication names this table only: the tests running beside this one write
        // tables of their own, which this reader must not see.
        admin
            .batch_execute(&format!(
                "CREATE TABLE {table} (sku text PRIMARY KEY, stock int NOT NULL, version bigint NOT NULL);
                 CREATE PUBLICATION {publication} FOR TABLE {table};"
            ))
            .await
            .unwrap();
        let toctou = Toctou::start(&[
            "--cdc-postgres",
            &pg_url(),
            "--cdc-slot",
            &slot,
            "--cdc-publication",
            &publication,
            "--cdc-poll-interval",
            "50ms",
        ]);
        // The stream starts where the slot does: no write before it exists is seen.
        wait_for_slot(&admin, &slot, &toctou).await;
        Setup {
            admin,
            table,
            slot,
            publication,
            toctou,
        }
    }

    /// The environment of an example run: the database, the table and the SKU.
    fn example_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", pg_url()),
            ("TOCTOU_EXAMPLE_TABLE", self.table.clone()),
            ("TOCTOU_EXAMPLE_SKU", SKU.into()),
        ]
    }

    /// Checks what the example printed and what toctou found: one `stale_check` for buyer A's
    /// plain write, with buyer B's write as its evidence, and nothing else.
    async fn assert_findings(&self, out: Output) {
        common::assert_buyers_raced(&out);

        let toctou = &self.toctou;
        toctou
            .wait_for(Duration::from_secs(30), |f| !f.is_empty())
            .await;
        // A little longer: nothing more may come.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let found = toctou.findings().await;
        assert_eq!(
            kinds(&found),
            [("stale_check".to_string(), 1)].into_iter().collect(),
            "{found:#?}\nlog:\n{}",
            toctou.log()
        );
        let f = &found[0];
        assert_eq!(f["service"], "inventory");
        assert_eq!(f["operation"], "reserve");
        assert_eq!(f["resource"], format!("public.{}/{SKU}", self.table));
        assert_eq!(f["request_id"], format!("order-A1-{SKU}"));
        // Inserted at version 1; B's write made it 2, and A's write acted on that.
        assert_eq!(f["checked_version"], "1");
        assert_eq!(f["used_version"], "2");
        assert_eq!(f["check_source"], "primary");
        let intervening = f["intervening"].as_array().unwrap();
        assert_eq!(intervening.len(), 1, "{f:#}");
        let w = &intervening[0];
        assert_eq!(w["request_id"], format!("order-B1-{SKU}"), "{f:#}");
        assert_eq!(w["version"], "2");
        assert_eq!(w["action"], "update");
        assert!(w["actor"].as_str().unwrap().starts_with("txid:"), "{w}");

        // Every audit record came from the change stream, none from the app: each round's
        // restock, both writes of the plain round and B's of the conditional one (A's, refused,
        // changed nothing).
        let text = toctou.metrics().await;
        assert_eq!(
            common::metric(&text, "toctou_events_total{signal=\"cdc\",phase=\"audit\"}"),
            5.0
        );
        assert_eq!(
            common::metric(
                &text,
                "toctou_events_total{signal=\"logs\",phase=\"audit\"}"
            ),
            0.0
        );
        assert_eq!(common::metric(&text, "toctou_prevented_races_total"), 1.0);
    }

    /// Stops toctou and drops what the test created, the slot first (it keeps WAL).
    async fn finish(self) {
        let Setup {
            admin,
            table,
            slot,
            publication,
            toctou,
        } = self;
        drop(toctou);
        cdc::drop_slot(&admin, &slot).await;
        admin
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {publication}; DROP TABLE IF EXISTS {table};"
            ))
            .await
            .ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cdc_example_reports_the_plain_write_race_only() {
    let setup = Setup::start("py").await;
    let out = Command::new(common::otel_python())
        .arg(repo().join(PYTHON_EXAMPLE))
        .envs(setup.example_env())
        .env("TOCTOU_OTLP_HTTP", setup.toctou.http_url(""))
        .output()
        .expect("running the Python example");
    setup.assert_findings(out).await;
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_cdc_example_reports_the_plain_write_race_only() {
    let setup = Setup::start("go").await;
    // The first run downloads the modules of go.sum into the cache.
    let out = Command::new(go())
        .args(["run", "."])
        .current_dir(repo().join(GO_EXAMPLE))
        .envs(go_env())
        .envs(setup.example_env())
        .env("TOCTOU_OTLP_GRPC", setup.toctou.grpc.to_string())
        .output()
        .expect("running the Go example (`go run .`)");
    setup.assert_findings(out).await;
    setup.finish().await;
}

/// The text of `file` from the line starting with `start` through the first line that is
/// `end` (a blank line: up to it).
fn excerpt(file: &str, start: &str, end: &str) -> String {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    let from = text
        .find(&format!("\n{start}"))
        .unwrap_or_else(|| panic!("{file} has no line starting {start:?}"))
        + 1;
    let len = text[from..]
        .find(&format!("\n{end}\n"))
        .unwrap_or_else(|| panic!("{file}: no {end:?} after {start:?}"));
    let through = if end.is_empty() { 1 } else { end.len() + 2 };
    text[from..from + len + through].to_string()
}

#[test]
fn conventions_show_the_helpers_that_run() {
    let doc = std::fs::read_to_string(repo().join("schema/CONVENTIONS.md")).unwrap();
    let python = excerpt(PYTHON_EXAMPLE, "def name_request(", "");
    let go = excerpt(&format!("{GO_EXAMPLE}/main.go"), "// NameRequest ", "}");
    assert!(
        python.ends_with(")\n") && go.ends_with("\n}\n"),
        "{python}{go}"
    );
    for (lang, helper, file) in [("python", &python, PYTHON_EXAMPLE), ("go", &go, GO_EXAMPLE)] {
        assert!(
            doc.contains(&format!("```{lang}\n{helper}```")),
            "schema/CONVENTIONS.md must show the helper of {file} verbatim in a ```{lang} block:\n{helper}"
        );
        assert!(
            doc.contains(&format!("(../{file}")),
            "schema/CONVENTIONS.md must link {file}"
        );
    }
}
