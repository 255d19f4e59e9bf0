//! `toctou demo`: racing workloads over an embedded SQLite database, instrumented with
//! `toctou-instrument` and exported over OTLP to a `toctou run` (a running one, or one the
//! demo starts itself); then what happened, counted from the database, set against what
//! toctou found.
//!
//! # Layout
//! - [`args`]: the command line, checked before anything starts.
//! - [`db`]: the SQLite database, its audit table and the relay that sends audit records in
//!   commit order.
//! - [`load`]: pace, race window, run tag and the per-kind counts the workloads share.
//! - one module per workload: [`inventory`], [`payments`], [`claims`], [`authz`],
//!   [`pricing`], [`accounts`]; each owns its tables, its racing workers and its
//!   ground-truth SQL.
//! - [`telemetry`]: the OpenTelemetry SDK set-up of each demo service; [`delivery`]: what
//!   the SDK was handed and what its exporters delivered (push-back, and the report);
//!   [`clock`]: services on hosts whose clocks are off; [`hook`]: the processor wrapper
//!   both look at spans and records through.
//! - [`embedded`]: the `toctou run` the demo starts when nothing answers (started through
//!   a [`StartRun`] the binary provides: this crate does not depend on the server's).
//! - [`compare`]: the findings API read back, and the comparison printed.
//! - [`loadgen`]: `toctou loadgen`, pre-encoded OTLP load at a fixed or maximal rate.
//! - [`Secret`]: the token a client sends, kept out of logs.

mod accounts;
mod args;
mod authz;
mod claims;
mod clock;
mod compare;
mod db;
mod delivery;
mod embedded;
mod hook;
mod inventory;
mod load;
pub mod loadgen;
mod payments;
mod pricing;
mod secret;
mod telemetry;

pub use args::{DemoArgs, Workload};
pub use embedded::{RunSpec, StartRun};
pub use load::KINDS;
pub use secret::Secret;

use anyhow::{bail, Context, Result};
use load::{Counts, Load, Pacer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use telemetry::{Service, Transport};

/// The pair TTL of the `toctou run` the demo starts itself: short, so orphan checks and
/// partial creates are decided (after two TTLs) within seconds of the traffic.
const EMBEDDED_PAIR_TTL: Duration = Duration::from_secs(5);
/// The pair TTL assumed of a running `toctou run` (its default) when none is given.
const DEFAULT_PAIR_TTL: Duration = Duration::from_secs(30);

/// `toctou demo`; `start_run` starts the embedded `toctou run` when one is needed.
pub fn main(args: DemoArgs, start_run: StartRun) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_workloads(args, Some(start_run)))
}

/// Runs every workload concurrently for `args.duration`, flushes the telemetry, and (when
/// an API address is given) compares the ground truth with toctou's findings. With an API
/// address and nothing answering at the endpoint, runs against an embedded `toctou run`
/// started by `start_run` (an error without one).
///
/// Boxed: `toctou run --demo` spawns this future, and this one may spawn `toctou run`; a
/// named `Send` future type breaks that cycle for the compiler.
pub fn run_workloads(
    args: DemoArgs,
    start_run: Option<StartRun>,
) -> futures::future::BoxFuture<'static, Result<()>> {
    Box::pin(demo(args, start_run))
}

async fn demo(mut args: DemoArgs, start_run: Option<StartRun>) -> Result<()> {
    args.validate()?;
    let started_ns = toctou_schema::now_ns();
    let run = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let compare = !args.api.is_empty() && !args.truth_only;
    let mut server = None;
    if compare && !embedded::answers(&args.endpoint).await {
        let pair_ttl = args.pair_ttl.unwrap_or(EMBEDDED_PAIR_TTL);
        let Some(start_run) = start_run else {
            bail!("nothing answers at {}", args.endpoint);
        };
        let e = embedded::start(&start_run, pair_ttl, args.allowed_lateness).await?;
        println!(
            "nothing answered at {}: started an embedded `toctou run` on loopback \
             (OTLP/gRPC {}, OTLP/HTTP {}, API http://{}, pair TTL {}), findings in {}",
            args.endpoint,
            e.grpc,
            e.http,
            e.api,
            humantime::format_duration(pair_ttl),
            e.findings_file.display()
        );
        args.endpoint = match args.transport {
            Transport::Grpc => format!("http://{}", e.grpc),
            Transport::Http => format!("http://{}", e.http),
        };
        args.api = format!("http://{}", e.api);
        args.pair_ttl = Some(pair_ttl);
        server = Some(e);
    }
    let result = traffic_and_compare(&args, &run, started_ns, compare || args.truth_only).await;
    if let Some(e) = server {
        e.stop().await.context("stopping the embedded toctou run")?;
    }
    result
}

/// With `to_stdout`, the demo's lines (and, unless `--truth-only`, the comparison) go to
/// stdout; otherwise to the log (see [`report`]).
async fn traffic_and_compare(
    args: &DemoArgs,
    run: &str,
    started_ns: u64,
    to_stdout: bool,
) -> Result<()> {
    let (db_path, keep_db) = match &args.db {
        Some(p) => (p.clone(), true),
        None => (
            std::env::temp_dir().join(format!("toctou-demo-{}-{run}.sqlite", std::process::id())),
            false,
        ),
    };
    let delivery = Arc::new(delivery::Delivery::default());
    let service = |name: &str, audit: bool| -> Result<Arc<Service>> {
        Ok(Arc::new(Service::new(
            name,
            args.transport,
            &args.endpoint,
            args.token.as_ref(),
            &delivery,
            audit,
            args.exporting(name),
        )?))
    };
    let svc = |name: &str| service(name, false);
    let services = Services {
        inventory: svc("inventory-api")?,
        inventory_sync: svc("inventory-sync")?,
        payments: svc("payments-webhook")?,
        docs: svc("docs-api")?,
        claims: [svc("claims-controller-a")?, svc("claims-controller-b")?],
        pricing: svc("pricing-api")?,
        accounts: [svc("accounts-api")?, svc("accounts-standing-orders")?],
        db: service("demo-db", true)?,
    };
    let schemas = [
        inventory::SCHEMA,
        payments::SCHEMA,
        claims::SCHEMA,
        authz::SCHEMA,
        pricing::SCHEMA,
        accounts::SCHEMA,
    ];
    let db = Arc::new(db::Db::create(&db_path, &schemas, services.db.clone())?);
    let until = Instant::now() + args.duration;
    let loads: Vec<(Workload, Load)> = args
        .selected()
        .into_iter()
        .map(|w| {
            (
                w,
                Load {
                    workers: args.concurrency,
                    race_window: args.race_window,
                    until,
                    run: run.to_string(),
                    pacer: Arc::new(Pacer::new(args.rate_of(w))),
                    requests: Arc::new(AtomicU64::new(0)),
                    delivery: delivery.clone(),
                },
            )
        })
        .collect();
    report(
        to_stdout,
        format!(
        "demo run {run}: {} workloads, {} workers each, race window {}, for {}; rates (requests/s, 0 = unlimited): {}; database {}{}{}",
        loads.len(),
        args.concurrency,
        humantime::format_duration(args.race_window),
        humantime::format_duration(args.duration),
        loads
            .iter()
            .map(|(w, _)| format!("{w:?}={}", args.rate_of(*w)).to_lowercase())
            .collect::<Vec<_>>()
            .join(" "),
        db_path.display(),
        if keep_db { "" } else { " (temporary)" },
        args.exporting_note(),
    ),
    );
    tracing::info!(endpoint = %args.endpoint, transport = ?args.transport, "demo traffic started");
    let t0 = Instant::now();
    let workloads = {
        let (services, db, loads) = (services.clone(), db.clone(), loads.clone());
        tokio::task::spawn_blocking(move || run_all(&services, &db, &loads))
    };
    let ran = workloads.await.context("joining the workloads");
    let elapsed = t0.elapsed();
    let requests: u64 = loads
        .iter()
        .map(|(_, l)| l.requests.load(Ordering::Relaxed))
        .sum();
    // The SDK's flush blocks until the exporters answer: keep it off the reactor. Its flush
    // and shutdown give up after 5 s each, and what is still queued or being retried then is
    // lost (a race that happened and cannot be found): first wait, as long as an export may
    // keep being retried, for the batch processors to export everything on their schedule.
    let all = services.all();
    let exported = delivery.clone();
    tokio::task::spawn_blocking(move || {
        exported.wait_drained(Instant::now() + telemetry::EXPORT_TIMEOUT);
        for s in &all {
            s.shutdown();
        }
    })
    .await
    .context("flushing telemetry")?;
    let truth = ran.and_then(|r| r).and_then(|()| {
        let conn = db.reader()?;
        let mut c = Counts::default();
        c += inventory::truth(&conn)?;
        c += payments::truth(&conn)?;
        c += claims::truth(&conn)?;
        c += authz::truth(&conn)?;
        c += pricing::truth(&conn)?;
        c += accounts::truth(&conn)?;
        Ok(c)
    });
    drop(db);
    if !keep_db {
        db::remove(&db_path);
    }
    let truth = truth?;
    let (handed, delivered, failed) = delivery.totals();
    report(
        to_stdout,
        format!(
            "sent {requests} requests in {:.1} s ({:.0} requests/s); {delivered} of {handed} spans \
             and audit records delivered",
            elapsed.as_secs_f64(),
            requests as f64 / elapsed.as_secs_f64().max(1e-9)
        ),
    );
    report(
        to_stdout,
        format!(
            "requests by workload: {}",
            loads
                .iter()
                .map(
                    |(w, l)| format!("{w:?}={}", l.requests.load(Ordering::Relaxed)).to_lowercase()
                )
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    if delivered != handed {
        // A span that never arrived is a race toctou could not see: no exact comparison.
        bail!(
            "{} spans and audit records were not delivered ({failed} failed to export, {} \
             dropped by the SDK): is toctou run at {} keeping up?",
            handed - delivered,
            (handed - delivered).saturating_sub(failed),
            args.endpoint
        );
    }
    if args.truth_only {
        compare::print_truth(&truth);
        return Ok(());
    }
    if !to_stdout {
        tracing::info!(requests, happened = ?truth.kinds, "demo traffic done");
        return Ok(());
    }
    let pair_ttl = args.pair_ttl.unwrap_or(DEFAULT_PAIR_TTL);
    let settle = if args.no_settle {
        args.allowed_lateness + Duration::from_secs(1)
    } else {
        // Orphans leave the tombstones one pair TTL after they expire from pending.
        pair_ttl * 2 + args.allowed_lateness + Duration::from_secs(2)
    };
    let why = if args.no_settle {
        "the allowed lateness; --no-settle: not the pair TTLs"
    } else {
        "two pair TTLs and the allowed lateness"
    };
    println!(
        "waiting {} for toctou to decide ({why})",
        humantime::format_duration(settle)
    );
    tokio::time::sleep(settle).await;
    let api_token = args.api_token.as_ref().or(args.token.as_ref());
    let found = compare::fetch_counts(&args.api, api_token, started_ns, run).await?;
    let notes = compare::server_notes(&args.api, api_token)
        .await
        .unwrap_or_default();
    compare::print(&truth, &found, !args.no_settle, &notes)
}

/// The demo's own lines go to stdout when it compares (`toctou demo`), and to the log when
/// it runs inside `toctou run --demo`, whose stdout carries findings as JSON lines.
fn report(to_stdout: bool, line: String) {
    if to_stdout {
        println!("{line}");
    } else {
        tracing::info!("{line}");
    }
}

/// The demo's services; each exports its own spans (and the database relay its records).
#[derive(Clone)]
struct Services {
    inventory: Arc<Service>,
    inventory_sync: Arc<Service>,
    payments: Arc<Service>,
    docs: Arc<Service>,
    claims: [Arc<Service>; 2],
    pricing: Arc<Service>,
    /// The tellers' API and the standing-orders job.
    accounts: [Arc<Service>; 2],
    db: Arc<Service>,
}

impl Services {
    fn all(&self) -> Vec<Arc<Service>> {
        vec![
            self.inventory.clone(),
            self.inventory_sync.clone(),
            self.payments.clone(),
            self.docs.clone(),
            self.claims[0].clone(),
            self.claims[1].clone(),
            self.pricing.clone(),
            self.accounts[0].clone(),
            self.accounts[1].clone(),
            self.db.clone(),
        ]
    }
}

/// Runs the workloads on threads of their own until they are done; the first error wins.
fn run_all(s: &Services, db: &db::Db, loads: &[(Workload, Load)]) -> Result<()> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = loads
            .iter()
            .map(|(w, load)| {
                let w = *w;
                let h = scope.spawn(move || match w {
                    Workload::Inventory => {
                        inventory::run(&s.inventory, &s.inventory_sync, db, load)
                    }
                    Workload::Payments => payments::run(&s.payments, db, load),
                    Workload::Claims => claims::run([&s.claims[0], &s.claims[1]], db, load),
                    Workload::Authz => authz::run(&s.docs, db, load),
                    Workload::Pricing => pricing::run(&s.pricing, db, load),
                    Workload::Accounts => accounts::run(&s.accounts[0], &s.accounts[1], db, load),
                });
                (w, h)
            })
            .collect();
        let mut result = Ok(());
        for (w, h) in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))
                .with_context(|| format!("the {w:?} workload"));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}
