//! The SLO file (`alerts/slo.yaml`): what users edit instead of queries. It owns the
//! parsing (unknown keys refused), the validation, and the derived numbers (burn-rate
//! factors, window lengths) that the generated rules use.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use toctou_schema::FindingKind;

/// Why an SLO file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloConfig {
    /// The uid of the provisioned ClickHouse datasource (dashboards/provisioning).
    pub datasource_uid: String,
    /// The Grafana folder the rule groups are filed under.
    pub folder: String,
    /// How often Grafana evaluates the rules ("1m").
    pub evaluation_interval: String,
    /// Labels put on every rule (e.g. `team`), for routing beyond this file.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Service-level objectives on the finding rates, one burn-rate rule per alert.
    pub slos: Vec<Slo>,
    /// Findings that page at once on security-labelled flows.
    pub security: Security,
    /// Partial creates above a count open a ticket.
    pub partial_creates: PartialCreates,
    /// Where alerts go, how they are grouped, and when they are muted.
    pub notifications: Notifications,
}

/// One SLO: "at least `objective` of the denominators have no finding of `kind`".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Lowercase identifier, used in rule uids and the `slo` label.
    pub name: String,
    pub description: String,
    /// The finding kind counted as a bad event.
    pub kind: String,
    /// What the findings are divided by.
    pub denominator: Denominator,
    /// Fraction of good events, e.g. 0.999; the error budget is `1 - objective`.
    pub objective: f64,
    /// The SLO period the budget belongs to ("30d").
    pub window: String,
    /// Only these services (empty: every service, each on its own).
    #[serde(default)]
    pub services: Vec<String>,
    /// Multi-window burn-rate alerts.
    pub burn_alerts: Vec<BurnAlert>,
}

/// The denominators the rollups can give (schema/sql/README.md, "SLIs").
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Denominator {
    /// Uses joined with a check: uses minus `unchecked_use` findings.
    Pairs,
    /// Every use span.
    Uses,
}

/// Fires when both windows burn budget faster than `budget_consumed` of the period's
/// budget in `long_window` would.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurnAlert {
    pub severity: Severity,
    pub long_window: String,
    pub short_window: String,
    /// Fraction of the whole period's budget spent in `long_window`, e.g. 0.02.
    pub budget_consumed: f64,
    /// How long the condition must hold before firing ("2m").
    #[serde(default = "default_for")]
    pub r#for: String,
}

fn default_for() -> String {
    "0s".into()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Page,
    Ticket,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Finding kinds that page on a security flow (`unchecked_use`, `authz_drift`).
    pub kinds: Vec<String>,
    /// The flows labelled security: a service, optionally narrowed to an operation or a
    /// resource type.
    pub flows: Vec<Flow>,
    /// How far back each evaluation looks for newly detected findings ("5m").
    pub window: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub service: String,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub resource_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialCreates {
    /// More than this many partial creates of one service and resource type in `window`.
    pub threshold: u64,
    pub window: String,
    pub severity: Severity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notifications {
    /// Labels alerts are grouped by (one notification per group).
    pub group_by: Vec<String>,
    pub group_wait: String,
    pub group_interval: String,
    pub repeat_interval: String,
    /// Contact point per severity: a Grafana integration type and its settings (values may
    /// name environment variables, `${VAR}`, which Grafana expands at provisioning).
    pub contact_points: BTreeMap<Severity, ContactPoint>,
    /// Deploy windows, when burn-rate and threshold alerts are muted (security pages never).
    pub deploy_windows: Vec<DeployWindow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactPoint {
    pub name: String,
    pub r#type: String,
    pub settings: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployWindow {
    pub weekdays: Vec<String>,
    pub start_time: String,
    pub end_time: String,
    pub location: String,
}

/// Parses a human duration ("30d", "1h", "5m"), naming the field when it is not one.
pub fn duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text)
        .map_err(|e| invalid(field, format!("{text:?} is not a duration: {e}")))
}

impl SloConfig {
    pub fn load(path: &str) -> Result<SloConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: SloConfig =
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.into(),
                source,
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Everything the generator relies on, checked before it writes a file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.datasource_uid.is_empty() {
            return Err(invalid("datasource_uid", "must not be empty"));
        }
        duration("evaluation_interval", &self.evaluation_interval)?;
        let mut names = std::collections::BTreeSet::new();
        for (i, slo) in self.slos.iter().enumerate() {
            let at = format!("slos[{i}]");
            identifier(&format!("{at}.name"), &slo.name)?;
            if !names.insert(&slo.name) {
                return Err(invalid(format!("{at}.name"), "names must be unique"));
            }
            known_kind(&format!("{at}.kind"), &slo.kind)?;
            if !(slo.objective > 0.0 && slo.objective < 1.0) {
                return Err(invalid(
                    format!("{at}.objective"),
                    "must be between 0 and 1 (e.g. 0.999)",
                ));
            }
            let period = duration(&format!("{at}.window"), &slo.window)?;
            if slo.burn_alerts.is_empty() {
                return Err(invalid(format!("{at}.burn_alerts"), "at least one alert"));
            }
            for (j, b) in slo.burn_alerts.iter().enumerate() {
                let at = format!("{at}.burn_alerts[{j}]");
                let long = duration(&format!("{at}.long_window"), &b.long_window)?;
                let short = duration(&format!("{at}.short_window"), &b.short_window)?;
                duration(&format!("{at}.for"), &b.r#for)?;
                if short.is_zero() || short >= long {
                    return Err(invalid(
                        format!("{at}.short_window"),
                        "must be shorter than long_window",
                    ));
                }
                if long > period {
                    return Err(invalid(
                        format!("{at}.long_window"),
                        "must not exceed the SLO window",
                    ));
                }
                if !(b.budget_consumed > 0.0 && b.budget_consumed <= 1.0) {
                    return Err(invalid(
                        format!("{at}.budget_consumed"),
                        "must be a fraction in (0, 1], e.g. 0.02",
                    ));
                }
            }
        }
        if self.security.kinds.is_empty() || self.security.flows.is_empty() {
            return Err(invalid("security", "kinds and flows must not be empty"));
        }
        for (i, kind) in self.security.kinds.iter().enumerate() {
            known_kind(&format!("security.kinds[{i}]"), kind)?;
        }
        for (i, flow) in self.security.flows.iter().enumerate() {
            if flow.service.is_empty() {
                return Err(invalid(format!("security.flows[{i}].service"), "empty"));
            }
        }
        duration("security.window", &self.security.window)?;
        duration("partial_creates.window", &self.partial_creates.window)?;
        let n = &self.notifications;
        for (field, value) in [
            ("group_wait", &n.group_wait),
            ("group_interval", &n.group_interval),
            ("repeat_interval", &n.repeat_interval),
        ] {
            duration(&format!("notifications.{field}"), value)?;
        }
        for needed in ["service", "kind"] {
            if !n.group_by.iter().any(|l| l == needed) {
                return Err(invalid(
                    "notifications.group_by",
                    format!("must include {needed:?}"),
                ));
            }
        }
        for severity in [Severity::Page, Severity::Ticket] {
            if !n.contact_points.contains_key(&severity) {
                return Err(invalid(
                    "notifications.contact_points",
                    format!("needs a {} contact point", severity.as_str()),
                ));
            }
        }
        for (i, w) in n.deploy_windows.iter().enumerate() {
            for t in [&w.start_time, &w.end_time] {
                clock(&format!("notifications.deploy_windows[{i}]"), t)?;
            }
        }
        Ok(())
    }
}

fn identifier(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 30
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            "lowercase letters, digits and _, at most 30",
        ))
    }
}

fn known_kind(field: &str, kind: &str) -> Result<(), ConfigError> {
    if FindingKind::ALL.iter().any(|k| k.as_str() == kind) {
        Ok(())
    } else {
        Err(invalid(field, format!("{kind:?} is not a finding kind")))
    }
}

/// "HH:MM", as Grafana's mute timings take it.
fn clock(field: &str, t: &str) -> Result<(), ConfigError> {
    let ok = t.len() == 5
        && t.as_bytes()[2] == b':'
        && t[..2].parse::<u8>().is_ok_and(|h| h <= 24)
        && t[3..].parse::<u8>().is_ok_and(|m| m < 60);
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("{t:?} is not HH:MM")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = include_str!("../../alerts/slo.yaml");

    #[test]
    fn the_shipped_slo_file_is_valid() {
        let config: SloConfig = serde_yaml::from_str(FILE).unwrap();
        config.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_numbers_are_refused_by_name() {
        let err = serde_yaml::from_str::<SloConfig>(&format!("{FILE}\nsurprise: 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `surprise`"), "{err}");

        let bad = FILE.replacen("objective: 0.999", "objective: 99.9", 1);
        let config: SloConfig = serde_yaml::from_str(&bad).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.starts_with("slos[0].objective"), "{err}");

        let bad = FILE.replacen("kind: stale_check", "kind: stale", 1);
        let config: SloConfig = serde_yaml::from_str(&bad).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("\"stale\" is not a finding kind"), "{err}");

        let bad = FILE.replacen("short_window: 5m", "short_window: 2h", 1);
        let config: SloConfig = serde_yaml::from_str(&bad).unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("must be shorter than long_window"), "{err}");
    }
}
