//! General topics outside tables (`mqtt.generalTopics: true`; off by default, when docs/mqtt.md's
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

use super::props::{Properties, Property};
use crate::change::ChangeKind;
use crate::value::{Object, Value};

/// The system table retained general topics are kept in.
pub const TABLE: &str = "hdb_mqtt_retained";

/// A general publish as stored (the retained record, or the message payload): the bytes, the
/// QoS it was published with, when it expires (Message Expiry Interval) and the properties a
/// broker passes on, kept as their MQTT encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub payload: Vec<u8>,
    pub qos: u8,
    pub expires_at: Option<f64>,
    pub properties: Properties,
}

impl Envelope {
    /// `passed_on`: the properties to keep (see `origin::Origin::new`); `now_ms`: arrival time.
    pub fn new(payload: &[u8], qos: u8, passed_on: &Properties, now_ms: f64) -> Envelope {
        let mut properties = Properties::default();
        let mut expires_at = None;
        for p in passed_on.iter() {
            match p {
                Property::MessageExpiryInterval(s) => {
                    expires_at = Some(now_ms + f64::from(*s) * 1000.0);
                }
                other => properties.push(other.clone()),
            }
        }
        Envelope {
            payload: payload.to_vec(),
            qos,
            expires_at,
            properties,
        }
    }

    /// The stored form; `topic` for retained records.
    pub fn to_value(&self, topic: Option<&str>) -> Value {
        let mut o = Object::new();
        if let Some(t) = topic {
            o.insert("topic", Value::String(t.to_string()));
        }
        o.insert("payload", Value::Bytes(self.payload.clone()));
        o.insert("qos", Value::Int(i64::from(self.qos)));
        if let Some(t) = self.expires_at {
            o.insert("expiresAt", Value::Float(t));
        }
        if !self.properties.is_empty() {
            let mut block = Vec::new();
            self.properties.encode(&mut block);
            // `encode` writes the block's length first; the entries follow it.
            let skip = block
                .iter()
                .position(|b| b & 0x80 == 0)
                .map_or(0, |i| i + 1);
            o.insert(
                "properties",
                Value::Bytes(block.get(skip..).unwrap_or_default().to_vec()),
            );
        }
        Value::Object(o)
    }

    /// Reads a change of [`TABLE`] back; none for a delete. Older forms (plain bytes) read as
    /// QoS 2 without properties.
    pub fn open(kind: ChangeKind, value: Option<&Value>) -> Option<Envelope> {
        if kind == ChangeKind::Delete {
            return None;
        }
        let value = value?;
        let bytes = |v: Option<&Value>| match v {
            Some(Value::Bytes(b)) => b.clone(),
            Some(Value::String(s)) => s.as_bytes().to_vec(),
            _ => Vec::new(),
        };
        match value {
            Value::Object(o) => Some(Envelope {
                payload: bytes(o.get("payload")),
                qos: match o.get("qos") {
                    Some(Value::Int(q)) => (*q).clamp(0, 2) as u8,
                    _ => 2,
                },
                expires_at: match o.get("expiresAt") {
                    Some(Value::Float(t)) => Some(*t),
                    _ => None,
                },
                properties: match o.get("properties") {
                    Some(Value::Bytes(b)) => Properties::decode(b).unwrap_or_default(),
                    _ => Properties::default(),
                },
            }),
            other => Some(Envelope {
                payload: bytes(Some(other)),
                qos: 2,
                expires_at: None,
                properties: Properties::default(),
            }),
        }
    }

    /// The properties for a delivery at `now_ms`, the expiry counted down; none once expired.
    pub fn outbound(&self, now_ms: f64) -> Option<Properties> {
        let mut out = self.properties.clone();
        if let Some(at) = self.expires_at {
            let left_s = ((at - now_ms) / 1000.0).ceil();
            if left_s <= 0.0 {
                return None;
            }
            out.push(Property::MessageExpiryInterval(
                left_s.min(f64::from(u32::MAX)) as u32,
            ));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores an envelope and opens it again; expects what a delivery at `now_ms` carries.
    fn check(envelope: Envelope, now_ms: f64, expected: Option<Properties>) {
        let back = Envelope::open(ChangeKind::Put, Some(&envelope.to_value(Some("a/b"))));
        assert_eq!(back.as_ref(), Some(&envelope));
        assert_eq!(back.and_then(|e| e.outbound(now_ms)), expected);
    }

    #[test]
    fn envelopes_keep_bytes_qos_expiry_and_properties() {
        let user = Property::UserProperty("a".into(), "1".into());
        let props = Properties(vec![user.clone(), Property::MessageExpiryInterval(10)]);
        let e = Envelope::new(b"\x00hi", 1, &props, 1000.0);
        assert_eq!((e.payload.as_slice(), e.qos), (&b"\x00hi"[..], 1));
        check(
            e.clone(),
            4000.0,
            Some(Properties(vec![user, Property::MessageExpiryInterval(7)])),
        );
        check(e, 11_000.0, None);
        assert_eq!(Envelope::open(ChangeKind::Delete, None), None);
    }
}
