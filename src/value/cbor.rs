//! CBOR (RFC 8949): the encoder over any [`ValueView`], the streaming helpers REST uses for
//! collections, and the request-body parser.
//!
//! Out: integers in the shortest head; floats as float32 when that is exact, else float64;
//! BigInt within ±2^64 as a plain major-0/1 integer, beyond as tag 2/3 bignums; Bytes as a byte
//! string; Date as tag 1 (epoch seconds): an integer when the date is a whole second, else a
//! float64 of ms/1000 (as cbor-x, HarperDB's CBOR library, does); an invalid date (NaN, ±∞) as
//! `null`; objects as maps with text keys.
//!
//! In: definite and indefinite lengths; integers beyond i64 → BigInt; tags 2/3 → BigInt (up to
//! 1024 bits); tag 1 → Date in whole ms (float seconds are rounded to the ms; exact for dates
//! within ±2^51 ms, about ±71,000 years; NaN, ±∞ and dates beyond JavaScript's ±8.64e15 ms are
//! rejected); tag 0 → its string unchanged (date parsing is the schema's coercion); other
//! tags are skipped; `undefined` → null; map keys must be text or integers (integers become their
//! decimal text); other simple values are rejected.

use super::cursor::{map_key, Cursor, Grammar};
use super::view::{Kind, ValueView};
use super::{DecodeError, DecodeLimits, Object, Problem, Value, DATE_MS_MAX};

const MAJOR_UNSIGNED: u8 = 0;
const MAJOR_NEGATIVE: u8 = 1;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const MAJOR_TAG: u8 = 6;
const MAJOR_SIMPLE: u8 = 7;
const TAG_DATE_TEXT: u64 = 0;
const TAG_DATE_EPOCH: u64 = 1;
const TAG_BIGNUM_POSITIVE: u64 = 2;
const TAG_BIGNUM_NEGATIVE: u64 = 3;
const BREAK: u8 = 0xff;
const NULL: u8 = 0xf6;

/// Appends the CBOR encoding of `value`.
pub fn write<'a, V: ValueView<'a>>(value: V, out: &mut Vec<u8>) {
    match value.kind() {
        Kind::Null => out.push(NULL),
        Kind::Bool(false) => out.push(0xf4),
        Kind::Bool(true) => out.push(0xf5),
        Kind::Int(i) if i >= 0 => write_head(MAJOR_UNSIGNED, i as u64, out),
        // -1 - n = i, so n = !i for negative i.
        Kind::Int(i) => write_head(MAJOR_NEGATIVE, !i as u64, out),
        Kind::Float(f) => write_float(f, out),
        Kind::BigInt(b) => {
            if !b.negative {
                write_bignum(MAJOR_UNSIGNED, TAG_BIGNUM_POSITIVE, b.magnitude, out);
            } else {
                // The negative forms carry n = |value| - 1.
                let mut n = b.magnitude.to_vec();
                for byte in n.iter_mut().rev() {
                    let (v, borrow) = byte.overflowing_sub(1);
                    *byte = v;
                    if !borrow {
                        break;
                    }
                }
                let start = n.iter().position(|&x| x != 0).unwrap_or(n.len());
                write_bignum(MAJOR_NEGATIVE, TAG_BIGNUM_NEGATIVE, &n[start..], out);
            }
        }
        Kind::String(s) => {
            write_head(MAJOR_TEXT, s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
        Kind::Bytes(b) => {
            write_head(MAJOR_BYTES, b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Kind::Date(ms) => write_date(ms, out),
        Kind::Array(items) => {
            write_head(MAJOR_ARRAY, items.len() as u64, out);
            for item in items {
                write(item, out);
            }
        }
        Kind::Object(entries) => {
            write_head(MAJOR_MAP, entries.len() as u64, out);
            for (k, v) in entries {
                write_head(MAJOR_TEXT, k.len() as u64, out);
                out.extend_from_slice(k.as_bytes());
                write(v, out);
            }
        }
    }
}

/// Returns the CBOR encoding of `value` in a fresh buffer.
pub fn to_vec<'a, V: ValueView<'a>>(value: V) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

/// Starts an indefinite-length array (a streamed collection); end it with [`write_break`].
pub fn write_indefinite_array_start(out: &mut Vec<u8>) {
    out.push((MAJOR_ARRAY << 5) | 31);
}

/// Ends an indefinite-length item.
pub fn write_break(out: &mut Vec<u8>) {
    out.push(BREAK);
}

fn write_head(major: u8, n: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u8::MAX as u64 {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn write_bignum(major: u8, tag: u64, n: &[u8], out: &mut Vec<u8>) {
    if n.len() <= 8 {
        let mut word = [0u8; 8];
        word[8 - n.len()..].copy_from_slice(n);
        write_head(major, u64::from_be_bytes(word), out);
    } else {
        write_head(MAJOR_TAG, tag, out);
        write_head(MAJOR_BYTES, n.len() as u64, out);
        out.extend_from_slice(n);
    }
}

fn write_float(f: f64, out: &mut Vec<u8>) {
    let single = f as f32;
    if single as f64 == f || f.is_nan() {
        out.push(0xfa);
        out.extend_from_slice(&single.to_bits().to_be_bytes());
    } else {
        out.push(0xfb);
        out.extend_from_slice(&f.to_bits().to_be_bytes());
    }
}

fn write_date(ms: f64, out: &mut Vec<u8>) {
    if !ms.is_finite() {
        out.push(NULL);
        return;
    }
    write_head(MAJOR_TAG, TAG_DATE_EPOCH, out);
    let seconds = ms / 1000.0;
    if ms % 1000.0 == 0.0 && seconds.abs() < 9.0e18 {
        let s = seconds as i64;
        if s >= 0 {
            write_head(MAJOR_UNSIGNED, s as u64, out);
        } else {
            write_head(MAJOR_NEGATIVE, !s as u64, out);
        }
    } else {
        out.push(0xfb);
        out.extend_from_slice(&seconds.to_bits().to_be_bytes());
    }
}

/// Parses a CBOR body with the default limits.
pub fn parse(bytes: &[u8]) -> Result<Value, DecodeError> {
    parse_with(bytes, &DecodeLimits::default())
}

/// Parses a CBOR body: exactly one data item.
pub fn parse_with(bytes: &[u8], limits: &DecodeLimits) -> Result<Value, DecodeError> {
    let mut reader = Reader::new(Cursor::new(bytes, limits)?);
    let value = reader.item(0)?;
    reader.finish(value)
}

/// CBOR's grammar over the shared cursor.
struct Cbor;
type Reader<'a> = Grammar<'a, Cbor>;

/// A data item's head: major type and argument, or an indefinite length.
enum Head {
    Known(u8, u64),
    Indefinite(u8),
    /// A float or simple value: (additional info, raw argument).
    Simple(u8, u64),
}

impl Reader<'_> {
    fn error(&self, offset: usize, problem: Problem) -> DecodeError {
        DecodeError::new(offset, problem)
    }

    fn head(&mut self) -> Result<Head, DecodeError> {
        let start = self.pos;
        let initial = self.take(1)?[0];
        let major = initial >> 5;
        let info = initial & 31;
        let argument = match info {
            0..=23 => info as u64,
            24 => self.take(1)?[0] as u64,
            25 => u16::from_be_bytes([self.take(1)?[0], self.take(1)?[0]]) as u64,
            26 => {
                let b = self.take(4)?;
                u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64
            }
            27 => {
                let b = self.take(8)?;
                u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
            31 if matches!(major, MAJOR_BYTES | MAJOR_TEXT | MAJOR_ARRAY | MAJOR_MAP) => {
                return Ok(Head::Indefinite(major));
            }
            31 if major == MAJOR_SIMPLE => return Ok(Head::Simple(31, 0)),
            _ => return Err(self.error(start, Problem::UnexpectedByte(initial))),
        };
        if major == MAJOR_SIMPLE {
            return Ok(Head::Simple(info, argument));
        }
        Ok(Head::Known(major, argument))
    }

    /// Whether the next byte is a break, consuming it if so.
    fn at_break(&mut self) -> Result<bool, DecodeError> {
        match self.bytes.get(self.pos) {
            Some(&BREAK) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(self.error(self.pos, Problem::UnexpectedEnd)),
        }
    }

    fn item(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let start = self.pos;
        self.count_value(start)?;
        match self.head()? {
            Head::Known(MAJOR_UNSIGNED, n) => Ok(unsigned(n)),
            Head::Known(MAJOR_NEGATIVE, n) => Ok(negative(n)),
            Head::Known(MAJOR_BYTES, n) => Ok(Value::Bytes(self.take(len(n))?.to_vec())),
            Head::Known(MAJOR_TEXT, n) => {
                let text = self.take(len(n))?;
                let text = std::str::from_utf8(text)
                    .map_err(|_| self.error(start, Problem::InvalidUtf8))?;
                Ok(Value::String(text.to_owned()))
            }
            Head::Indefinite(major @ (MAJOR_BYTES | MAJOR_TEXT)) => {
                let mut buf = Vec::new();
                while !self.at_break()? {
                    let chunk_at = self.pos;
                    match self.head()? {
                        Head::Known(m, n) if m == major => {
                            buf.extend_from_slice(self.take(len(n))?)
                        }
                        _ => {
                            return Err(self.error(
                                chunk_at,
                                Problem::Unsupported("mixed chunk in indefinite string"),
                            ))
                        }
                    }
                }
                if major == MAJOR_BYTES {
                    return Ok(Value::Bytes(buf));
                }
                String::from_utf8(buf)
                    .map(Value::String)
                    .map_err(|_| self.error(start, Problem::InvalidUtf8))
            }
            Head::Known(MAJOR_ARRAY, n) => {
                self.check_depth(depth, start)?;
                // Every item takes at least one byte: never reserve more than what is left.
                let mut items = Vec::with_capacity(len(n).min(self.remaining()));
                for _ in 0..n {
                    items.push(self.item(depth + 1)?);
                }
                Ok(Value::Array(items))
            }
            Head::Indefinite(MAJOR_ARRAY) => {
                self.check_depth(depth, start)?;
                let mut items = Vec::new();
                while !self.at_break()? {
                    items.push(self.item(depth + 1)?);
                }
                Ok(Value::Array(items))
            }
            Head::Known(MAJOR_MAP, n) => {
                self.check_depth(depth, start)?;
                let mut entries = Vec::with_capacity(len(n).min(self.remaining() / 2));
                for _ in 0..n {
                    entries.push(self.entry(depth)?);
                }
                Ok(Value::Object(Object::from_entries(entries)))
            }
            Head::Indefinite(_) => {
                self.check_depth(depth, start)?;
                let mut entries = Vec::new();
                while !self.at_break()? {
                    entries.push(self.entry(depth)?);
                }
                Ok(Value::Object(Object::from_entries(entries)))
            }
            Head::Known(_, tag) => {
                self.check_depth(depth, start)?;
                self.uncount_value();
                self.tagged(tag, depth + 1, start)
            }
            Head::Simple(info, argument) => self.simple(info, argument, start),
        }
    }

    fn entry(&mut self, depth: usize) -> Result<(String, Value), DecodeError> {
        let at = self.pos;
        let key = map_key(self.item(depth + 1)?, at)?;
        let value = self.item(depth + 1)?;
        Ok((key, value))
    }

    fn tagged(&mut self, tag: u64, depth: usize, start: usize) -> Result<Value, DecodeError> {
        let content_at = self.pos;
        let content = self.item(depth)?;
        match (tag, content) {
            (TAG_DATE_EPOCH, Value::Int(s)) => date(s as f64 * 1000.0, content_at),
            (TAG_DATE_EPOCH, Value::BigInt(_)) => {
                Err(self.error(content_at, Problem::InvalidNumber))
            }
            // Float seconds round to whole ms: x/1000 read back × 1000 lands within half a ms of
            // x for |x| < 2^51 ms, so whole-ms dates round-trip exactly there.
            (TAG_DATE_EPOCH, Value::Float(s)) => date((s * 1000.0).round(), content_at),
            (TAG_DATE_EPOCH, _) => {
                Err(self.error(start, Problem::Unsupported("tag 1 on a non-number")))
            }
            (TAG_BIGNUM_POSITIVE | TAG_BIGNUM_NEGATIVE, Value::Bytes(n)) => {
                let value = if tag == TAG_BIGNUM_POSITIVE {
                    Value::from_magnitude(false, &n)
                } else {
                    // value = -1 - n: magnitude n + 1.
                    let mut m = Vec::with_capacity(n.len() + 1);
                    m.push(0);
                    m.extend_from_slice(&n);
                    for byte in m.iter_mut().rev() {
                        let (v, carry) = byte.overflowing_add(1);
                        *byte = v;
                        if !carry {
                            break;
                        }
                    }
                    Value::from_magnitude(true, &m)
                };
                value.ok_or(self.error(content_at, Problem::Unsupported("bignum over 1024 bits")))
            }
            (TAG_BIGNUM_POSITIVE | TAG_BIGNUM_NEGATIVE, _) => Err(self.error(
                start,
                Problem::Unsupported("bignum tag on a non-byte-string"),
            )),
            // Tag 0 keeps its text; other tags add nothing this server understands.
            (TAG_DATE_TEXT, content) | (_, content) => Ok(content),
        }
    }

    fn simple(&mut self, info: u8, argument: u64, start: usize) -> Result<Value, DecodeError> {
        match info {
            20 => Ok(Value::Bool(false)),
            21 => Ok(Value::Bool(true)),
            22 | 23 => Ok(Value::Null),
            25 => Ok(Value::Float(f16_to_f64(argument as u16))),
            26 => Ok(Value::Float(f32::from_bits(argument as u32) as f64)),
            27 => Ok(Value::Float(f64::from_bits(argument))),
            31 => Err(self.error(start, Problem::UnexpectedByte(BREAK))),
            _ => Err(self.error(start, Problem::Unsupported("simple value"))),
        }
    }
}

/// A CBOR length as usize; lengths beyond the address space fail later at `take`.
fn len(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn unsigned(n: u64) -> Value {
    match i64::try_from(n) {
        Ok(i) => Value::Int(i),
        Err(_) => Value::from_magnitude(false, &n.to_be_bytes()).unwrap_or(Value::Null),
    }
}

fn negative(n: u64) -> Value {
    match i64::try_from(n) {
        Ok(i) => Value::Int(-1 - i),
        Err(_) => {
            let magnitude = (n as u128 + 1).to_be_bytes();
            // At most 65 bits: always within BIGINT_BYTES_MAX.
            Value::from_magnitude(true, &magnitude).unwrap_or(Value::Null)
        }
    }
}

/// A Date within JavaScript's range (NaN, ±∞ and beyond ±8.64e15 ms are rejected).
fn date(ms: f64, at: usize) -> Result<Value, DecodeError> {
    if ms.abs() <= DATE_MS_MAX {
        // `+ 0.0` turns -0 (from rounding a tiny negative) into 0: one instant, one value.
        Ok(Value::Date(ms + 0.0))
    } else {
        Err(DecodeError::new(at, Problem::InvalidNumber))
    }
}

fn f16_to_f64(half: u16) -> f64 {
    let sign = if half & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((half >> 10) & 0x1f) as i32;
    let fraction = (half & 0x3ff) as f64;
    let magnitude = match exp {
        0 => fraction * (2f64).powi(-24),
        31 if fraction == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + fraction / 1024.0) * (2f64).powi(exp - 15),
    };
    sign * magnitude
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
        match (parse(&unhex(input_hex)), expected) {
            // Identity, not `==`: -0 and 0 must differ here.
            (Ok(got), Ok(want)) => assert!(got.is_identical(&want), "{input_hex}: {got:?}"),
            (got, want) => assert_eq!(got, want, "{input_hex}"),
        }
    }

    #[test]
    fn fixtures() {
        check(Value::Int(0), "00");
        check(Value::Int(23), "17");
        check(Value::Int(24), "1818");
        check(Value::Int(-1), "20");
        check(Value::Int(-1000), "3903e7");
        check(Value::Int(i64::MIN), "3b7fffffffffffffff");
        check(Value::Float(1.5), "fa3fc00000");
        check(Value::Float(0.1), "fb3fb999999999999a");
        check(
            Value::from_magnitude(false, &u64::MAX.to_be_bytes()).unwrap(),
            "1bffffffffffffffff",
        );
        check(
            Value::from_magnitude(false, &[1, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
            "c249010000000000000000",
        );
        check(
            Value::from_magnitude(true, &[1, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
            "3bffffffffffffffff",
        );
        check(
            Value::from_magnitude(true, &[1, 0, 0, 0, 0, 0, 0, 0, 1]).unwrap(),
            "c349010000000000000000",
        );
        check(Value::from("a"), "6161");
        check(Value::Bytes(vec![1, 2]), "420102");
        check(Value::Date(1_718_000_000_000.0), "c11a66669980");
        check(Value::Date(1_718_000_000_125.0), "c1fb41d999a660080000");
        check(Value::Date(-1000.0), "c120");
        let mut o = Object::new();
        o.insert("b", Value::Null);
        o.insert("a", Value::Array(vec![Value::Bool(true)]));
        check(Value::Object(o), "a26162f6616181f5");
    }

    #[test]
    fn parses_other_forms() {
        check_parse(
            "9f0102ff",
            Ok(Value::Array(vec![Value::Int(1), Value::Int(2)])),
        );
        check_parse("7f6161616bff", Ok(Value::from("ak")));
        check_parse("f93e00", Ok(Value::Float(1.5)));
        check_parse("d9d9f700", Ok(Value::Int(0)));
        check_parse(
            "c074323032342d30362d31305430363a31333a32305a",
            Ok(Value::from("2024-06-10T06:13:20Z")),
        );
        check_parse(
            "a10102",
            Ok(Value::Object(
                [("1".to_string(), Value::Int(2))].into_iter().collect(),
            )),
        );
        check_parse("f7", Ok(Value::Null));
        check_parse("c1fb41d999a660080000", Ok(Value::Date(1_718_000_000_125.0)));
        check_parse("c1fbbf279959a6080000", Ok(Value::Date(0.0)));
        check_parse(
            "c1fb7ff8000000000000",
            Err(DecodeError::new(1, Problem::InvalidNumber)),
        );
        check_parse(
            "c11b0000100000000000",
            Err(DecodeError::new(1, Problem::InvalidNumber)),
        );
        check_parse("", Err(DecodeError::new(0, Problem::UnexpectedEnd)));
        check_parse("0000", Err(DecodeError::new(1, Problem::TrailingBytes)));
        check_parse(
            "9b00000000ffffffff",
            Err(DecodeError::new(9, Problem::UnexpectedEnd)),
        );
        check_parse(
            "1c",
            Err(DecodeError::new(0, Problem::UnexpectedByte(0x1c))),
        );
        check_parse(
            "ff",
            Err(DecodeError::new(0, Problem::UnexpectedByte(0xff))),
        );
        check_parse(
            "a1f600",
            Err(DecodeError::new(
                1,
                Problem::Unsupported("map key that is not text or an integer"),
            )),
        );
        check_parse("6180", Err(DecodeError::new(0, Problem::InvalidUtf8)));
        check_parse(
            &"81".repeat(200),
            Err(DecodeError::new(
                128,
                Problem::DepthLimit { depth_max: 128 },
            )),
        );
        check_parse(
            &"c1".repeat(200),
            Err(DecodeError::new(
                128,
                Problem::DepthLimit { depth_max: 128 },
            )),
        );
    }

    #[test]
    fn streams_collections() {
        let mut out = Vec::new();
        write_indefinite_array_start(&mut out);
        write(&Value::Int(1), &mut out);
        write_break(&mut out);
        assert_eq!(parse(&out), Ok(Value::Array(vec![Value::Int(1)])));
    }
}
