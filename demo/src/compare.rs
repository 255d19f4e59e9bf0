//! What toctou found, read back from its findings API, and the comparison with what
//! happened, printed per kind.

use super::load::{Counts, KINDS};
use crate::Secret;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// Counts this run's findings by kind: detected since `since_ns`, on a resource of the run
/// (`<type>/<run>/...`), so neither an earlier run nor other traffic is counted.
pub async fn fetch_counts(
    api: &str,
    token: Option<&Secret>,
    since_ns: u64,
    run: &str,
) -> Result<BTreeMap<String, u64>> {
    let base = format!(
        "{}/api/v1/findings?since={since_ns}&limit=1000",
        api.trim_end_matches('/')
    );
    let mut counts = BTreeMap::new();
    let mut before: Option<u64> = None;
    // Page by page (the API answers at most 1000 at a time); the store holds far fewer
    // pages than this bound.
    for _ in 0..100_000 {
        let url = match before {
            Some(b) => format!("{base}&before={b}"),
            None => base.clone(),
        };
        let body: serde_json::Value = get(&url, token)
            .await
            .with_context(|| format!("querying {url}"))?
            .error_for_status()
            .with_context(|| format!("querying {url}"))?
            .json()
            .await
            .context("reading the findings response")?;
        for (kind, n) in count_run(&body, run) {
            *counts.entry(kind).or_insert(0) += n;
        }
        before = body["next"].as_u64();
        if before.is_none() {
            return Ok(counts);
        }
    }
    bail!("the findings API kept answering pages past 100,000 of them")
}

fn count_run(body: &serde_json::Value, run: &str) -> BTreeMap<String, u64> {
    let tag = format!("/{run}/");
    let mut counts = BTreeMap::new();
    for f in body["findings"].as_array().into_iter().flatten() {
        let ours = f["resource"].as_str().is_some_and(|r| r.contains(&tag));
        if let (true, Some(kind)) = (ours, f["kind"].as_str()) {
            *counts.entry(kind.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// What can make found differ from happened on the server's side, from its summary
/// (`/api/v1/summary`): findings pushed out of the API's store (`--max-findings`), and
/// events that arrived later than the allowed lateness. None when it has no summary.
pub async fn server_notes(api: &str, token: Option<&Secret>) -> Option<Vec<String>> {
    let url = format!("{}/api/v1/summary?seconds=1", api.trim_end_matches('/'));
    let body: serde_json::Value = get(&url, token).await.ok()?.json().await.ok()?;
    Some(notes_of(&body))
}

/// A GET with the API token, when there is one.
async fn get(url: &str, token: Option<&Secret>) -> reqwest::Result<reqwest::Response> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.header(reqwest::header::AUTHORIZATION, token.bearer());
    }
    request.send().await
}

fn notes_of(summary: &serde_json::Value) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(n) = summary["dropped"].as_u64().filter(|n| *n > 0) {
        notes.push(format!(
            "toctou's findings store dropped {n} findings (--max-findings): the API no longer has them"
        ));
    }
    if let Some(n) = summary["pipeline"]["late_events"]
        .as_u64()
        .filter(|n| *n > 0)
    {
        notes.push(format!(
            "{n} events arrived later than --allowed-lateness and were joined out of order"
        ));
    }
    notes
}

/// Prints what happened, by kind, for a caller that compares it with findings of its own.
pub fn print_truth(truth: &Counts) {
    println!("{:<16} {:>10}", "kind", "happened");
    for kind in KINDS {
        println!("{kind:<16} {:>10}", truth.get(kind));
    }
    println!(
        "races prevented by compare-and-swap: {}; orders that oversold stock: {}",
        truth.prevented, truth.oversold
    );
}

/// Prints happened against found for every kind. Once settled, a difference is an error:
/// the demo's claim is that toctou finds exactly the races that happened.
pub fn print(
    truth: &Counts,
    found: &BTreeMap<String, u64>,
    settled: bool,
    notes: &[String],
) -> Result<()> {
    println!("{:<16} {:>10} {:>10}", "kind", "happened", "found");
    let mut differ = Vec::new();
    for kind in KINDS {
        let happened = truth.get(kind);
        let got = found.get(kind).copied().unwrap_or(0);
        let ttl_decided = matches!(kind, "partial_create" | "orphan_check");
        let note = if ttl_decided && !settled {
            "  (decided after the pair TTL)"
        } else if happened != got {
            differ.push(kind);
            "  <- differs"
        } else {
            ""
        };
        println!("{kind:<16} {happened:>10} {got:>10}{note}");
    }
    println!(
        "races prevented by compare-and-swap: {}; orders that oversold stock: {}",
        truth.prevented, truth.oversold
    );
    if truth.raced_in_lock_wait > 0 {
        println!(
            "stale uses without a version whose intervening writes all committed while they \
             waited for the write lock: {}",
            truth.raced_in_lock_wait
        );
    }
    if !differ.is_empty() {
        let why = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        };
        bail!(
            "toctou's findings differ from what happened for {}{why}",
            differ.join(", ")
        );
    }
    println!("toctou found exactly the races that happened.");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_findings_on_this_runs_resources_count() {
        let body = serde_json::json!({"findings": [
            {"kind": "stale_check", "resource": "inventory/ab12cd/sku-1"},
            {"kind": "stale_check", "resource": "inventory/ab12cd/sku-2"},
            {"kind": "stale_check", "resource": "inventory/ffffff/sku-1"},
            {"kind": "orphan_check", "resource": "inventory/sku-1"},
            {"kind": "partial_create", "resource": "claims/ab12cd/pod-000001"}
        ]});
        let c = count_run(&body, "ab12cd");
        assert_eq!(
            c,
            BTreeMap::from([
                ("partial_create".to_string(), 1),
                ("stale_check".to_string(), 2)
            ])
        );
    }

    #[test]
    fn a_difference_is_an_error_once_settled() {
        let truth = Counts::default().kind("stale_check", 2);
        let found = BTreeMap::from([("stale_check".to_string(), 2)]);
        assert!(print(&truth, &found, true, &[]).is_ok());
        let short = BTreeMap::from([("stale_check".to_string(), 1)]);
        let err = print(&truth, &short, true, &["a note".to_string()]).unwrap_err();
        assert!(err.to_string().contains("stale_check"), "{err}");
        assert!(err.to_string().contains("(a note)"), "{err}");
        // Not settled: the TTL-decided kinds cannot be compared yet.
        let orphans = Counts::default().kind("orphan_check", 3);
        assert!(print(&orphans, &BTreeMap::new(), false, &[]).is_ok());
    }

    #[test]
    fn server_side_causes_of_a_difference_are_named() {
        let quiet = serde_json::json!({"dropped": 0, "pipeline": {"late_events": 0}});
        assert!(notes_of(&quiet).is_empty());
        let busy = serde_json::json!({"dropped": 12, "pipeline": {"late_events": 3}});
        let notes = notes_of(&busy);
        assert_eq!(notes.len(), 2);
        assert!(notes[0].contains("dropped 12"), "{notes:?}");
        assert!(notes[1].contains("3 events"), "{notes:?}");
    }
}
