//! Number helpers shared by the codecs and the ordering: BigInt decimal conversion, JavaScript-style
//! float text, and the exact binary decomposition that puts Int, Float, BigInt and Date on one
//! number line.

use std::cmp::Ordering;

use super::BIGINT_BYTES_MAX;

/// A borrowed BigInt: sign and big-endian magnitude (no leading zero bytes when normalized).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BigIntRef<'a> {
    pub negative: bool,
    pub magnitude: &'a [u8],
}

impl BigIntRef<'_> {
    /// Appends the exact decimal literal, e.g. `-18446744073709551616`.
    pub fn write_decimal(&self, out: &mut Vec<u8>) {
        if self.negative {
            out.push(b'-');
        }
        write_magnitude_decimal(self.magnitude, out);
    }
}

const CHUNK: u32 = 1_000_000_000;

/// Appends the decimal digits of a big-endian magnitude.
pub(crate) fn write_magnitude_decimal(magnitude: &[u8], out: &mut Vec<u8>) {
    // Little-endian base-2^32 limbs, divided repeatedly by 10^9.
    let mut limbs: Vec<u32> = magnitude
        .rchunks(4)
        .map(|c| c.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32))
        .collect();
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
    if limbs.is_empty() {
        out.push(b'0');
        return;
    }
    let mut chunks: Vec<u32> = Vec::with_capacity(limbs.len() * 32 / 29 + 1);
    while !limbs.is_empty() {
        let mut rem: u64 = 0;
        for limb in limbs.iter_mut().rev() {
            let cur = (rem << 32) | *limb as u64;
            *limb = (cur / CHUNK as u64) as u32;
            rem = cur % CHUNK as u64;
        }
        chunks.push(rem as u32);
        while limbs.last() == Some(&0) {
            limbs.pop();
        }
    }
    let mut buf = itoa::Buffer::new();
    let mut iter = chunks.iter().rev();
    if let Some(first) = iter.next() {
        out.extend_from_slice(buf.format(*first).as_bytes());
    }
    for chunk in iter {
        let s = buf.format(*chunk);
        out.extend(std::iter::repeat_n(b'0', 9 - s.len()));
        out.extend_from_slice(s.as_bytes());
    }
}

/// Big-endian magnitude of a string of ASCII digits; `None` when it exceeds [`BIGINT_BYTES_MAX`]
/// or a byte is not a digit.
pub(crate) fn parse_magnitude_decimal(digits: &[u8]) -> Option<Vec<u8>> {
    // 10^309 > 2^1024, so anything longer (after leading zeros) cannot fit.
    let digits = &digits[digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len())..];
    if digits.len() > 310 {
        return None;
    }
    let mut limbs: Vec<u32> = Vec::with_capacity(digits.len() / 9 + 1);
    let head = digits.len() % 9;
    let (first, rest) = digits.split_at(head);
    let groups = (!first.is_empty())
        .then_some(first)
        .into_iter()
        .chain(rest.chunks(9));
    for group in groups {
        let mut chunk: u32 = 0;
        let mut scale: u64 = 1;
        for &d in group {
            if !d.is_ascii_digit() {
                return None;
            }
            chunk = chunk * 10 + (d - b'0') as u32;
            scale *= 10;
        }
        let mut carry = chunk as u64;
        for limb in limbs.iter_mut() {
            let cur = *limb as u64 * scale + carry;
            *limb = cur as u32;
            carry = cur >> 32;
        }
        if carry != 0 {
            limbs.push(carry as u32);
        }
    }
    let mut bytes: Vec<u8> = limbs.iter().rev().flat_map(|l| l.to_be_bytes()).collect();
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.drain(..start);
    (bytes.len() <= BIGINT_BYTES_MAX).then_some(bytes)
}

/// Appends a finite float as JavaScript's `Number.prototype.toString` would: `1.5`, `100`,
/// `1e+21`, `1.5e-7`, `0` for ±0. Non-finite input is the caller's business.
pub(crate) fn write_f64_js(f: f64, out: &mut Vec<u8>) {
    if f == 0.0 {
        out.push(b'0');
        return;
    }
    // A whole number below 2^53 (every integer stored as a float) prints as its digits, as
    // JavaScript prints it; no shortest-digits search needed.
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        out.extend_from_slice(itoa::Buffer::new().format(f as i64).as_bytes());
        return;
    }
    write_f64_shortest(f, out);
}

/// [`write_f64_js`] by the shortest digits that read back as `f` (ryu), for any finite nonzero
/// `f`.
fn write_f64_shortest(f: f64, out: &mut Vec<u8>) {
    let mut buf = ryu::Buffer::new();
    let text = buf.format_finite(f).as_bytes();
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    // ryu prints `d.ddd`, `ddd.0` or `d.ddde±x`: collect the digits and where the point goes.
    let mut digits = [0u8; 24];
    let mut count = 0usize;
    let mut point: i32 = 0;
    let mut seen_point = false;
    let mut exp: i32 = 0;
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        match c {
            b'0'..=b'9' => {
                if count < digits.len() {
                    digits[count] = c;
                    count += 1;
                }
                if !seen_point {
                    point += 1;
                }
            }
            b'.' => seen_point = true,
            b'e' | b'E' => {
                let tail = std::str::from_utf8(&text[i + 1..]).unwrap_or("0");
                exp = tail.parse().unwrap_or(0);
                break;
            }
            _ => {}
        }
        i += 1;
    }
    // Normalize to 0.DIGITS × 10^n with no leading or trailing zeros.
    let lead = digits[..count].iter().take_while(|&&d| d == b'0').count();
    let digits_all = &digits[lead..count];
    let trail = digits_all.iter().rev().take_while(|&&d| d == b'0').count();
    let d = &digits_all[..digits_all.len() - trail];
    let n = point - lead as i32 + exp;
    let k = d.len() as i32;
    if negative {
        out.push(b'-');
    }
    if k <= n && n <= 21 {
        out.extend_from_slice(d);
        out.extend(std::iter::repeat_n(b'0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.extend_from_slice(&d[..n as usize]);
        out.push(b'.');
        out.extend_from_slice(&d[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-n) as usize));
        out.extend_from_slice(d);
    } else {
        out.push(d[0]);
        if d.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&d[1..]);
        }
        out.push(b'e');
        let e = n - 1;
        out.push(if e < 0 { b'-' } else { b'+' });
        let mut ib = itoa::Buffer::new();
        out.extend_from_slice(ib.format(e.unsigned_abs()).as_bytes());
    }
}

/// Where a number sits on the line, before magnitude is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum NumClass {
    /// NaN sorts below every other number, so sorting never fails.
    NaN,
    NegInf,
    Neg,
    Zero,
    Pos,
    PosInf,
}

/// Magnitude bytes of the largest number: a 1024-bit BigInt, one more byte after shifting.
const MANTISSA_BYTES_MAX: usize = BIGINT_BYTES_MAX + 1;

/// An exact binary decomposition of a number: `±0.1xxxx (binary) × 2^exp`, the mantissa bits
/// (leading 1 included) packed most significant first, trailing zero bytes dropped. Two numbers
/// compare by class, then exponent, then mantissa bytes lexicographically.
#[derive(Clone)]
pub(crate) struct Num {
    pub class: NumClass,
    pub exp: i32,
    mantissa: [u8; MANTISSA_BYTES_MAX],
    len: usize,
}

impl Num {
    fn special(class: NumClass) -> Num {
        Num {
            class,
            exp: 0,
            mantissa: [0; MANTISSA_BYTES_MAX],
            len: 0,
        }
    }

    pub fn mantissa(&self) -> &[u8] {
        &self.mantissa[..self.len]
    }

    fn from_u64(negative: bool, m: u64, e2: i32) -> Num {
        if m == 0 {
            return Num::special(NumClass::Zero);
        }
        let lz = m.leading_zeros();
        let mut num = Num::special(if negative {
            NumClass::Neg
        } else {
            NumClass::Pos
        });
        num.exp = (64 - lz) as i32 + e2;
        let bytes = (m << lz).to_be_bytes();
        num.mantissa[..8].copy_from_slice(&bytes);
        num.len = 8;
        num.trim();
        num
    }

    fn trim(&mut self) {
        while self.len > 0 && self.mantissa[self.len - 1] == 0 {
            self.len -= 1;
        }
    }

    pub fn from_i64(i: i64) -> Num {
        Num::from_u64(i < 0, i.unsigned_abs(), 0)
    }

    pub fn from_f64(f: f64) -> Num {
        if f.is_nan() {
            return Num::special(NumClass::NaN);
        }
        if f.is_infinite() {
            return Num::special(if f < 0.0 {
                NumClass::NegInf
            } else {
                NumClass::PosInf
            });
        }
        let bits = f.to_bits();
        let biased = ((bits >> 52) & 0x7ff) as i32;
        let fraction = bits & ((1u64 << 52) - 1);
        let (m, e2) = if biased == 0 {
            (fraction, -1074)
        } else {
            (fraction | (1u64 << 52), biased - 1075)
        };
        Num::from_u64(f < 0.0, m, e2)
    }

    pub fn from_big(big: super::BigIntRef<'_>) -> Num {
        let start = big
            .magnitude
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(big.magnitude.len());
        let mag = &big.magnitude[start..];
        if mag.is_empty() {
            return Num::special(NumClass::Zero);
        }
        // A corrupt archived BigInt longer than the bound is clamped; the codecs never make one.
        let mag = &mag[..mag.len().min(MANTISSA_BYTES_MAX)];
        let shift = mag[0].leading_zeros();
        let mut num = Num::special(if big.negative {
            NumClass::Neg
        } else {
            NumClass::Pos
        });
        num.exp = (mag.len() * 8) as i32 - shift as i32;
        for (i, &b) in mag.iter().enumerate() {
            let next = mag.get(i + 1).copied().unwrap_or(0);
            num.mantissa[i] = if shift == 0 {
                b
            } else {
                (b << shift) | (next >> (8 - shift))
            };
        }
        num.len = mag.len();
        num.trim();
        num
    }

    /// Rebuilds a number from its parts (the key decoder): `None` when the parts are not
    /// normalized (first bit not 1, trailing zero byte) or the mantissa is too long.
    pub fn from_parts(class: NumClass, exp: i32, mantissa: &[u8]) -> Option<Num> {
        let mut num = Num::special(class);
        if matches!(class, NumClass::Pos | NumClass::Neg) {
            if mantissa.len() > MANTISSA_BYTES_MAX
                || mantissa.first().is_none_or(|&b| b & 0x80 == 0)
                || mantissa.last() == Some(&0)
            {
                return None;
            }
            num.exp = exp;
            num.mantissa[..mantissa.len()].copy_from_slice(mantissa);
            num.len = mantissa.len();
        }
        Some(num)
    }

    /// Number of significant bits (position of the last 1 bit).
    fn bit_count(&self) -> i32 {
        match self.mantissa().last() {
            Some(&b) => (self.len as i32) * 8 - b.trailing_zeros() as i32,
            None => 0,
        }
    }

    /// The canonical value: Int when integral and within i64, BigInt when integral and beyond,
    /// Float otherwise; `None` when it is none of them exactly.
    pub fn to_value(&self) -> Option<super::Value> {
        use super::Value;
        match self.class {
            NumClass::NaN => return Some(Value::Float(f64::NAN)),
            NumClass::NegInf => return Some(Value::Float(f64::NEG_INFINITY)),
            NumClass::PosInf => return Some(Value::Float(f64::INFINITY)),
            NumClass::Zero => return Some(Value::Int(0)),
            NumClass::Pos | NumClass::Neg => {}
        }
        let negative = self.class == NumClass::Neg;
        let bits = self.bit_count();
        if self.exp >= bits {
            // Integral: magnitude has `exp` bits; shift the mantissa right into place.
            if self.exp > (BIGINT_BYTES_MAX * 8) as i32 {
                return None;
            }
            let total = self.exp as usize;
            let bytes_len = total.div_ceil(8);
            let mut mag = vec![0u8; bytes_len];
            // Bit j of the mantissa (0 = MSB) lands at bit (bytes_len*8 - total + j) of `mag`.
            let offset = bytes_len * 8 - total;
            for j in 0..bits as usize {
                if self.mantissa[j / 8] & (0x80 >> (j % 8)) != 0 {
                    let p = offset + j;
                    mag[p / 8] |= 0x80 >> (p % 8);
                }
            }
            return Value::from_magnitude(negative, &mag);
        }
        // Not integral: must be an exact f64.
        self.to_f64_exact().map(Value::Float)
    }

    /// The f64 with exactly this value, if there is one.
    pub fn to_f64_exact(&self) -> Option<f64> {
        match self.class {
            NumClass::NaN => return Some(f64::NAN),
            NumClass::NegInf => return Some(f64::NEG_INFINITY),
            NumClass::PosInf => return Some(f64::INFINITY),
            NumClass::Zero => return Some(0.0),
            NumClass::Pos | NumClass::Neg => {}
        }
        let bits = self.bit_count();
        if bits > 53 {
            return None;
        }
        let mut m: u64 = 0;
        for (i, &b) in self.mantissa().iter().enumerate() {
            m |= (b as u64) << (56 - 8 * i);
        }
        let m = m >> (64 - bits);
        // value = m × 2^(exp - bits); scale in two steps so no intermediate leaves the range early.
        let e = self.exp - bits;
        if !(-1200..=1100).contains(&e) {
            return None;
        }
        let half = e / 2;
        let f = (m as f64) * pow2(half) * pow2(e - half);
        let f = if self.class == NumClass::Neg { -f } else { f };
        let back = Num::from_f64(f);
        (back.class == self.class && back.exp == self.exp && back.mantissa() == self.mantissa())
            .then_some(f)
    }

    pub fn cmp(&self, other: &Num) -> Ordering {
        match self.class.cmp(&other.class) {
            Ordering::Equal => {}
            unequal => return unequal,
        }
        let magnitude = self
            .exp
            .cmp(&other.exp)
            .then_with(|| self.mantissa().cmp(other.mantissa()));
        match self.class {
            NumClass::Pos => magnitude,
            NumClass::Neg => magnitude.reverse(),
            _ => Ordering::Equal,
        }
    }
}

fn pow2(e: i32) -> f64 {
    // 2^e for -1022 <= e <= 1023 is a normal float, built from its bits.
    let e = e.clamp(-1022, 1023);
    f64::from_bits(((e + 1023) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_js(f: f64, expected: &str) {
        let mut out = Vec::new();
        write_f64_js(f, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), expected, "{f:?}");
    }

    #[test]
    fn floats_print_like_javascript() {
        check_js(1.5, "1.5");
        check_js(100.0, "100");
        check_js(1e21, "1e+21");
        check_js(1e20, "100000000000000000000");
        check_js(-0.0, "0");
        check_js(1.5e-7, "1.5e-7");
        check_js(0.000001, "0.000001");
        check_js(123456.789, "123456.789");
        check_js(-2.5e-300, "-2.5e-300");
        check_js(f64::MAX, "1.7976931348623157e+308");
        check_js(5e-324, "5e-324");
        check_js(0.1 + 0.2, "0.30000000000000004");
        check_js(-21.0, "-21");
        check_js(9_007_199_254_740_991.0, "9007199254740991");
        check_js(9_007_199_254_740_992.0, "9007199254740992");
        check_js(-9_007_199_254_740_992.0, "-9007199254740992");
    }

    /// The whole-number shortcut prints what the shortest-digits path prints.
    #[test]
    fn whole_floats_print_as_the_shortest_digits_do() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..100_000u64 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Small numbers, and numbers of every magnitude up to 2^53.
            let n = if i % 2 == 0 {
                (state >> 50) as i64 - 8192
            } else {
                ((state >> 11) >> (state % 53)) as i64 * if state & 1 == 0 { 1 } else { -1 }
            };
            if n == 0 {
                continue;
            }
            let (mut fast, mut shortest) = (Vec::new(), Vec::new());
            write_f64_js(n as f64, &mut fast);
            write_f64_shortest(n as f64, &mut shortest);
            assert_eq!(fast, shortest, "{n}");
        }
    }

    fn check_decimal(digits: &str) {
        let mag = parse_magnitude_decimal(digits.as_bytes()).unwrap();
        let mut out = Vec::new();
        write_magnitude_decimal(&mag, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            digits.trim_start_matches('0').to_string().max("0".into())
        );
    }

    #[test]
    fn decimal_round_trips() {
        check_decimal("0");
        check_decimal("18446744073709551616");
        check_decimal("1000000000");
        check_decimal("999999999999999999999999999999999999999");
        check_decimal(&"7".repeat(300));
        assert_eq!(
            parse_magnitude_decimal(b"4294967296"),
            Some(vec![1, 0, 0, 0, 0])
        );
        assert_eq!(parse_magnitude_decimal("9".repeat(320).as_bytes()), None);
    }

    #[test]
    fn numbers_decompose_exactly() {
        for f in [1.0, 0.5, -3.25, 5e-324, f64::MAX, 1e300, 123.456, -1e-310] {
            let num = Num::from_f64(f);
            let v = num.to_value().unwrap();
            assert_eq!(Num::from_f64(f).cmp(&num), Ordering::Equal);
            match v {
                super::super::Value::Float(g) => assert_eq!(g, f),
                other => assert!(f.fract() == 0.0, "{other:?}"),
            }
        }
        assert_eq!(Num::from_i64(3).cmp(&Num::from_f64(3.0)), Ordering::Equal);
        assert_eq!(
            Num::from_i64(i64::MIN).cmp(&Num::from_f64(-9.3e18)),
            Ordering::Greater
        );
        assert_eq!(
            Num::from_i64(-1).cmp(&Num::from_f64(f64::NAN)),
            Ordering::Greater
        );
    }
}
