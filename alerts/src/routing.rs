//! Where alerts go (file provisioning, `apiVersion: 1`): the notification policy tree,
//! the contact points and the mute timings, made from the `notifications` section of an
//! [`SloConfig`].
//!
//! Alerts are grouped by the configured labels (service and kind at least), so one
//! notification covers a burst. Deduplication by resource follows from the security rule
//! labelling each alert instance with its resource: repeated findings on one resource are
//! the same alert, re-sent only after `repeat_interval`. Deploy windows mute the SLO and
//! threshold routes; security pages are never muted.

use super::config::{Severity, SloConfig};
use serde_json::{json, Value};

/// The name of the mute timing the deploy windows make.
pub const DEPLOY_WINDOWS: &str = "toctou-deploy-windows";

fn matchers(pairs: &[(&str, &str)]) -> Value {
    Value::Array(pairs.iter().map(|(k, v)| json!([k, "=", v])).collect())
}

pub fn policies_file(config: &SloConfig) -> Value {
    let n = &config.notifications;
    let receiver = |s: Severity| n.contact_points[&s].name.clone();
    let mute = if n.deploy_windows.is_empty() {
        json!([])
    } else {
        json!([DEPLOY_WINDOWS])
    };
    let route = |source: &str, severity: Severity, muted: bool| {
        let mut r = json!({
            "receiver": receiver(severity),
            "object_matchers": matchers(&[("source", source), ("severity", severity.as_str())]),
            "group_by": n.group_by,
        });
        if muted {
            r["mute_time_intervals"] = mute.clone();
        }
        r
    };
    json!({
        "apiVersion": 1,
        "policies": [{
            "orgId": 1,
            "receiver": receiver(Severity::Ticket),
            "group_by": n.group_by,
            "group_wait": n.group_wait,
            "group_interval": n.group_interval,
            "repeat_interval": n.repeat_interval,
            "routes": [
                route("security", Severity::Page, false),
                route("slo", Severity::Page, true),
                route("slo", Severity::Ticket, true),
                route("threshold", Severity::Page, true),
                route("threshold", Severity::Ticket, true),
            ],
        }],
    })
}

pub fn contact_points_file(config: &SloConfig) -> Value {
    let points: Vec<Value> = config
        .notifications
        .contact_points
        .iter()
        .map(|(severity, cp)| {
            json!({
                "orgId": 1,
                "name": cp.name,
                "receivers": [{
                    "uid": format!("toctou-{}", severity.as_str()),
                    "type": cp.r#type,
                    "settings": cp.settings,
                    "disableResolveMessage": false,
                }],
            })
        })
        .collect();
    json!({
        "apiVersion": 1,
        "contactPoints": points,
        "templates": [{
            "orgId": 1,
            "name": "toctou",
            "template": TEMPLATE,
        }],
    })
}

/// A message template contact points can use (`{{ template "toctou.message" . }}`).
const TEMPLATE: &str = r#"{{ define "toctou.message" }}{{ range .Alerts }}[{{ .Labels.severity }}] {{ .Annotations.summary }}
{{ .Annotations.description }}
{{ end }}{{ end }}"#;

pub fn mute_timings_file(config: &SloConfig) -> Value {
    let intervals: Vec<Value> = config
        .notifications
        .deploy_windows
        .iter()
        .map(|w| {
            json!({
                "times": [{ "start_time": w.start_time, "end_time": w.end_time }],
                "weekdays": w.weekdays,
                "location": w.location,
            })
        })
        .collect();
    let timings = if intervals.is_empty() {
        json!([])
    } else {
        json!([{ "orgId": 1, "name": DEPLOY_WINDOWS, "time_intervals": intervals }])
    };
    json!({ "apiVersion": 1, "muteTimes": timings })
}
