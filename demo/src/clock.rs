//! Hosts whose clocks disagree. The demo's services all run in one process, on one clock; to
//! show producers on hosts whose clocks are off (`--clock-offset`), a service's span and log
//! processors (with a [`ClockOffset`] as their hook) shift every timestamp its SDK recorded
//! (span start and end, span event times, log record times) by a fixed offset before the
//! batch processor exports them: what that service's SDK would have recorded on such a host.
//! The ground truth is untouched: it is counted from the database, on the one true clock.

use super::hook::{LogHook, SpanHook};
use opentelemetry::logs::LogRecord as _;
use opentelemetry_sdk::logs::SdkLogRecord;
use opentelemetry_sdk::trace::SpanData;
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

/// A span leaves with the host's times.
impl SpanHook for ClockOffset {
    fn on_end(&self, span: &mut SpanData) {
        span.start_time = self.apply(span.start_time);
        span.end_time = self.apply(span.end_time);
        for event in &mut span.events.events {
            event.timestamp = self.apply(event.timestamp);
        }
    }
}

/// A log record leaves with the host's times.
impl LogHook for ClockOffset {
    fn on_emit(&self, record: &mut SdkLogRecord) {
        if let Some(t) = record.timestamp() {
            record.set_timestamp(self.apply(t));
        }
        if let Some(t) = record.observed_timestamp() {
            record.set_observed_timestamp(self.apply(t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::hook::Hooked;
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
            .with_span_processor(Hooked {
                inner: SimpleSpanProcessor::new(spans.clone()),
                hook: offset,
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
            .with_log_processor(Hooked {
                inner: SimpleLogProcessor::new(logs.clone()),
                hook: offset,
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
