//! The read-only view every encoder is written over: implemented by `&Value` (owned, e.g. a
//! request body or a change event) and `&ArchivedValue` (in place in the LMDB map), so one encoder
//! serves both without building an owned copy.

use super::{ArchivedValue, BigIntRef, Value};
use rkyv::string::ArchivedString;
use rkyv::tuple::ArchivedTuple2;

/// One level of a value, as seen through a [`ValueView`].
pub enum Kind<'a, V: ValueView<'a>> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    BigInt(BigIntRef<'a>),
    String(&'a str),
    Bytes(&'a [u8]),
    /// Milliseconds since the Unix epoch.
    Date(f64),
    Array(V::Items),
    Object(V::Entries),
}

/// A cheap, copyable handle to a value that can be walked without allocating.
pub trait ValueView<'a>: Copy + 'a {
    type Items: ExactSizeIterator<Item = Self>;
    type Entries: ExactSizeIterator<Item = (&'a str, Self)>;

    fn kind(self) -> Kind<'a, Self>;

    /// The property `key` when this is an object (first match; objects hold unique keys).
    fn get(self, key: &str) -> Option<Self> {
        match self.kind() {
            Kind::Object(mut entries) => entries.find(|(k, _)| *k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

type OwnedEntries<'a> = std::iter::Map<
    std::slice::Iter<'a, (String, Value)>,
    fn(&'a (String, Value)) -> (&'a str, &'a Value),
>;

fn owned_entry(entry: &(String, Value)) -> (&str, &Value) {
    (entry.0.as_str(), &entry.1)
}

impl<'a> ValueView<'a> for &'a Value {
    type Items = std::slice::Iter<'a, Value>;
    type Entries = OwnedEntries<'a>;

    #[inline]
    fn kind(self) -> Kind<'a, Self> {
        match self {
            Value::Null => Kind::Null,
            Value::Bool(b) => Kind::Bool(*b),
            Value::Int(i) => Kind::Int(*i),
            Value::Float(f) => Kind::Float(*f),
            Value::BigInt(b) => Kind::BigInt(b.as_ref()),
            Value::String(s) => Kind::String(s),
            Value::Bytes(b) => Kind::Bytes(b),
            Value::Date(ms) => Kind::Date(*ms),
            Value::Array(items) => Kind::Array(items.iter()),
            Value::Object(o) => Kind::Object(o.entries.iter().map(owned_entry as fn(_) -> _)),
        }
    }
}

type ArchivedEntry = ArchivedTuple2<ArchivedString, ArchivedValue>;
type ArchivedEntries<'a> = std::iter::Map<
    std::slice::Iter<'a, ArchivedEntry>,
    fn(&'a ArchivedEntry) -> (&'a str, &'a ArchivedValue),
>;

fn archived_entry(entry: &ArchivedEntry) -> (&str, &ArchivedValue) {
    (entry.0.as_str(), &entry.1)
}

impl<'a> ValueView<'a> for &'a ArchivedValue {
    type Items = std::slice::Iter<'a, ArchivedValue>;
    type Entries = ArchivedEntries<'a>;

    #[inline]
    fn kind(self) -> Kind<'a, Self> {
        match self {
            ArchivedValue::Null => Kind::Null,
            ArchivedValue::Bool(b) => Kind::Bool(*b),
            ArchivedValue::Int(i) => Kind::Int(i.to_native()),
            ArchivedValue::Float(f) => Kind::Float(f.to_native()),
            ArchivedValue::BigInt(b) => Kind::BigInt(b.as_ref()),
            ArchivedValue::String(s) => Kind::String(s.as_str()),
            ArchivedValue::Bytes(b) => Kind::Bytes(b.as_slice()),
            ArchivedValue::Date(ms) => Kind::Date(ms.to_native()),
            ArchivedValue::Array(items) => Kind::Array(items.as_slice().iter()),
            ArchivedValue::Object(o) => Kind::Object(
                o.entries
                    .as_slice()
                    .iter()
                    .map(archived_entry as fn(_) -> _),
            ),
        }
    }
}
