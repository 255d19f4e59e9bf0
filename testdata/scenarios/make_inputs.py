#!/usr/bin/env python3
"""Writes the OTLP/JSON inputs of the golden scenarios (input.jsonl in each folder).

Each scenario is a short timeline of check spans, use spans and audit log records, written
one OTLP request per line (ExportTraceServiceRequest or ExportLogsServiceRequest in the
OTLP/JSON mapping) so that the golden test can shuffle whole requests. Every timeline fits
in under a second, inside the default 2 s allowed lateness, so any shuffle of its lines must
give the same findings. Expected findings are not written here: the golden test writes them
with UPDATE_GOLDEN=1, and they are reviewed by hand.

Run: python3 testdata/scenarios/make_inputs.py
"""
import hashlib
import json
import os

BASE_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
HERE = os.path.dirname(os.path.abspath(__file__))


def ms(t):
    return str(BASE_NS + int(t * 1_000_000))


def hexid(seed, n):
    return hashlib.sha256(seed.encode()).hexdigest()[: n * 2]


def attr(k, v):
    if isinstance(v, bool):
        return {"key": k, "value": {"boolValue": v}}
    if isinstance(v, int):
        return {"key": k, "value": {"intValue": str(v)}}
    return {"key": k, "value": {"stringValue": v}}


def span(service, req, name, phase, start, end, **attrs):
    """One span in its own request; `req` names the trace (and so the request id)."""
    a = {"toctou.phase": phase} if phase else {}
    status = attrs.pop("status", None)
    for k, v in attrs.items():
        a["toctou." + k.replace("__", ".")] = v
    s = {
        "traceId": hexid("trace:" + req, 16),
        "spanId": hexid("span:%s:%s:%s" % (req, name, start), 8),
        "name": name,
        "kind": 1,
        "startTimeUnixNano": ms(start),
        "endTimeUnixNano": ms(end),
        "attributes": [attr(k, v) for k, v in a.items()],
    }
    if status is not None:
        s["status"] = {"code": status}
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [attr("service.name", service)]},
                "scopeSpans": [{"scope": {"name": "golden"}, "spans": [s]}],
            }
        ]
    }


def raw_attrs(span_request, **extra):
    s = span_request["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    for k, v in extra.items():
        s["attributes"].append(attr(k, v))
    return span_request


def audit(service, t, action, resource, version=None, request=None, actor=None):
    a = {"toctou.audit.action": action, "toctou.resource": resource}
    if version is not None:
        a["toctou.resource.version"] = version
    if request is not None:
        a["toctou.request_id"] = hexid("trace:" + request, 16)
    if actor is not None:
        a["toctou.actor"] = actor
    rec = {
        "timeUnixNano": ms(t),
        "observedTimeUnixNano": ms(t + 1),
        "severityNumber": 9,
        "body": {"stringValue": "audit"},
        "attributes": [attr(k, v) for k, v in a.items()],
    }
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": [attr("service.name", service)]},
                "scopeLogs": [{"scope": {"name": "golden"}, "logRecords": [rec]}],
            }
        ]
    }


def k8s_event(name):
    """A captured Kubernetes audit event (collector/testdata/k8s-audit), as one line."""
    path = os.path.join(HERE, "..", "..", "collector", "testdata", "k8s-audit", name)
    with open(path) as f:
        return json.load(f)


def at_ns(ns, service, req, name, phase, offset_ms, **attrs):
    """A span placed relative to an absolute time (for scenarios around captured events)."""
    global BASE_NS
    saved, BASE_NS = BASE_NS, ns
    try:
        return span(service, req, name, phase, offset_ms, offset_ms + 2, **attrs)
    finally:
        BASE_NS = saved


# delete_configmap.json: minikube-user deletes default/my-config at 2018-10-26T13:13:33.773884Z.
K8S_DELETE_NS = 1540559613_773884000


def check(service, req, t, resource, **kw):
    return span(service, req, "check", "check", t, t + 2, resource=resource, **kw)


def use(service, req, t, resource, **kw):
    return span(service, req, "use", "use", t, t + 3, resource=resource, **kw)


SCENARIOS = {
    # A buyer checks stock at v1; another buyer's write commits v2; the first reserves on v2.
    "stale_check_versions": [
        check("shop", "a", 0, "inventory/sku-1", resource__version=1),
        check("shop", "b", 10, "inventory/sku-1", resource__version=1),
        use("shop", "b", 20, "inventory/sku-1", resource__version=1, operation="reserve"),
        audit("db", 22, "update", "inventory/sku-1", "2", request="b"),
        use("shop", "a", 40, "inventory/sku-1", resource__version=2, operation="reserve"),
        audit("db", 42, "update", "inventory/sku-1", "3", request="a"),
    ],
    # The use carries no version; the audit stream shows another request's write after v5.
    "stale_check_audit_versions": [
        check("shop", "a", 0, "inventory/sku-2", resource__version=5),
        audit("db", 15, "update", "inventory/sku-2", "6", request="other"),
        use("shop", "a", 30, "inventory/sku-2", operation="reserve"),
        audit("db", 33, "update", "inventory/sku-2", "7", request="a"),
    ],
    # Opaque versions (etags): ordered by time; the intervening write has no request id.
    "stale_check_audit_time": [
        check("cfg", "a", 0, "config/flags", resource__version="etag-a1", check__source="cache"),
        audit("store", 10, "update", "config/flags", "etag-b7"),
        use("cfg", "a", 25, "config/flags", operation="apply"),
    ],
    # A webhook delivered twice; both deliveries pass the idempotency check and charge.
    "duplicate_use_idempotency": [
        check("pay", "d1", 0, "payments/evt-9", idempotency_key="evt-9", resource__version=0),
        check("pay", "d2", 5, "payments/evt-9", idempotency_key="evt-9", resource__version=0),
        use("pay", "d1", 20, "payments/evt-9", idempotency_key="evt-9", operation="charge", resource__version=0),
        use("pay", "d2", 30, "payments/evt-9", idempotency_key="evt-9", operation="charge", resource__version=1),
    ],
    # Two controller replicas both see no claim and both create it; both finalize.
    "duplicate_create": [
        check("ctl-a", "r1", 0, "claims/ns/pod-1", resource__version=0),
        check("ctl-b", "r2", 3, "claims/ns/pod-1", resource__version=0),
        use("ctl-a", "r1", 10, "claims/ns/pod-1", operation="create"),
        audit("api", 12, "create", "claims/ns/pod-1", "1", request="r1"),
        use("ctl-b", "r2", 20, "claims/ns/pod-1", operation="create"),
        audit("api", 22, "create", "claims/ns/pod-1", "2", request="r2"),
        audit("api", 40, "finalize", "claims/ns/pod-1", "3", request="r1"),
    ],
    # A use with no check at all, and a use after a check that denied.
    "unchecked_use": [
        use("batch", "j1", 0, "inventory/sku-3", operation="restock", resource__version=4),
        check("shop", "a", 10, "inventory/sku-4", resource__version=1, check__decision="deny"),
        use("shop", "a", 20, "inventory/sku-4", operation="reserve", resource__version=1),
    ],
    # Allowed under policy v3; the policy moves to v4 before the edit.
    "authz_drift_policy_change": [
        check("docs", "a", 0, "docs/doc-1", resource__version=7, policy="policies/docs-acl", policy__version="3"),
        audit("iam", 10, "policy_change", "policies/docs-acl", "4", actor="admin"),
        use("docs", "a", 20, "docs/doc-1", operation="edit", resource__version=7),
    ],
    # Allowed, then the write is refused with 403: the permission was revoked in between.
    "authz_drift_denied": [
        check("docs", "a", 0, "docs/doc-2", resource__version=1, policy="policies/docs-acl", policy__version="3"),
        raw_attrs(
            use("docs", "a", 20, "docs/doc-2", operation="edit", resource__version=1, use__outcome="error", status=2),
            **{"http.response.status_code": 403},
        ),
    ],
    # A claim is created (span and audit record of the same request) and never finalized,
    # while claims are a type that finalizes (another claim was).
    "partial_create": [
        audit("api", 0, "finalize", "claims/ns/pod-0", "3", request="r0"),
        check("ctl-a", "r1", 0, "claims/ns/pod-2", resource__version=0),
        use("ctl-a", "r1", 10, "claims/ns/pod-2", operation="create", resource__version=0),
        audit("api", 12, "create", "claims/ns/pod-2", "1", request="r1"),
    ],
    # An allowing check no use follows; a denying check is no orphan.
    "orphan_check": [
        check("shop", "a", 0, "inventory/sku-5", resource__version=2),
        check("shop", "b", 5, "inventory/sku-5", resource__version=2, check__decision="deny"),
    ],
    # One use both unchecked and a duplicate: only the most specific kind, unchecked_use.
    "precedence_unchecked_over_duplicate": [
        check("pay", "d1", 0, "payments/evt-7", idempotency_key="evt-7", resource__version=0),
        use("pay", "d1", 10, "payments/evt-7", idempotency_key="evt-7", operation="charge", resource__version=0),
        use("pay", "d2", 20, "payments/evt-7", idempotency_key="evt-7", operation="charge", resource__version=1),
    ],
    # A controller checks a ConfigMap, a person deletes it (a real captured audit event on
    # the webhook's format), and the controller then updates it: the check was stale.
    "k8s_audit_stale_check": [
        at_ns(K8S_DELETE_NS, "cfg-controller", "k", "check", "check", -60,
              resource="k8s/configmaps/default/my-config", resource__version="260014"),
        k8s_event("delete_configmap.json"),
        at_ns(K8S_DELETE_NS, "cfg-controller", "k", "use", "use", 40,
              resource="k8s/configmaps/default/my-config", operation="update"),
    ],
    # Nothing here is a race: every flow below must give no finding.
    "clean": [
        # check and use on the same version, own write audited after the use started
        check("shop", "a", 0, "inventory/sku-6", resource__version=3),
        use("shop", "a", 10, "inventory/sku-6", operation="reserve", resource__version=3),
        audit("db", 12, "update", "inventory/sku-6", "4", request="a"),
        # a compare-and-swap that caught the race: a prevented race, not a finding
        check("shop", "b", 20, "inventory/sku-7", resource__version=1),
        audit("db", 25, "update", "inventory/sku-7", "2", request="c"),
        use("shop", "b", 30, "inventory/sku-7", operation="reserve", resource__version=2, use__outcome="conflict"),
        # a retry loop: the second check supersedes the first, which is no orphan
        check("shop", "d", 40, "inventory/sku-8", resource__version=1),
        check("shop", "d", 50, "inventory/sku-8", resource__version=2),
        use("shop", "d", 60, "inventory/sku-8", operation="reserve", resource__version=2),
        # a create that is finalized
        check("ctl-a", "e", 70, "claims/ns/pod-3", resource__version=0),
        use("ctl-a", "e", 80, "claims/ns/pod-3", operation="create"),
        audit("api", 82, "create", "claims/ns/pod-3", "1", request="e"),
        audit("api", 90, "finalize", "claims/ns/pod-3", "2", request="e"),
        # an authorization check whose policy did not change
        audit("iam", 95, "policy_change", "policies/billing", "8", actor="admin"),
        check("billing", "f", 100, "invoices/inv-1", resource__version=1, policy="policies/billing", policy__version="8"),
        use("billing", "f", 110, "invoices/inv-1", operation="void", resource__version=1),
        # a denying check that nothing used
        check("shop", "g", 120, "inventory/sku-9", resource__version=0, check__decision="deny"),
        # a span that is not a toctou span at all
        span("shop", "h", "GET /health", None, 130, 131),
        # no version on either side and no audit stream: indeterminate, never a guess
        check("legacy", "i", 140, "legacy/thing-1"),
        use("legacy", "i", 150, "legacy/thing-1", operation="touch"),
        # the same span delivered twice (an OTLP retry) is one use
        check("pay", "j", 160, "payments/evt-1", idempotency_key="evt-1", resource__version=0),
        use("pay", "j", 170, "payments/evt-1", idempotency_key="evt-1", operation="charge", resource__version=0),
        use("pay", "j", 170, "payments/evt-1", idempotency_key="evt-1", operation="charge", resource__version=0),
    ],
}


def main():
    for name, lines in SCENARIOS.items():
        d = os.path.join(HERE, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "input.jsonl"), "w") as f:
            for line in lines:
                f.write(json.dumps(line, separators=(",", ":")) + "\n")
    print("wrote %d scenarios" % len(SCENARIOS))


if __name__ == "__main__":
    main()
