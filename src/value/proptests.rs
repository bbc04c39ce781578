//! Property tests across the value module: key order against `cmp_total`, round trips of every
//! codec and of the archive, our encoders against independent decoders (serde_json, ciborium,
//! rmpv, base64), and decoders against random bytes.

use std::cmp::Ordering;

use proptest::prelude::*;

use super::{cbor, cmp_total, json, key, msgpack, Object, Value};

fn same(a: &Value, b: &Value) -> bool {
    a.is_identical(b)
}

fn bigint() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 8..=128),
    )
        .prop_map(|(negative, magnitude)| {
            Value::from_magnitude(negative, &magnitude).unwrap_or(Value::Null)
        })
}

/// Numbers chosen so that Int, Float, BigInt and Date collide and interleave on the line.
fn number(finite: bool) -> impl Strategy<Value = Value> {
    let float = if finite {
        prop_oneof![
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .boxed(),
            (-1e6f64..1e6).boxed()
        ]
        .boxed()
    } else {
        any::<f64>().boxed()
    };
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        (-3i64..3).prop_map(Value::Int),
        float.prop_map(Value::Float),
        (-5i32..5).prop_map(|i| Value::Float(i as f64 / 2.0)),
        any::<i64>().prop_map(|i| Value::Float(i as f64)),
        bigint(),
        (-(1i64 << 50)..(1i64 << 50)).prop_map(|ms| Value::Date(ms as f64)),
        (-3i64..3).prop_map(|ms| Value::Date(ms as f64)),
    ]
}

fn leaf(finite: bool) -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(finite),
        number(finite),
        ".{0,6}".prop_map(Value::String),
        "[a\u{0}\u{1}é]{0,4}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..6).prop_map(Value::Bytes),
    ]
}

fn value(finite: bool) -> impl Strategy<Value = Value> {
    leaf(finite).prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec(("[ab\u{0}]{0,3}", inner), 0..4)
                .prop_map(|entries| Value::Object(Object::from_entries(entries))),
        ]
    })
}

/// A tiny domain so that random pairs often share prefixes and tie on value across kinds.
fn crowded() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1i64..2).prop_map(Value::Int),
        (-1i32..3).prop_map(|i| Value::Float(i as f64 / 2.0)),
        (-1i64..2).prop_map(|ms| Value::Date(ms as f64)),
        "[a\u{0}]{0,2}".prop_map(Value::String),
        proptest::collection::vec(0u8..2, 0..2).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::vec(("[a\u{0}]{0,1}", inner), 0..3)
                .prop_map(|entries| Value::Object(Object::from_entries(entries))),
        ]
    })
}

fn key_of(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    key::encode_unbounded(v, &mut out);
    out
}

/// What a JSON decoder that knows nothing of our types should see.
fn json_expected(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::BigInt(b) => {
            let mut text = Vec::new();
            b.as_ref().write_decimal(&mut text);
            let f: f64 = String::from_utf8(text).unwrap().parse().unwrap();
            J::from(f)
        }
        Value::String(s) => J::String(s.clone()),
        Value::Bytes(b) => {
            use base64::Engine;
            J::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        // Checked separately against an independent calendar conversion.
        Value::Date(_) => J::Null,
        Value::Array(items) => J::Array(items.iter().map(json_expected).collect()),
        Value::Object(o) => J::Object(
            o.iter()
                .map(|(k, v)| (k.to_string(), json_expected(v)))
                .collect(),
        ),
    }
}

/// Days since 1970-01-01 of a civil date, counted by whole years and months (a different route
/// from the encoder's era arithmetic).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_year = |y: i64| if leap(y) { 366 } else { 365 };
    let mut days = 0i64;
    // Whole 400-year cycles first (146097 days each) to keep the loop short.
    let cycles = (year - 1970).div_euclid(400);
    let mut y = 1970 + cycles * 400;
    days += cycles * 146_097;
    while y < year {
        days += days_in_year(y);
        y += 1;
    }
    let month_days = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days += month_days[..month as usize - 1].iter().sum::<i64>();
    days + day as i64 - 1
}

fn iso_to_ms(s: &str) -> i64 {
    let (year, rest) = if let Some(r) = s.strip_prefix('+') {
        (r[..6].parse::<i64>().unwrap(), &r[6..])
    } else if let Some(r) = s.strip_prefix('-') {
        (-r[..6].parse::<i64>().unwrap(), &r[6..])
    } else {
        (s[..4].parse::<i64>().unwrap(), &s[4..])
    };
    let n = |a: usize, b: usize| rest[a..b].parse::<i64>().unwrap();
    assert_eq!(&rest[0..1], "-");
    assert!(rest.ends_with('Z'));
    let days = days_from_civil(year, n(1, 3) as u32, n(4, 6) as u32);
    days * 86_400_000 + n(7, 9) * 3_600_000 + n(10, 12) * 60_000 + n(13, 15) * 1000 + n(16, 19)
}

fn json_matches(got: &serde_json::Value, ours: &Value) -> bool {
    use serde_json::Value as J;
    match (got, ours) {
        (J::String(s), Value::Date(ms)) => iso_to_ms(s) == ms.trunc() as i64,
        (J::Number(n), _) => match json_expected(ours) {
            J::Number(m) => match (n.as_i64(), m.as_i64()) {
                (Some(a), Some(b)) => a == b,
                // serde_json's default float parsing may be off by one ulp.
                _ => match (n.as_f64(), m.as_f64()) {
                    (Some(a), Some(b)) => a == b || (a - b).abs() <= b.abs() * 4.0 * f64::EPSILON,
                    _ => false,
                },
            },
            _ => false,
        },
        (J::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| json_matches(x, y))
        }
        (J::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .zip(ys.iter())
                    .all(|((kx, x), (ky, y))| kx == ky && json_matches(x, y))
        }
        (got, ours) => *got == json_expected(ours),
    }
}

/// What ciborium should read; `None` where ciborium cannot represent the value (it turns bignums
/// of 9 to 16 bytes into i128 and fails beyond i128).
fn cbor_expected(v: &Value) -> Option<ciborium::Value> {
    use ciborium::Value as C;
    Some(match v {
        Value::Null => C::Null,
        Value::Bool(b) => C::Bool(*b),
        Value::Int(i) => C::Integer((*i).into()),
        Value::Float(f) => C::Float(*f),
        Value::BigInt(b) => {
            // The wire carries n = |v| for positive values, |v| - 1 for negative ones.
            let mut n = b.magnitude().to_vec();
            if b.is_negative() {
                for byte in n.iter_mut().rev() {
                    let (x, borrow) = byte.overflowing_sub(1);
                    *byte = x;
                    if !borrow {
                        break;
                    }
                }
            }
            let start = n.iter().position(|&x| x != 0).unwrap_or(n.len());
            let n = &n[start..];
            if n.len() <= 16 {
                let mut word = [0u8; 16];
                word[16 - n.len()..].copy_from_slice(n);
                let n = i128::try_from(u128::from_be_bytes(word)).ok()?;
                let value = if b.is_negative() { -1 - n } else { n };
                C::Integer(value.try_into().ok()?)
            } else {
                C::Tag(
                    if b.is_negative() { 3 } else { 2 },
                    Box::new(C::Bytes(n.to_vec())),
                )
            }
        }
        Value::String(s) => C::Text(s.clone()),
        Value::Bytes(b) => C::Bytes(b.clone()),
        Value::Date(ms) if ms % 1000.0 == 0.0 => {
            C::Tag(1, Box::new(C::Integer(((ms / 1000.0) as i64).into())))
        }
        Value::Date(ms) => C::Tag(1, Box::new(C::Float(ms / 1000.0))),
        Value::Array(items) => C::Array(items.iter().map(cbor_expected).collect::<Option<_>>()?),
        Value::Object(o) => C::Map(
            o.iter()
                .map(|(k, v)| Some((C::Text(k.to_string()), cbor_expected(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

fn msgpack_matches(got: &rmpv::Value, ours: &Value) -> bool {
    use rmpv::Value as M;
    match (got, ours) {
        (M::Nil, Value::Null) => true,
        (M::Boolean(a), Value::Bool(b)) => a == b,
        (M::Integer(a), Value::Int(b)) => a.as_i64() == Some(*b),
        (M::F64(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
        (M::Integer(a), Value::BigInt(b)) => {
            !b.is_negative()
                && a.as_u64().map(|u| u.to_be_bytes().to_vec()) == {
                    let mut word = vec![0u8; 8usize.saturating_sub(b.magnitude().len())];
                    word.extend_from_slice(b.magnitude());
                    Some(word)
                }
        }
        (M::String(s), Value::BigInt(b)) => {
            let mut text = Vec::new();
            b.as_ref().write_decimal(&mut text);
            s.as_bytes() == text.as_slice()
        }
        (M::String(a), Value::String(b)) => a.as_str() == Some(b.as_str()),
        (M::Binary(a), Value::Bytes(b)) => a == b,
        (M::Ext(-1, data), Value::Date(ms)) => {
            let ms = *ms as i64;
            let (seconds, nanos) = match data.len() {
                4 => (u32::from_be_bytes(data[..4].try_into().unwrap()) as i64, 0),
                8 => {
                    let w = u64::from_be_bytes(data[..8].try_into().unwrap());
                    ((w & 0x3_ffff_ffff) as i64, w >> 34)
                }
                12 => (
                    i64::from_be_bytes(data[4..12].try_into().unwrap()),
                    u32::from_be_bytes(data[..4].try_into().unwrap()) as u64,
                ),
                _ => return false,
            };
            seconds * 1000 + (nanos / 1_000_000) as i64 == ms && nanos % 1_000_000 == 0
        }
        (M::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| msgpack_matches(x, y))
        }
        (M::Map(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs
                    .iter()
                    .zip(ys.iter())
                    .all(|((kx, x), (ky, y))| kx.as_str() == Some(ky) && msgpack_matches(x, y))
        }
        _ => false,
    }
}

/// What our MessagePack decoder returns for what our encoder wrote: BigInt beyond u64 as text.
fn msgpack_round_trip_expected(v: &Value) -> Value {
    match v {
        Value::BigInt(b) if b.is_negative() || b.magnitude().len() > 8 => {
            let mut text = Vec::new();
            b.as_ref().write_decimal(&mut text);
            Value::String(String::from_utf8(text).unwrap())
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(msgpack_round_trip_expected).collect())
        }
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.to_string(), msgpack_round_trip_expected(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

proptest! {
    // No regression files: they would land outside this module's folder; a failure prints its
    // minimal input instead.
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn key_order_matches_cmp_total(a in value(false), b in value(false)) {
        let order = cmp_total(&a, &b);
        prop_assert_eq!(key_of(&a).cmp(&key_of(&b)), order, "{:?} vs {:?}", a, b);
        prop_assert_eq!(cmp_total(&b, &a), order.reverse());
    }

    #[test]
    fn key_order_matches_cmp_total_crowded(a in crowded(), b in crowded()) {
        prop_assert_eq!(key_of(&a).cmp(&key_of(&b)), cmp_total(&a, &b), "{:?} vs {:?}", a, b);
    }

    #[test]
    fn key_round_trips(v in value(false)) {
        let bytes = key_of(&v);
        let back = key::decode(&bytes).map_err(|e| TestCaseError::fail(format!("{e} for {v:?}")))?;
        prop_assert_eq!(cmp_total(&back, &v), Ordering::Equal);
        prop_assert_eq!(key_of(&back), bytes);
    }

    #[test]
    fn archive_round_trips(v in value(false)) {
        let bytes = super::to_archived_bytes(&v);
        let archived = super::access(&bytes).unwrap();
        prop_assert!(same(&super::deserialize(archived).unwrap(), &v));
        // The archived view orders and encodes exactly as the owned value.
        prop_assert_eq!(cmp_total(archived, &v), Ordering::Equal);
        prop_assert_eq!(json::to_vec(archived), json::to_vec(&v));
        prop_assert_eq!(cbor::to_vec(archived), cbor::to_vec(&v));
        prop_assert_eq!(msgpack::to_vec(archived), msgpack::to_vec(&v));
    }

    #[test]
    fn json_reads_in_serde_json(v in value(false)) {
        let bytes = super::to_archived_bytes(&v);
        let out = json::to_vec(super::access(&bytes).unwrap());
        let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
        prop_assert!(json_matches(&got, &v), "{} for {:?}", String::from_utf8_lossy(&out), v);
        // Our parser reads it back to the same text.
        let back = json::parse(&out).unwrap();
        prop_assert_eq!(json::to_vec(&back), out);
    }

    #[test]
    fn cbor_reads_in_ciborium(v in value(true)) {
        let bytes = super::to_archived_bytes(&v);
        let out = cbor::to_vec(super::access(&bytes).unwrap());
        if let Some(expected) = cbor_expected(&v) {
            let got: ciborium::Value = ciborium::de::from_reader(out.as_slice()).unwrap();
            prop_assert_eq!(got, expected);
        }
        let back = cbor::parse(&out).unwrap();
        prop_assert!(same(&back, &v), "{:?} vs {:?}", back, v);
    }

    #[test]
    fn msgpack_reads_in_rmpv(v in value(false)) {
        let bytes = super::to_archived_bytes(&v);
        let out = msgpack::to_vec(super::access(&bytes).unwrap());
        let got = rmpv::decode::read_value(&mut out.as_slice()).unwrap();
        prop_assert!(msgpack_matches(&got, &v), "{:?} vs {:?}", got, v);
        let back = msgpack::parse(&out).unwrap();
        prop_assert!(same(&back, &msgpack_round_trip_expected(&v)), "{:?} vs {:?}", back, v);
    }

    #[test]
    fn decoders_survive_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = json::parse(&bytes);
        let _ = cbor::parse(&bytes);
        let _ = msgpack::parse(&bytes);
        let _ = key::decode(&bytes);
        let _ = super::access(&bytes);
    }

    #[test]
    fn decoders_survive_mutated_bodies(v in value(false), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        for mut body in [json::to_vec(&v), cbor::to_vec(&v), msgpack::to_vec(&v), key_of(&v)] {
            for (at, byte) in &flips {
                if !body.is_empty() {
                    let i = at % body.len();
                    body[i] = *byte;
                }
            }
            let _ = json::parse(&body);
            let _ = cbor::parse(&body);
            let _ = msgpack::parse(&body);
            let _ = key::decode(&body);
        }
    }
}
