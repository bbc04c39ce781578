//! General topics outside tables (`mqtt.generalTopics: true`; off by default, when SPEC §6.3's
//! refusal applies): what lets the broker stand in for a plain one.
//!
//! A topic whose first level names no export is general. Retained messages for general topics
//! are records of the system table [`TABLE`] keyed by the whole topic (`{topic, payload,
//! contentType}`); an empty retained payload deletes it; non-retained publishes are `message`
//! events on that table. Both go through the system database's writer and audit log like any
//! table write, so live delivery, durable-session replay and restarts treat them like records.
//! Payloads are kept and delivered as the bytes published (no JSON decoding).
//!
//! This module only shapes records and payloads; the connection decides and writes.

use crate::store::ChangeKind;
use crate::value::{Object, Value};

/// The system table retained general topics are kept in.
pub const TABLE: &str = "hdb_mqtt_retained";

/// The record a retained publish to `topic` stores.
pub fn record(topic: &str, payload: &[u8], qos: u8, content_type: Option<&str>) -> Value {
    let mut o = Object::new();
    o.insert("topic", Value::String(topic.to_string()));
    o.insert("qos", Value::Int(i64::from(qos)));
    o.insert("payload", Value::Bytes(payload.to_vec()));
    if let Some(t) = content_type {
        o.insert("contentType", Value::String(t.to_string()));
    }
    Value::Object(o)
}

/// The QoS a retained general message was published with (a subscriber gets at most that).
pub fn qos(record: &Value) -> u8 {
    match record.get("qos") {
        Some(Value::Int(q)) => (*q).clamp(0, 2) as u8,
        _ => 2,
    }
}

/// The bytes a subscriber gets for a change of [`TABLE`]; none for a delete (MQTT has nothing to
/// deliver when a retained message is cleared).
pub fn payload(kind: ChangeKind, value: Option<&Value>) -> Option<Vec<u8>> {
    match (kind, value?) {
        (ChangeKind::Delete, _) => None,
        (ChangeKind::Put, record) => match record.get("payload") {
            Some(Value::Bytes(b)) => Some(b.clone()),
            Some(Value::String(s)) => Some(s.as_bytes().to_vec()),
            _ => Some(Vec::new()),
        },
        (ChangeKind::Message, Value::Bytes(b)) => Some(b.clone()),
        (ChangeKind::Message, Value::String(s)) => Some(s.as_bytes().to_vec()),
        (ChangeKind::Message, other) => {
            let mut out = Vec::new();
            crate::value::json::write(other, &mut out);
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: ChangeKind, value: Option<Value>, expected: Option<&[u8]>) {
        assert_eq!(payload(kind, value.as_ref()).as_deref(), expected);
    }

    #[test]
    fn payloads_are_the_bytes_published() {
        check(
            ChangeKind::Put,
            Some(record("a/b", b"\x00hi", 1, None)),
            Some(b"\x00hi"),
        );
        check(
            ChangeKind::Message,
            Some(Value::Bytes(b"x".to_vec())),
            Some(b"x"),
        );
        check(ChangeKind::Delete, None, None);
    }
}
