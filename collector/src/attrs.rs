//! Reading the toctou attributes out of an OTLP key-value list: the one place that knows
//! which value types each attribute accepts and how they normalize to text.
//!
//! Whatever the input (the prost types from JSON or from protobuf the pruning reader does
//! not take, or the wire bytes themselves in `wire`), attribute values reach the rules as
//! an [`Attr`] borrowed from it, so this is the only extraction code there is. It makes one
//! pass over the attributes per span or record (not one lookup per key), since a busy
//! service sends many attributes that are not ours.

use crate::decoded::{RejectReason, Rejection};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use toctou_schema::conventions as c;

/// The longest value toctou keeps of an attribute it reads (`toctou.resource`,
/// `toctou.request_id`, `service.name`, ...), in bytes; schema/CONVENTIONS.md documents it.
/// Each kept value is copied into an event that lives in the correlator's state and in
/// findings, so one request must not be able to park megabytes per span there. A longer
/// value refuses its span or record (`attribute_too_long`); the rest of the request goes on.
pub const MAX_VALUE_BYTES: usize = 4096;

/// How much of a refused value an error message repeats back: enough to recognise it.
const SHOWN_BYTES: usize = 64;

pub(crate) fn too_long(key: &str, len: usize) -> Rejection {
    Rejection::new(
        RejectReason::AttributeTooLong,
        format!("{key} is {len} bytes long, over the limit of {MAX_VALUE_BYTES} bytes"),
    )
}

/// `s` quoted for an error message, cut after [`SHOWN_BYTES`] (at a char boundary).
fn shown(s: &str) -> String {
    if s.len() <= SHOWN_BYTES {
        return format!("{s:?}");
    }
    let mut end = SHOWN_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

/// An attribute value as the rules read it, borrowed from the request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Attr<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Double(f64),
    /// An array, map, bytes or string-table reference: no rule accepts one, so only its type
    /// name (as the OTLP JSON mapping spells it) is kept, for the error message.
    Other(&'static str),
}

impl<'a> Attr<'a> {
    pub fn of(v: &'a Value) -> Self {
        match v {
            Value::StringValue(s) => Attr::Str(s),
            Value::BoolValue(b) => Attr::Bool(*b),
            Value::IntValue(i) => Attr::Int(*i),
            Value::DoubleValue(d) => Attr::Double(*d),
            Value::ArrayValue(_) => Attr::Other("arrayValue"),
            Value::KvlistValue(_) => Attr::Other("kvlistValue"),
            Value::BytesValue(_) => Attr::Other("bytesValue"),
            Value::StringValueStrindex(_) => Attr::Other("stringValueStrindex"),
        }
    }

    /// The name of the value's type as the OTLP JSON mapping spells it, for error messages.
    fn type_name(self) -> &'static str {
        match self {
            Attr::Str(_) => "stringValue",
            Attr::Bool(_) => "boolValue",
            Attr::Int(_) => "intValue",
            Attr::Double(_) => "doubleValue",
            Attr::Other(name) => name,
        }
    }
}

/// Parameters of one statement kept from `db.query.parameter.<key>` attributes: far more
/// than a statement that pins a row needs, few enough that a span of thousands cannot make
/// each span's decoding cost grow with them.
pub(crate) const MAX_INDEXED_PARAMS: usize = 64;

/// The attributes toctou reads, borrowed from the span or record. When a key repeats (the
/// OTLP data model forbids it, but not every SDK checks), the first occurrence wins.
#[derive(Default)]
pub(crate) struct Known<'a> {
    pub phase: Option<Attr<'a>>,
    pub resource: Option<Attr<'a>>,
    pub resource_version: Option<Attr<'a>>,
    pub request_id: Option<Attr<'a>>,
    pub operation: Option<Attr<'a>>,
    pub actor: Option<Attr<'a>>,
    pub decision: Option<Attr<'a>>,
    pub source: Option<Attr<'a>>,
    pub policy: Option<Attr<'a>>,
    pub policy_version: Option<Attr<'a>>,
    pub idempotency_key: Option<Attr<'a>>,
    pub outcome: Option<Attr<'a>>,
    pub audit_action: Option<Attr<'a>>,
    pub http_response_status_code: Option<Attr<'a>>,
    pub http_status_code: Option<Attr<'a>>,
    pub rpc_grpc_status_code: Option<Attr<'a>>,
    // What inference reads of spans without `toctou.phase` (database calls and root spans),
    // in the current semantic conventions and the older ones still emitted.
    pub db_system_name: Option<Attr<'a>>,
    pub db_system: Option<Attr<'a>>,
    pub db_query_text: Option<Attr<'a>>,
    pub db_statement: Option<Attr<'a>>,
    /// `db.statement.parameters`, `pgx.query.parameters` or `db.postgresql.values`.
    pub db_params: Option<Attr<'a>>,
    pub db_status: Option<Attr<'a>>,
    pub error_type: Option<Attr<'a>>,
    pub http_route: Option<Attr<'a>>,
    /// `db.query.parameter.<key>`: (key, value), in the order sent.
    pub db_indexed: Vec<(&'a str, Attr<'a>)>,
    /// Parameters sent as an array (`db.postgresql.values` of Node's pg instrumentation):
    /// its values' texts. Read from the prost types only: the wire reader leaves a request
    /// with an array it reads to prost.
    pub db_params_array: Option<Vec<String>>,
}

impl<'a> Known<'a> {
    pub fn collect(attributes: &'a [KeyValue]) -> Self {
        let mut k = Known::default();
        for kv in attributes {
            // An attribute with an empty AnyValue carries nothing: treat it as absent.
            if let Some(value) = kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                if let (
                    Value::ArrayValue(array),
                    "db.postgresql.values" | "db.statement.parameters",
                ) = (value, kv.key.as_str())
                {
                    if k.db_params_array.is_none() {
                        k.db_params_array = Some(array_texts(array));
                    }
                    continue;
                }
                k.offer(&kv.key, Attr::of(value));
            }
        }
        k
    }

    /// The slot of a key toctou reads; `None` for any other key.
    pub fn slot(&mut self, key: &str) -> Option<&mut Option<Attr<'a>>> {
        Some(match key {
            c::PHASE => &mut self.phase,
            c::RESOURCE => &mut self.resource,
            c::RESOURCE_VERSION => &mut self.resource_version,
            c::REQUEST_ID => &mut self.request_id,
            c::OPERATION => &mut self.operation,
            c::ACTOR => &mut self.actor,
            c::CHECK_DECISION => &mut self.decision,
            c::CHECK_SOURCE => &mut self.source,
            c::POLICY => &mut self.policy,
            c::POLICY_VERSION => &mut self.policy_version,
            c::IDEMPOTENCY_KEY => &mut self.idempotency_key,
            c::USE_OUTCOME => &mut self.outcome,
            c::AUDIT_ACTION => &mut self.audit_action,
            c::HTTP_RESPONSE_STATUS_CODE => &mut self.http_response_status_code,
            c::HTTP_STATUS_CODE => &mut self.http_status_code,
            c::RPC_GRPC_STATUS_CODE => &mut self.rpc_grpc_status_code,
            "db.system.name" => &mut self.db_system_name,
            "db.system" => &mut self.db_system,
            "db.query.text" => &mut self.db_query_text,
            "db.statement" => &mut self.db_statement,
            "db.statement.parameters" | "pgx.query.parameters" | "db.postgresql.values" => {
                &mut self.db_params
            }
            "db.response.status_code" => &mut self.db_status,
            "error.type" => &mut self.error_type,
            "http.route" => &mut self.http_route,
            _ => return None,
        })
    }

    /// Records a present value of `key`, unless the key already had one (the first
    /// occurrence wins) or is not one toctou reads.
    pub fn offer(&mut self, key: &'a str, value: Attr<'a>) {
        if let Some(slot @ None) = self.slot(key) {
            *slot = Some(value);
        } else if let Some(k) = key.strip_prefix("db.query.parameter.") {
            self.offer_indexed(k, value);
        }
    }

    /// One `db.query.parameter.<key>` value; at most [`MAX_INDEXED_PARAMS`] are kept.
    pub fn offer_indexed(&mut self, key: &'a str, value: Attr<'a>) {
        if self.db_indexed.len() < MAX_INDEXED_PARAMS
            && !self.db_indexed.iter().any(|(k, _)| *k == key)
        {
            self.db_indexed.push((key, value));
        }
    }
}

/// The texts of an array's scalar values (a null or nested value is `null`, as a JSON array
/// of parameters would say).
fn array_texts(array: &opentelemetry_proto::tonic::common::v1::ArrayValue) -> Vec<String> {
    array
        .values
        .iter()
        .map(|v| match v.value.as_ref() {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::DoubleValue(d)) => d.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            _ => "null".to_string(),
        })
        .collect()
}

fn bad_type(key: &str, v: Attr<'_>, wanted: &str) -> Rejection {
    Rejection::new(
        RejectReason::BadAttribute,
        format!("{key} must be {wanted}, got {}", v.type_name()),
    )
}

/// An identifier-like attribute (resource, request id, actor, ...): a string, or an integer
/// taken as its decimal text since some SDKs type numeric ids as ints. An empty string
/// counts as absent.
pub(crate) fn text(key: &str, v: Option<Attr<'_>>) -> Result<Option<String>, Rejection> {
    match v {
        None => Ok(None),
        Some(Attr::Str("")) => Ok(None),
        Some(Attr::Str(s)) if s.len() > MAX_VALUE_BYTES => Err(too_long(key, s.len())),
        Some(Attr::Str(s)) => Ok(Some(s.to_owned())),
        Some(Attr::Int(i)) => Ok(Some(i.to_string())),
        Some(other) => Err(bad_type(key, other, "a string")),
    }
}

/// A version attribute: string, int or double. Integers (and doubles that hold an integer,
/// as JavaScript SDKs send every number) become their decimal text, so that `7`, `7.0` and
/// `"7"` compare equal downstream.
pub(crate) fn version(key: &str, v: Option<Attr<'_>>) -> Result<Option<String>, Rejection> {
    match v {
        Some(Attr::Double(d)) => {
            if !d.is_finite() {
                return Err(Rejection::new(
                    RejectReason::BadAttribute,
                    format!("{key} must be a finite number, got {d}"),
                ));
            }
            // 2^63 bounds where an f64 integer still fits an i64 exactly.
            if d.fract() == 0.0 && d.abs() < 9.223_372_036_854_776e18 {
                Ok(Some((d as i64).to_string()))
            } else {
                Ok(Some(d.to_string()))
            }
        }
        Some(other @ (Attr::Bool(_) | Attr::Other(_))) => {
            Err(bad_type(key, other, "a string, int or double"))
        }
        text_or_int => text(key, text_or_int),
    }
}

/// A keyword attribute whose value must be one of a fixed set (`check`, `allow`, ...);
/// `parse` maps the text to its enum. Only string values are accepted.
pub(crate) fn keyword<T>(
    key: &str,
    v: Option<Attr<'_>>,
    allowed: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, Rejection> {
    match v {
        None => Ok(None),
        Some(Attr::Str(s)) => match parse(s) {
            Some(t) => Ok(Some(t)),
            None => Err(Rejection::new(
                RejectReason::BadAttribute,
                format!("{key} is {}, expected one of {allowed}", shown(s)),
            )),
        },
        Some(other) => Err(bad_type(key, other, "a string")),
    }
}

/// A status code attribute, read leniently: these are not our attributes, and a malformed
/// one must not cost the span; anything that is not an integer reads as absent.
pub(crate) fn status_code(v: Option<Attr<'_>>) -> Option<i64> {
    match v? {
        Attr::Int(i) => Some(i),
        Attr::Str(s) => s.trim().parse().ok(),
        Attr::Double(d) if d.fract() == 0.0 => Some(d as i64),
        _ => None,
    }
}

/// `service.name` of the resource, or `unknown_service` as the SDKs default it; a name over
/// [`MAX_VALUE_BYTES`] is the rejection of every toctou item of the resource.
pub(crate) fn service_name(resource: Option<&Resource>) -> Result<String, Rejection> {
    let first = resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == c::SERVICE_NAME))
        .and_then(|kv| kv.value.as_ref()?.value.as_ref());
    service_name_of(first.map(Attr::of))
}

/// [`service_name`] from the value of the resource's first `service.name` attribute.
pub(crate) fn service_name_of(first: Option<Attr<'_>>) -> Result<String, Rejection> {
    match first {
        Some(Attr::Str(s)) if s.len() > MAX_VALUE_BYTES => Err(too_long(c::SERVICE_NAME, s.len())),
        Some(Attr::Str(s)) if !s.is_empty() => Ok(s.to_owned()),
        _ => Ok("unknown_service".to_string()),
    }
}

/// A fixed-size id from its bytes: empty means unknown (all zeroes); any other length is
/// an error naming the id.
pub(crate) fn fixed_id<const N: usize>(what: &str, bytes: &[u8]) -> Result<[u8; N], Rejection> {
    if bytes.is_empty() {
        return Ok([0; N]);
    }
    bytes.try_into().map_err(|_| {
        Rejection::new(
            RejectReason::BadId,
            format!("{what} has {} bytes, expected {N}", bytes.len()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;

    fn a(v: &Value) -> Option<Attr<'_>> {
        Some(Attr::of(v))
    }

    fn kv(key: &str, v: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        }
    }

    #[test]
    fn collect_takes_first_occurrence_and_skips_empty_values() {
        let attrs = vec![
            KeyValue {
                key: c::RESOURCE.into(),
                value: Some(AnyValue { value: None }),
                ..Default::default()
            },
            kv(c::RESOURCE, Value::StringValue("a".into())),
            kv(c::RESOURCE, Value::StringValue("b".into())),
            kv("other", Value::BoolValue(true)),
        ];
        let k = Known::collect(&attrs);
        assert_eq!(text(c::RESOURCE, k.resource).unwrap().as_deref(), Some("a"));
        assert!(k.phase.is_none());
    }

    #[test]
    fn text_accepts_strings_and_ints_only() {
        assert_eq!(
            text("k", a(&Value::IntValue(-42))).unwrap(),
            Some("-42".into())
        );
        assert_eq!(
            text("k", a(&Value::StringValue(String::new()))).unwrap(),
            None
        );
        let err = text("k", a(&Value::BoolValue(true))).unwrap_err();
        assert_eq!(err.reason, RejectReason::BadAttribute);
        assert_eq!(err.message, "k must be a string, got boolValue");
    }

    #[test]
    fn versions_normalize_numbers() {
        let v = |x: Value| version("v", a(&x));
        assert_eq!(v(Value::IntValue(7)).unwrap(), Some("7".into()));
        assert_eq!(v(Value::DoubleValue(7.0)).unwrap(), Some("7".into()));
        assert_eq!(v(Value::DoubleValue(-3.0)).unwrap(), Some("-3".into()));
        assert_eq!(v(Value::DoubleValue(1.5)).unwrap(), Some("1.5".into()));
        assert_eq!(v(Value::DoubleValue(1e300)).unwrap().unwrap().len(), 301);
        assert_eq!(
            v(Value::StringValue("etag-9".into())).unwrap(),
            Some("etag-9".into())
        );
        assert_eq!(
            v(Value::DoubleValue(f64::NAN)).unwrap_err().reason,
            RejectReason::BadAttribute
        );
        assert_eq!(
            v(Value::BytesValue(vec![1])).unwrap_err().message,
            "v must be a string, int or double, got bytesValue"
        );
    }

    #[test]
    fn keyword_names_the_allowed_values() {
        let parse = |s: &str| (s == "x").then_some(1);
        assert_eq!(keyword("k", None, "x", parse).unwrap(), None);
        assert_eq!(
            keyword("k", a(&Value::StringValue("x".into())), "x", parse).unwrap(),
            Some(1)
        );
        let err = keyword("k", a(&Value::StringValue("y".into())), "x", parse).unwrap_err();
        assert_eq!(err.message, "k is \"y\", expected one of x");
        let err = keyword("k", a(&Value::IntValue(1)), "x", parse).unwrap_err();
        assert_eq!(err.reason, RejectReason::BadAttribute);
    }

    #[test]
    fn status_codes_read_leniently() {
        assert_eq!(status_code(a(&Value::IntValue(403))), Some(403));
        assert_eq!(status_code(a(&Value::StringValue("7".into()))), Some(7));
        assert_eq!(status_code(a(&Value::DoubleValue(403.0))), Some(403));
        assert_eq!(status_code(a(&Value::StringValue("OK".into()))), None);
        assert_eq!(status_code(None), None);
    }

    #[test]
    fn service_name_defaults_like_the_sdks() {
        assert_eq!(service_name(None).unwrap(), "unknown_service");
        let mut r = Resource {
            attributes: vec![kv(c::SERVICE_NAME, Value::StringValue("shop".into()))],
            ..Default::default()
        };
        assert_eq!(service_name(Some(&r)).unwrap(), "shop");
        r.attributes[0] = kv(c::SERVICE_NAME, Value::StringValue("s".repeat(5000)));
        let err = service_name(Some(&r)).unwrap_err();
        assert_eq!(err.reason, RejectReason::AttributeTooLong);
        assert_eq!(
            err.message,
            "service.name is 5000 bytes long, over the limit of 4096 bytes"
        );
    }

    #[test]
    fn kept_values_are_bounded_and_refusals_do_not_echo_them_whole() {
        let at_limit = "r".repeat(MAX_VALUE_BYTES);
        assert_eq!(
            text("k", a(&Value::StringValue(at_limit.clone()))).unwrap(),
            Some(at_limit)
        );
        let over = Value::StringValue("r".repeat(MAX_VALUE_BYTES + 1));
        let err = text("toctou.resource", a(&over)).unwrap_err();
        assert_eq!(err.reason, RejectReason::AttributeTooLong);
        assert_eq!(
            err.message,
            "toctou.resource is 4097 bytes long, over the limit of 4096 bytes"
        );
        // Versions are text too.
        let err = version("v", a(&over)).unwrap_err();
        assert_eq!(err.reason, RejectReason::AttributeTooLong);
        // A keyword is never kept, but its refusal quotes at most SHOWN_BYTES of it.
        let long = Value::StringValue("é".repeat(100_000));
        let err = keyword("k", a(&long), "x", |_| None::<()>).unwrap_err();
        assert_eq!(err.reason, RejectReason::BadAttribute);
        assert!(err.message.len() < 200, "{}", err.message);
        assert!(
            err.message
                .ends_with("... (200000 bytes), expected one of x"),
            "{}",
            err.message
        );
    }

    #[test]
    fn ids_must_have_their_length() {
        assert_eq!(fixed_id::<8>("span id", &[]).unwrap(), [0; 8]);
        assert_eq!(fixed_id::<2>("x", &[1, 2]).unwrap(), [1, 2]);
        let err = fixed_id::<16>("trace id", &[1, 2, 3]).unwrap_err();
        assert_eq!(err.reason, RejectReason::BadId);
        assert_eq!(err.message, "trace id has 3 bytes, expected 16");
    }
}
