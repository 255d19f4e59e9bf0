//! RFC 3339 timestamps (as Kubernetes writes them, `2018-10-25T13:58:49.736141Z`; any
//! number of fraction digits, `Z` or a numeric offset) to Unix nanoseconds, through the
//! `time` crate's RFC 3339 parser.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Unix nanoseconds of an RFC 3339 date-time, or a message saying what is wrong with it.
/// Times before 1970 are refused: events carry unsigned nanoseconds.
pub(crate) fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = |why: &dyn std::fmt::Display| format!("invalid RFC 3339 timestamp {s:?}: {why}");
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| bad(&e))?;
    u64::try_from(t.unix_timestamp_nanos()).map_err(|_| bad(&"before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_timestamps() {
        // date -u -d 2018-10-25T13:58:49Z +%s == 1540475929
        assert_eq!(
            parse_rfc3339("2018-10-25T13:58:49.736141Z").unwrap(),
            1_540_475_929_736_141_000
        );
        assert_eq!(
            parse_rfc3339("2018-10-25T13:58:49Z").unwrap(),
            1_540_475_929_000_000_000
        );
        assert_eq!(
            parse_rfc3339("2018-10-25T13:58:49.123456789Z").unwrap(),
            1_540_475_929_123_456_789
        );
        // Sub-nanosecond digits are truncated.
        assert_eq!(
            parse_rfc3339("2018-10-25T13:58:49.1234567891Z").unwrap(),
            1_540_475_929_123_456_789
        );
    }

    #[test]
    fn offsets_and_edges() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_rfc3339("2018-10-25T15:58:49+02:00").unwrap(),
            parse_rfc3339("2018-10-25T13:58:49Z").unwrap()
        );
        assert_eq!(
            parse_rfc3339("2018-10-25t08:58:49.5-05:00").unwrap(),
            1_540_475_929_500_000_000
        );
        // 2000 was a leap year, 1900 was not.
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:00Z").unwrap(),
            951_868_800 * 1_000_000_000
        );
        assert!(parse_rfc3339("2000-02-29T00:00:00Z").is_ok());
        assert!(parse_rfc3339("2100-02-29T00:00:00Z").is_err());
    }

    #[test]
    fn malformed_timestamps_say_why() {
        for (s, why) in [
            ("2018-10-25", "'separator' component"),
            ("2018-13-25T13:58:49Z", "month was not in range"),
            ("2018-10-25T24:58:49Z", "hour was not in range"),
            ("2018-10-25T13:58:49.5", "'offset hour' component"),
            ("2018-10-25T13:58:49.Z", "'subsecond' component"),
            ("2018/10/25T13:58:49Z", "character literal was not valid"),
            ("1969-12-31T23:59:59Z", "before 1970"),
            ("2018-10-25T13:58:49+2:00", "'offset hour' component"),
            ("2O18-10-25T13:58:49Z", "'year' component"),
        ] {
            let err = parse_rfc3339(s).unwrap_err();
            assert!(err.contains(why) && err.contains(s), "{s}: {err}");
        }
    }
}
