//! The engine's tuning: time windows and the bounds on every piece of state.
//!
//! Built apart from validated: serde (or the binary's flags) fills a [`Config`], then
//! [`Config::validate`] says whether it is usable. Durations read from a file are either a
//! number of nanoseconds or a human string such as `"2s"`, `"250ms"` or `"10m"`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// How far (event time) an event may trail the newest one and still be joined in order.
pub const DEFAULT_ALLOWED_LATENESS: Duration = Duration::from_secs(2);
/// How long a check waits for its use, a tombstone for a late use, a create for its finalize.
pub const DEFAULT_PAIR_TTL: Duration = Duration::from_secs(30);
/// How long the first use of an idempotency key is remembered.
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(10 * 60);
/// How long (event time) a span or audit record is remembered to drop its redeliveries.
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(60);
/// Pending checks held before the oldest expire early.
pub const DEFAULT_MAX_PENDING: usize = 1_000_000;
/// Expired checks held for late uses before the oldest are dropped early.
pub const DEFAULT_MAX_TOMBSTONES: usize = 1_000_000;
/// Idempotency keys remembered.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// Events waiting in the reorder buffer.
pub const DEFAULT_MAX_BUFFERED: usize = 1_000_000;
/// Span and audit identities remembered for deduplication.
pub const DEFAULT_MAX_DEDUPE: usize = 1_000_000;
/// Audit writes kept in the per-resource histories, all resources together.
pub const DEFAULT_MAX_AUDIT_HISTORY: usize = 1_000_000;
/// Creates waiting for their finalize.
pub const DEFAULT_MAX_CREATES: usize = 1_000_000;
/// Policies whose change history is kept.
pub const DEFAULT_MAX_POLICIES: usize = 100_000;
/// Bytes of long strings (ids, versions, keys, actors, resource names, profiles) the state
/// holds, all state together: 8,192 checks whose eight values are all at the receivers'
/// 4 KiB limit, or every count cap filled with names of a few tens of bytes.
pub const DEFAULT_MAX_INTERNED_BYTES: usize = 256 << 20;
/// How far ahead of the wall clock an event's time may be and still order it.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(10);

/// Slots are addressed by `u32`; half of that leaves room for slots freed but not yet reused.
const MAX_ENTRIES: usize = 1 << 31;
/// Longer windows than a year are a typo, and keep every `time + window` far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Engine configuration. Every field has a named default constant above.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// [`DEFAULT_ALLOWED_LATENESS`]. The watermark trails the newest event time by this much;
    /// older arrivals are late (processed at once, out of order, and counted). Zero is allowed.
    #[serde(with = "duration")]
    pub allowed_lateness: Duration,
    /// [`DEFAULT_PAIR_TTL`]. A check stays pending this long after its time, then as a
    /// tombstone as long again; a create waits this long for its finalize.
    #[serde(with = "duration")]
    pub pair_ttl: Duration,
    /// [`DEFAULT_KEY_TTL`]. How long the first use of an idempotency key is remembered.
    #[serde(with = "duration")]
    pub key_ttl: Duration,
    /// [`DEFAULT_DEDUPE_WINDOW`]. How long after its event time a use or audit record is
    /// remembered to drop redeliveries (checks are deduplicated by their own pending entry).
    #[serde(with = "duration")]
    pub dedupe_window: Duration,
    /// [`DEFAULT_MAX_PENDING`]. When exceeded the oldest pending check becomes a tombstone
    /// early, counted in `toctou_evicted_total{state="pending"}`.
    pub max_pending: usize,
    /// [`DEFAULT_MAX_TOMBSTONES`]. When exceeded the oldest tombstone leaves early (reporting
    /// its orphan if it was never used), counted in `toctou_evicted_total{state="tombstone"}`.
    pub max_tombstones: usize,
    /// [`DEFAULT_MAX_KEYS`]. When exceeded the oldest idempotency key is forgotten early.
    pub max_keys: usize,
    /// [`DEFAULT_MAX_BUFFERED`]. When exceeded the oldest buffered event is processed at once,
    /// as if the watermark had passed it.
    pub max_buffered: usize,
    /// [`DEFAULT_MAX_DEDUPE`]. When exceeded the oldest remembered identity is forgotten.
    pub max_dedupe: usize,
    /// [`DEFAULT_MAX_AUDIT_HISTORY`]. When exceeded the oldest audit write is forgotten.
    pub max_audit_history: usize,
    /// [`DEFAULT_MAX_CREATES`]. When exceeded the oldest pending create is decided early
    /// (it reports `partial_create`, as it would at its deadline).
    pub max_creates: usize,
    /// [`DEFAULT_MAX_POLICIES`]. When exceeded the policy changed longest ago is forgotten.
    pub max_policies: usize,
    /// [`DEFAULT_MAX_INTERNED_BYTES`]. When the strings the state holds outside its records
    /// pass this many bytes, the oldest state leaves early (tombstones, then pending checks,
    /// audit writes, keys, creates, waiting uses, buffered events), counted in
    /// `toctou_evicted_total` by state and in `toctou_evicted_for_bytes_total`.
    pub max_interned_bytes: usize,
    /// [`DEFAULT_MAX_CLOCK_SKEW`]. An event whose time is further than this ahead of the
    /// wall clock the caller passes (its producer's clock runs fast) is ordered where it
    /// arrived (after the newest event seen), so it cannot drag the watermark ahead of everyone else's
    /// events; counted in `toctou_clock_skew_events_total{direction="future"}`. Kept well
    /// below the pair TTL: an event this far ahead still moves the watermark this far, and
    /// makes other producers' events up to this much (less the lateness) late. Zero turns
    /// the bound off. See docs/CORRELATOR.md, "Clock skew".
    #[serde(with = "duration")]
    pub max_clock_skew: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            allowed_lateness: DEFAULT_ALLOWED_LATENESS,
            pair_ttl: DEFAULT_PAIR_TTL,
            key_ttl: DEFAULT_KEY_TTL,
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            max_pending: DEFAULT_MAX_PENDING,
            max_tombstones: DEFAULT_MAX_TOMBSTONES,
            max_keys: DEFAULT_MAX_KEYS,
            max_buffered: DEFAULT_MAX_BUFFERED,
            max_dedupe: DEFAULT_MAX_DEDUPE,
            max_audit_history: DEFAULT_MAX_AUDIT_HISTORY,
            max_creates: DEFAULT_MAX_CREATES,
            max_policies: DEFAULT_MAX_POLICIES,
            max_interned_bytes: DEFAULT_MAX_INTERNED_BYTES,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
        }
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be greater than zero")]
    Zero { field: &'static str },
    #[error("{field} is {value}, above the maximum of {max}")]
    TooLarge {
        field: &'static str,
        value: String,
        max: String,
    },
}

impl Config {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let durations = [
            ("allowed_lateness", self.allowed_lateness, true),
            ("pair_ttl", self.pair_ttl, false),
            ("key_ttl", self.key_ttl, false),
            ("dedupe_window", self.dedupe_window, false),
            ("max_clock_skew", self.max_clock_skew, true),
        ];
        for (field, value, zero_ok) in durations {
            if value.is_zero() && !zero_ok {
                return Err(ConfigError::Zero { field });
            }
            if value > MAX_DURATION {
                return Err(ConfigError::TooLarge {
                    field,
                    value: format!("{value:?}"),
                    max: format!("{MAX_DURATION:?}"),
                });
            }
        }
        let limits = [
            ("max_pending", self.max_pending),
            ("max_tombstones", self.max_tombstones),
            ("max_keys", self.max_keys),
            ("max_buffered", self.max_buffered),
            ("max_dedupe", self.max_dedupe),
            ("max_audit_history", self.max_audit_history),
            ("max_creates", self.max_creates),
            ("max_policies", self.max_policies),
        ];
        for (field, value) in limits {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
            if value > MAX_ENTRIES {
                return Err(ConfigError::TooLarge {
                    field,
                    value: value.to_string(),
                    max: MAX_ENTRIES.to_string(),
                });
            }
        }
        if self.max_interned_bytes == 0 {
            return Err(ConfigError::Zero {
                field: "max_interned_bytes",
            });
        }
        // Pending checks and tombstones share one table of u32 slots.
        if self.max_pending + self.max_tombstones > MAX_ENTRIES {
            return Err(ConfigError::TooLarge {
                field: "max_pending + max_tombstones",
                value: (self.max_pending + self.max_tombstones).to_string(),
                max: MAX_ENTRIES.to_string(),
            });
        }
        Ok(())
    }
}

/// Durations as nanoseconds (a number) or a human string: an integer and one unit of
/// `ns`, `us`, `ms`, `s`, `m`, `h`, `d`. Serialized in the largest unit that is exact.
pub(crate) mod duration {
    use super::*;

    const UNITS: [(&str, u64); 7] = [
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];

    pub fn parse(input: &str) -> Result<Duration, String> {
        let s = input.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        if digits.is_empty() {
            return Err(format!(
                "invalid duration {input:?}: expected a number and a unit"
            ));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid duration {input:?}: number too large"))?;
        let unit = unit.trim();
        let scale = match unit {
            "" => 1,
            "µs" => 1_000,
            _ => UNITS
                .iter()
                .find(|(name, _)| *name == unit)
                .map(|(_, scale)| *scale)
                .ok_or_else(|| {
                    format!("invalid duration {input:?}: unknown unit {unit:?} (ns, us, ms, s, m, h, d)")
                })?,
        };
        let ns = n
            .checked_mul(scale)
            .ok_or_else(|| format!("invalid duration {input:?}: too large"))?;
        Ok(Duration::from_nanos(ns))
    }

    pub fn format(d: Duration) -> String {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        if ns == 0 {
            return "0s".to_string();
        }
        let (unit, scale) = UNITS
            .iter()
            .find(|(_, scale)| ns % scale == 0)
            .copied()
            .unwrap_or(("ns", 1));
        format!("{}{unit}", ns / scale)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Nanos(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Nanos(ns) => Ok(Duration::from_nanos(ns)),
            Raw::Text(text) => parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Saturating nanoseconds of a duration (validated durations are far below `u64::MAX`).
pub(crate) fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config::default();
        assert_eq!(c.allowed_lateness, Duration::from_secs(2));
        assert_eq!(c.pair_ttl, Duration::from_secs(30));
        assert_eq!(c.max_pending, 1_000_000);
        assert_eq!(c.key_ttl, Duration::from_secs(600));
        assert_eq!(c.max_clock_skew, Duration::from_secs(10));
    }

    #[test]
    fn zero_and_huge_values_are_rejected() {
        let c = Config {
            pair_ttl: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "pair_ttl" }));
        let c = Config {
            max_keys: 0,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero { field: "max_keys" }));
        let c = Config {
            key_ttl: Duration::from_secs(400 * 86_400),
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooLarge {
                field: "key_ttl",
                ..
            })
        ));
        let c = Config {
            allowed_lateness: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
        let err = Config {
            max_buffered: 0,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.to_string(), "max_buffered must be greater than zero");
    }

    #[test]
    fn durations_read_as_nanoseconds_or_human_strings() {
        let c: Config = serde_json::from_str(
            r#"{"allowed_lateness": 1500000000, "pair_ttl": "45s", "key_ttl": "10m", "dedupe_window": "250ms"}"#,
        )
        .unwrap();
        assert_eq!(c.allowed_lateness, Duration::from_millis(1500));
        assert_eq!(c.pair_ttl, Duration::from_secs(45));
        assert_eq!(c.key_ttl, Duration::from_secs(600));
        assert_eq!(c.dedupe_window, Duration::from_millis(250));
        assert_eq!(c.max_pending, DEFAULT_MAX_PENDING);
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(duration::format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration::format(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let err = serde_json::from_str::<Config>(r#"{"pair_tt": "30s"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `pair_tt`"), "{err}");
        let err = serde_json::from_str::<Config>(r#"{"pair_ttl": "30 parsecs"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
        let err = serde_json::from_str::<Config>(r#"{"pair_ttl": "soon"}"#).unwrap_err();
        assert!(err.to_string().contains("expected a number"), "{err}");
        assert!(duration::parse("99999999999999999999s").is_err());
        assert!(duration::parse("99999999999d").is_err());
    }
}
