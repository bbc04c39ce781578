//! Payload encoding for MQTT over TCP (docs/realtime.md): inbound by the v5 Content Type, else JSON when
//! it parses, else raw bytes; outbound JSON, except records stored as `{contentType, data}`, which
//! go out as their raw bytes.
//!
//! Decoding is bounded by the value codecs' own limits (`DecodeLimits`); nothing here allocates
//! more than the payload's size times a constant.

use crate::value::{self, Kind, Object, Value, ValueView};

pub const JSON: &str = "application/json";
pub const OCTET_STREAM: &str = "application/octet-stream";

#[derive(Debug, Clone, PartialEq)]
pub enum PayloadError {
    /// The payload does not decode as its declared content type (v5 `0x99`).
    Invalid(String),
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::Invalid(m) => write!(f, "payload format invalid: {m}"),
        }
    }
}

fn is(content_type: &str, wanted: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(wanted))
}

/// The value a payload carries.
pub fn decode(payload: &[u8], content_type: Option<&str>) -> Result<Value, PayloadError> {
    let invalid = |e: &dyn std::fmt::Display| PayloadError::Invalid(e.to_string());
    match content_type {
        Some(t) if is(t, JSON) => value::json::parse(payload).map_err(|e| invalid(&e)),
        Some(t) if is(t, "application/cbor") => {
            value::cbor::parse(payload).map_err(|e| invalid(&e))
        }
        Some(t) if is(t, "application/x-msgpack") || is(t, "application/msgpack") => {
            value::msgpack::parse(payload).map_err(|e| invalid(&e))
        }
        Some(_) => Ok(Value::Bytes(payload.to_vec())),
        None => Ok(value::json::parse(payload).unwrap_or_else(|_| Value::Bytes(payload.to_vec()))),
    }
}

/// The record a retained publish stores: an object as is, anything else wrapped as
/// `{"contentType": …, "data": …}`.
pub fn record(value: Value, content_type: Option<&str>) -> Object {
    match value {
        Value::Object(o) => o,
        other => {
            let ty = match (&other, content_type) {
                (_, Some(t)) => t.to_string(),
                (Value::Bytes(_), None) => OCTET_STREAM.to_string(),
                (_, None) => JSON.to_string(),
            };
            Object::from_entries(vec![
                ("contentType".to_string(), Value::String(ty)),
                ("data".to_string(), other),
            ])
        }
    }
}

/// Encodes a record, message or deletion (`None` → `null`) for a subscriber. Returns the content
/// type the bytes have.
pub fn encode<'a, V: ValueView<'a>>(value: Option<V>, out: &mut Vec<u8>) -> &'static str {
    let Some(value) = value else {
        out.extend_from_slice(b"null");
        return JSON;
    };
    if let Some(raw) = raw_bytes(value) {
        out.extend_from_slice(raw);
        return OCTET_STREAM;
    }
    value::json::write(value, out);
    JSON
}

/// The bytes of a `{contentType, data: <bytes>}` record or of a bare bytes value.
fn raw_bytes<'a, V: ValueView<'a>>(value: V) -> Option<&'a [u8]> {
    match value.kind() {
        Kind::Bytes(b) => Some(b),
        // The record also holds its key (and timestamps, if the table has them).
        Kind::Object(_) => {
            value.get("contentType")?;
            match value.get("data")?.kind() {
                Kind::Bytes(b) => Some(b),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `payload` as a retained publish would, then encodes the stored record back.
    fn check(payload: &[u8], content_type: Option<&str>, stored_json: &str, out: &[u8]) {
        let v = decode(payload, content_type).unwrap();
        let rec = Value::Object(record(v, content_type));
        assert_eq!(
            String::from_utf8(value::json::to_vec(&rec)).unwrap(),
            stored_json
        );
        let mut bytes = Vec::new();
        encode(Some(&rec), &mut bytes);
        assert_eq!(bytes, out);
    }

    #[test]
    fn payloads() {
        check(br#"{"a":1}"#, None, r#"{"a":1}"#, br#"{"a":1}"#);
        check(
            b"\x01\x02",
            None,
            r#"{"contentType":"application/octet-stream","data":"AQI="}"#,
            b"\x01\x02",
        );
        check(
            b"42",
            None,
            r#"{"contentType":"application/json","data":42}"#,
            br#"{"contentType":"application/json","data":42}"#,
        );
        check(
            b"hi",
            Some("text/plain"),
            r#"{"contentType":"text/plain","data":"aGk="}"#,
            b"hi",
        );
        assert!(decode(b"{", Some(JSON)).is_err());
        let mut out = Vec::new();
        assert_eq!(encode::<&Value>(None, &mut out), JSON);
        assert_eq!(out, b"null");
    }
}
