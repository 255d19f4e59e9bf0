//! Receiver configuration: limits that protect the process, with their defaults as named
//! constants and human-readable durations (`"5s"`, `"250ms"`).

use crate::error::ConfigError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// 20 MiB: several times what OTLP exporters send per batch by default, small enough that a
/// few concurrent requests cannot exhaust memory.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;
/// How long a request may wait for the sink before the client is told to retry. OTLP
/// exporters time out after 10 s by default; answering well before that lets them back off
/// instead of timing out.
pub const DEFAULT_SUBMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests decoded and held at once. Each may hold `max_request_bytes` twice over (wire
/// and decompressed) plus its decoded form, which `crate::budget` keeps under
/// `BUDGET_FACTOR` (16) times the body, so this bounds receiver memory.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 8;
/// 256 MiB: request bodies (HTTP) and gRPC messages held while they are read, all
/// connections together. Bodies are read before a slot is taken, so this, not the slots,
/// bounds them; a slow sender holds only the bytes it sent.
pub const DEFAULT_MAX_RECEIVE_BYTES: usize = 256 * 1024 * 1024;
/// 64 MiB: what the bodies of one connection's requests may hold together, a quarter of
/// the default receive budget: a client whose streams never finish their messages holds
/// at most this, and the rest of the budget stays for everyone else.
pub const DEFAULT_MAX_CONNECTION_RECEIVE_BYTES: usize = 64 * 1024 * 1024;
/// How long a client may take to send a request body once its headers are in.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Largest request body accepted, in bytes, as received and again after decompression
    /// (a larger body is refused with 413, or RESOURCE_EXHAUSTED on gRPC). Default 20 MiB.
    pub max_request_bytes: usize,
    /// How long a request waits for a decoding slot and then for the sink to take its events
    /// before the client gets 503 + Retry-After (gRPC UNAVAILABLE). Default `"5s"`.
    #[serde(with = "human_duration")]
    pub submit_timeout: Duration,
    /// Requests being decoded or submitted at once; more wait (up to `submit_timeout`) for a
    /// slot. Default 8.
    pub max_concurrent_requests: usize,
    /// Bytes of request bodies held while being read, all requests together; a request
    /// that finds no room within `submit_timeout` gets 503 (UNAVAILABLE). Default 256 MiB;
    /// at least twice `max_request_bytes`.
    pub max_receive_bytes: usize,
    /// Bytes of `max_receive_bytes` the requests of one connection may hold together (an
    /// HTTP/2 connection carries many); past it that connection's next request waits up to
    /// `submit_timeout`, then gets 503 (UNAVAILABLE). Default 64 MiB; at least
    /// `max_request_bytes`; a value above `max_receive_bytes` is that.
    pub max_connection_receive_bytes: usize,
    /// How long an HTTP request body may take to arrive (408 past it). Default `"30s"`.
    #[serde(with = "human_duration")]
    pub body_read_timeout: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            submit_timeout: DEFAULT_SUBMIT_TIMEOUT,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_receive_bytes: DEFAULT_MAX_RECEIVE_BYTES,
            max_connection_receive_bytes: DEFAULT_MAX_CONNECTION_RECEIVE_BYTES,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
        }
    }
}

impl ReceiverConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_request_bytes == 0 {
            return Err(ConfigError::Zero {
                field: "max_request_bytes",
            });
        }
        // gRPC frames carry a 32-bit length.
        if self.max_request_bytes > u32::MAX as usize {
            return Err(ConfigError::TooLarge(self.max_request_bytes));
        }
        if self.submit_timeout.is_zero() {
            return Err(ConfigError::Zero {
                field: "submit_timeout",
            });
        }
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError::Zero {
                field: "max_concurrent_requests",
            });
        }
        if self.body_read_timeout.is_zero() {
            return Err(ConfigError::Zero {
                field: "body_read_timeout",
            });
        }
        // A body at the limit must fit, while its first chunk is copied into a buffer.
        if self.max_receive_bytes / 2 < self.max_request_bytes {
            return Err(ConfigError::ReceiveBudget {
                max_receive_bytes: self.max_receive_bytes,
                max_request_bytes: self.max_request_bytes,
            });
        }
        // One connection must be able to send a body at the limit.
        if self.max_connection_receive_bytes < self.max_request_bytes {
            return Err(ConfigError::ConnectionShare {
                max_connection_receive_bytes: self.max_connection_receive_bytes,
                max_request_bytes: self.max_request_bytes,
            });
        }
        Ok(())
    }
}

/// Parses `"250ms"`, `"5s"`, `"1.5s"`, `"2m"`, `"1h"` (also `us` and `ns`).
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::Duration(s.to_string());
    let t = s.trim();
    let split = t
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .ok_or_else(bad)?;
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(n * unit_secs).map_err(|_| bad())
}

/// The shortest exact spelling of a duration that [`parse_duration`] reads back.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    for (unit, size) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if nanos >= size && nanos % size == 0 {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

pub(crate) mod human_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        ReceiverConfig::default().validate().unwrap();
        assert_eq!(
            ReceiverConfig::default().max_request_bytes,
            20 * 1024 * 1024
        );
    }

    #[test]
    fn reads_human_durations_and_refuses_unknown_fields() {
        let c: ReceiverConfig =
            serde_json::from_str(r#"{"submit_timeout":"250ms","max_request_bytes":1024}"#).unwrap();
        assert_eq!(c.submit_timeout, Duration::from_millis(250));
        assert_eq!(c.max_request_bytes, 1024);
        assert_eq!(c.max_concurrent_requests, DEFAULT_MAX_CONCURRENT_REQUESTS);
        let err = serde_json::from_str::<ReceiverConfig>(r#"{"max_body":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = serde_json::from_str::<ReceiverConfig>(r#"{"submit_timeout":"5"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
        // Round trip through the human form.
        let back: ReceiverConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn a_connection_share_smaller_than_one_request_is_refused() {
        let c = ReceiverConfig {
            max_connection_receive_bytes: DEFAULT_MAX_REQUEST_BYTES - 1,
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ConnectionShare { .. })
        ));
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = ReceiverConfig {
            max_request_bytes: 0,
            ..Default::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "max_request_bytes must be greater than zero"
        );
        c.max_request_bytes = 1;
        c.submit_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
        c.submit_timeout = Duration::from_secs(1);
        c.max_concurrent_requests = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_duration(" 1.5s ").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
        for bad in ["", "5", "s", "5 parsecs", "-1s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_nanos(7)), "7ns");
        assert_eq!(format_duration(Duration::ZERO), "0ns");
    }
}
