//! Tests of the audit mapping: golden files over the real captured events, and one test per
//! rule on synthetic events.

use super::*;
use serde_json::json;
use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// The captured events, sorted by file name so the combined list has a fixed order.
fn captured() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(testdata().join("k8s-audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// What a golden file holds: everything `Decoded` says, one event per line so that a diff
/// points at the event that changed.
fn render(d: &Decoded) -> String {
    let ignored: serde_json::Map<_, _> = d
        .ignored
        .iter()
        .map(|(r, n)| (r.as_str().to_string(), json!(n)))
        .collect();
    let rejected: Vec<_> = d
        .rejected
        .iter()
        .map(|r| json!({"reason": r.reason.as_str(), "message": r.message}))
        .collect();
    let events: Vec<String> = d
        .events
        .iter()
        .map(|e| format!("    {}", serde_json::to_string(e).unwrap()))
        .collect();
    let events = if events.is_empty() {
        "[]".to_string()
    } else {
        format!("[\n{}\n  ]", events.join(",\n"))
    };
    let text = format!(
        "{{\n  \"events\": {events},\n  \"ignored\": {},\n  \"rejected\": {}\n}}\n",
        serde_json::to_string(&ignored).unwrap(),
        serde_json::to_string(&rejected).unwrap()
    );
    // The hand-made layout must still be JSON, for anyone reading the goldens with tools.
    serde_json::from_str::<serde_json::Value>(&text).unwrap();
    text
}

/// Compares with the golden file, or rewrites it under `UPDATE_GOLDEN=1`.
fn golden(name: &str, actual: &str) {
    let path = testdata()
        .join("golden/k8s-audit")
        .join(format!("{name}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "{} differs; if the change is intended, rerun with UPDATE_GOLDEN=1 and review the diff",
        path.display()
    );
}

#[test]
fn golden_each_captured_event() {
    let files = captured();
    assert_eq!(files.len(), 24, "the captured set changed");
    for (name, body) in files {
        let d = decode_k8s_audit(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Every single captured event is either one event or one ignored item.
        assert_eq!(d.item_count(), 1, "{name}");
        golden(&name, &render(&d));
    }
}

#[test]
fn golden_all_captured_events_as_one_event_list() {
    let items: Vec<serde_json::Value> = captured()
        .iter()
        .map(|(_, body)| serde_json::from_slice(body).unwrap())
        .collect();
    let list = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items});
    let d = decode_k8s_audit(list.to_string().as_bytes()).unwrap();
    // anonymous_ and some-user_creates_namespace_foo share an auditID and stage (the same
    // request captured twice): the second is dropped.
    assert_eq!(d.ignored.get(IgnoreReason::Duplicate), 1);
    golden("all", &render(&d));
}

fn audit(d: &Decoded) -> &AuditEvent {
    assert_eq!(d.events.len(), 1, "{d:?}");
    match &d.events[0] {
        Event::Audit(a) => a,
        other => panic!("not an audit event: {other:?}"),
    }
}

fn file(name: &str) -> Decoded {
    let body = std::fs::read(testdata().join("k8s-audit").join(name)).unwrap();
    decode_k8s_audit(&body).unwrap()
}

#[test]
fn captured_create_with_generated_name_takes_name_and_version_from_response() {
    let d = file("create_pod_kube_system_namespace.json");
    let a = audit(&d);
    assert_eq!(
        a.resource,
        "k8s/pods/kube-system/nginx-deployment-7998647bdf-7q2sp"
    );
    assert_eq!(a.version.as_deref(), Some("267526"));
    assert_eq!(a.action, AuditAction::Create);
    assert_eq!(
        a.actor.as_deref(),
        Some("system:serviceaccount:kube-system:replicaset-controller")
    );
    assert_eq!(a.time_ns, 1_540_561_640_367_055_000);
    assert_eq!(a.service, "kubernetes");
    assert_eq!(
        a.source_id.as_deref(),
        Some("5fad6ec1-4e15-4753-b180-ae9fd096f511")
    );
    assert_eq!(a.request_id, None);
}

#[test]
fn captured_cluster_scoped_objects_use_the_placeholder_namespace() {
    let a = file("create_clusterrolebinding.json");
    assert_eq!(
        audit(&a).resource,
        "k8s/clusterrolebindings/_/some-reader-binding"
    );
    // A namespace is created without objectRef.namespace and deleted with it: both name
    // the same resource.
    let created = file("minikube_creates_namespace_foo.json");
    let deleted = file("delete_namespace_foo.json");
    assert_eq!(audit(&created).resource, "k8s/namespaces/_/foo");
    assert_eq!(audit(&deleted).resource, "k8s/namespaces/_/foo");
    assert_eq!(audit(&deleted).action, AuditAction::Delete);
    assert_eq!(audit(&deleted).version, None);
}

#[test]
fn captured_non_final_stages_and_reads_are_ignored() {
    for (name, reason) in [
        ("attach_pod.json", IgnoreReason::NonFinalStage),
        ("exec_pod.json", IgnoreReason::NonFinalStage),
        (
            "create_nginx_pod_unsensitive_mount.json",
            IgnoreReason::ReadVerb,
        ),
    ] {
        let d = file(name);
        assert!(d.events.is_empty(), "{name}");
        assert_eq!(d.ignored.get(reason), 1, "{name}");
    }
}

/// A minimal webhook event with the given overrides merged in.
fn event(overrides: serde_json::Value) -> serde_json::Value {
    let mut e = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "auditID": "id-1",
        "stage": "ResponseComplete",
        "verb": "update",
        "user": {"username": "alice"},
        "objectRef": {"resource": "configmaps", "namespace": "default", "name": "cfg",
                      "resourceVersion": "41"},
        "responseStatus": {"code": 200},
        "stageTimestamp": "2024-01-02T03:04:05.000000006Z",
    });
    let (serde_json::Value::Object(base), serde_json::Value::Object(extra)) = (&mut e, overrides)
    else {
        panic!("objects only")
    };
    for (k, v) in extra {
        if v.is_null() {
            base.remove(&k);
        } else {
            base.insert(k, v);
        }
    }
    e
}

fn decode(v: serde_json::Value) -> Decoded {
    decode_k8s_audit(v.to_string().as_bytes()).unwrap()
}

#[test]
fn verbs_map_to_actions() {
    for (verb, action) in [
        ("create", AuditAction::Create),
        ("update", AuditAction::Update),
        ("patch", AuditAction::Update),
        ("delete", AuditAction::Delete),
        ("deletecollection", AuditAction::Delete),
    ] {
        let d = decode(event(json!({"verb": verb})));
        assert_eq!(audit(&d).action, action, "{verb}");
    }
    for (verb, reason) in [
        ("get", IgnoreReason::ReadVerb),
        ("list", IgnoreReason::ReadVerb),
        ("watch", IgnoreReason::ReadVerb),
        ("impersonate", IgnoreReason::OtherVerb),
        ("", IgnoreReason::OtherVerb),
    ] {
        let d = decode(event(json!({"verb": verb})));
        assert_eq!(d.ignored.get(reason), 1, "{verb}");
    }
}

#[test]
fn a_full_event_maps_every_field() {
    let d = decode(event(json!({
        "annotations": {"toctou.request_id": "req-7", "other": "x"},
        "objectRef": {"resource": "pods", "namespace": "web", "name": "p1",
                      "subresource": "status", "resourceVersion": "9"},
        "responseObject": {"metadata": {"resourceVersion": "10"}},
    })));
    assert_eq!(
        audit(&d),
        &AuditEvent {
            action: AuditAction::Update,
            resource: "k8s/pods/web/p1/status".into(),
            version: Some("10".into()),
            request_id: Some("req-7".into()),
            actor: Some("alice".into()),
            time_ns: 1_704_164_645_000_000_006,
            service: "kubernetes".into(),
            source_id: Some("id-1".into()),
            trace_id: [0; 16],
            span_id: [0; 8],
        }
    );
    // Without a response (a delete, say), objectRef's version stands in.
    let d = decode(event(json!({
        "objectRef": {"resource": "pods", "namespace": "web", "name": "p1",
                      "resourceVersion": "9"},
    })));
    assert_eq!(audit(&d).version.as_deref(), Some("9"));
}

#[test]
fn failed_requests_and_other_stages_are_ignored() {
    let d = decode(event(json!({"responseStatus": {"code": 409}})));
    assert_eq!(d.ignored.get(IgnoreReason::FailedRequest), 1);
    let d = decode(event(json!({"responseStatus": {"code": 399}})));
    assert_eq!(d.events.len(), 1);
    for stage in ["RequestReceived", "ResponseStarted", "Panic"] {
        let d = decode(event(json!({"stage": stage})));
        assert_eq!(d.ignored.get(IgnoreReason::NonFinalStage), 1, "{stage}");
    }
}

#[test]
fn repeats_of_auditid_and_stage_are_dropped_within_a_body() {
    let list = json!({"kind": "EventList", "items": [
        event(json!({"stage": "RequestReceived"})),
        event(json!({})),
        event(json!({})),
        event(json!({"auditID": "id-2"})),
        event(json!({"auditID": null})),
        event(json!({"auditID": null})),
    ]});
    let d = decode(list);
    assert_eq!(d.events.len(), 4);
    assert_eq!(d.ignored.get(IgnoreReason::Duplicate), 1);
    assert_eq!(d.ignored.get(IgnoreReason::NonFinalStage), 1);
    // Separate bodies deduplicate separately (the correlator drops redeliveries by source id).
    assert_eq!(decode(event(json!({}))).events.len(), 1);
}

#[test]
fn unusable_events_are_rejected_with_a_message() {
    let cases = [
        (
            json!({"objectRef": null}),
            RejectReason::MissingResource,
            "audit event id-1: no objectRef",
        ),
        (
            json!({"objectRef": {"namespace": "default", "name": "x"}}),
            RejectReason::MissingResource,
            "audit event id-1: no objectRef.resource",
        ),
        (
            json!({"objectRef": {"resource": "pods"}, "auditID": null}),
            RejectReason::MissingResource,
            "audit event #0: no objectRef.name nor responseObject.metadata.name",
        ),
        (
            json!({"stageTimestamp": null}),
            RejectReason::BadAttribute,
            "audit event id-1: no stageTimestamp",
        ),
        (
            json!({"stageTimestamp": "yesterday"}),
            RejectReason::BadAttribute,
            "audit event id-1: stageTimestamp: invalid RFC 3339 timestamp \"yesterday\": the 'year' component could not be parsed",
        ),
    ];
    for (overrides, reason, message) in cases {
        let d = decode(event(overrides));
        assert!(d.events.is_empty());
        assert_eq!(d.rejected, vec![Rejection::new(reason, message)]);
    }
}

#[test]
fn bodies_that_are_not_audit_events_are_errors() {
    for body in [
        &b"{"[..],
        br#"{"kind":"Pod","apiVersion":"v1"}"#,
        br#"{"kind":"Event","apiVersion":"events.k8s.io/v1"}"#,
        br#"{"resourceSpans":[]}"#,
        br#"{"kind":"Event","stage":5}"#,
        br#"{"kind":"EventList","items":{}}"#,
    ] {
        let err = decode_k8s_audit(body).unwrap_err();
        let reason = err.reason();
        assert_eq!(reason, RejectReason::MalformedJson, "{err}");
    }
    assert!(decode_k8s_audit(br#"{"kind":"EventList","items":null}"#)
        .unwrap()
        .events
        .is_empty());
}

#[test]
fn values_over_the_length_limit_refuse_their_event_only() {
    let long = "x".repeat(MAX_VALUE_BYTES + 1);
    let at_limit = "n".repeat(MAX_VALUE_BYTES - "k8s/configmaps/default/".len());
    let cases = [
        (json!({"auditID": long}), "auditID"),
        (
            json!({"objectRef": {"resource": "configmaps", "namespace": "default", "name": long}}),
            "the resource (from objectRef)",
        ),
        (
            json!({"objectRef": {"resource": "configmaps", "namespace": "default", "name": "cfg",
                                 "resourceVersion": long}}),
            "resourceVersion",
        ),
        (json!({"annotations": {c::REQUEST_ID: long}}), c::REQUEST_ID),
        (json!({"user": {"username": long}}), "user.username"),
    ];
    for (overrides, field) in cases {
        let body = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [
            event(overrides),
            event(json!({"auditID": "id-2"})),
        ]});
        let d = decode(body);
        assert_eq!(d.events.len(), 1, "{field}: the other event is kept");
        assert_eq!(d.rejected.len(), 1, "{field}");
        let r = &d.rejected[0];
        assert_eq!(r.reason, RejectReason::AttributeTooLong, "{field}");
        assert!(r.message.contains(field), "{}", r.message);
        // The message names the length, never the value.
        assert!(r.message.len() < 300, "{}", r.message);
    }
    // A resource path of exactly the limit is kept.
    let d = decode(event(json!({"objectRef": {"resource": "configmaps",
        "namespace": "default", "name": at_limit}})));
    assert_eq!(d.events.len(), 1);
    assert!(d.rejected.is_empty());
}

/// The captured events as JSON lines (one compact `Event` a line), in `captured()` order.
fn captured_lines() -> Vec<String> {
    captured()
        .iter()
        .map(|(_, body)| {
            serde_json::from_slice::<serde_json::Value>(body)
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn json_lines_decode_as_the_event_list_does() {
    let lines = captured_lines();
    // Blank lines and CRLF endings, as files and shippers have them.
    let body = format!(
        "\n{}\r\n\r\n{}\n",
        lines[..3].join("\r\n"),
        lines[3..].join("\n")
    );
    golden("all", &render(&decode_k8s_audit(body.as_bytes()).unwrap()));
}

#[test]
fn a_bad_line_is_rejected_by_its_line_and_the_good_ones_are_kept() {
    let all = decode_k8s_audit(captured_lines().join("\n").as_bytes()).unwrap();
    let mut lines = captured_lines();
    // Line 13 cut short, as a shipper cuts a line at a buffer's end; line 6 not JSON; line
    // 20 an audit event without a name (one bad item in a good line).
    let cut = lines[11][..lines[11].len() / 2].to_string();
    lines.insert(12, cut);
    lines.insert(5, "not json".into());
    lines.insert(
        19,
        event(json!({"objectRef": {"resource": "pods", "namespace": "default"}})).to_string(),
    );
    let d = decode_k8s_audit(lines.join("\n").as_bytes()).unwrap();
    assert_eq!(d.events, all.events);
    assert_eq!(d.ignored, all.ignored);
    let messages: Vec<_> = d.rejected.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "line 6, column 2: malformed json: expected ident",
            "line 14, column 1618: malformed json: control character (\\u0000-\\u001F) found while parsing a string",
            "line 20: audit event id-1: no objectRef.name nor responseObject.metadata.name",
        ]
    );
    let reasons: Vec<_> = d.rejected.iter().map(|r| r.reason).collect();
    use RejectReason::*;
    assert_eq!(reasons, [MalformedJson, MalformedJson, MissingResource]);
}

#[test]
fn bad_lines_past_the_listed_ones_are_only_counted() {
    let good = event(json!({})).to_string();
    let body = format!("{good}\n{}", "x\n".repeat(25));
    let d = decode_k8s_audit(body.as_bytes()).unwrap();
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.rejected.len(), MAX_LISTED_ERRORS);
    assert_eq!(
        d.rejected[0].message,
        "line 2, column 1: malformed json: expected value"
    );
    assert_eq!(d.rejected_unlisted.get(RejectReason::MalformedJson), 15);
    assert_eq!(d.rejected_unlisted.total(), 15);
    let summary = d.error_message("audit events");
    assert!(
        summary.starts_with("rejected 25 of 26 audit events: line 2,"),
        "{summary}"
    );
    assert!(summary.ends_with("; and 20 more"), "{summary}");
}

#[test]
fn a_body_without_a_good_document_is_refused_whole() {
    let err = decode_k8s_audit(b"x\n{\"kind\":\"Pod\"}\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 1, column 1: malformed json: expected value"
    );
    for empty in [&b""[..], b"\n \r\n"] {
        let err = decode_k8s_audit(empty).unwrap_err();
        assert_eq!(err.reason(), RejectReason::MalformedJson);
        assert!(err.to_string().contains("empty body"), "{err}");
    }
}
