//! Lenient readers for the scalar spellings the OTLP JSON mapping allows: 64-bit integers as
//! strings or numbers, ids in hex of either case, bytes in base64, enums as integers or
//! names, and `null` for any default value.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// `null` (which proto3 JSON allows for any field) reads as the type's default.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A sequence of messages (`null` reads as empty), each element charged to the decode
/// budget (`crate::budget`) before it is built: four times its size, for the growth of this
/// `Vec` (up to twice its length), the prost message it becomes, and the allocator's slack
/// (with three, eight concurrent `[{},...]` bodies reached 14x the body each in RSS,
/// tests/decode_attacks.rs). Past the budget the parse fails, so `[{},{},...]` costs at
/// most the budget whatever its length.
pub(crate) fn metered<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Metered<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Metered<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: de::Error>(self) -> Result<Vec<T>, E> {
            Ok(Vec::new())
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Vec<T>, D2::Error> {
            d.deserialize_seq(self)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            loop {
                if !crate::budget::charge(4 * std::mem::size_of::<T>()) {
                    return Err(de::Error::custom("over the decode budget"));
                }
                match seq.next_element()? {
                    Some(item) => out.push(item),
                    None => return Ok(out),
                }
            }
        }
    }

    d.deserialize_option(Metered(std::marker::PhantomData))
}

/// An integer given as a JSON number or a decimal string, checked to fit `T`.
struct IntVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T> Visitor<'de> for IntVisitor<T>
where
    T: TryFrom<i128> + Default,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "an integer of type {} as a number or a string",
            std::any::type_name::<T>()
        )
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.fit(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.fit(i128::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // proto3 JSON allows exponent notation for integers (1e3); only whole values fit.
        if v.fract() != 0.0 || !v.is_finite() || v.abs() > 1.8e19 {
            return Err(E::custom(format!("{v} is not an integer")));
        }
        self.fit(v as i128)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        let v = v.trim();
        match v.parse::<i128>() {
            Ok(i) => self.fit(i),
            Err(_) => match v.parse::<f64>() {
                Ok(f) => self.visit_f64(f),
                Err(_) => Err(E::custom(format!("{v:?} is not an integer"))),
            },
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
}

impl<T: TryFrom<i128>> IntVisitor<T> {
    fn fit<E: de::Error>(&self, v: i128) -> Result<T, E> {
        T::try_from(v).map_err(|_| {
            E::custom(format!(
                "{v} is out of range for {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

fn int<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128> + Default,
{
    d.deserialize_any(IntVisitor(std::marker::PhantomData))
}

pub(crate) fn u64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    int(d)
}

pub(crate) fn i64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    int(d)
}

pub(crate) fn u32_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    int(d)
}

/// A double as a JSON number, or as a string holding a number or `NaN`, `Infinity`,
/// `-Infinity` (how proto3 JSON spells the values JSON numbers cannot).
pub(crate) fn f64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = f64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number, or a string holding one")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "NaN" => Ok(f64::NAN),
                "Infinity" => Ok(f64::INFINITY),
                "-Infinity" => Ok(f64::NEG_INFINITY),
                _ => v
                    .trim()
                    .parse()
                    .map_err(|_| E::custom(format!("{v:?} is not a number"))),
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
            Ok(0.0)
        }
    }
    d.deserialize_any(V)
}

/// A trace or span id: hex, upper or lower case (the OTLP JSON mapping writes ids in hex,
/// not base64 as plain proto3 JSON would). The length is checked later, per span, so that
/// one bad id costs one span rather than the request.
pub(crate) fn hex_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    hex::decode(s.trim()).map_err(|e| de::Error::custom(format!("invalid hex id {s:?}: {e}")))
}

/// proto3 JSON bytes: base64, standard or URL-safe alphabet, padded or not.
pub(crate) fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    const CONFIG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    STANDARD
        .decode(&s)
        .or_else(|_| URL_SAFE.decode(&s))
        .map_err(|e| de::Error::custom(format!("invalid base64 bytes: {e}")))
}

/// An enum as its integer, or (as proto3 JSON also allows) as its value name.
fn enum_value<'de, D: Deserializer<'de>>(
    d: D,
    what: &'static str,
    names: &'static [(&'static str, i32)],
) -> Result<i32, D::Error> {
    struct V {
        what: &'static str,
        names: &'static [(&'static str, i32)],
    }
    impl Visitor<'_> for V {
        type Value = i32;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a {} as an integer or a name", self.what)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom(format!("{} {v} is out of range", self.what)))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom(format!("{} {v} is out of range", self.what)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i32, E> {
            if let Some((_, n)) = self.names.iter().find(|(name, _)| *name == v) {
                return Ok(*n);
            }
            // A number in a string is still a number.
            v.trim()
                .parse()
                .map_err(|_| E::custom(format!("unknown {} {v:?}", self.what)))
        }
        fn visit_unit<E: de::Error>(self) -> Result<i32, E> {
            Ok(0)
        }
    }
    d.deserialize_any(V { what, names })
}

const SPAN_KINDS: &[(&str, i32)] = &[
    ("SPAN_KIND_UNSPECIFIED", 0),
    ("SPAN_KIND_INTERNAL", 1),
    ("SPAN_KIND_SERVER", 2),
    ("SPAN_KIND_CLIENT", 3),
    ("SPAN_KIND_PRODUCER", 4),
    ("SPAN_KIND_CONSUMER", 5),
];

const STATUS_CODES: &[(&str, i32)] = &[
    ("STATUS_CODE_UNSET", 0),
    ("STATUS_CODE_OK", 1),
    ("STATUS_CODE_ERROR", 2),
];

const SEVERITIES: &[(&str, i32)] = &[
    ("SEVERITY_NUMBER_UNSPECIFIED", 0),
    ("SEVERITY_NUMBER_TRACE", 1),
    ("SEVERITY_NUMBER_TRACE2", 2),
    ("SEVERITY_NUMBER_TRACE3", 3),
    ("SEVERITY_NUMBER_TRACE4", 4),
    ("SEVERITY_NUMBER_DEBUG", 5),
    ("SEVERITY_NUMBER_DEBUG2", 6),
    ("SEVERITY_NUMBER_DEBUG3", 7),
    ("SEVERITY_NUMBER_DEBUG4", 8),
    ("SEVERITY_NUMBER_INFO", 9),
    ("SEVERITY_NUMBER_INFO2", 10),
    ("SEVERITY_NUMBER_INFO3", 11),
    ("SEVERITY_NUMBER_INFO4", 12),
    ("SEVERITY_NUMBER_WARN", 13),
    ("SEVERITY_NUMBER_WARN2", 14),
    ("SEVERITY_NUMBER_WARN3", 15),
    ("SEVERITY_NUMBER_WARN4", 16),
    ("SEVERITY_NUMBER_ERROR", 17),
    ("SEVERITY_NUMBER_ERROR2", 18),
    ("SEVERITY_NUMBER_ERROR3", 19),
    ("SEVERITY_NUMBER_ERROR4", 20),
    ("SEVERITY_NUMBER_FATAL", 21),
    ("SEVERITY_NUMBER_FATAL2", 22),
    ("SEVERITY_NUMBER_FATAL3", 23),
    ("SEVERITY_NUMBER_FATAL4", 24),
];

pub(crate) fn span_kind<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    enum_value(d, "span kind", SPAN_KINDS)
}

pub(crate) fn status_code<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    enum_value(d, "status code", STATUS_CODES)
}

pub(crate) fn severity_number<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    enum_value(d, "severity number", SEVERITIES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    struct T {
        #[serde(default, deserialize_with = "u64_lenient")]
        u: u64,
        #[serde(default, deserialize_with = "i64_lenient")]
        i: i64,
        #[serde(default, deserialize_with = "u32_lenient")]
        n: u32,
        #[serde(default, deserialize_with = "f64_lenient")]
        f: f64,
        #[serde(default, deserialize_with = "hex_bytes")]
        h: Vec<u8>,
        #[serde(default, deserialize_with = "base64_bytes")]
        b: Vec<u8>,
        #[serde(default, deserialize_with = "span_kind")]
        k: i32,
        #[serde(default, deserialize_with = "status_code")]
        s: i32,
        #[serde(default, deserialize_with = "severity_number")]
        sev: i32,
        #[serde(default, deserialize_with = "null_default")]
        list: Vec<u8>,
    }

    fn t(json: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn integers_as_numbers_or_strings() {
        let v = t(r#"{"u":"1544712660000000000","i":-5,"n":"7"}"#).unwrap();
        assert_eq!((v.u, v.i, v.n), (1_544_712_660_000_000_000, -5, 7));
        let v = t(r#"{"u":1544712660000000000,"i":"-5","n":1e1}"#).unwrap();
        assert_eq!((v.u, v.i, v.n), (1_544_712_660_000_000_000, -5, 10));
        assert_eq!(t(r#"{"u":"18446744073709551615"}"#).unwrap().u, u64::MAX);
        let v = t(r#"{"u":null,"i":null,"list":null}"#).unwrap();
        assert_eq!((v.u, v.i, v.list.len()), (0, 0, 0));
        for bad in [
            r#"{"u":-1}"#,
            r#"{"u":"x"}"#,
            r#"{"n":4294967296}"#,
            r#"{"i":1.5}"#,
            r#"{"u":true}"#,
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn doubles_and_their_special_strings() {
        assert_eq!(t(r#"{"f":637.704}"#).unwrap().f, 637.704);
        assert_eq!(t(r#"{"f":"2.5"}"#).unwrap().f, 2.5);
        assert_eq!(t(r#"{"f":3}"#).unwrap().f, 3.0);
        assert!(t(r#"{"f":"NaN"}"#).unwrap().f.is_nan());
        assert_eq!(t(r#"{"f":"-Infinity"}"#).unwrap().f, f64::NEG_INFINITY);
        assert!(t(r#"{"f":"lots"}"#).is_err());
    }

    #[test]
    fn hex_ids_in_either_case() {
        assert_eq!(
            t(r#"{"h":"EEE19B7E"}"#).unwrap().h,
            [0xee, 0xe1, 0x9b, 0x7e]
        );
        assert_eq!(
            t(r#"{"h":"eee19b7e"}"#).unwrap().h,
            [0xee, 0xe1, 0x9b, 0x7e]
        );
        assert!(t(r#"{"h":""}"#).unwrap().h.is_empty());
        let err = t(r#"{"h":"xyz"}"#).unwrap_err().to_string();
        assert!(err.contains("invalid hex id"), "{err}");
    }

    #[test]
    fn base64_in_both_alphabets_with_or_without_padding() {
        assert_eq!(t(r#"{"b":"+/8="}"#).unwrap().b, [0xfb, 0xff]);
        assert_eq!(t(r#"{"b":"-_8"}"#).unwrap().b, [0xfb, 0xff]);
        assert!(t(r#"{"b":"!!"}"#).is_err());
    }

    #[test]
    fn enums_as_integers_or_names() {
        let v = t(r#"{"k":2,"s":"STATUS_CODE_ERROR","sev":"SEVERITY_NUMBER_INFO2"}"#).unwrap();
        assert_eq!((v.k, v.s, v.sev), (2, 2, 10));
        assert_eq!(t(r#"{"k":"SPAN_KIND_CLIENT"}"#).unwrap().k, 3);
        assert_eq!(t(r#"{"k":"3"}"#).unwrap().k, 3);
        let err = t(r#"{"k":"SPAN_KIND_SIDEWAYS"}"#).unwrap_err().to_string();
        assert!(err.contains("unknown span kind"), "{err}");
    }
}
