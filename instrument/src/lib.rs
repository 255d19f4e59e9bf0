//! # toctou-instrument
//!
//! Check spans, use spans and audit records for toctou (the TOCTOU race finder), on top of the
//! `opentelemetry` API, following its instrumentation conventions (`schema/CONVENTIONS.md`;
//! the attribute names are `toctou_schema::conventions`). A service instruments a
//! check-then-act in a few lines instead of attribute strings:
//!
//! ```
//! use opentelemetry::trace::TracerProvider as _;
//! use opentelemetry::logs::LoggerProvider as _;
//! use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLoggerProvider};
//! use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
//! use toctou_instrument::{audit, check, Action, Source};
//!
//! // In a service: OTLP exporters pointed at `toctou run` (see CONVENTIONS.md); here the
//! // SDK's in-memory exporters, so the example runs anywhere.
//! let spans = InMemorySpanExporter::default();
//! let logs = InMemoryLogExporter::default();
//! let tracer_provider = SdkTracerProvider::builder().with_simple_exporter(spans.clone()).build();
//! let logger_provider = SdkLoggerProvider::builder().with_simple_exporter(logs.clone()).build();
//! let tracer = tracer_provider.tracer("inventory");
//! let logger = logger_provider.logger("inventory.audit");
//! let (mut stock, mut version) = (3, 7);
//!
//! // Check: created before the read, decided right after it.
//! let checked = check(&tracer, "inventory/sku-42")
//!     .request_id("order-1234")
//!     .source(Source::Primary);
//! let seen = version; // SELECT qty, version FROM stock WHERE sku = 'sku-42'
//! let checked = checked.version(seen).decide(stock > 0);
//!
//! if checked.is_allowed() {
//!     // Use: created right before the write (under its lock, if any).
//!     let reserve = checked.use_("reserve").version(version); // the pre-image it acts on
//!     if version == seen {
//!         stock -= 1; // UPDATE stock SET qty = qty - 1, version = version + 1 WHERE version = 7
//!         version += 1;
//!         reserve.ok();
//!         audit(&logger, Action::Update, "inventory/sku-42")
//!             .version(version)
//!             .request_id(checked.request_id())
//!             .emit();
//!     } else {
//!         reserve.conflict(); // the compare-and-swap caught the race
//!     }
//! }
//!
//! let finished = spans.get_finished_spans().unwrap();
//! assert_eq!(finished.len(), 2);
//! assert_eq!(logs.get_emitted_logs().unwrap().len(), 1);
//! assert_eq!(stock, 2);
//! ```
//!
//! ## Design
//! - A check and a use are **builders that record their span when they end**, not closures:
//!   the decision and the outcome are only known at the end (a closure would have to return
//!   them anyway), the builders cross `.await` points and `?` naturally, and every attribute
//!   is on the span when it is created, so samplers see the version and the decision. The
//!   start time is taken when the builder is created, the end when it is decided, so the
//!   event times toctou orders by (a check's end, a use's start) are exactly those moments.
//! - Dropped without an ending, a check records a failed `deny` (it allowed nothing, so it
//!   is no orphan) and a use a failed `error` (it did not take effect): an early return or
//!   `?` never leaves a half-recorded pair, and never claims an action happened.
//! - [`Checked`] carries what the use needs: the resource, the request id (explicit, or the
//!   trace id standing in for it, as the conventions say), the operation, the idempotency
//!   key and the request's context, so [`Checked::use_`] starts a sibling of the check span
//!   under the same request. A use with no check is [`use_()`].
//! - Generic over any [`Tracer`] and [`Logger`] (the SDK's, the global ones), borrowed, so
//!   nothing is cloned per request.
//!
//! ## Layout
//! - `check`: [`check`], [`Check`], [`Checked`], [`Source`], [`Decision`].
//! - `use_span`: [`Use`], [`Outcome`].
//! - `audit`: [`audit`], [`Audit`], [`Action`].
//! - `request`: what a check and its uses share, and the one place that records a span.
//! - `in_tracing` (feature `tracing`): `in_current_span()` on checks, uses and audit
//!   records, for services that trace with `tracing` and `tracing-opentelemetry`.

mod audit;
mod check;
#[cfg(feature = "tracing")]
mod in_tracing;
mod request;
mod use_span;

pub use audit::{Action, Audit};
pub use check::{Check, Checked, Decision, Source};
pub use use_span::{Outcome, Use};

/// The statement that names a PostgreSQL transaction's request for toctou's change-stream
/// reader (`toctou run --cdc-postgres`, CONVENTIONS.md "Audit records from your database"):
/// run it inside the transaction with the request id as `$1`, and every change the
/// transaction commits carries that request id.
///
/// ```
/// # async fn reserve(tx: &tokio_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
/// tx.execute(toctou_instrument::REQUEST_ID_SQL, &[&"order-1234"]).await?;
/// # Ok(()) }
/// ```
pub const REQUEST_ID_SQL: &str = "SELECT pg_logical_emit_message(true, 'toctou.request_id', $1)";

use opentelemetry::logs::Logger;
use opentelemetry::trace::Tracer;

/// Starts a check of `resource` (`toctou.resource`, e.g. `inventory/sku-42`) in the current
/// context. Create it right before the read the decision is based on; decide it right after.
pub fn check<T: Tracer>(tracer: &T, resource: impl Into<String>) -> Check<'_, T> {
    Check::new(tracer, resource.into())
}

/// Starts a use that no check precedes (a legacy job, a write path without a check): toctou
/// reports it as an `unchecked_use` when it succeeds. A use that follows a check is started
/// from it, with [`Checked::use_`].
pub fn use_<T: Tracer>(
    tracer: &T,
    resource: impl Into<String>,
    operation: impl Into<std::borrow::Cow<'static, str>>,
) -> Use<'_, T> {
    let mut scope = request::RequestScope::new(tracer, resource.into());
    scope.operation = Some(operation.into());
    Use::new(scope)
}

/// Starts an audit record of a committed `action` on `resource`; send it with
/// [`Audit::emit`].
pub fn audit<L: Logger>(logger: &L, action: Action, resource: impl Into<String>) -> Audit<'_, L> {
    Audit::new(logger, action, resource.into())
}

#[cfg(test)]
mod tests;
