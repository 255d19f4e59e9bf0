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
//!   [`pricing`], [`accounts`]; each owns its tables, its racing workers and its
//!   ground-truth SQL.
//! - [`telemetry`]: the OpenTelemetry SDK set-up of each demo service; [`delivery`]: what
//!   the SDK was handed and what its exporters delivered (push-back, and the report);
//!   [`clock`]: services on hosts whose clocks are off.
//! - [`embedded`]: the `toctou run` the demo starts when nothing answers.
//! - [`compare`]: the findings API read back, and the comparison printed.

mod accounts;
mod authz;
mod claims;
mod clock;
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
use clock::ClockOffset;
use load::{Counts, Load, Pacer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use telemetry::{Exporting, Service, Transport};

/// The pair TTL of the `toctou run` the demo starts itself: short, so orphan checks and
/// partial creates are decided (after two TTLs) within seconds of the traffic.
const EMBEDDED_PAIR_TTL: Duration = Duration::from_secs(5);
/// The pair TTL assumed of a running `toctou run` (its default) when none is given.
const DEFAULT_PAIR_TTL: Duration = Duration::from_secs(30);

/// The demo's workloads, as named by `--workloads` and `--workload-rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Inventory,
    Payments,
    Claims,
    Authz,
    Pricing,
    Accounts,
}

impl Workload {
    const ALL: [Workload; 6] = [
        Workload::Inventory,
        Workload::Payments,
        Workload::Claims,
        Workload::Authz,
        Workload::Pricing,
        Workload::Accounts,
    ];
}

/// The demo's services by `service.name`, as `--sdk-default-delays` and `--clock-offset`
/// name them; `demo-db` is the database's relay, which sends the audit records.
const SERVICES: [&str; 10] = [
    "inventory-api",
    "inventory-sync",
    "payments-webhook",
    "docs-api",
    "claims-controller-a",
    "claims-controller-b",
    "pricing-api",
    "accounts-api",
    "accounts-standing-orders",
    "demo-db",
];

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
    /// one of inventory, payments, claims, authz, pricing, accounts.
    #[arg(long, value_parser = parse_workload_rate)]
    pub workload_rate: Vec<(Workload, f64)>,
    /// Run only these workloads (comma-separated or repeated); default: all of them.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workloads: Vec<Workload>,
    /// Services that export on the OpenTelemetry SDK's default batch schedule (spans every
    /// 5 s, logs every 1 s) instead of the demo's 200 ms, as an application left at the
    /// defaults does: their events reach toctou later than its default allowed lateness.
    /// Comma-separated or repeated; names: inventory-api, inventory-sync, payments-webhook,
    /// docs-api, claims-controller-a, claims-controller-b, pricing-api, accounts-api,
    /// accounts-standing-orders, demo-db (the database's audit records).
    #[arg(long, value_delimiter = ',')]
    pub sdk_default_delays: Vec<String>,
    /// A service on a host whose clock is off: SERVICE=OFFSET (repeatable), e.g.
    /// accounts-api=-200ms or demo-db=+150ms; every time its SDK records (span start and
    /// end, audit record times) is shifted by OFFSET. Service names as for
    /// --sdk-default-delays.
    #[arg(long, value_parser = parse_clock_offset)]
    pub clock_offset: Vec<(String, ClockOffset)>,
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
        format!(
            "unknown workload {name:?}: one of inventory, payments, claims, authz, pricing, \
             accounts"
        )
    })?;
    let rate: f64 = rate
        .parse()
        .map_err(|_| format!("invalid rate {rate:?}: requests per second, 0 for unlimited"))?;
    if !rate.is_finite() || rate < 0.0 {
        return Err(format!("invalid rate {rate}: at least 0"));
    }
    Ok((workload, rate))
}

fn parse_clock_offset(s: &str) -> Result<(String, ClockOffset), String> {
    let (service, offset) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SERVICE=OFFSET, got {s:?}"))?;
    Ok((service.to_string(), ClockOffset::parse(offset)?))
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
            workloads: Vec::new(),
            sdk_default_delays: Vec::new(),
            clock_offset: Vec::new(),
            race_window: Duration::from_millis(20),
            pair_ttl: None,
            allowed_lateness: Duration::from_secs(2),
            no_settle: true,
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

    /// The workloads to run: those named by --workloads, else all.
    fn selected(&self) -> Vec<Workload> {
        Workload::ALL
            .into_iter()
            .filter(|w| self.workloads.is_empty() || self.workloads.contains(w))
            .collect()
    }

    /// How the service named `name` exports.
    fn exporting(&self, name: &str) -> Exporting {
        Exporting {
            sdk_default_delays: self.sdk_default_delays.iter().any(|s| s == name),
            clock: self
                .clock_offset
                .iter()
                .rev()
                .find(|(s, _)| s == name)
                .map(|(_, o)| *o)
                .unwrap_or_default(),
        }
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
        let named = self
            .sdk_default_delays
            .iter()
            .chain(self.clock_offset.iter().map(|(s, _)| s));
        for service in named {
            if !SERVICES.contains(&service.as_str()) {
                bail!(
                    "no demo service is called {service:?}: one of {}",
                    SERVICES.join(", ")
                );
            }
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
    let compare = !args.api.is_empty();
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
    let result = traffic_and_compare(&args, &run, started_ns, compare).await;
    if let Some(e) = server {
        e.stop().await.context("stopping the embedded toctou run")?;
    }
    result
}

async fn traffic_and_compare(
    args: &DemoArgs,
    run: &str,
    started_ns: u64,
    compare: bool,
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
        compare,
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
        exporting_note(args),
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
    // The SDK's flush blocks until the exporters answer: keep it off the reactor.
    let all = services.all();
    tokio::task::spawn_blocking(move || {
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
        compare,
        format!(
            "sent {requests} requests in {:.1} s ({:.0} requests/s); {delivered} of {handed} spans \
             and audit records delivered",
            elapsed.as_secs_f64(),
            requests as f64 / elapsed.as_secs_f64().max(1e-9)
        ),
    );
    report(
        compare,
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
    if !compare {
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

/// The services that do not export as the demo's do by default, for the run's first line.
fn exporting_note(args: &DemoArgs) -> String {
    let mut notes = Vec::new();
    for name in SERVICES {
        let e = args.exporting(name);
        if e.sdk_default_delays {
            notes.push(format!("{name} on the SDK's default export schedule"));
        }
        if !e.clock.is_zero() {
            notes.push(format!("{name}'s clock at {}", e.clock));
        }
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!("; {}", notes.join(", "))
    }
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
