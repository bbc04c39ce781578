//! The dynamic value: one `Value` type for every record, message and request body, its rkyv
//! archived form as stored in LMDB, and its codecs.
//!
//! This module owns the value's shape, its archived layout (rkyv, unaligned format, so a value can
//! be read in place from unaligned LMDB memory), the wire codecs (`json`, `cbor`, `msgpack`, `csv`),
//! and the order-preserving key encoding (`key`). It never touches the store, the network or a
//! schema: callers hand it bytes or values and get bytes or values back. Every encoder is written
//! once over the read-only [`ValueView`] trait, so a record read from the store is encoded straight
//! from its archived bytes without building an owned copy.

pub mod cbor;
pub mod csv;
mod cursor;
pub mod json;
pub mod key;
pub mod msgpack;

mod number;
mod order;
mod view;

#[cfg(test)]
mod proptests;

use std::fmt;

use rkyv::rancor;

pub use number::BigIntRef;
pub use order::cmp_total;
pub use view::{Kind, ValueView};

/// Largest BigInt magnitude in bytes: 1024 bits, enough for every integral f64 and for the
/// "integer up to ~1000 bits" of docs/applications.md. Larger integer literals decode as floats (JSON) or
/// are rejected (CBOR bignums).
pub const BIGINT_BYTES_MAX: usize = 128;

/// One dynamic value.
///
/// `BigInt` only holds integers outside the `i64` range (see [`Value::from_magnitude`]), so every integer
/// has exactly one representation. `Date` is milliseconds since the Unix epoch, as in JavaScript.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    __S::Error: rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(
    __C: rkyv::validation::ArchiveContext,
    <__C as rkyv::rancor::Fallible>::Error: rkyv::rancor::Source,
)))]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    BigInt(BigInt),
    String(String),
    Bytes(Vec<u8>),
    Date(f64),
    Array(#[rkyv(omit_bounds)] Vec<Value>),
    Object(#[rkyv(omit_bounds)] Object),
}

/// An integer outside the `i64` range: sign and big-endian magnitude without leading zero bytes.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BigInt {
    negative: bool,
    magnitude: Vec<u8>,
}

impl BigInt {
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Big-endian magnitude, no leading zero bytes.
    pub fn magnitude(&self) -> &[u8] {
        &self.magnitude
    }

    pub fn as_ref(&self) -> BigIntRef<'_> {
        BigIntRef {
            negative: self.negative,
            magnitude: &self.magnitude,
        }
    }
}

/// An object: properties in insertion order. Lookups are linear, which beats hashing for the
/// handful of properties a record usually has; decoders deduplicate large objects with a hash.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    __S::Error: rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(
    __C: rkyv::validation::ArchiveContext,
    <__C as rkyv::rancor::Fallible>::Error: rkyv::rancor::Source,
)))]
pub struct Object {
    #[rkyv(omit_bounds)]
    entries: Vec<(String, Value)>,
}

/// Objects up to this many entries are deduplicated by linear scan; larger ones through a hash
/// map, so a hostile body with 100k keys costs O(n), not O(n²).
const OBJECT_LINEAR_DEDUP_MAX: usize = 16;

impl Object {
    pub fn new() -> Object {
        Object::default()
    }

    pub fn with_capacity(capacity: usize) -> Object {
        Object {
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Builds an object from entries that may repeat a key: as JSON.parse does, the last value
    /// wins and keeps the position of the first occurrence.
    pub fn from_entries(entries: Vec<(String, Value)>) -> Object {
        if entries.len() <= OBJECT_LINEAR_DEDUP_MAX {
            let mut object = Object::with_capacity(entries.len());
            for (k, v) in entries {
                object.insert(k, v);
            }
            return object;
        }
        let mut index: std::collections::HashMap<String, usize> =
            std::collections::HashMap::with_capacity(entries.len());
        let mut out: Vec<(String, Value)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match index.get(&k) {
                Some(&i) => out[i].1 = v,
                None => {
                    index.insert(k.clone(), out.len());
                    out.push((k, v));
                }
            }
        }
        Object { entries: out }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.entries
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Sets `key`; an existing key keeps its position. Returns the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Option<Value> {
        let key = key.into();
        match self.get_mut(&key) {
            Some(slot) => Some(std::mem::replace(slot, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    /// Removes `key`, keeping the order of the others.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn entries(&self) -> &[(String, Value)] {
        &self.entries
    }

    pub fn into_entries(self) -> Vec<(String, Value)> {
        self.entries
    }
}

impl FromIterator<(String, Value)> for Object {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Object {
        Object::from_entries(iter.into_iter().collect())
    }
}

impl ArchivedObject {
    pub fn get(&self, key: &str) -> Option<&ArchivedValue> {
        self.entries
            .iter()
            .find(|e| e.0.as_str() == key)
            .map(|e| &e.1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl ArchivedBigInt {
    pub fn as_ref(&self) -> BigIntRef<'_> {
        BigIntRef {
            negative: self.negative,
            magnitude: self.magnitude.as_slice(),
        }
    }
}

impl Value {
    /// Builds the value `(-1)^negative × magnitude`, normalized: leading zero bytes are dropped
    /// and a value that fits `i64` comes back as `Value::Int`. `None` when the magnitude exceeds
    /// [`BIGINT_BYTES_MAX`].
    pub fn from_magnitude(negative: bool, magnitude: &[u8]) -> Option<Value> {
        let start = magnitude
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(magnitude.len());
        let magnitude = &magnitude[start..];
        if magnitude.len() > BIGINT_BYTES_MAX {
            return None;
        }
        if magnitude.len() <= 8 {
            let mut word = [0u8; 8];
            word[8 - magnitude.len()..].copy_from_slice(magnitude);
            let m = u64::from_be_bytes(word);
            if !negative && m <= i64::MAX as u64 {
                return Some(Value::Int(m as i64));
            }
            if negative && m <= 1u64 << 63 {
                return Some(Value::Int((m as i64).wrapping_neg()));
            }
        }
        Some(Value::BigInt(BigInt {
            negative,
            magnitude: magnitude.to_vec(),
        }))
    }

    /// The property `key` when this is an object.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(o) => o.get(key),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Structural identity: like `==`, but floats and dates compare by bits with every NaN equal
    /// to every NaN, so a value read back from any codec can be checked exactly.
    pub fn is_identical(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Float(x), Value::Float(y)) | (Value::Date(x), Value::Date(y)) => {
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
            }
            (Value::Array(xs), Value::Array(ys)) => {
                xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| x.is_identical(y))
            }
            (Value::Object(xs), Value::Object(ys)) => {
                xs.len() == ys.len()
                    && xs
                        .iter()
                        .zip(ys.iter())
                        .all(|((kx, x), (ky, y))| kx == ky && x.is_identical(y))
            }
            _ => self == other,
        }
    }

    /// Total order over all values, consistent with [`key::encode`]'s byte order.
    pub fn cmp_total(&self, other: &Value) -> std::cmp::Ordering {
        order::cmp_total(self, other)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<Object> for Value {
    fn from(o: Object) -> Value {
        Value::Object(o)
    }
}

/// An archived value failed validation, or could not be written or read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    /// The bytes are not a valid archived `Value` (corrupt store entry).
    Invalid(String),
    /// Serializing failed (only on allocation failure inside rkyv).
    Serialize(String),
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::Invalid(why) => write!(f, "invalid archived value: {why}"),
            ValueError::Serialize(why) => write!(f, "cannot archive value: {why}"),
        }
    }
}

impl std::error::Error for ValueError {}

/// Archives `value` into a fresh buffer.
pub fn to_archived_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    archive_into(value, &mut out);
    out
}

/// Appends the archived form of `value` to `out` (a reusable buffer, e.g. after an entry header).
/// The root sits at the end, so [`access`] must be given the slice from the value's start to the
/// buffer's end; with the unaligned format the start may be at any offset.
pub fn archive_into(value: &Value, out: &mut Vec<u8>) {
    let start = out.len();
    let buffer = std::mem::take(out);
    // rkyv's positions are relative to the writer's start, so a non-empty buffer is wrapped to
    // keep offsets relative to `start`.
    let writer = OffsetWriter {
        inner: buffer,
        start,
    };
    // rancor::Panic has no values: serializing into a Vec can only fail by aborting on
    // allocation failure.
    let writer = match rkyv::api::high::to_bytes_in::<_, rancor::Panic>(value, writer) {
        Ok(writer) => writer,
        Err(never) => match never {},
    };
    *out = writer.inner;
}

struct OffsetWriter {
    inner: Vec<u8>,
    start: usize,
}

impl rkyv::ser::Positional for OffsetWriter {
    fn pos(&self) -> usize {
        self.inner.len() - self.start
    }
}

impl<E> rkyv::ser::Writer<E> for OffsetWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.inner.extend_from_slice(bytes);
        Ok(())
    }
}

/// Validates `bytes` as an archived value and returns it in place (no copy).
pub fn access(bytes: &[u8]) -> Result<&ArchivedValue, ValueError> {
    rkyv::access::<ArchivedValue, rancor::Error>(bytes)
        .map_err(|e| ValueError::Invalid(e.to_string()))
}

/// Builds an owned value from its archived form.
pub fn deserialize(archived: &ArchivedValue) -> Result<Value, ValueError> {
    rkyv::deserialize::<Value, rancor::Error>(archived)
        .map_err(|e| ValueError::Invalid(e.to_string()))
}

/// Limits for decoding a request body. Reaching one fails the decode with a [`DecodeError`]
/// naming the limit; nothing is truncated silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Nesting depth of arrays and objects (and CBOR tags); at most [`DEPTH_CEILING`].
    pub depth_max: usize,
    /// Size of the whole body.
    pub bytes_max: usize,
    /// Number of values (scalars and containers) in the body; bounds the work and memory a
    /// small body can cause (e.g. CBOR's one-byte empty arrays).
    pub values_max: usize,
}

/// Ceiling on `depth_max`: the parsers recurse once per level, and this keeps the deepest
/// recursion well inside an executor thread's stack whatever the configuration says.
pub const DEPTH_CEILING: usize = 1024;

impl DecodeLimits {
    /// These limits with `depth_max` held to [`DEPTH_CEILING`].
    pub(crate) fn clamped(&self) -> DecodeLimits {
        DecodeLimits {
            depth_max: self.depth_max.min(DEPTH_CEILING),
            ..*self
        }
    }
}

impl Default for DecodeLimits {
    fn default() -> DecodeLimits {
        DecodeLimits {
            depth_max: 128,
            bytes_max: 64 << 20,
            values_max: 16 << 20,
        }
    }
}

/// Largest |ms| of a Date decoders accept: JavaScript's Date range, ±100,000,000 days.
pub const DATE_MS_MAX: f64 = 8.64e15;

/// A body that does not decode: what went wrong and at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: usize,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The body ended inside a value.
    UnexpectedEnd,
    /// A byte that cannot start or continue a value here.
    UnexpectedByte(u8),
    /// Bytes after the one top-level value.
    TrailingBytes,
    /// Text that is not valid UTF-8 where a string is required.
    InvalidUtf8,
    /// A malformed escape sequence or control character in a JSON string.
    InvalidString,
    /// A `\u` escape of a UTF-16 surrogate without its pair (a string cannot hold it).
    LoneSurrogate,
    /// A malformed number, or one out of range (e.g. 1e999).
    InvalidNumber,
    /// A construct the format allows but this server does not (names it).
    Unsupported(&'static str),
    DepthLimit {
        depth_max: usize,
    },
    BytesLimit {
        bytes_max: usize,
    },
    ValuesLimit {
        values_max: usize,
    },
}

impl DecodeError {
    pub(crate) fn new(offset: usize, problem: Problem) -> DecodeError {
        DecodeError { offset, problem }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::UnexpectedEnd => write!(f, "unexpected end of body")?,
            Problem::UnexpectedByte(b) => write!(f, "unexpected byte 0x{b:02x}")?,
            Problem::TrailingBytes => write!(f, "unexpected data after the value")?,
            Problem::InvalidUtf8 => write!(f, "invalid UTF-8")?,
            Problem::InvalidString => write!(f, "invalid string")?,
            Problem::LoneSurrogate => write!(f, "lone UTF-16 surrogate in a \\u escape")?,
            Problem::InvalidNumber => write!(f, "invalid or out-of-range number")?,
            Problem::Unsupported(what) => write!(f, "unsupported: {what}")?,
            Problem::DepthLimit { depth_max } => write!(f, "nesting deeper than {depth_max}")?,
            Problem::BytesLimit { bytes_max } => write!(f, "body larger than {bytes_max} bytes")?,
            Problem::ValuesLimit { values_max } => write!(f, "more than {values_max} values")?,
        }
        write!(f, " at byte {}", self.offset)
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: Value) {
        let bytes = to_archived_bytes(&value);
        let archived = access(&bytes).unwrap();
        assert_eq!(deserialize(archived).unwrap(), value);
        // At an odd offset behind a header, as in an LMDB entry.
        let mut buf = vec![0xAB; 3];
        archive_into(&value, &mut buf);
        let archived = access(&buf[3..]).unwrap();
        assert_eq!(deserialize(archived).unwrap(), value);
    }

    #[test]
    fn archive_round_trips() {
        check(Value::Null);
        check(Value::Int(-5));
        check(Value::String("hé".into()));
        let mut o = Object::new();
        o.insert(
            "b",
            Value::Array(vec![Value::Float(1.5), Value::Bytes(vec![0, 1])]),
        );
        o.insert("a", Value::Date(1.0e12));
        o.insert("big", Value::from_magnitude(true, &[1; 20]).unwrap());
        check(Value::Object(o));
    }

    #[test]
    fn bigint_normalizes() {
        assert_eq!(
            Value::from_magnitude(false, &[0, 0, 5]),
            Some(Value::Int(5))
        );
        assert_eq!(
            Value::from_magnitude(true, &[0x80, 0, 0, 0, 0, 0, 0, 0]),
            Some(Value::Int(i64::MIN))
        );
        assert!(matches!(
            Value::from_magnitude(false, &[0x80, 0, 0, 0, 0, 0, 0, 0]),
            Some(Value::BigInt(_))
        ));
        assert_eq!(Value::from_magnitude(false, &[1; 129]), None);
    }

    #[test]
    fn object_keeps_order_and_dedups() {
        let entries: Vec<(String, Value)> = (0..40)
            .map(|i| (format!("k{}", i % 20), Value::Int(i)))
            .collect();
        let o = Object::from_entries(entries);
        assert_eq!(o.len(), 20);
        assert_eq!(o.entries()[0], ("k0".to_string(), Value::Int(20)));
        let mut o = Object::new();
        o.insert("x", Value::Null);
        o.insert("y", Value::Null);
        o.insert("x", Value::Int(1));
        assert_eq!(o.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(o.remove("x"), Some(Value::Int(1)));
        assert_eq!(o.get("x"), None);
    }
}
