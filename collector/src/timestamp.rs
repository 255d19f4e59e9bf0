//! RFC 3339 timestamps (as Kubernetes writes them) to Unix nanoseconds.
//!
//! A few dozen lines do what the audit webhook needs (`2018-10-25T13:58:49.736141Z`, any
//! number of fraction digits, `Z` or a numeric offset) without a date crate.

/// Unix nanoseconds of an RFC 3339 date-time, or a message saying what is wrong with it.
/// Times before 1970 are refused: events carry unsigned nanoseconds.
pub(crate) fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid RFC 3339 timestamp {s:?}: {why}");
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err(bad("too short"));
    }
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = &b[from..from + len];
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad("expected digits"));
        }
        Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| -> Result<(), String> {
        if allowed.contains(&b[at]) {
            Ok(())
        } else {
            Err(bad("unexpected separator"))
        }
    };
    let year = num(0, 4)?;
    sep(4, b"-")?;
    let month = num(5, 2)?;
    sep(7, b"-")?;
    let day = num(8, 2)?;
    sep(10, b"Tt ")?;
    let hour = num(11, 2)?;
    sep(13, b":")?;
    let minute = num(14, 2)?;
    sep(16, b":")?;
    let second = num(17, 2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    // 60 is a leap second; it lands on the first instant of the next minute.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }

    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            // Digits past nanoseconds are truncated: the event model has no finer unit.
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return Err(bad("empty fraction"));
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad("bad offset"));
            }
            let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if h > 23 || m > 59 {
                return Err(bad("bad offset"));
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return Err(bad("expected Z or an offset like +02:00 at the end")),
    };

    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    if secs < 0 {
        return Err(bad("before 1970"));
    }
    Ok(secs as u64 * 1_000_000_000 + nanos as u64)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
            ("2018-10-25", "too short"),
            ("2018-13-25T13:58:49Z", "no such date"),
            ("2018-10-25T24:58:49Z", "no such time of day"),
            ("2018-10-25T13:58:49.5", "expected Z"),
            ("2018-10-25T13:58:49.Z", "empty fraction"),
            ("2018/10/25T13:58:49Z", "unexpected separator"),
            ("1969-12-31T23:59:59Z", "before 1970"),
            ("2018-10-25T13:58:49+2:00", "expected Z"),
            ("2O18-10-25T13:58:49Z", "expected digits"),
        ] {
            let err = parse_rfc3339(s).unwrap_err();
            assert!(err.contains(why), "{s}: {err}");
        }
    }
}
