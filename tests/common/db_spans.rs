//! Requests of a service with no toctou code, as its OpenTelemetry auto-instrumentation
//! exports them over OTLP/JSON: a server span with the request's `http.route`, and one
//! database client span per statement (psycopg's attributes, `db.system` and `db.statement`,
//! parameters off). What the tests of inference's risks send to a real `toctou run`.

use super::Toctou;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// An endpoint and the statements each of its requests runs, in order.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub route: &'static str,
    pub statements: &'static [&'static str],
}

/// Reads the stock, then writes it: a lost update on `public.items`.
pub const BUY: Endpoint = Endpoint {
    route: "/buy/{id}",
    statements: &[
        "SELECT stock FROM items WHERE id = %s",
        "UPDATE items SET stock = %s WHERE id = %s",
    ],
};

/// Checks the e-mail is free, then inserts: a check-then-insert on `public.users`.
pub const SIGNUP: Endpoint = Endpoint {
    route: "/signup",
    statements: &[
        "SELECT 1 FROM users WHERE email = %s",
        "INSERT INTO users (email) VALUES (%s)",
    ],
};

/// The same stock under a row lock: no risk.
pub const BUY_LOCKED: Endpoint = Endpoint {
    route: "/buy-locked/{id}",
    statements: &[
        "SELECT stock FROM items WHERE id = %s FOR UPDATE",
        "UPDATE items SET stock = %s WHERE id = %s",
    ],
};

fn attr(k: &str, v: &str) -> Value {
    json!({"key": k, "value": {"stringValue": v}})
}

/// One request of `endpoint` by `service` starting at `start_ns`, as one OTLP/JSON traces
/// body: the database calls' scope first, the server span's after (an SDK exports a batch
/// grouped by instrumentation scope, so a request's calls may come on either side of it).
pub fn request(service: &str, endpoint: Endpoint, trace_id: &str, start_ns: u64) -> String {
    const MS: u64 = 1_000_000;
    let root_id = format!("{:016x}", 1);
    let calls: Vec<Value> = endpoint
        .statements
        .iter()
        .enumerate()
        .map(|(i, sql)| {
            let at = start_ns + (i as u64 + 1) * 2 * MS;
            json!({
                "traceId": trace_id,
                "spanId": format!("{:016x}", i + 2),
                "parentSpanId": root_id,
                "name": sql.split_whitespace().next().unwrap_or("query"),
                "kind": 3,
                "startTimeUnixNano": at.to_string(),
                "endTimeUnixNano": (at + MS).to_string(),
                "attributes": [attr("db.system", "postgresql"), attr("db.statement", sql)],
            })
        })
        .collect();
    let end = start_ns + (endpoint.statements.len() as u64 + 1) * 2 * MS;
    let root = json!({
        "traceId": trace_id,
        "spanId": root_id,
        "name": format!("POST {}", endpoint.route),
        "kind": 2,
        "startTimeUnixNano": start_ns.to_string(),
        "endTimeUnixNano": end.to_string(),
        "attributes": [attr("http.route", endpoint.route)],
    });
    json!({"resourceSpans": [{
        "resource": {"attributes": [attr("service.name", service)]},
        "scopeSpans": [
            {"scope": {"name": "opentelemetry.instrumentation.psycopg"}, "spans": calls},
            {"scope": {"name": "opentelemetry.instrumentation.flask"}, "spans": [root]},
        ],
    }]})
    .to_string()
}

/// The trace ids of the requests sent, by route.
pub type Sent = BTreeMap<&'static str, Vec<String>>;

/// Sends `times` requests of each endpoint, in turn, each with a fresh trace id, ending
/// before now; every post answered 2xx. Adds their trace ids to `sent`.
pub async fn send(toctou: &Toctou, service: &str, plan: &[(Endpoint, usize)], sent: &mut Sent) {
    let client = reqwest::Client::new();
    let total: usize = plan.iter().map(|(_, n)| n).sum();
    let mut at = toctou_schema::now_ns() - (total as u64 + 1) * 10_000_000;
    let run = super::rand_suffix();
    let mut i = 0u64;
    for &(endpoint, times) in plan {
        for _ in 0..times {
            i += 1;
            let trace_id = format!("{run:016x}{i:016x}");
            toctou
                .post_json(
                    &client,
                    "/v1/traces",
                    request(service, endpoint, &trace_id, at),
                )
                .await;
            sent.entry(endpoint.route).or_default().push(trace_id);
            at += 10_000_000;
        }
    }
}

/// `/api/v1/risks`' requests by (service, route, kind, table), polled until `done` holds
/// for them or `timeout` passes (then the last answer).
pub async fn api_risks(
    toctou: &Toctou,
    timeout: std::time::Duration,
    done: impl Fn(&BTreeMap<(String, String, String, String), u64>) -> bool,
) -> BTreeMap<(String, String, String, String), u64> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let body: Value = reqwest::get(toctou.api_url("/api/v1/risks"))
            .await
            .expect("the risks API")
            .json()
            .await
            .expect("risks JSON");
        let risks = body["risks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (
                    (
                        text("service"),
                        text("endpoint"),
                        text("kind"),
                        text("table"),
                    ),
                    r["requests"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        if done(&risks) || std::time::Instant::now() > deadline {
            return risks;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
