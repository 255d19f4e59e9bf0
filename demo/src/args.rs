//! The demo's command line: where it sends and reads, which workloads run at what rates,
//! and how each service exports (its batch schedule, its host's clock); checked before any
//! server or database is started.

use super::clock::ClockOffset;
use super::telemetry::{Exporting, Transport};
use crate::Secret;
use anyhow::{bail, Result};
#[cfg(feature = "cli")]
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The demo's workloads, as named by `--workloads` and `--workload-rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Workload {
    Inventory,
    Payments,
    Claims,
    Authz,
    Pricing,
    Accounts,
}

impl Workload {
    pub(super) const ALL: [Workload; 6] = [
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

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(Args))]
pub struct DemoArgs {
    /// OTLP endpoint of `toctou run`: gRPC by default, the HTTP base URL with --transport http.
    /// When nothing answers there, the demo starts a `toctou run` of its own on loopback.
    #[cfg_attr(feature = "cli", arg(long, default_value = "http://127.0.0.1:4317"))]
    pub endpoint: String,
    #[cfg_attr(feature = "cli", arg(long, value_enum, default_value = "grpc"))]
    pub transport: Transport,
    /// The findings API of the same `toctou run`, to compare what it found.
    #[cfg_attr(feature = "cli", arg(long, default_value = "http://127.0.0.1:8686"))]
    pub api: String,
    /// How long the workloads run.
    #[cfg_attr(feature = "cli", arg(long, default_value = "20s", value_parser = humantime::parse_duration))]
    pub duration: Duration,
    /// Concurrent workers per workload.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 4))]
    pub concurrency: usize,
    /// Requests per second of each workload (pods per second for the claims controller,
    /// events per second for the payment webhooks); 0: as fast as the workers go.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 100.0))]
    pub rate: f64,
    /// The rate of one workload, overriding --rate for it: NAME=RATE (repeatable), NAME
    /// one of inventory, payments, claims, authz, pricing, accounts.
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_workload_rate))]
    pub workload_rate: Vec<(Workload, f64)>,
    /// Run only these workloads (comma-separated or repeated); default: all of them.
    #[cfg_attr(feature = "cli", arg(long, value_enum, value_delimiter = ','))]
    pub workloads: Vec<Workload>,
    /// Services that export on the OpenTelemetry SDK's default batch schedule (spans every
    /// 5 s, logs every 1 s) instead of the demo's 200 ms, as an application left at the
    /// defaults does: their events reach toctou later than its default allowed lateness.
    /// Comma-separated or repeated; names: inventory-api, inventory-sync, payments-webhook,
    /// docs-api, claims-controller-a, claims-controller-b, pricing-api, accounts-api,
    /// accounts-standing-orders, demo-db (the database's audit records).
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ','))]
    pub sdk_default_delays: Vec<String>,
    /// A service on a host whose clock is off: SERVICE=OFFSET (repeatable), e.g.
    /// accounts-api=-200ms or demo-db=+150ms; every time its SDK records (span start and
    /// end, audit record times) is shifted by OFFSET. Service names as for
    /// --sdk-default-delays.
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse_clock_offset))]
    pub clock_offset: Vec<(String, ClockOffset)>,
    /// Longest wait between a check and its use: wider windows race more often.
    #[cfg_attr(feature = "cli", arg(long, default_value = "20ms", value_parser = humantime::parse_duration))]
    pub race_window: Duration,
    /// The server's --pair-ttl, to know how long to wait before the final comparison
    /// (orphans and partial creates are decided after the pair TTL). Default: 30s, the
    /// server's default; 5s for the `toctou run` the demo starts itself.
    #[cfg_attr(feature = "cli", arg(long, value_parser = humantime::parse_duration))]
    pub pair_ttl: Option<Duration>,
    /// The server's --allowed-lateness.
    #[cfg_attr(feature = "cli", arg(long, default_value = "2s", value_parser = humantime::parse_duration))]
    pub allowed_lateness: Duration,
    /// Do not wait for the TTL-decided kinds before printing the comparison.
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_settle: bool,
    /// Print what happened and read no findings back, for findings kept where the findings
    /// API does not serve them (distributed mode writes them to ClickHouse): the caller
    /// compares. Needs something answering at --endpoint (no embedded server is started).
    #[cfg_attr(feature = "cli", arg(long, conflicts_with_all = ["api", "no_settle"]))]
    pub truth_only: bool,
    /// Keep the SQLite database at this path (a new file) instead of a temporary one.
    #[cfg_attr(feature = "cli", arg(long))]
    pub db: Option<PathBuf>,
    /// Bearer token sent with every export, for a `toctou run` with ingest tokens (prefer
    /// the variable: a command line is visible to every user of the host).
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_TOKEN", hide_env_values = true)
    )]
    pub token: Option<Secret>,
    /// Bearer token for the findings API, when it has tokens of its own; default: --token.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "TOCTOU_API_TOKEN", hide_env_values = true)
    )]
    pub api_token: Option<Secret>,
}

#[cfg(feature = "cli")]
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

#[cfg(feature = "cli")]
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
            truth_only: false,
            db: None,
            token,
            api_token: None,
        }
    }

    pub(super) fn rate_of(&self, w: Workload) -> f64 {
        self.workload_rate
            .iter()
            .rev()
            .find(|(x, _)| *x == w)
            .map_or(self.rate, |(_, r)| *r)
    }

    /// The workloads to run: those named by --workloads, else all.
    pub(super) fn selected(&self) -> Vec<Workload> {
        Workload::ALL
            .into_iter()
            .filter(|w| self.workloads.is_empty() || self.workloads.contains(w))
            .collect()
    }

    /// How the service named `name` exports.
    pub(super) fn exporting(&self, name: &str) -> Exporting {
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

    pub(super) fn validate(&self) -> Result<()> {
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

    /// The services that do not export as the demo's do by default, for the run's first line.
    pub(super) fn exporting_note(&self) -> String {
        let mut notes = Vec::new();
        for name in SERVICES {
            let e = self.exporting(name);
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
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    fn parse(args: &[&str]) -> DemoArgs {
        Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))
            .unwrap()
            .demo
    }

    #[test]
    fn services_export_as_named_and_unknown_names_are_refused() {
        let a = parse(&[
            "--sdk-default-delays",
            "accounts-standing-orders,demo-db",
            "--clock-offset",
            "accounts-api=-200ms",
            "--clock-offset",
            "accounts-api=+50ms",
        ]);
        assert!(a.exporting("demo-db").sdk_default_delays);
        assert!(!a.exporting("accounts-api").sdk_default_delays);
        // The last offset given for a service wins.
        assert_eq!(
            a.exporting("accounts-api").clock,
            ClockOffset::parse("+50ms").unwrap()
        );
        assert_eq!(a.exporting("pricing-api"), Exporting::default());
        assert!(a.validate().is_ok());
        let note = a.exporting_note();
        assert!(note.contains("accounts-api's clock at +50ms"), "{note}");
        assert!(
            note.contains("demo-db on the SDK's default export schedule"),
            "{note}"
        );
        let typo = parse(&["--clock-offset", "acounts-api=1s"]);
        let err = typo.validate().unwrap_err().to_string();
        assert!(err.contains("\"acounts-api\""), "{err}");
        let typo = parse(&["--sdk-default-delays", "demo"]);
        assert!(typo.validate().is_err());
        assert!(Cli::try_parse_from(["demo", "--clock-offset", "accounts-api"]).is_err());
        assert!(Cli::try_parse_from(["demo", "--clock-offset", "accounts-api=soon"]).is_err());
    }

    #[test]
    fn workloads_are_selected_by_name_and_default_to_all() {
        assert_eq!(parse(&[]).selected(), Workload::ALL.to_vec());
        assert_eq!(
            parse(&["--workloads", "accounts,inventory"]).selected(),
            vec![Workload::Inventory, Workload::Accounts]
        );
        assert!(Cli::try_parse_from(["demo", "--workloads", "seats"]).is_err());
        let a = parse(&["--rate", "7", "--workload-rate", "accounts=500"]);
        assert_eq!(a.rate_of(Workload::Accounts), 500.0);
        assert_eq!(a.rate_of(Workload::Pricing), 7.0);
    }
}
