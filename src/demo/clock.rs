//! Hosts whose clocks disagree. The demo's services all run in one process, on one clock; to
//! show producers on hosts whose clocks are off (`--clock-offset`), a service's span and log
//! processors shift every timestamp its SDK recorded (span start and end, span event times,
//! log record times) by a fixed offset before the batch processor exports them: what that
//! service's SDK would have recorded on such a host. The ground truth is untouched: it is
//! counted from the database, on the one true clock.

use opentelemetry::logs::LogRecord as _;
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use std::fmt;
use std::time::{Duration, SystemTime};

/// How far a host's clock is ahead of true time (negative: behind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockOffset {
    ahead: bool,
    by: Duration,
}

impl ClockOffset {
    /// `+150ms`, `-200ms`, `1s` (ahead), `0s`: a sign, then a human duration.
    pub fn parse(s: &str) -> Result<ClockOffset, String> {
        let (ahead, rest) = match s.strip_prefix('-') {
            Some(rest) => (false, rest),
            None => (true, s.strip_prefix('+').unwrap_or(s)),
        };
        let by = humantime::parse_duration(rest)
            .map_err(|e| format!("invalid clock offset {s:?} ({e}): e.g. -200ms or +150ms"))?;
        Ok(ClockOffset { ahead, by })
    }

    pub fn is_zero(self) -> bool {
        self.by.is_zero()
    }

    /// What this host's clock read when the true clock read `t`.
    pub fn apply(self, t: SystemTime) -> SystemTime {
        let shifted = if self.ahead {
            t.checked_add(self.by)
        } else {
            t.checked_sub(self.by)
        };
        shifted.unwrap_or(t)
    }
}

impl fmt::Display for ClockOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.ahead { '+' } else { '-' };
        write!(f, "{sign}{}", humantime::format_duration(self.by))
    }
}

/// A span processor that shifts a span's times by the host's offset, then passes it on.
#[derive(Debug)]
pub struct OffsetSpans<P> {
    pub inner: P,
    pub offset: ClockOffset,
}

impl<P: SpanProcessor> SpanProcessor for OffsetSpans<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        span.start_time = self.offset.apply(span.start_time);
        span.end_time = self.offset.apply(span.end_time);
        for event in &mut span.events.events {
            event.timestamp = self.offset.apply(event.timestamp);
        }
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

/// A log processor that shifts a record's times by the host's offset, then passes it on.
#[derive(Debug)]
pub struct OffsetLogs<P> {
    pub inner: P,
    pub offset: ClockOffset,
}

impl<P: LogProcessor> LogProcessor for OffsetLogs<P> {
    fn emit(&self, data: &mut SdkLogRecord, scope: &opentelemetry::InstrumentationScope) {
        if let Some(t) = data.timestamp() {
            data.set_timestamp(self.offset.apply(t));
        }
        if let Some(t) = data.observed_timestamp() {
            data.set_observed_timestamp(self.offset.apply(t));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::logs::{Logger as _, LoggerProvider as _};
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLoggerProvider, SimpleLogProcessor};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};

    #[test]
    fn offsets_parse_with_a_sign_and_print_back() {
        let behind = ClockOffset::parse("-200ms").unwrap();
        let ahead = ClockOffset::parse("+150ms").unwrap();
        assert_eq!(ClockOffset::parse("150ms").unwrap(), ahead);
        assert_eq!(behind.to_string(), "-200ms");
        assert_eq!(ahead.to_string(), "+150ms");
        assert!(ClockOffset::parse("0s").unwrap().is_zero());
        assert!(ClockOffset::parse("-soon").is_err());
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        assert_eq!(behind.apply(t), t - Duration::from_millis(200));
        assert_eq!(ahead.apply(t), t + Duration::from_millis(150));
    }

    #[test]
    fn spans_and_log_records_leave_with_the_hosts_time() {
        let offset = ClockOffset::parse("-200ms").unwrap();
        let spans = InMemorySpanExporter::default();
        let tp = SdkTracerProvider::builder()
            .with_span_processor(OffsetSpans {
                inner: SimpleSpanProcessor::new(spans.clone()),
                offset,
            })
            .build();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let end = start + Duration::from_millis(5);
        let mut span = tp
            .tracer("t")
            .span_builder("use")
            .with_start_time(start)
            .start(&tp.tracer("t"));
        span.add_event_with_timestamp("waited", start, vec![]);
        span.end_with_timestamp(end);
        let got = &spans.get_finished_spans().unwrap()[0];
        let back = Duration::from_millis(200);
        assert_eq!(got.start_time, start - back);
        assert_eq!(got.end_time, end - back);
        assert_eq!(got.events.events[0].timestamp, start - back);

        let logs = InMemoryLogExporter::default();
        let lp = SdkLoggerProvider::builder()
            .with_log_processor(OffsetLogs {
                inner: SimpleLogProcessor::new(logs.clone()),
                offset,
            })
            .build();
        let logger = lp.logger("l");
        let mut record = logger.create_log_record();
        record.set_timestamp(start);
        record.set_observed_timestamp(end);
        logger.emit(record);
        let got = &logs.get_emitted_logs().unwrap()[0].record;
        assert_eq!(got.timestamp(), Some(start - back));
        assert_eq!(got.observed_timestamp(), Some(end - back));
    }
}
