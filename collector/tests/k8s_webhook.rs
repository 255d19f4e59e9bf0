//! Black-box test of the Kubernetes audit webhook (`POST /v1/k8s-audit`) with real
//! captured audit events.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use toctou_collector::metrics::EventPhase;
use toctou_collector::{IgnoreReason, Signal};
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
