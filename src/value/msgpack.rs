//! MessagePack: the encoder over any [`ValueView`] and the request-body parser.
//!
//! Out: integers in the smallest format; floats as float64 (as msgpackr does by default); BigInt
//! within u64 as uint64, beyond as its decimal string (a portable form every client reads, and the
//! form docs/applications.md's BigInt coercion accepts back); Bytes as bin; Date as the timestamp extension
//! (type -1) in its 32-, 64- or 96-bit form, whole ms exactly; an invalid date (NaN, ±∞) as nil;
//! REST streams collections as concatenated values, so there is no array helper here.
//!
//! In: every format of the spec; uint64 beyond i64 → BigInt; timestamp → Date in whole ms (sub-ms
//! nanoseconds are dropped, rounding down; dates beyond JavaScript's ±8.64e15 ms are rejected); msgpackr's `undefined` (fixext 1, type 0) → null; other
//! extension types are rejected; map keys must be strings or integers (integers become their
//! decimal text).

use super::cursor::{map_key, Cursor, Grammar};
use super::view::{Kind, ValueView};
use super::{DecodeError, DecodeLimits, Object, Problem, Value, DATE_MS_MAX};

const TIMESTAMP: i8 = -1;
const NIL: u8 = 0xc0;

/// Appends the MessagePack encoding of `value`.
pub fn write<'a, V: ValueView<'a>>(value: V, out: &mut Vec<u8>) {
    match value.kind() {
        Kind::Null => out.push(NIL),
        Kind::Bool(false) => out.push(0xc2),
        Kind::Bool(true) => out.push(0xc3),
        Kind::Int(i) => write_int(i, out),
        Kind::Float(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.to_bits().to_be_bytes());
        }
        Kind::BigInt(b) => {
            if !b.negative && b.magnitude.len() <= 8 {
                let mut word = [0u8; 8];
                word[8 - b.magnitude.len()..].copy_from_slice(b.magnitude);
                out.push(0xcf);
                out.extend_from_slice(&word);
            } else {
                let mut text = Vec::new();
                b.write_decimal(&mut text);
                write_str_head(text.len(), out);
                out.extend_from_slice(&text);
            }
        }
        Kind::String(s) => {
            write_str_head(s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Kind::Bytes(b) => {
            let n = b.len();
            if n <= u8::MAX as usize {
                out.extend_from_slice(&[0xc4, n as u8]);
            } else if n <= u16::MAX as usize {
                out.push(0xc5);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                out.push(0xc6);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            out.extend_from_slice(b);
        }
        Kind::Date(ms) => write_date(ms, out),
        Kind::Array(items) => {
            let n = items.len();
            if n < 16 {
                out.push(0x90 | n as u8);
            } else if n <= u16::MAX as usize {
                out.push(0xdc);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                out.push(0xdd);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            for item in items {
                write(item, out);
            }
        }
        Kind::Object(entries) => {
            let n = entries.len();
            if n < 16 {
                out.push(0x80 | n as u8);
            } else if n <= u16::MAX as usize {
                out.push(0xde);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            } else {
                out.push(0xdf);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
            for (k, v) in entries {
                write_str_head(k.len(), out);
                out.extend_from_slice(k.as_bytes());
                write(v, out);
            }
        }
    }
}

/// Returns the MessagePack encoding of `value` in a fresh buffer.
pub fn to_vec<'a, V: ValueView<'a>>(value: V) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

fn write_int(i: i64, out: &mut Vec<u8>) {
    if (0..128).contains(&i) || (-32..0).contains(&i) {
        out.push(i as u8);
    } else if i >= 0 {
        if i <= u8::MAX as i64 {
            out.extend_from_slice(&[0xcc, i as u8]);
        } else if i <= u16::MAX as i64 {
            out.push(0xcd);
            out.extend_from_slice(&(i as u16).to_be_bytes());
        } else if i <= u32::MAX as i64 {
            out.push(0xce);
            out.extend_from_slice(&(i as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&(i as u64).to_be_bytes());
        }
    } else if i >= i8::MIN as i64 {
        out.extend_from_slice(&[0xd0, i as u8]);
    } else if i >= i16::MIN as i64 {
        out.push(0xd1);
        out.extend_from_slice(&(i as i16).to_be_bytes());
    } else if i >= i32::MIN as i64 {
        out.push(0xd2);
        out.extend_from_slice(&(i as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

fn write_str_head(n: usize, out: &mut Vec<u8>) {
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= u8::MAX as usize {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n <= u16::MAX as usize {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

fn write_date(ms: f64, out: &mut Vec<u8>) {
    // Beyond ±9.2e18 ms no i64 seconds value is meaningful; JavaScript stops at ±8.64e15.
    if !ms.is_finite() || ms.abs() >= 9.0e18 {
        out.push(NIL);
        return;
    }
    let (seconds, nanos) = if ms.fract() == 0.0 {
        // Whole ms (every Date a decoder makes): exact integer arithmetic.
        let ms = ms as i64;
        (ms.div_euclid(1000), ms.rem_euclid(1000) * 1_000_000)
    } else {
        let seconds = (ms / 1000.0).floor();
        let nanos = ((ms - seconds * 1000.0) * 1.0e6).round() as i64;
        if nanos >= 1_000_000_000 {
            (seconds as i64 + 1, nanos - 1_000_000_000)
        } else {
            (seconds as i64, nanos)
        }
    };
    let nanos = nanos.clamp(0, 999_999_999) as u64;
    if seconds >= 0 && seconds >> 34 == 0 {
        let seconds = seconds as u64;
        if nanos == 0 && seconds <= u32::MAX as u64 {
            out.extend_from_slice(&[0xd6, TIMESTAMP as u8]);
            out.extend_from_slice(&(seconds as u32).to_be_bytes());
        } else {
            out.extend_from_slice(&[0xd7, TIMESTAMP as u8]);
            out.extend_from_slice(&((nanos << 34) | seconds).to_be_bytes());
        }
    } else {
        out.extend_from_slice(&[0xc7, 12, TIMESTAMP as u8]);
        out.extend_from_slice(&(nanos as u32).to_be_bytes());
        out.extend_from_slice(&seconds.to_be_bytes());
    }
}

/// Parses a MessagePack body with the default limits.
pub fn parse(bytes: &[u8]) -> Result<Value, DecodeError> {
    parse_with(bytes, &DecodeLimits::default())
}

/// Parses a MessagePack body: exactly one value.
pub fn parse_with(bytes: &[u8], limits: &DecodeLimits) -> Result<Value, DecodeError> {
    let mut reader = Reader::new(Cursor::new(bytes, limits)?);
    let value = reader.item(0)?;
    reader.finish(value)
}

/// MessagePack's grammar over the shared cursor.
struct MsgPack;
type Reader<'a> = Grammar<'a, MsgPack>;

impl Reader<'_> {
    fn u16(&mut self) -> Result<usize, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?) as usize)
    }

    fn u32(&mut self) -> Result<usize, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?) as usize)
    }

    fn item(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let start = self.pos;
        self.count_value(start)?;
        let marker = self.u8()?;
        let value = match marker {
            0x00..=0x7f => Value::Int(marker as i64),
            0x80..=0x8f => return self.map((marker & 0x0f) as usize, depth, start),
            0x90..=0x9f => return self.array_items((marker & 0x0f) as usize, depth, start),
            0xa0..=0xbf => return self.string((marker & 0x1f) as usize, start),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 => {
                let n = self.u8()? as usize;
                Value::Bytes(self.take(n)?.to_vec())
            }
            0xc5 => {
                let n = self.u16()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            0xc6 => {
                let n = self.u32()?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            0xc7 => {
                let n = self.u8()? as usize;
                return self.ext(n, start);
            }
            0xc8 => {
                let n = self.u16()?;
                return self.ext(n, start);
            }
            0xc9 => {
                let n = self.u32()?;
                return self.ext(n, start);
            }
            0xca => Value::Float(f32::from_be_bytes(self.array()?) as f64),
            0xcb => Value::Float(f64::from_be_bytes(self.array()?)),
            0xcc => Value::Int(self.u8()? as i64),
            0xcd => Value::Int(self.u16()? as i64),
            0xce => Value::Int(self.u32()? as i64),
            0xcf => {
                let n = u64::from_be_bytes(self.array()?);
                match i64::try_from(n) {
                    Ok(i) => Value::Int(i),
                    Err(_) => Value::from_magnitude(false, &n.to_be_bytes()).unwrap_or(Value::Null),
                }
            }
            0xd0 => Value::Int(i8::from_be_bytes(self.array()?) as i64),
            0xd1 => Value::Int(i16::from_be_bytes(self.array()?) as i64),
            0xd2 => Value::Int(i32::from_be_bytes(self.array()?) as i64),
            0xd3 => Value::Int(i64::from_be_bytes(self.array()?)),
            0xd4 => return self.ext(1, start),
            0xd5 => return self.ext(2, start),
            0xd6 => return self.ext(4, start),
            0xd7 => return self.ext(8, start),
            0xd8 => return self.ext(16, start),
            0xd9 => {
                let n = self.u8()? as usize;
                return self.string(n, start);
            }
            0xda => {
                let n = self.u16()?;
                return self.string(n, start);
            }
            0xdb => {
                let n = self.u32()?;
                return self.string(n, start);
            }
            0xdc => {
                let n = self.u16()?;
                return self.array_items(n, depth, start);
            }
            0xdd => {
                let n = self.u32()?;
                return self.array_items(n, depth, start);
            }
            0xde => {
                let n = self.u16()?;
                return self.map(n, depth, start);
            }
            0xdf => {
                let n = self.u32()?;
                return self.map(n, depth, start);
            }
            0xe0..=0xff => Value::Int(marker as i8 as i64),
            // 0xc1 is never used.
            _ => return Err(DecodeError::new(start, Problem::UnexpectedByte(marker))),
        };
        Ok(value)
    }

    fn string(&mut self, n: usize, start: usize) -> Result<Value, DecodeError> {
        let text = self.take(n)?;
        match std::str::from_utf8(text) {
            Ok(s) => Ok(Value::String(s.to_owned())),
            Err(_) => Err(DecodeError::new(start, Problem::InvalidUtf8)),
        }
    }

    fn array_items(&mut self, n: usize, depth: usize, start: usize) -> Result<Value, DecodeError> {
        self.check_depth(depth, start)?;
        // Every item takes at least one byte: never reserve more than what is left.
        let mut items = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            items.push(self.item(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize, start: usize) -> Result<Value, DecodeError> {
        self.check_depth(depth, start)?;
        let mut entries = Vec::with_capacity(n.min(self.remaining() / 2));
        for _ in 0..n {
            let at = self.pos;
            let key = map_key(self.item(depth + 1)?, at)?;
            let value = self.item(depth + 1)?;
            entries.push((key, value));
        }
        Ok(Value::Object(Object::from_entries(entries)))
    }

    fn ext(&mut self, n: usize, start: usize) -> Result<Value, DecodeError> {
        let kind = self.u8()? as i8;
        let data = self.take(n)?;
        let (seconds, nanos): (i64, u64) = match (kind, data.len()) {
            (0, 1) => return Ok(Value::Null),
            (TIMESTAMP, 4) => (
                u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as i64,
                0,
            ),
            (TIMESTAMP, 8) => {
                let mut word = [0u8; 8];
                word.copy_from_slice(data);
                let word = u64::from_be_bytes(word);
                ((word & ((1 << 34) - 1)) as i64, word >> 34)
            }
            (TIMESTAMP, 12) => {
                let mut nanos = [0u8; 4];
                nanos.copy_from_slice(&data[..4]);
                let mut seconds = [0u8; 8];
                seconds.copy_from_slice(&data[4..]);
                (
                    i64::from_be_bytes(seconds),
                    u32::from_be_bytes(nanos) as u64,
                )
            }
            _ => {
                return Err(DecodeError::new(
                    start,
                    Problem::Unsupported("extension type"),
                ))
            }
        };
        if nanos >= 1_000_000_000 {
            return Err(DecodeError::new(start, Problem::InvalidNumber));
        }
        let ms = seconds as i128 * 1000 + (nanos / 1_000_000) as i128;
        if ms.unsigned_abs() > DATE_MS_MAX as u128 {
            return Err(DecodeError::new(start, Problem::InvalidNumber));
        }
        Ok(Value::Date(ms as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Encodes `value` (owned and archived) to `expected_hex`, and parses that back to `value`.
    fn check(value: Value, expected_hex: &str) {
        assert_eq!(hex(&to_vec(&value)), expected_hex, "{value:?}");
        let archived = super::super::to_archived_bytes(&value);
        assert_eq!(
            hex(&to_vec(super::super::access(&archived).unwrap())),
            expected_hex
        );
        assert_eq!(
            parse(&unhex(expected_hex)).unwrap(),
            value,
            "{expected_hex}"
        );
    }

    fn check_parse(input_hex: &str, expected: Result<Value, DecodeError>) {
        assert_eq!(parse(&unhex(input_hex)), expected, "{input_hex}");
    }

    #[test]
    fn fixtures() {
        check(Value::Int(5), "05");
        check(Value::Int(-32), "e0");
        check(Value::Int(-33), "d0df");
        check(Value::Int(200), "ccc8");
        check(Value::Int(-40000), "d2ffff63c0");
        check(Value::Int(i64::MAX), "cf7fffffffffffffff");
        check(Value::Float(1.5), "cb3ff8000000000000");
        check(
            Value::from_magnitude(false, &u64::MAX.to_be_bytes()).unwrap(),
            "cfffffffffffffffff",
        );
        check(Value::from("hi"), "a26869");
        check(Value::Bytes(vec![7]), "c40107");
        check(Value::Date(1_718_000_000_000.0), "d6ff66669980");
        check(Value::Date(1_718_000_000_125.0), "d7ff1dcd650066669980");
        check(Value::Date(-1.0), "c70cff3b8b87c0ffffffffffffffff");
        let mut o = Object::new();
        o.insert("k", Value::Array(vec![Value::Null, Value::Bool(false)]));
        check(Value::Object(o), "81a16b92c0c2");
    }

    #[test]
    fn parse_edges() {
        let big = Value::from_magnitude(true, &[1, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(
            hex(&to_vec(&big)),
            hex(&to_vec(&Value::from("-18446744073709551616")))
        );
        check_parse("d40000", Ok(Value::Null));
        check_parse(
            "c70cff000000000000100000000000",
            Err(DecodeError::new(0, Problem::InvalidNumber)),
        );
        check_parse(
            "d7fffffffffc00000000",
            Err(DecodeError::new(0, Problem::InvalidNumber)),
        );
        check_parse("ca3fc00000", Ok(Value::Float(1.5)));
        check_parse(
            "c1",
            Err(DecodeError::new(0, Problem::UnexpectedByte(0xc1))),
        );
        check_parse(
            "d40100",
            Err(DecodeError::new(0, Problem::Unsupported("extension type"))),
        );
        check_parse(
            "dd7fffffff",
            Err(DecodeError::new(5, Problem::UnexpectedEnd)),
        );
        check_parse(
            "81c0c0",
            Err(DecodeError::new(
                1,
                Problem::Unsupported("map key that is not text or an integer"),
            )),
        );
        check_parse(
            "810102",
            Ok(Value::Object(
                [("1".to_string(), Value::Int(2))].into_iter().collect(),
            )),
        );
        check_parse(
            &"91".repeat(200),
            Err(DecodeError::new(
                128,
                Problem::DepthLimit { depth_max: 128 },
            )),
        );
        check_parse("0000", Err(DecodeError::new(1, Problem::TrailingBytes)));
    }
}
