//! One change as subscribers see it, and its wire forms, each encoded at most once per core.
//!
//! ```text
//! {"id":"1","localTime":1718000000125.2,"value":{...},"version":1718000000123.5,"type":"put"}
//! ```
//! Keys in this order (docs/realtime.md, as HarperDB); no `value` for deletes; no `id` for a message to
//! the bare table topic.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use crate::change::{Change, ChangeKind, Commit};
use crate::resource::permissions::ReadableAttributes;
use crate::value::{self, Object, Value};

/// An outbound encoding; CBOR and MessagePack go in binary WebSocket frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Cbor,
    MsgPack,
}

impl Format {
    /// From an `Accept` header: the first of CBOR / MessagePack named, else JSON.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let accept = accept.unwrap_or_default();
        if accept.contains("application/cbor") {
            Format::Cbor
        } else if accept.contains("msgpack") {
            Format::MsgPack
        } else {
            Format::Json
        }
    }

    fn index(self) -> usize {
        match self {
            Format::Json => 0,
            Format::Cbor => 1,
            Format::MsgPack => 2,
        }
    }
}

/// Distinct (format, attribute set) encodings one event keeps for restricted readers; past it,
/// further sets are encoded per subscriber and not kept (a bound on memory, never on delivery).
pub const TRIMMED_VARIANTS_MAX: usize = 32;

/// A change of a commit (shared with every core, never copied) plus its encodings on this core.
pub struct Event {
    commit: Arc<Commit>,
    index: usize,
    id: Option<String>,
    encoded: [OnceCell<Box<[u8]>>; 3],
    /// Encodings with the value trimmed to an attribute set (docs/security.md), one per distinct
    /// (format, set) among this core's subscribers, so equal rights share one encoding.
    trimmed: RefCell<Vec<Trimmed>>,
}

/// One trimmed encoding: its format, the attribute set, the bytes.
type Trimmed = (Format, Rc<ReadableAttributes>, Rc<[u8]>);

/// An event's bytes for one subscriber: the shared encoding, or a trimmed one.
pub enum Encoded<'a> {
    Shared(&'a [u8]),
    Trimmed(Rc<[u8]>),
}

impl std::ops::Deref for Encoded<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Encoded::Shared(b) => b,
            Encoded::Trimmed(b) => b,
        }
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("table", &self.table())
            .field("id", &self.id)
            .field("kind", &self.kind())
            .field("version", &self.version())
            .finish()
    }
}

/// The topic level text of a key: strings as they are, numbers in canonical decimal, none for
/// the bare table topic (`Null`).
pub fn id_text(key: &Value) -> Option<String> {
    match key {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        other => {
            let mut out = Vec::new();
            value::json::write(other, &mut out);
            Some(String::from_utf8_lossy(&out).into_owned())
        }
    }
}

impl Event {
    /// The `index`th change of `commit`. Panics on an index out of range (a bug here).
    pub fn new(commit: Arc<Commit>, index: usize) -> Event {
        let id = id_text(&commit.changes[index].key);
        Event {
            commit,
            index,
            id,
            encoded: Default::default(),
            trimmed: RefCell::new(Vec::new()),
        }
    }

    /// A one-change event outside the live stream (initial state, audit replay).
    pub fn single(database: Arc<str>, version: f64, local_time: f64, change: Change) -> Event {
        Event::new(
            Arc::new(Commit {
                database,
                version,
                local_time,
                changes: vec![change],
                extras: None,
            }),
            0,
        )
    }

    fn change(&self) -> &Change {
        &self.commit.changes[self.index]
    }

    pub fn database(&self) -> &str {
        &self.commit.database
    }
    pub fn table(&self) -> &str {
        &self.change().table
    }
    pub fn key(&self) -> &Value {
        &self.change().key
    }
    /// The record id as topic levels (`a/b`), none for the bare table topic.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
    pub fn kind(&self) -> ChangeKind {
        self.change().kind
    }
    /// The record after a put, the payload of a message, none for a delete.
    pub fn value(&self) -> Option<&Value> {
        self.change().value.as_ref()
    }
    pub fn version(&self) -> f64 {
        self.commit.version
    }
    pub fn local_time(&self) -> f64 {
        self.commit.local_time
    }

    /// The docs/realtime.md object in `format`, encoded on first use and kept for every other subscriber.
    pub fn encoded(&self, format: Format) -> &[u8] {
        self.encoded[format.index()]
            .get_or_init(|| self.encode(format, self.value()).into_boxed_slice())
    }

    /// The event in `format` as a reader limited to `readable` sees it (docs/security.md: events are
    /// trimmed by attribute read permissions); `None` = unrestricted, the shared encoding.
    pub fn encoded_for(
        &self,
        format: Format,
        readable: Option<&Rc<ReadableAttributes>>,
    ) -> Encoded<'_> {
        let Some(readable) = readable else {
            return Encoded::Shared(self.encoded(format));
        };
        let Some(value) = self.value().filter(|_| self.kind() != ChangeKind::Delete) else {
            return Encoded::Shared(self.encoded(format));
        };
        let mut trimmed = self.trimmed.borrow_mut();
        let found = trimmed
            .iter()
            .find(|(f, set, _)| *f == format && (Rc::ptr_eq(set, readable) || **set == **readable));
        if let Some((_, _, bytes)) = found {
            return Encoded::Trimmed(bytes.clone());
        }
        let mut value = value.clone();
        readable.trim(&mut value);
        let bytes: Rc<[u8]> = self.encode(format, Some(&value)).into();
        if trimmed.len() < TRIMMED_VARIANTS_MAX {
            trimmed.push((format, readable.clone(), bytes.clone()));
        }
        Encoded::Trimmed(bytes)
    }

    fn encode(&self, format: Format, value: Option<&Value>) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        match format {
            Format::Json => self.write_json(value, &mut out),
            Format::Cbor => value::cbor::write(&self.to_object(value), &mut out),
            Format::MsgPack => value::msgpack::write(&self.to_object(value), &mut out),
        }
        out
    }

    /// The bytes this event holds in a queue (its encodings so far plus a fixed overhead).
    pub fn held_bytes(&self) -> usize {
        std::mem::size_of::<Event>()
            + self
                .encoded
                .iter()
                .filter_map(|c| c.get())
                .map(|b| b.len())
                .sum::<usize>()
            + self
                .trimmed
                .borrow()
                .iter()
                .map(|(_, _, b)| b.len())
                .sum::<usize>()
    }

    fn type_name(&self) -> &'static str {
        match self.kind() {
            ChangeKind::Put => "put",
            ChangeKind::Delete => "delete",
            ChangeKind::Message => "message",
        }
    }

    fn write_json(&self, value: Option<&Value>, out: &mut Vec<u8>) {
        out.push(b'{');
        if !matches!(self.key(), Value::Null) {
            out.extend_from_slice(b"\"id\":");
            value::json::write(self.key(), out);
            out.push(b',');
        }
        out.extend_from_slice(b"\"localTime\":");
        value::json::write_float(self.local_time(), out);
        if let (Some(v), false) = (value, self.kind() == ChangeKind::Delete) {
            out.extend_from_slice(b",\"value\":");
            value::json::write(v, out);
        }
        out.extend_from_slice(b",\"version\":");
        value::json::write_float(self.version(), out);
        out.extend_from_slice(b",\"type\":\"");
        out.extend_from_slice(self.type_name().as_bytes());
        out.extend_from_slice(b"\"}");
    }

    fn to_object(&self, value: Option<&Value>) -> Value {
        let mut o = Object::with_capacity(5);
        if !matches!(self.key(), Value::Null) {
            o.insert("id", self.key().clone());
        }
        o.insert("localTime", Value::Float(self.local_time()));
        if let (Some(v), false) = (value, self.kind() == ChangeKind::Delete) {
            o.insert("value", v.clone());
        }
        o.insert("version", Value::Float(self.version()));
        o.insert("type", Value::String(self.type_name().into()));
        Value::Object(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: Value, kind: ChangeKind, value: Option<Value>, expected: &str) {
        let change = Change {
            table: Arc::from("Dog"),
            key,
            kind,
            value,
        };
        let event = Event::single(Arc::from("data"), 1718000000123.5, 1718000000125.25, change);
        assert_eq!(
            std::str::from_utf8(event.encoded(Format::Json)).unwrap(),
            expected
        );
        // Cached: the same bytes, not re-encoded.
        assert_eq!(
            event.encoded(Format::Json).as_ptr(),
            event.encoded(Format::Json).as_ptr()
        );
        let cbor = value::cbor::parse(event.encoded(Format::Cbor)).unwrap();
        assert_eq!(cbor.get("version"), Some(&Value::Float(1718000000123.5)));
    }

    #[test]
    fn spec_6_4_messages() {
        let mut rex = Object::new();
        rex.insert("name", Value::String("Rex".into()));
        rex.insert("id", Value::String("1".into()));
        check(
            Value::String("1".into()),
            ChangeKind::Put,
            Some(Value::Object(rex)),
            r#"{"id":"1","localTime":1718000000125.25,"value":{"name":"Rex","id":"1"},"version":1718000000123.5,"type":"put"}"#,
        );
        check(
            Value::Int(7),
            ChangeKind::Delete,
            None,
            r#"{"id":7,"localTime":1718000000125.25,"version":1718000000123.5,"type":"delete"}"#,
        );
        check(
            Value::Null,
            ChangeKind::Message,
            Some(Value::String("hi".into())),
            r#"{"localTime":1718000000125.25,"value":"hi","version":1718000000123.5,"type":"message"}"#,
        );
    }

    /// Trimmed to each reader's attributes, encoded once per (format, set): equal sets share the
    /// bytes, a delete has nothing to trim, an unrestricted reader gets the shared encoding.
    #[test]
    fn trimmed_once_per_attribute_set() {
        let role = |json: &str| {
            let p = crate::resource::permissions::Permissions::from_role(
                &value::json::parse(json.as_bytes()).unwrap(),
            );
            crate::resource::permissions::readable_attributes(
                &crate::resource::Caller::with_role("u", p),
                "data",
                "Dog",
                Some("id"),
            )
            .map(Rc::new)
        };
        let names = r#"{"data": {"tables": {"Dog": {"read": true, "attribute_permissions": [
            {"attribute_name": "name", "read": true}]}}}}"#;
        let (a, b) = (role(names), role(names));
        let everything = role(r#"{"data": {"tables": {"Dog": {"read": true}}}}"#);
        assert!(everything.is_none());
        let record = value::json::parse(br#"{"id":"1","name":"Rex","owner":"s"}"#).unwrap();
        let event = |kind, value| {
            Event::single(
                Arc::from("data"),
                2.0,
                3.0,
                Change {
                    table: Arc::from("Dog"),
                    key: Value::String("1".into()),
                    kind,
                    value,
                },
            )
        };
        let put = event(ChangeKind::Put, Some(record));
        let first = put.encoded_for(Format::Json, a.as_ref());
        assert_eq!(
            std::str::from_utf8(&first).unwrap(),
            r#"{"id":"1","localTime":3,"value":{"id":"1","name":"Rex"},"version":2,"type":"put"}"#
        );
        let second = put.encoded_for(Format::Json, b.as_ref());
        assert_eq!(
            first.as_ptr(),
            second.as_ptr(),
            "equal sets share one encoding"
        );
        let full = put.encoded_for(Format::Json, everything.as_ref());
        assert!(std::str::from_utf8(&full).unwrap().contains("owner"));
        let cbor = value::cbor::parse(&put.encoded_for(Format::Cbor, a.as_ref())).unwrap();
        assert_eq!(cbor.get("value").and_then(|v| v.get("owner")), None);
        let delete = event(ChangeKind::Delete, None);
        assert_eq!(
            delete.encoded_for(Format::Json, a.as_ref()).as_ptr(),
            delete.encoded(Format::Json).as_ptr()
        );
    }

    #[test]
    fn ids_as_topic_levels() {
        assert_eq!(
            id_text(&Value::String("a/b".into())).as_deref(),
            Some("a/b")
        );
        assert_eq!(id_text(&Value::Int(-3)).as_deref(), Some("-3"));
        assert_eq!(id_text(&Value::Null), None);
    }
}
