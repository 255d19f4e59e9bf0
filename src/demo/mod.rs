//! `toctou demo`: racing workloads over an embedded SQLite database, instrumented with
//! `toctou-instrument` and exported over OTLP to a `toctou run` (a running one, or one the
//! demo starts itself); then what happened, counted from the database, set against what
//! toctou found.
//!
//! # Layout
//! - [`db`]: the SQLite database, its audit table and the relay that sends audit records in
//!   commit order.
//! - [`load`]: pace, race window, run tag and the per-kind counts the workloads share.
//! - one module per workload: [`inventory`], [`payments`], [`claims`], [`authz`],
//!   [`pricing`]; each owns its tables, its racing workers and its ground-truth SQL.
//! - [`telemetry`]: the OpenTelemetry SDK set-up of each demo service; [`delivery`]: what
//!   the SDK was handed and what its exporters delivered (push-back, and the report).
//! - [`embedded`]: the `toctou run` the demo starts when nothing answers.
//! - [`compare`]: the findings API read back, and the comparison printed.

mod authz;
mod claims;
mod compare;
mod db;
mod delivery;
mod embedded;
mod inventory;
mod load;
mod payments;
mod pricing;
mod telemetry;

use crate::access::Secret;
use anyhow::{bail, Context, Result};
use clap::Args;
use load::{Counts, Load, Pacer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use telemetry::{Service, Transport};

/// The pair TTL of the `toctou run` the demo starts itself: short, so orphan checks and
/// partial creates are decided (after two TTLs) within seconds of the traffic.
const EMBEDDED_PAIR_TTL: Duration = Duration::from_secs(5);
/// The pair TTL assumed of a running `toctou run` (its default) when none is given.
const DEFAULT_PAIR_TTL: Duration = Duration::from_secs(30);

/// The demo's workloads, as named by `--workload-rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Inventory,
    Payments,
    Claims,
    Authz,
    Pricing,
}

impl Workload {
    const ALL: [Workload; 5] = [
        Workload::Inventory,
        Workload::Payments,
        Workload::Claims,
        Workload::Authz,
        Workload::Pricing,
    ];
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// OTLP endpoint of `toctou run`: gRPC by default, the HTTP base URL with --transport http.
    /// When nothing answers there, the demo starts a `toctou run` of its own on loopback.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    pub endpoint: String,
    #[arg(long, value_enum, default_value = "grpc")]
    pub transport: Transport,
    /// The findings API of the same `toctou run`, to compare what it found.
    #[arg(long, default_value = "http://127.0.0.1:8686")]
    pub api: String,
    /// How long the workloads run.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent workers per workload.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Requests per second of each workload (pods per second for the claims controller,
    /// events per second for the payment webhooks); 0: as fast as the workers go.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// The rate of one workload, overriding --rate for it: NAME=RATE (repeatable), NAME
    /// one of inventory, payments, claims, authz, pricing.
    #[arg(long, value_parser = parse_workload_rate)]
    pub workload_rate: Vec<(Workload, f64)>,
    /// Longest wait between a check and its use: wider windows race more often.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub race_window: Duration,
    /// The server's --pair-ttl, to know how long to wait before the final comparison
    /// (orphans and partial creates are decided after the pair TTL). Default: 30s, the
    /// server's default; 5s for the `toctou run` the demo starts itself.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub pair_ttl: Option<Duration>,
    /// The server's --allowed-lateness.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub allowed_lateness: Duration,
    /// Do not wait for the TTL-decided kinds before printing the comparison.
    #[arg(long)]
    pub no_settle: bool,
    /// Print what happened and read no findings back, for findings kept where the findings
    /// API does not serve them (distributed mode writes them to ClickHouse): the caller
    /// compares. Needs something answering at --endpoint (no embedded server is started).
    #[arg(long, conflicts_with_all = ["api", "no_settle"])]
    pub truth_only: bool,
    /// Keep the SQLite database at this path (a new file) instead of a temporary one.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Bearer token sent with every export, for a `toctou run` with ingest tokens (prefer
    /// the variable: a command line is visible to every user of the host).
    #[arg(long, env = "TOCTOU_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,
    /// Bearer token for the findings API, when it has tokens of its own; default: --token.
    #[arg(long, env = "TOCTOU_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,
}

fn parse_workload_rate(s: &str) -> Result<(Workload, f64), String> {
    use clap::ValueEnum as _;
    let (name, rate) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=RATE, got {s:?}"))?;
    let workload = Workload::from_str(name, true).map_err(|_| {
        format!("unknown workload {name:?}: one of inventory, payments, claims, authz, pricing")
    })?;
    let rate: f64 = rate
        .parse()
        .map_err(|_| format!("invalid rate {rate:?}: requests per second, 0 for unlimited"))?;
    if !rate.is_finite() || rate < 0.0 {
        return Err(format!("invalid rate {rate}: at least 0"));
    }
    Ok((workload, rate))
}

impl DemoArgs {
    /// The demo that `toctou run --demo` starts against its own gRPC receiver.
    pub fn against(grpc: SocketAddr, duration: Duration, token: Option<Secret>) -> DemoArgs {
        DemoArgs {
            endpoint: format!("http://{grpc}"),
            transport: Transport::Grpc,
            api: String::new(),
            duration,
            concurrency: 4,
            rate: 100.0,
            workload_rate: Vec::new(),
            race_window: Duration::from_millis(20),
            pair_ttl: None,
            allowed_lateness: Duration::from_secs(2),
            no_settle: true,
            truth_only: false,
            db: None,
            token,
            api_token: None,
        }
    }

    fn rate_of(&self, w: Workload) -> f64 {
        self.workload_rate
            .iter()
            .rev()
            .find(|(x, _)| *x == w)
            .map_or(self.rate, |(_, r)| *r)
    }

    fn validate(&self) -> Result<()> {
        if !self.rate.is_finite() || self.rate < 0.0 {
            bail!(
                "invalid --rate {}: requests per second, 0 for unlimited",
                self.rate
            );
        }
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if let Some(db) = self.db.as_ref().filter(|p| p.exists()) {
            // Checked again when the file is created; here, before any server is started.
            bail!(
                "{} already exists: the demo counts what happened from the whole database, so \
                 it needs a new file (remove it or pass another --db)",
                db.display()
            );
        }
        Ok(())
    }
}

pub fn main(args: DemoArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_workloads(args))
}

/// Runs every workload concurrently for `args.duration`, flushes the telemetry, and (when
/// an API address is given) compares the ground truth with toctou's findings. With an API
/// address and nothing answering at the endpoint, runs against an embedded `toctou run`.
///
/// Boxed: `toctou run --demo` spawns this future, and this one may spawn `toctou run`; a
/// named `Send` future type breaks that cycle for the compiler.
pub fn run_workloads(args: DemoArgs) -> futures::future::BoxFuture<'static, Result<()>> {
    Box::pin(demo(args))
}

async fn demo(mut args: DemoArgs) -> Result<()> {
    args.validate()?;
    let started_ns = crate::cli::now_ns();
    let run = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let compare = !args.api.is_empty() && !args.truth_only;
    let mut server = None;
    if compare && !embedded::answers(&args.endpoint).await {
        let pair_ttl = args.pair_ttl.unwrap_or(EMBEDDED_PAIR_TTL);
        let e = embedded::start(pair_ttl, args.allowed_lateness).await?;
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
        db: service("demo-db", true)?,
    };
    let schemas = [
        inventory::SCHEMA,
        payments::SCHEMA,
        claims::SCHEMA,
        authz::SCHEMA,
        pricing::SCHEMA,
    ];
    let db = Arc::new(db::Db::create(&db_path, &schemas, services.db.clone())?);
    let until = Instant::now() + args.duration;
    let loads: Vec<(Workload, Load)> = Workload::ALL
        .iter()
        .map(|&w| {
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
        "demo run {run}: {} workloads, {} workers each, race window {}, for {}; rates (requests/s, 0 = unlimited): {}; database {}{}",
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
