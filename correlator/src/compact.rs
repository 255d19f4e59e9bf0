//! [`Compact`]: a request id, version, idempotency key or similar string in 17 bytes.
//!
//! Most such strings are short (resource versions, `req-42`), hex trace ids (the request id
//! when `toctou.request_id` is absent) or UUIDs (idempotency keys, request ids). Those are
//! stored inline as raw bytes, with no allocation and no pointer. Anything else goes to a
//! refcounted interner of long strings and is named by its slot. The encoding is canonical:
//! a string has exactly one representation, so equality and hashing of the 17 bytes are
//! equality and hashing of the string.

use crate::intern::{rehash_name, Interner, Name};

pub(crate) type LongStrings = Interner<Name, ()>;

pub(crate) fn long_strings() -> LongStrings {
    Interner::new(rehash_name)
}

const NONE: u8 = 0;
/// Tags 1..=17 are inline strings of length tag - 1.
const INLINE_MAX: usize = 16;
const HEX32: u8 = 18;
const UUID: u8 = 19;
const LONG: u8 = 20;

/// An optional string (absent is distinct from empty). Not `Clone`: a long string holds a
/// reference that must be taken with [`Compact::share`] and given back with
/// [`Compact::release`].
#[derive(Default, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Compact {
    tag: u8,
    bytes: [u8; 16],
}

/// Enough room to render any inline form.
pub(crate) type RenderBuf = [u8; 36];

/// Value of each lowercase hex digit; 0xff for every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Lowercase hex digits into 16 bytes; false unless exactly 32 of them.
fn decode_hex(hex: &[u8], out: &mut [u8; 16]) -> bool {
    if hex.len() != 32 {
        return false;
    }
    let mut bad = 0;
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (h, l) = (HEX_VALUE[pair[0] as usize], HEX_VALUE[pair[1] as usize]);
        bad |= h | l;
        *o = (h << 4) | (l & 15);
    }
    // Any invalid digit sets the high bits of `bad`; valid ones never exceed 15.
    bad < 16
}

impl Compact {
    pub fn none() -> Compact {
        Compact::default()
    }

    pub fn is_none(&self) -> bool {
        self.tag == NONE
    }

    fn inline_form(s: &str) -> Option<Compact> {
        let b = s.as_bytes();
        let mut c = Compact {
            tag: 0,
            bytes: [0; 16],
        };
        if b.len() <= INLINE_MAX {
            c.tag = b.len() as u8 + 1;
            c.bytes[..b.len()].copy_from_slice(b);
            return Some(c);
        }
        if decode_hex(b, &mut c.bytes) {
            c.tag = HEX32;
            return Some(c);
        }
        if b.len() == 36 && b[8] == b'-' && b[13] == b'-' && b[18] == b'-' && b[23] == b'-' {
            let mut hex = [0u8; 32];
            hex[..8].copy_from_slice(&b[..8]);
            hex[8..12].copy_from_slice(&b[9..13]);
            hex[12..16].copy_from_slice(&b[14..18]);
            hex[16..20].copy_from_slice(&b[19..23]);
            hex[20..].copy_from_slice(&b[24..]);
            if decode_hex(&hex, &mut c.bytes) {
                c.tag = UUID;
                return Some(c);
            }
        }
        None
    }

    /// Encodes a string, interning it among the long strings when no inline form fits.
    pub fn encode(s: &str, long: &mut LongStrings) -> Compact {
        if let Some(c) = Compact::inline_form(s) {
            return c;
        }
        match long.find_str(s) {
            Some(slot) => Compact::long(long.retain(slot)),
            None => Compact::long(long.acquire_string(s.to_owned())),
        }
    }

    /// As [`Compact::encode`], reusing the string's allocation when it becomes a new long one.
    pub fn encode_owned(s: String, long: &mut LongStrings) -> Compact {
        if let Some(c) = Compact::inline_form(&s) {
            return c;
        }
        Compact::long(long.acquire_string(s))
    }

    pub fn encode_opt(s: Option<String>, long: &mut LongStrings) -> Compact {
        match s {
            Some(s) => Compact::encode_owned(s, long),
            None => Compact::none(),
        }
    }

    fn long(slot: u32) -> Compact {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&slot.to_le_bytes());
        Compact { tag: LONG, bytes }
    }

    /// The long string's slot, when it is one.
    pub fn long_slot(&self) -> Option<u32> {
        (self.tag == LONG).then(|| u32::from_le_bytes(self.bytes[..4].try_into().unwrap()))
    }

    /// Another holder of the same string.
    pub fn share(&self, long: &mut LongStrings) -> Compact {
        if let Some(slot) = self.long_slot() {
            long.retain(slot);
        }
        Compact {
            tag: self.tag,
            bytes: self.bytes,
        }
    }

    pub fn release(self, long: &mut LongStrings) {
        if let Some(slot) = self.long_slot() {
            long.release(slot);
        }
    }

    /// The string, rendered into `buf` when it is stored in raw form.
    pub fn as_str<'a>(&'a self, long: &'a LongStrings, buf: &'a mut RenderBuf) -> Option<&'a str> {
        let n = match self.tag {
            NONE => return None,
            LONG => return Some(long.key(self.long_slot().unwrap()).as_str()),
            HEX32 => {
                toctou_schema::write_hex(&self.bytes, &mut buf[..32]);
                32
            }
            UUID => {
                let mut hex = [0u8; 32];
                toctou_schema::write_hex(&self.bytes, &mut hex);
                let mut n = 0;
                for (i, out) in buf.iter_mut().enumerate() {
                    if [8, 13, 18, 23].contains(&i) {
                        *out = b'-';
                    } else {
                        *out = hex[n];
                        n += 1;
                    }
                }
                36
            }
            len_plus_one => {
                let n = (len_plus_one - 1) as usize;
                return Some(
                    std::str::from_utf8(&self.bytes[..n]).expect("inline bytes came from a str"),
                );
            }
        };
        Some(std::str::from_utf8(&buf[..n]).expect("hex digits are ascii"))
    }

    pub fn to_string_opt(&self, long: &LongStrings) -> Option<String> {
        let mut buf = [0; 36];
        self.as_str(long, &mut buf).map(str::to_owned)
    }

    /// The string, or empty when absent.
    pub fn to_string_or_empty(&self, long: &LongStrings) -> String {
        self.to_string_opt(long).unwrap_or_default()
    }

    /// The string as an integer version, exactly as [`toctou_schema::Version::as_int`]
    /// reads it. The stale-check rule compares a pair's versions with every write in the
    /// resource's history, so the common form (an inline string of ASCII digits; 16 of them
    /// fit in an `i64`) is read straight from its bytes; anything else is rendered and
    /// parsed.
    pub fn version_int(&self, long: &LongStrings) -> Option<i128> {
        if (1..=INLINE_MAX as u8 + 1).contains(&self.tag) {
            let digits = &self.bytes[..usize::from(self.tag - 1)];
            if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
                let v = digits
                    .iter()
                    .fold(0i64, |v, d| v * 10 + i64::from(d - b'0'));
                return Some(i128::from(v));
            }
        }
        let mut buf = [0; 36];
        self.as_str(long, &mut buf)
            .and_then(|s| toctou_schema::Version(s).as_int())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(s: &str, long: &mut LongStrings) -> Compact {
        let c = Compact::encode(s, long);
        let mut buf = [0; 36];
        assert_eq!(c.as_str(long, &mut buf), Some(s), "{s:?}");
        c
    }

    #[test]
    fn every_form_round_trips_and_is_canonical() {
        let mut long = long_strings();
        let short = round_trip("req-42", &mut long);
        let empty = round_trip("", &mut long);
        let hex = round_trip("4bf92f3577b34da6a3ce929d0e0e4736", &mut long);
        let uuid = round_trip("550e8400-e29b-41d4-a716-446655440000", &mut long);
        let upper = round_trip("550E8400-E29B-41D4-A716-446655440000", &mut long);
        let hexish = round_trip("4bf92f3577b34da6a3ce929d0e0e473g", &mut long);
        let exactly16 = round_trip("0123456789abcdef", &mut long);
        assert_eq!((short.tag, empty.tag, exactly16.tag), (7, 1, 17));
        assert_eq!((hex.tag, uuid.tag), (HEX32, UUID));
        assert_eq!((upper.tag, hexish.tag), (LONG, LONG));
        assert_ne!(empty, Compact::none());
        assert_eq!(long.len(), 2);
        // The same long string is one interned entry, shared.
        let again = Compact::encode_owned(
            "550E8400-E29B-41D4-A716-446655440000".to_string(),
            &mut long,
        );
        assert_eq!(again, upper);
        let shared = again.share(&mut long);
        for c in [
            short, empty, hex, uuid, upper, hexish, exactly16, again, shared,
        ] {
            c.release(&mut long);
        }
        assert_eq!(long.len(), 0);
    }

    #[test]
    fn version_int_reads_what_version_as_int_reads() {
        let mut long = long_strings();
        for s in [
            "0",
            "7",
            "007",
            "42",
            "9999999999999999",
            "0000001795699491",
            "",
            " 12",
            "12 ",
            "-5",
            "+3",
            "12a",
            "1.5",
            "v2",
            "\u{661}\u{662}",
            "99999999999999999",
            "-99999999999999999999999",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "550e8400-e29b-41d4-a716-446655440000",
            "123456789012345678901234567890123456789",
        ] {
            let c = Compact::encode(s, &mut long);
            assert_eq!(
                c.version_int(&long),
                toctou_schema::Version(s).as_int(),
                "{s:?}"
            );
            c.release(&mut long);
        }
        assert_eq!(Compact::none().version_int(&long), None);
    }

    #[test]
    fn fits_in_seventeen_bytes() {
        assert_eq!(std::mem::size_of::<Compact>(), 17);
        assert_eq!(std::mem::align_of::<Compact>(), 1);
    }
}
