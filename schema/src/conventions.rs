//! Attribute names and values of the instrumentation conventions (see `schema/CONVENTIONS.md`).
//!
//! These strings are a public interface: applications hard-code them, so they never change
//! meaning once released.

/// `check` or `use`; spans without it are not toctou spans (ignored and counted).
pub const PHASE: &str = "toctou.phase";
/// The resource identity, e.g. `inventory/sku-42`. Required on check, use and audit.
pub const RESOURCE: &str = "toctou.resource";
/// Check: the version observed. Use: the version acted on (pre-image). Audit: the version after.
pub const RESOURCE_VERSION: &str = "toctou.resource.version";
/// Correlation key between a check and its use; the trace id stands in when absent.
pub const REQUEST_ID: &str = "toctou.request_id";
/// What the use does: `reserve`, `charge`, `create`, `reconcile`...
pub const OPERATION: &str = "toctou.operation";
/// Who acts; defaults to the resource's `service.name`.
pub const ACTOR: &str = "toctou.actor";
/// Checks only: `allow` (the default) or `deny`.
pub const CHECK_DECISION: &str = "toctou.check.decision";
/// Checks only: where the checked state was read: `primary`, `replica` or `cache`.
pub const CHECK_SOURCE: &str = "toctou.check.source";
/// Authorization checks: the policy evaluated.
pub const POLICY: &str = "toctou.policy";
/// Authorization checks: the version of the policy evaluated.
pub const POLICY_VERSION: &str = "toctou.policy.version";
/// The idempotency key the request carries.
pub const IDEMPOTENCY_KEY: &str = "toctou.idempotency_key";
/// Uses only: `ok` (the default), `conflict` (own precondition failed: a prevented race), `error`.
pub const USE_OUTCOME: &str = "toctou.use.outcome";
/// Audit log records: `create`, `update`, `delete`, `finalize` or `policy_change`.
pub const AUDIT_ACTION: &str = "toctou.audit.action";

/// The OpenTelemetry resource attribute naming the emitting service.
pub const SERVICE_NAME: &str = "service.name";
/// Standard OpenTelemetry attributes read to recognise a use denied by permission.
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
/// The pre-1.21 semantic-conventions spelling, still emitted by many SDKs.
pub const HTTP_STATUS_CODE: &str = "http.status_code";
/// gRPC status code attribute; 7 is `PERMISSION_DENIED`.
pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";

/// The `toctou.operation` that counts as a create (for duplicate and partial creates).
pub const OPERATION_CREATE: &str = "create";
/// The `toctou.operation` whose failures are reconcile failures (SLI M2).
pub const OPERATION_RECONCILE: &str = "reconcile";
/// The service recorded for events from the Kubernetes audit webhook.
pub const K8S_SERVICE: &str = "kubernetes";
