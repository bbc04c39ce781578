//! JSON (RFC 8259): the encoder over any [`ValueView`] and the request-body parser.
//!
//! Out: NaN and ±∞ → `null`; floats as JavaScript prints them (`1.5`, `100`, `1e+21`); BigInt as
//! its exact integer literal; Date as an ISO-8601 UTC string with milliseconds
//! (`2024-06-10T06:13:20.125Z`; years outside 0–9999 as `+275760`/`-000001`, invalid dates →
//! `null`, as `Date.prototype.toJSON`); Bytes as a standard base64 string with padding.
//!
//! In: one value, optionally after a UTF-8 byte-order mark; integer literals → Int, or BigInt when
//! beyond i64 (up to 1024 bits; longer ones become floats, as in JavaScript); other numbers →
//! Float (out-of-range ones like `1e999` are an error); repeated keys: the last value wins at the
//! first key's position (as `JSON.parse`); a lone UTF-16 surrogate in `\u` escapes is an error
//! (400): a string cannot hold it, and storing U+FFFD instead would change the data silently. Strings never become Dates or Bytes here: that coercion
//! belongs to the schema.

use super::number::{parse_magnitude_decimal, write_f64_js};
use super::view::{Kind, ValueView};
use super::{DecodeError, DecodeLimits, Object, Problem, Value, DATE_MS_MAX};

/// Appends the JSON text of `value`.
pub fn write<'a, V: ValueView<'a>>(value: V, out: &mut Vec<u8>) {
    match value.kind() {
        Kind::Null => out.extend_from_slice(b"null"),
        Kind::Bool(true) => out.extend_from_slice(b"true"),
        Kind::Bool(false) => out.extend_from_slice(b"false"),
        Kind::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Kind::Float(f) => write_float(f, out),
        Kind::BigInt(b) => b.write_decimal(out),
        Kind::String(s) => write_string(s, out),
        Kind::Bytes(b) => {
            out.push(b'"');
            write_base64(b, out);
            out.push(b'"');
        }
        Kind::Date(ms) => {
            out.push(b'"');
            if !write_iso_date(ms, out) {
                out.pop();
                out.extend_from_slice(b"null");
                return;
            }
            out.push(b'"');
        }
        Kind::Array(items) => {
            out.push(b'[');
            for (i, item) in items.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Kind::Object(entries) => {
            out.push(b'{');
            for (i, (k, v)) in entries.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write(v, out);
            }
            out.push(b'}');
        }
    }
}

/// Returns the JSON text of `value` in a fresh buffer.
pub fn to_vec<'a, V: ValueView<'a>>(value: V) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

/// Appends a float as JSON: JavaScript's form, `null` for NaN and ±∞.
pub fn write_float(f: f64, out: &mut Vec<u8>) {
    if f.is_finite() {
        write_f64_js(f, out);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// What each byte becomes inside a JSON string: 0 = itself, `u` = `\u00XX`, else `\` + that byte.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `s` as a quoted JSON string; non-ASCII passes through as UTF-8.
pub fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[b as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        if escape == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 15) as usize],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Appends standard base64 with padding (RFC 4648 §4).
pub fn write_base64(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(bytes.len().div_ceil(3) * 4);
    let mut chunks = bytes.chunks_exact(3);
    for c in &mut chunks {
        let n = (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32;
        out.extend_from_slice(&[
            BASE64[(n >> 18) as usize & 63],
            BASE64[(n >> 12) as usize & 63],
            BASE64[(n >> 6) as usize & 63],
            BASE64[n as usize & 63],
        ]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = (a as u32) << 16;
            out.extend_from_slice(&[
                BASE64[(n >> 18) as usize & 63],
                BASE64[(n >> 12) as usize & 63],
                b'=',
                b'=',
            ]);
        }
        [a, b] => {
            let n = (a as u32) << 16 | (b as u32) << 8;
            out.extend_from_slice(&[
                BASE64[(n >> 18) as usize & 63],
                BASE64[(n >> 12) as usize & 63],
                BASE64[(n >> 6) as usize & 63],
                b'=',
            ]);
        }
        _ => {}
    }
}

const DAY_MS: i64 = 86_400_000;

/// Appends `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (no quotes). Returns false, writing nothing, for an
/// invalid date (NaN, ±∞, beyond ±8.64e15 ms), which JSON shows as `null`.
pub fn write_iso_date(ms: f64, out: &mut Vec<u8>) -> bool {
    if !ms.is_finite() || ms.abs() > DATE_MS_MAX {
        return false;
    }
    // JavaScript's TimeClip truncates toward zero.
    let ms = ms.trunc() as i64;
    let days = ms.div_euclid(DAY_MS);
    let of_day = ms.rem_euclid(DAY_MS);
    let (year, month, day) = civil_from_days(days);
    if (0..=9999).contains(&year) {
        push_padded(year as u64, 4, out);
    } else {
        out.push(if year < 0 { b'-' } else { b'+' });
        push_padded(year.unsigned_abs(), 6, out);
    }
    out.push(b'-');
    push_padded(month as u64, 2, out);
    out.push(b'-');
    push_padded(day as u64, 2, out);
    out.push(b'T');
    push_padded((of_day / 3_600_000) as u64, 2, out);
    out.push(b':');
    push_padded((of_day / 60_000 % 60) as u64, 2, out);
    out.push(b':');
    push_padded((of_day / 1000 % 60) as u64, 2, out);
    out.push(b'.');
    push_padded((of_day % 1000) as u64, 3, out);
    out.push(b'Z');
    true
}

fn push_padded(n: u64, width: usize, out: &mut Vec<u8>) {
    let mut buf = itoa::Buffer::new();
    let s = buf.format(n);
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(s.len())));
    out.extend_from_slice(s.as_bytes());
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01. Shifts the year to
/// start in March so the leap day ends it, and counts in 400-year eras of 146,097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + (month <= 2) as i64;
    (year, month, day)
}

/// Parses a JSON body with the default limits.
pub fn parse(bytes: &[u8]) -> Result<Value, DecodeError> {
    parse_with(bytes, &DecodeLimits::default())
}

/// Parses a JSON body: exactly one value, surrounded by optional whitespace.
pub fn parse_with(bytes: &[u8], limits: &DecodeLimits) -> Result<Value, DecodeError> {
    let limits = &limits.clamped();
    if bytes.len() > limits.bytes_max {
        return Err(DecodeError::new(
            limits.bytes_max,
            Problem::BytesLimit {
                bytes_max: limits.bytes_max,
            },
        ));
    }
    let start = if bytes.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    let mut parser = Parser {
        bytes,
        pos: start,
        limits,
        values: 0,
    };
    parser.skip_ws();
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos != bytes.len() {
        return Err(parser.error(Problem::TrailingBytes));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    limits: &'a DecodeLimits,
    values: usize,
}

impl Parser<'_> {
    fn error(&self, problem: Problem) -> DecodeError {
        DecodeError::new(self.pos, problem)
    }

    fn unexpected(&self) -> DecodeError {
        match self.bytes.get(self.pos) {
            Some(&b) => self.error(Problem::UnexpectedByte(b)),
            None => self.error(Problem::UnexpectedEnd),
        }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, DecodeError> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            // Point at the first byte that differs.
            let same = self.bytes[self.pos..]
                .iter()
                .zip(word)
                .take_while(|(a, b)| a == b)
                .count();
            self.pos += same;
            Err(self.unexpected())
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        self.values += 1;
        if self.values > self.limits.values_max {
            return Err(self.error(Problem::ValuesLimit {
                values_max: self.limits.values_max,
            }));
        }
        match self.bytes.get(self.pos) {
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                if depth >= self.limits.depth_max {
                    return Err(self.error(Problem::DepthLimit {
                        depth_max: self.limits.depth_max,
                    }));
                }
                self.pos += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.bytes.get(self.pos) == Some(&b']') {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    self.skip_ws();
                    items.push(self.value(depth + 1)?);
                    self.skip_ws();
                    match self.bytes.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(self.unexpected()),
                    }
                }
            }
            Some(b'{') => {
                if depth >= self.limits.depth_max {
                    return Err(self.error(Problem::DepthLimit {
                        depth_max: self.limits.depth_max,
                    }));
                }
                self.pos += 1;
                let mut entries = Vec::new();
                self.skip_ws();
                if self.bytes.get(self.pos) == Some(&b'}') {
                    self.pos += 1;
                    return Ok(Value::Object(Object::new()));
                }
                loop {
                    self.skip_ws();
                    if self.bytes.get(self.pos) != Some(&b'"') {
                        return Err(self.unexpected());
                    }
                    let key = self.string()?;
                    self.skip_ws();
                    if self.bytes.get(self.pos) != Some(&b':') {
                        return Err(self.unexpected());
                    }
                    self.pos += 1;
                    self.skip_ws();
                    let value = self.value(depth + 1)?;
                    entries.push((key, value));
                    self.skip_ws();
                    match self.bytes.get(self.pos) {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Value::Object(Object::from_entries(entries)));
                        }
                        _ => return Err(self.unexpected()),
                    }
                }
            }
            _ => Err(self.unexpected()),
        }
    }

    /// Parses a string starting at its opening quote.
    fn string(&mut self) -> Result<String, DecodeError> {
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let rest = &self.bytes[self.pos..];
            let stop = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            let Some(stop) = stop else {
                self.pos = self.bytes.len();
                return Err(self.error(Problem::UnexpectedEnd));
            };
            out.extend_from_slice(&rest[..stop]);
            self.pos += stop;
            match rest[stop] {
                b'"' => {
                    self.pos += 1;
                    break;
                }
                b'\\' => self.escape(&mut out)?,
                _ => return Err(self.error(Problem::InvalidString)),
            }
        }
        // Escapes only add valid UTF-8, so a failure points into the raw text.
        String::from_utf8(out).map_err(|e| {
            DecodeError::new(
                self.pos
                    .saturating_sub(1 + e.as_bytes().len() - e.utf8_error().valid_up_to()),
                Problem::InvalidUtf8,
            )
        })
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let b = *self
            .bytes
            .get(self.pos + 1)
            .ok_or(DecodeError::new(self.bytes.len(), Problem::UnexpectedEnd))?;
        let simple = match b {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'u' => None,
            _ => return Err(self.error(Problem::InvalidString)),
        };
        if let Some(c) = simple {
            out.push(c);
            self.pos += 2;
            return Ok(());
        }
        let start = self.pos;
        let unit = self.hex4(self.pos + 2)?;
        self.pos += 6;
        let lone = DecodeError::new(start, Problem::LoneSurrogate);
        let code = if (0xD800..0xDC00).contains(&unit) {
            // A high surrogate pairs with an immediately following `\uDC00`–`\uDFFF`.
            let low = if self.bytes.get(self.pos) == Some(&b'\\')
                && self.bytes.get(self.pos + 1) == Some(&b'u')
            {
                self.hex4(self.pos + 2)
                    .ok()
                    .filter(|l| (0xDC00..0xE000).contains(l))
            } else {
                None
            };
            let low = low.ok_or(lone)?;
            self.pos += 6;
            0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
        } else if (0xDC00..0xE000).contains(&unit) {
            return Err(lone);
        } else {
            unit
        };
        let c = char::from_u32(code).unwrap_or('\u{FFFD}');
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }

    fn hex4(&self, at: usize) -> Result<u32, DecodeError> {
        let digits = self
            .bytes
            .get(at..at + 4)
            .ok_or(DecodeError::new(self.bytes.len(), Problem::UnexpectedEnd))?;
        let mut n = 0u32;
        for (i, &d) in digits.iter().enumerate() {
            let v = (d as char)
                .to_digit(16)
                .ok_or(DecodeError::new(at + i, Problem::InvalidString))?;
            n = n * 16 + v;
        }
        Ok(n)
    }

    fn number(&mut self) -> Result<Value, DecodeError> {
        let start = self.pos;
        let bytes = self.bytes;
        let mut i = self.pos;
        let negative = bytes.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        let int_start = i;
        match bytes.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => {
                while let Some(b'0'..=b'9') = bytes.get(i) {
                    i += 1;
                }
            }
            _ => {
                self.pos = i;
                return Err(self.unexpected());
            }
        }
        let int_end = i;
        let mut integral = true;
        if bytes.get(i) == Some(&b'.') {
            integral = false;
            i += 1;
            let digits_start = i;
            while let Some(b'0'..=b'9') = bytes.get(i) {
                i += 1;
            }
            if i == digits_start {
                self.pos = i;
                return Err(self.unexpected());
            }
        }
        if let Some(b'e' | b'E') = bytes.get(i) {
            integral = false;
            i += 1;
            if let Some(b'+' | b'-') = bytes.get(i) {
                i += 1;
            }
            let digits_start = i;
            while let Some(b'0'..=b'9') = bytes.get(i) {
                i += 1;
            }
            if i == digits_start {
                self.pos = i;
                return Err(self.unexpected());
            }
        }
        self.pos = i;
        if integral {
            let digits = &bytes[int_start..int_end];
            if digits.len() <= 18 {
                let m = digits
                    .iter()
                    .fold(0i64, |acc, &d| acc * 10 + (d - b'0') as i64);
                return Ok(Value::Int(if negative { -m } else { m }));
            }
            if let Some(magnitude) = parse_magnitude_decimal(digits) {
                if let Some(value) = Value::from_magnitude(negative, &magnitude) {
                    return Ok(value);
                }
            }
        }
        // The slice is ASCII by construction; Rust's float grammar accepts JSON's.
        let text = std::str::from_utf8(&bytes[start..i])
            .map_err(|_| DecodeError::new(start, Problem::InvalidNumber))?;
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => Err(DecodeError::new(start, Problem::InvalidNumber)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected_json: &str) {
        let value = parse(input.as_bytes()).unwrap_or_else(|e| panic!("{input}: {e}"));
        let out = to_vec(&value);
        assert_eq!(String::from_utf8(out).unwrap(), expected_json, "{input}");
        // The archived form writes the same bytes.
        let archived = super::super::to_archived_bytes(&value);
        let view = super::super::access(&archived).unwrap();
        assert_eq!(String::from_utf8(to_vec(view)).unwrap(), expected_json);
    }

    fn check_err(input: &str, offset: usize, problem: Problem) {
        assert_eq!(
            parse(input.as_bytes()),
            Err(DecodeError { offset, problem }),
            "{input}"
        );
    }

    /// Every ASCII character, alone and amid plain text, reads back as itself.
    #[test]
    fn strings_escape_exactly_what_json_needs() {
        for c in (0u8..0x80).map(char::from).chain(['é', '\u{2028}', '😀']) {
            for s in [c.to_string(), format!("plain {c} text")] {
                let mut out = Vec::new();
                write_string(&s, &mut out);
                let text = String::from_utf8(out).unwrap();
                let back: String = serde_json::from_str(&text).unwrap();
                assert_eq!(back, s, "{text}");
                let escaped = c < ' ' || c == '"' || c == '\\';
                assert_eq!(text.len() > s.len() + 2, escaped, "{text}");
            }
        }
    }

    #[test]
    fn round_trips() {
        check(
            " {\"b\": 1, \"a\": [true, false, null]} ",
            r#"{"b":1,"a":[true,false,null]}"#,
        );
        check(r#"{"a":1,"b":2,"a":3}"#, r#"{"a":3,"b":2}"#);
        check("1.5", "1.5");
        check("1.0", "1");
        check("-0", "0");
        check("1E21", "1e+21");
        check("9223372036854775807", "9223372036854775807");
        check("-9223372036854775808", "-9223372036854775808");
        check("9223372036854775808", "9223372036854775808");
        check(
            "-123456789012345678901234567890",
            "-123456789012345678901234567890",
        );
        check(&"9".repeat(300), &"9".repeat(300));
        check("1e300", "1e+300");
        check_err(&format!("1{}", "0".repeat(320)), 0, Problem::InvalidNumber);
        check(
            r#""a\"b\\c\u0001\n\u00e9\ud83d\ude00/""#,
            r#""a\"b\\c\u0001\né😀/""#,
        );
        check("[[],{}]", "[[],{}]");
        check("\u{feff} 7", "7");
    }

    #[test]
    fn errors() {
        check_err(&"9".repeat(400), 0, Problem::InvalidNumber);
        check_err("[1,]", 3, Problem::UnexpectedByte(b']'));
        check_err("{\"a\" 1}", 5, Problem::UnexpectedByte(b'1'));
        check_err("[1", 2, Problem::UnexpectedEnd);
        check_err("nul", 3, Problem::UnexpectedEnd);
        check_err("1 2", 2, Problem::TrailingBytes);
        check_err("\"a\x01\"", 2, Problem::InvalidString);
        check_err(r#""\ud800""#, 1, Problem::LoneSurrogate);
        check_err(r#""x\ud800y""#, 2, Problem::LoneSurrogate);
        check_err(r#""\ud800\u0041""#, 1, Problem::LoneSurrogate);
        check_err(r#""\udc00\ud800""#, 1, Problem::LoneSurrogate);
        check_err(r#"{"a": ["\udfff"]}"#, 8, Problem::LoneSurrogate);
        check_err("01", 1, Problem::TrailingBytes);
        assert_eq!(
            parse(b"\"\xff\""),
            Err(DecodeError {
                offset: 1,
                problem: Problem::InvalidUtf8
            })
        );
        check_err(
            &"[".repeat(200),
            128,
            Problem::DepthLimit { depth_max: 128 },
        );
        check_err("-", 1, Problem::UnexpectedEnd);
        check_err("1.e5", 2, Problem::UnexpectedByte(b'e'));
    }

    fn check_out(value: Value, expected: &str) {
        assert_eq!(String::from_utf8(to_vec(&value)).unwrap(), expected);
    }

    #[test]
    fn encodes_special_kinds() {
        check_out(Value::Float(f64::NAN), "null");
        check_out(Value::Float(f64::NEG_INFINITY), "null");
        check_out(
            Value::Date(1_718_000_000_125.0),
            r#""2024-06-10T06:13:20.125Z""#,
        );
        check_out(Value::Date(0.0), r#""1970-01-01T00:00:00.000Z""#);
        check_out(Value::Date(-1.0), r#""1969-12-31T23:59:59.999Z""#);
        check_out(Value::Date(8.64e15), r#""+275760-09-13T00:00:00.000Z""#);
        check_out(
            Value::Date(-62_198_755_200_000.0),
            r#""-000001-01-01T00:00:00.000Z""#,
        );
        check_out(Value::Date(9e15), "null");
        check_out(Value::Bytes(b"hello".to_vec()), r#""aGVsbG8=""#);
        check_out(Value::Bytes(b"hell".to_vec()), r#""aGVsbA==""#);
        check_out(Value::Bytes(vec![]), r#""""#);
    }
}
