//! Processors that see every span and log record on its way to the SDK's batch processor:
//! [`Hooked`] wraps a processor and runs a hook on each span or record before passing it on
//! (counting what the SDK was handed in [`super::delivery`], shifting times to a host's
//! clock in [`super::clock`]); everything else goes straight to the wrapped processor.

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::time::Duration;

/// What to do with each ended span before it is passed on.
pub trait SpanHook: Send + Sync + std::fmt::Debug {
    fn on_end(&self, span: &mut SpanData);
}

/// What to do with each emitted log record before it is passed on.
pub trait LogHook: Send + Sync + std::fmt::Debug {
    fn on_emit(&self, record: &mut SdkLogRecord);
}

/// A span or log processor with a hook in front.
#[derive(Debug)]
pub struct Hooked<P, H> {
    pub inner: P,
    pub hook: H,
}

impl<P: SpanProcessor, H: SpanHook> SpanProcessor for Hooked<P, H> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        self.hook.on_end(&mut span);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<P: LogProcessor, H: LogHook> LogProcessor for Hooked<P, H> {
    fn emit(&self, data: &mut SdkLogRecord, scope: &opentelemetry::InstrumentationScope) {
        self.hook.on_emit(data);
        self.inner.emit(data, scope);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
