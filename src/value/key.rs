//! Order-preserving key encoding: primary keys and index values as bytes whose memcmp order is
//! [`cmp_total`](super::cmp_total)'s order, so LMDB range scans and sorted reads follow the keys.
//!
//! It owns only the byte layout; which values may be keys (strings and numbers for primary keys,
//! docs/applications.md) is the caller's rule.
//!
//! ```text
//! 0x02 null   0x03 false   0x04 true
//! number:  0x10 NaN | 0x11 -inf | 0x12 negative: !(exp mantissa) | 0x13 zero
//!          | 0x14 positive: exp mantissa | 0x15 +inf
//!          exp      = u16 big-endian, binary exponent + 0x8000 (value = 0.1xxx… (binary) × 2^exp)
//!          mantissa = the significant bits, leading 1 first, 7 per byte as (bits << 1) | more,
//!                     the last byte with more = 0 (prefix-free, so shorter mantissas sort first)
//!          then 0xFF when the value is a Date (number < Date at equal value)
//! 0x20 string | 0x28 bytes: content with 0x00 written as 0x00 0xFF, then 0x00 0x01
//! 0x30 array: elements, then 0x01
//! 0x38 object: per entry 0x02, key as string content + 0x00 0x01, value; then 0x01
//! ```
//!
//! Int, Float and BigInt of equal value encode to the same bytes (JavaScript has one number type,
//! so `1` and `1.0` are the same key); [`decode`] returns the canonical form: Int when integral
//! and within i64, BigInt beyond, Float otherwise. -0 encodes as 0.

use std::fmt;

use super::number::{Num, NumClass};
use super::order::num_of;
use super::view::{Kind, ValueView};
use super::{Object, Value};

/// Largest encoded key in bytes (docs/design.md: keys of at most 250 encoded bytes; longer index values
/// are indexed by prefix).
pub const KEY_BYTES_MAX: usize = 250;

/// Nesting depth accepted by [`decode`]; keys are short, so this only guards against corrupt
/// bytes.
const DECODE_DEPTH_MAX: usize = 128;

const END: u8 = 0x01;
const NULL: u8 = 0x02;
const FALSE: u8 = 0x03;
const TRUE: u8 = 0x04;
const NUM_NAN: u8 = 0x10;
const NUM_NEG_INF: u8 = 0x11;
const NUM_NEG: u8 = 0x12;
const NUM_ZERO: u8 = 0x13;
const NUM_POS: u8 = 0x14;
const NUM_POS_INF: u8 = 0x15;
const DATE_MARK: u8 = 0xFF;
const STRING: u8 = 0x20;
const BYTES: u8 = 0x28;
const ARRAY: u8 = 0x30;
const OBJECT: u8 = 0x38;
const ENTRY: u8 = 0x02;
const EXP_BIAS: i32 = 0x8000;
/// Mantissa groups of 7 bits: a 1024-bit BigInt needs 147.
const MANTISSA_GROUPS_MAX: usize = 148;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The encoded key is longer than [`KEY_BYTES_MAX`]; `bytes` is its full length.
    TooLong { bytes: usize },
    /// The bytes are not a valid key (corrupt, or not made by this encoder).
    Invalid { offset: usize },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::TooLong { bytes } => {
                write!(f, "key is {bytes} bytes encoded, more than {KEY_BYTES_MAX}")
            }
            KeyError::Invalid { offset } => write!(f, "invalid key bytes at offset {offset}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// Appends the key encoding of `value`; fails (leaving `out` as it was) when it exceeds
/// [`KEY_BYTES_MAX`]. For primary keys.
pub fn encode<'a, V: ValueView<'a>>(value: V, out: &mut Vec<u8>) -> Result<(), KeyError> {
    let start = out.len();
    encode_unbounded(value, out);
    let bytes = out.len() - start;
    if bytes > KEY_BYTES_MAX {
        out.truncate(start);
        return Err(KeyError::TooLong { bytes });
    }
    Ok(())
}

/// Appends the key encoding of `value`, cut to [`KEY_BYTES_MAX`] bytes. Returns true when it was
/// cut: such an index entry only narrows the search, and the reader re-checks the record.
pub fn encode_index_prefix<'a, V: ValueView<'a>>(value: V, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    encode_unbounded(value, out);
    let cut = out.len() - start > KEY_BYTES_MAX;
    if cut {
        out.truncate(start + KEY_BYTES_MAX);
    }
    cut
}

/// Appends the full key encoding, however long (e.g. for an in-memory sort key).
pub fn encode_unbounded<'a, V: ValueView<'a>>(value: V, out: &mut Vec<u8>) {
    let kind = value.kind();
    match kind {
        Kind::Null => out.push(NULL),
        Kind::Bool(false) => out.push(FALSE),
        Kind::Bool(true) => out.push(TRUE),
        Kind::Int(_) | Kind::Float(_) | Kind::BigInt(_) => encode_num(&num_of(&kind), out),
        Kind::Date(_) => {
            encode_num(&num_of(&kind), out);
            out.push(DATE_MARK);
        }
        Kind::String(s) => {
            out.push(STRING);
            encode_escaped(s.as_bytes(), out);
        }
        Kind::Bytes(b) => {
            out.push(BYTES);
            encode_escaped(b, out);
        }
        Kind::Array(items) => {
            out.push(ARRAY);
            for item in items {
                encode_unbounded(item, out);
            }
            out.push(END);
        }
        Kind::Object(entries) => {
            out.push(OBJECT);
            for (k, v) in entries {
                out.push(ENTRY);
                encode_escaped(k.as_bytes(), out);
                encode_unbounded(v, out);
            }
            out.push(END);
        }
    }
}

fn encode_escaped(bytes: &[u8], out: &mut Vec<u8>) {
    let mut rest = bytes;
    while let Some(i) = memchr::memchr(0, rest) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(&[0x00, 0xFF]);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(&[0x00, END]);
}

fn encode_num(num: &Num, out: &mut Vec<u8>) {
    let tag = match num.class {
        NumClass::NaN => NUM_NAN,
        NumClass::NegInf => NUM_NEG_INF,
        NumClass::Neg => NUM_NEG,
        NumClass::Zero => NUM_ZERO,
        NumClass::Pos => NUM_POS,
        NumClass::PosInf => NUM_POS_INF,
    };
    out.push(tag);
    if !matches!(num.class, NumClass::Pos | NumClass::Neg) {
        return;
    }
    let start = out.len();
    let exp = (num.exp + EXP_BIAS).clamp(0, u16::MAX as i32) as u16;
    out.extend_from_slice(&exp.to_be_bytes());
    let mantissa = num.mantissa();
    let bits = match mantissa.last() {
        Some(&b) => mantissa.len() * 8 - b.trailing_zeros() as usize,
        None => 0,
    };
    let groups = bits.div_ceil(7).max(1);
    for g in 0..groups {
        let mut group = 0u8;
        for j in 0..7 {
            let bit = g * 7 + j;
            let set = bit < bits && mantissa[bit / 8] & (0x80 >> (bit % 8)) != 0;
            group = (group << 1) | set as u8;
        }
        let more = (g + 1 < groups) as u8;
        out.push((group << 1) | more);
    }
    if num.class == NumClass::Neg {
        for b in &mut out[start..] {
            *b = !*b;
        }
    }
}

/// Decodes a whole key back into its canonical value.
pub fn decode(bytes: &[u8]) -> Result<Value, KeyError> {
    let mut reader = Reader { bytes, pos: 0 };
    let value = reader.value(0)?;
    if reader.pos != bytes.len() {
        return Err(KeyError::Invalid { offset: reader.pos });
    }
    Ok(value)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn invalid(&self) -> KeyError {
        KeyError::Invalid { offset: self.pos }
    }

    fn next(&mut self) -> Result<u8, KeyError> {
        let b = *self.bytes.get(self.pos).ok_or(self.invalid())?;
        self.pos += 1;
        Ok(b)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn value(&mut self, depth: usize) -> Result<Value, KeyError> {
        if depth > DECODE_DEPTH_MAX {
            return Err(self.invalid());
        }
        let tag = self.next()?;
        match tag {
            NULL => Ok(Value::Null),
            FALSE => Ok(Value::Bool(false)),
            TRUE => Ok(Value::Bool(true)),
            NUM_NAN..=NUM_POS_INF => {
                let start = self.pos;
                let num = self.number(tag)?;
                let invalid = KeyError::Invalid { offset: start };
                if self.peek() == Some(DATE_MARK) {
                    self.pos += 1;
                    // A Date is an f64, also when integral beyond i64.
                    return num.to_f64_exact().map(Value::Date).ok_or(invalid);
                }
                num.to_value().ok_or(invalid)
            }
            STRING => {
                let start = self.pos;
                let bytes = self.escaped()?;
                String::from_utf8(bytes)
                    .map(Value::String)
                    .map_err(|_| KeyError::Invalid { offset: start })
            }
            BYTES => Ok(Value::Bytes(self.escaped()?)),
            ARRAY => {
                let mut items = Vec::new();
                while self.peek() != Some(END) {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::Array(items))
            }
            OBJECT => {
                let mut entries = Vec::new();
                loop {
                    match self.next()? {
                        END => break,
                        ENTRY => {}
                        _ => {
                            return Err(KeyError::Invalid {
                                offset: self.pos - 1,
                            })
                        }
                    }
                    let start = self.pos;
                    let key = String::from_utf8(self.escaped()?)
                        .map_err(|_| KeyError::Invalid { offset: start })?;
                    let value = self.value(depth + 1)?;
                    entries.push((key, value));
                }
                Ok(Value::Object(Object::from_entries(entries)))
            }
            _ => Err(KeyError::Invalid {
                offset: self.pos - 1,
            }),
        }
    }

    fn escaped(&mut self) -> Result<Vec<u8>, KeyError> {
        let mut out = Vec::new();
        loop {
            let rest = &self.bytes[self.pos..];
            let i = memchr::memchr(0, rest).ok_or(KeyError::Invalid {
                offset: self.bytes.len(),
            })?;
            out.extend_from_slice(&rest[..i]);
            self.pos += i + 1;
            match self.next()? {
                0xFF => out.push(0),
                END => return Ok(out),
                _ => {
                    return Err(KeyError::Invalid {
                        offset: self.pos - 1,
                    })
                }
            }
        }
    }

    fn number(&mut self, tag: u8) -> Result<Num, KeyError> {
        let class = match tag {
            NUM_NAN => NumClass::NaN,
            NUM_NEG_INF => NumClass::NegInf,
            NUM_NEG => NumClass::Neg,
            NUM_ZERO => NumClass::Zero,
            NUM_POS => NumClass::Pos,
            _ => NumClass::PosInf,
        };
        let start = self.pos;
        let mut mantissa = [0u8; MANTISSA_GROUPS_MAX * 7 / 8 + 1];
        let mut exp = 0i32;
        if matches!(class, NumClass::Pos | NumClass::Neg) {
            let flip = if class == NumClass::Neg { 0xFF } else { 0x00 };
            let hi = self.next()? ^ flip;
            let lo = self.next()? ^ flip;
            exp = u16::from_be_bytes([hi, lo]) as i32 - EXP_BIAS;
            let mut bit = 0usize;
            loop {
                if bit / 7 >= MANTISSA_GROUPS_MAX {
                    return Err(self.invalid());
                }
                let byte = self.next()? ^ flip;
                let group = byte >> 1;
                for j in 0..7 {
                    if group & (0x40 >> j) != 0 {
                        mantissa[bit / 8] |= 0x80 >> (bit % 8);
                    }
                    bit += 1;
                }
                if byte & 1 == 0 {
                    break;
                }
            }
        }
        let len = mantissa.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        Num::from_parts(class, exp, &mantissa[..len]).ok_or(KeyError::Invalid { offset: start })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: Value, expected_hex: &str) {
        let mut out = Vec::new();
        encode(&value, &mut out).unwrap();
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected_hex, "{value:?}");
        let back = decode(&out).unwrap();
        assert_eq!(
            super::super::cmp_total(&back, &value),
            std::cmp::Ordering::Equal
        );
    }

    #[test]
    fn fixtures() {
        check(Value::Null, "02");
        check(Value::Bool(true), "04");
        check(Value::Int(0), "13");
        check(Value::Float(-0.0), "13");
        // 1 = 0.1b × 2^1: exp 0x8001, mantissa "1" → 1000000 << 1.
        check(Value::Int(1), "14800180");
        check(Value::Float(1.0), "14800180");
        check(Value::Int(-1), "127ffe7f");
        check(Value::Date(1.0), "14800180ff");
        check(Value::Float(0.5), "14800080");
        check(Value::from("a\0b"), "206100ff620001");
        check(
            Value::Array(vec![Value::Null, Value::from("")]),
            "300220000101",
        );
        check(Value::Float(f64::NAN), "10");
    }

    #[test]
    fn limits() {
        let long = Value::String("x".repeat(300));
        assert_eq!(
            encode(&long, &mut Vec::new()),
            Err(KeyError::TooLong { bytes: 303 })
        );
        let mut out = vec![9];
        assert!(encode_index_prefix(&long, &mut out));
        assert_eq!(out.len(), 1 + KEY_BYTES_MAX);
        assert!(decode(&[0x30; 400]).is_err());
        assert!(decode(&[0x14, 0x80]).is_err());
        assert!(decode(&[0x20, 0x61]).is_err());
        let big = Value::from_magnitude(false, &[0xff; 128]).unwrap();
        let mut out = Vec::new();
        encode(&big, &mut out).unwrap();
        assert_eq!(decode(&out).unwrap(), big);
    }
}
