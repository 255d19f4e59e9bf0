//! Black-box tests of the Kubernetes audit webhook (`POST /v1/k8s-audit`) with real
//! captured audit events: as an `EventList`, one `Event`, and JSON lines.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use toctou_collector::metrics::EventPhase;
use toctou_collector::{IgnoreReason, ReceiverConfig, RejectReason, Signal};
use toctou_schema::{AuditAction, Event};

#[tokio::test]
async fn kubernetes_audit_webhook() {
    let mut h = Harness::start().await;
    let items: Vec<Json> = [
        "k8s-audit/create_configmap_no_sensitive_values.json",
        "k8s-audit/attach_pod.json",
        "k8s-audit/delete_configmap.json",
        "k8s-audit/delete_configmap.json",
    ]
    .iter()
    .map(|f| serde_json::from_slice(&read(f)).unwrap())
    .collect();
    let list = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items});
    let resp = post(
        &h.url("/v1/k8s-audit"),
        JSON,
        None,
        list.to_string().into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"accepted": 2, "ignored": 2, "rejected": 0, "errors": []})
    );
    let batch = h.next_batch().await;
    let resources: Vec<_> = batch
        .iter()
        .map(|e| match e {
            Event::Audit(a) => (a.action, a.resource.as_str()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        resources,
        [
            (AuditAction::Create, "k8s/configmaps/default/my-config"),
            (AuditAction::Delete, "k8s/configmaps/default/my-config"),
        ]
    );
    let m = h.receivers.metrics();
    assert_eq!(m.events(Signal::K8sAudit, EventPhase::Audit), 2);
    assert_eq!(m.ignored(IgnoreReason::NonFinalStage), 1);
    assert_eq!(m.ignored(IgnoreReason::Duplicate), 1);

    // A single Event works too; a broken one names the problem.
    let resp = post(
        &h.url("/v1/k8s-audit"),
        JSON,
        None,
        read("k8s-audit/create_service.json"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(h.next_batch().await.len(), 1);
    let no_name = json!({"kind": "Event", "auditID": "a", "stage": "ResponseComplete",
        "verb": "create", "objectRef": {"resource": "pods", "namespace": "default"},
        "stageTimestamp": "2024-01-01T00:00:00Z"});
    let resp = post(
        &h.url("/v1/k8s-audit"),
        JSON,
        None,
        no_name.to_string().into_bytes(),
    )
    .await;
    let body: Json = resp.json().await.unwrap();
    assert_eq!(body["rejected"], 1);
    assert_eq!(
        body["errors"][0],
        "audit event a: no objectRef.name nor responseObject.metadata.name"
    );
    let resp = post(
        &h.url("/v1/k8s-audit"),
        JSON,
        None,
        b"{\"kind\":\"Pod\"}".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    h.shutdown().await;
}

/// The captured events, sorted by file name.
fn captured() -> Vec<Json> {
    let mut files: Vec<_> = std::fs::read_dir(testdata("k8s-audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 24, "the captured set changed");
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// One compact `Event` a line, as the audit log backend writes them.
fn json_lines(items: &[Json]) -> Vec<String> {
    items.iter().map(Json::to_string).collect()
}

/// The events the captured set comes to: the reviewed golden file, made from the same
/// events sent as one `EventList`.
fn golden_events() -> Vec<Event> {
    let golden: Json = serde_json::from_slice(&read("golden/k8s-audit/all.json")).unwrap();
    serde_json::from_value(golden["events"].clone()).unwrap()
}

/// The auditIDs that must reach the sink, read off the captured events themselves: the
/// final stage of each write that did not fail, once per (auditID, stage).
fn committed_writes(items: &[Json]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    items
        .iter()
        .filter(|e| seen.insert((e["auditID"].clone(), e["stage"].clone())))
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            let verb = e["verb"].as_str().unwrap();
            ["create", "update", "patch", "delete", "deletecollection"].contains(&verb)
        })
        .filter(|e| e["responseStatus"]["code"].as_i64().unwrap_or(0) < 400)
        .map(|e| e["auditID"].as_str().unwrap().to_string())
        .collect()
}

fn audit_ids(batch: &[Event]) -> Vec<String> {
    batch
        .iter()
        .map(|e| match e {
            Event::Audit(a) => a.source_id.clone().unwrap(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn json_lines_of_captured_events_reach_the_sink_exactly() {
    let mut h = Harness::start().await;
    let url = h.url("/v1/k8s-audit");
    let items = captured();
    let expected = golden_events();
    assert_eq!(audit_ids(&expected), committed_writes(&items));
    let lines = json_lines(&items);

    let resp = post(&url, JSON, None, (lines.join("\n") + "\n").into_bytes()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"accepted": 20, "ignored": 4, "rejected": 0, "errors": []})
    );
    assert_eq!(h.next_batch().await, expected);

    // A line cut short in the middle (line 14), as a shipper cuts one at a buffer's end,
    // and a blank line: the bad line is answered and counted, every good one is kept.
    let mut cut = lines.clone();
    cut.insert(12, lines[11][..lines[11].len() / 2].to_string());
    cut.insert(3, String::new());
    let resp = post(&url, JSON, None, cut.join("\n").into_bytes()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"accepted": 20, "ignored": 4, "rejected": 1, "errors": [
            "line 14, column 1618: malformed json: \
             control character (\\u0000-\\u001F) found while parsing a string"
        ]})
    );
    assert_eq!(h.next_batch().await, expected);
    let m = h.receivers.metrics().clone();
    assert_eq!(m.rejected(RejectReason::MalformedJson), 1);
    assert_eq!(m.events(Signal::K8sAudit, EventPhase::Audit), 40);

    // The same events as one EventList, and one of them as a single Event.
    let list = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items});
    let resp = post(&url, JSON, None, list.to_string().into_bytes()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(h.next_batch().await, expected);
    let single = read("k8s-audit/create_service.json");
    let resp = post(&url, JSON, None, single.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let one = h.next_batch().await;
    let single: Json = serde_json::from_slice(&single).unwrap();
    assert_eq!(audit_ids(&one), [single["auditID"].as_str().unwrap()]);
    assert!(expected.contains(&one[0]));

    // Many bad lines: the first ones listed, all counted.
    let many = format!("{}\n{}", lines[0], "x\n".repeat(12));
    let resp = post(&url, JSON, None, many.into_bytes()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(
        (&body["accepted"], &body["ignored"]),
        (&json!(1), &json!(0))
    );
    assert_eq!(body["rejected"], 12);
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 10);
    assert_eq!(
        errors[9],
        "line 11, column 1: malformed json: expected value"
    );
    assert_eq!(
        audit_ids(&h.next_batch().await),
        committed_writes(&items[..1])
    );
    assert_eq!(m.rejected(RejectReason::MalformedJson), 13);

    // Not one good line: the body is refused whole, and counted once, as a bad EventList.
    let resp = post(&url, JSON, None, b"x\n{\"kind\":\"Pod\"}\n".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(
        body["message"],
        "line 1, column 1: malformed json: expected value"
    );
    assert_eq!(m.rejected(RejectReason::MalformedJson), 14);
    h.assert_no_batch();
    h.shutdown().await;
}

#[tokio::test]
async fn json_lines_are_held_to_the_request_size_limit() {
    let body = (json_lines(&captured()).join("\n") + "\n").into_bytes();
    for (limit, status) in [
        (body.len() - 1, StatusCode::PAYLOAD_TOO_LARGE),
        (body.len(), StatusCode::OK),
    ] {
        let config = ReceiverConfig {
            max_request_bytes: limit,
            ..Default::default()
        };
        let mut h = Harness::with(config, 16).await;
        let resp = post(&h.url("/v1/k8s-audit"), JSON, None, body.clone()).await;
        assert_eq!(resp.status(), status, "limit {limit}");
        if status == StatusCode::OK {
            assert_eq!(h.next_batch().await, golden_events());
        } else {
            h.assert_no_batch();
        }
        h.shutdown().await;
    }
}
