//! Unit tests: every builder through the SDK's in-memory exporters, asserting the exact
//! attributes, times, parents and statuses recorded.

use super::*;
use opentelemetry::logs::{AnyValue, LoggerProvider as _};
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

struct Sdk {
    spans: InMemorySpanExporter,
    logs: InMemoryLogExporter,
    tracer: SdkTracer,
    logger: SdkLogger,
    _providers: (SdkTracerProvider, SdkLoggerProvider),
}

fn sdk() -> Sdk {
    let spans = InMemorySpanExporter::default();
    let logs = InMemoryLogExporter::default();
    let tp = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let lp = SdkLoggerProvider::builder()
        .with_simple_exporter(logs.clone())
        .build();
    Sdk {
        spans,
        logs,
        tracer: tp.tracer("test"),
        logger: lp.logger("test"),
        _providers: (tp, lp),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.as_str().to_string(),
        Value::I64(n) => format!("int:{n}"),
        other => format!("{other:?}"),
    }
}

fn attrs(span: &SpanData) -> BTreeMap<String, String> {
    let map: BTreeMap<_, _> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.as_str().to_string(), text(&kv.value)))
        .collect();
    assert_eq!(map.len(), span.attributes.len(), "an attribute set twice");
    map
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Sdk {
    fn finished(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().unwrap()
    }
}

#[test]
fn check_then_use_records_the_conventions_attributes_exactly() {
    let s = sdk();
    let checked = check(&s.tracer, "inventory/sku-42")
        .request_id("order-1234")
        .source(Source::Primary)
        .version(7u64)
        .allow();
    let used = checked.use_("reserve").version(8).ok();
    let spans = s.finished();
    assert_eq!(spans.len(), 2);
    let (c, u) = (&spans[0], &spans[1]);
    assert_eq!(
        attrs(c),
        expect(&[
            ("toctou.phase", "check"),
            ("toctou.resource", "inventory/sku-42"),
            ("toctou.check.decision", "allow"),
            ("toctou.resource.version", "7"),
            ("toctou.check.source", "primary"),
            ("toctou.request_id", "order-1234"),
        ])
    );
    assert_eq!(
        attrs(u),
        expect(&[
            ("toctou.phase", "use"),
            ("toctou.resource", "inventory/sku-42"),
            ("toctou.use.outcome", "ok"),
            ("toctou.resource.version", "8"),
            ("toctou.request_id", "order-1234"),
            ("toctou.operation", "reserve"),
        ])
    );
    assert_eq!(c.name, "check");
    assert_eq!(u.name, "reserve");
    assert_eq!(u.status, Status::Unset);
    assert_eq!(&u.span_context, &used);
    // The use's event time (its start) is not before the check's (its end).
    assert!(c.start_time <= c.end_time);
    assert!(c.end_time <= u.start_time);
    assert!(u.start_time <= u.end_time);
}

#[test]
fn check_and_use_are_siblings_under_the_request_and_default_to_its_trace_id() {
    let s = sdk();
    let request = s.tracer.start("POST /cart/reserve");
    let cx = Context::current_with_span(request);
    let trace_id = cx.span().span_context().trace_id();
    let checked = check(&s.tracer, "inventory/sku-1").context(&cx).allow();
    assert_eq!(checked.request_id(), trace_id.to_string());
    checked.use_("reserve").ok();
    let spans = s.finished();
    let parent = cx.span().span_context().span_id();
    for span in &spans {
        assert_eq!(span.span_context.trace_id(), trace_id);
        assert_eq!(span.parent_span_id, parent);
        assert_eq!(attrs(span)["toctou.request_id"], trace_id.to_string());
    }
}

#[test]
fn without_a_request_context_the_check_starts_the_trace_and_its_use_joins_it() {
    let s = sdk();
    let checked = check(&s.tracer, "inventory/sku-1").allow();
    let check_cx = checked.span_context().clone();
    assert_eq!(checked.request_id(), check_cx.trace_id().to_string());
    checked.use_("reserve").ok();
    let spans = s.finished();
    assert_eq!(spans[1].span_context.trace_id(), check_cx.trace_id());
    assert_eq!(spans[1].parent_span_id, check_cx.span_id());
    assert_eq!(
        attrs(&spans[0])["toctou.request_id"],
        check_cx.trace_id().to_string()
    );
    assert_eq!(
        attrs(&spans[1])["toctou.request_id"],
        check_cx.trace_id().to_string()
    );
}

#[test]
fn authorization_check_carries_policy_key_actor_and_operation_to_its_uses() {
    let s = sdk();
    let checked = check(&s.tracer, "docs/doc-1")
        .request_id("r-7")
        .operation("edit")
        .policy("policies/docs-acl", 12)
        .idempotency_key("k-9f2c")
        .actor("user-3")
        .name("authorize")
        .deny();
    assert!(!checked.is_allowed());
    assert_eq!(checked.decision(), Decision::Deny);
    // A use after a denied check is still recorded: toctou reports it as unchecked.
    checked.use_("edit").version("abc").ok();
    let spans = s.finished();
    assert_eq!(spans[0].name, "authorize");
    assert_eq!(
        attrs(&spans[0]),
        expect(&[
            ("toctou.phase", "check"),
            ("toctou.resource", "docs/doc-1"),
            ("toctou.check.decision", "deny"),
            ("toctou.policy", "policies/docs-acl"),
            ("toctou.policy.version", "12"),
            ("toctou.actor", "user-3"),
            ("toctou.request_id", "r-7"),
            ("toctou.operation", "edit"),
            ("toctou.idempotency_key", "k-9f2c"),
        ])
    );
    assert_eq!(
        attrs(&spans[1]),
        expect(&[
            ("toctou.phase", "use"),
            ("toctou.resource", "docs/doc-1"),
            ("toctou.use.outcome", "ok"),
            ("toctou.resource.version", "abc"),
            ("toctou.request_id", "r-7"),
            ("toctou.operation", "edit"),
            ("toctou.idempotency_key", "k-9f2c"),
        ])
    );
}

#[test]
fn use_outcomes_and_status_codes() {
    let s = sdk();
    let checked = check(&s.tracer, "docs/doc-1").request_id("r").allow();
    checked.use_("edit").conflict();
    checked.use_("edit").failed();
    checked.use_("edit").denied();
    checked.use_("edit").grpc_status(0).denied();
    checked.use_("edit").http_status(201).ok();
    let spans = s.finished();
    let outcome = |i: usize| {
        let a = attrs(&spans[i]);
        (
            a["toctou.use.outcome"].clone(),
            a.get("http.response.status_code").cloned(),
            a.get("rpc.grpc.status_code").cloned(),
        )
    };
    assert_eq!(outcome(1), ("conflict".into(), None, None));
    assert_eq!(spans[1].status, Status::Unset);
    assert_eq!(outcome(2), ("error".into(), None, None));
    assert_eq!(spans[2].status, Status::error("use failed"));
    assert_eq!(outcome(3), ("error".into(), Some("int:403".into()), None));
    assert_eq!(spans[3].status, Status::error("permission denied"));
    assert_eq!(outcome(4), ("error".into(), None, Some("int:7".into())));
    assert_eq!(outcome(5), ("ok".into(), Some("int:201".into()), None));
}

#[test]
fn dropped_check_and_use_are_recorded_as_failed_never_as_allowed_or_ok() {
    let s = sdk();
    {
        let _abandoned = check(&s.tracer, "inventory/sku-1").request_id("r");
    }
    let checked = check(&s.tracer, "inventory/sku-2").request_id("r").allow();
    {
        let _write_failed = checked.use_("reserve").version(3);
    }
    let spans = s.finished();
    assert_eq!(attrs(&spans[0])["toctou.check.decision"], "deny");
    assert_eq!(
        spans[0].status,
        Status::error("check ended without a decision")
    );
    assert_eq!(attrs(&spans[2])["toctou.use.outcome"], "error");
    assert_eq!(attrs(&spans[2])["toctou.resource.version"], "3");
    assert_eq!(
        spans[2].status,
        Status::error("use ended without an outcome")
    );
}

#[test]
fn unchecked_use_and_explicit_times() {
    let s = sdk();
    let t0 = SystemTime::now() - Duration::from_secs(5);
    let cx = s.tracer.start("legacy restock");
    let cx = Context::current_with_span(cx);
    let trace_id = cx.span().span_context().trace_id();
    use_(&s.tracer, "inventory/sku-3", "restock")
        .context(&cx)
        .version(4)
        .actor("sync-job")
        .started_at(t0)
        .ok();
    let spans = s.finished();
    assert_eq!(
        attrs(&spans[0]),
        expect(&[
            ("toctou.phase", "use"),
            ("toctou.resource", "inventory/sku-3"),
            ("toctou.use.outcome", "ok"),
            ("toctou.resource.version", "4"),
            ("toctou.actor", "sync-job"),
            ("toctou.request_id", &trace_id.to_string()),
            ("toctou.operation", "restock"),
        ])
    );
    assert_eq!(spans[0].start_time, t0);
}

#[test]
fn audit_record_attributes_time_and_trace_context() {
    let s = sdk();
    let commit = SystemTime::now() - Duration::from_millis(30);
    audit(&s.logger, Action::Update, "inventory/sku-42")
        .version(8)
        .request_id("order-1234")
        .actor("inventory")
        .at(commit)
        .emit();
    let request = Context::current_with_span(s.tracer.start("request"));
    audit(&s.logger, Action::PolicyChange, "policies/docs-acl")
        .version(13)
        .context(&request)
        .emit();
    audit(&s.logger, Action::Finalize, "claims/ns/pod-1").emit();

    let logs = s.logs.get_emitted_logs().unwrap();
    assert_eq!(logs.len(), 3);
    let attrs = |i: usize| -> BTreeMap<String, String> {
        logs[i]
            .record
            .attributes_iter()
            .map(|(k, v)| {
                let v = match v {
                    AnyValue::String(s) => s.as_str().to_string(),
                    other => format!("{other:?}"),
                };
                (k.as_str().to_string(), v)
            })
            .collect()
    };
    let s_ = |v: &str| v.to_string();
    assert_eq!(
        attrs(0),
        BTreeMap::from([
            ("toctou.audit.action".to_string(), s_("update")),
            ("toctou.resource".to_string(), s_("inventory/sku-42")),
            ("toctou.resource.version".to_string(), s_("8")),
            ("toctou.request_id".to_string(), s_("order-1234")),
            ("toctou.actor".to_string(), s_("inventory")),
        ])
    );
    assert_eq!(logs[0].record.timestamp(), Some(commit));
    assert!(logs[0].record.observed_timestamp().unwrap() >= commit);
    assert!(logs[0].record.trace_context().is_none());

    let trace_id = request.span().span_context().trace_id();
    assert_eq!(
        attrs(1),
        BTreeMap::from([
            ("toctou.audit.action".to_string(), s_("policy_change")),
            ("toctou.resource".to_string(), s_("policies/docs-acl")),
            ("toctou.resource.version".to_string(), s_("13")),
            ("toctou.request_id".to_string(), s_(&trace_id.to_string())),
        ])
    );
    assert_eq!(logs[1].record.trace_context().unwrap().trace_id, trace_id);

    // No request id and no request context: the write counts as another request's.
    assert_eq!(
        attrs(2),
        BTreeMap::from([
            ("toctou.audit.action".to_string(), s_("finalize")),
            ("toctou.resource".to_string(), s_("claims/ns/pod-1")),
        ])
    );
}

#[test]
fn builders_cross_threads_and_await_points() {
    fn send<X: Send>(_: &X) {}
    let s = sdk();
    let pending = check(&s.tracer, "inventory/sku-1").request_id("r");
    send(&pending);
    let checked = pending.allow();
    send(&checked);
    let using = checked.use_("reserve");
    send(&using);
    std::thread::scope(|scope| {
        scope.spawn(move || using.ok());
    });
    assert_eq!(s.finished().len(), 2);
}
