//! The total order over values used for sorting query results; `key::encode` produces bytes whose
//! memcmp order is exactly this order.
//!
//! null < false < true < numbers < strings < bytes < arrays < objects. Int, Float, BigInt and Date
//! share one number line compared by exact value (NaN lowest, then -∞ … +∞; -0 equals 0); a plain
//! number and a Date of the same value compare as number < Date, so the order stays total and a
//! Date key decodes back to a Date. Strings compare by UTF-8 bytes, bytes lexicographically,
//! arrays element-wise with a shorter prefix first, objects entry-wise (key, then value).

use std::cmp::Ordering;

use super::number::Num;
use super::view::{Kind, ValueView};

/// Rank of a kind before its contents are compared. Numbers and dates share a rank.
fn rank<'a, V: ValueView<'a>>(kind: &Kind<'a, V>) -> u8 {
    match kind {
        Kind::Null => 0,
        Kind::Bool(false) => 1,
        Kind::Bool(true) => 2,
        Kind::Int(_) | Kind::Float(_) | Kind::BigInt(_) | Kind::Date(_) => 3,
        Kind::String(_) => 4,
        Kind::Bytes(_) => 5,
        Kind::Array(_) => 6,
        Kind::Object(_) => 7,
    }
}

/// Compares two values (owned or archived, in any mix) in the total order.
pub fn cmp_total<'a, 'b, A: ValueView<'a>, B: ValueView<'b>>(a: A, b: B) -> Ordering {
    let (ka, kb) = (a.kind(), b.kind());
    match rank(&ka).cmp(&rank(&kb)) {
        Ordering::Equal => {}
        unequal => return unequal,
    }
    match (ka, kb) {
        (Kind::String(x), Kind::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Kind::Bytes(x), Kind::Bytes(y)) => x.cmp(y),
        (Kind::Array(mut xs), Kind::Array(mut ys)) => loop {
            match (xs.next(), ys.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some(x), Some(y)) => match cmp_total(x, y) {
                    Ordering::Equal => {}
                    unequal => return unequal,
                },
            }
        },
        (Kind::Object(mut xs), Kind::Object(mut ys)) => loop {
            match (xs.next(), ys.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some((kx, x)), Some((ky, y))) => {
                    match kx
                        .as_bytes()
                        .cmp(ky.as_bytes())
                        .then_with(|| cmp_total(x, y))
                    {
                        Ordering::Equal => {}
                        unequal => return unequal,
                    }
                }
            }
        },
        (x, y) => cmp_numbers(&x, &y),
    }
}

fn cmp_numbers<'a, 'b, A: ValueView<'a>, B: ValueView<'b>>(
    x: &Kind<'a, A>,
    y: &Kind<'b, B>,
) -> Ordering {
    let is_date = |k: bool| k as u8;
    let (dx, dy) = (matches!(x, Kind::Date(_)), matches!(y, Kind::Date(_)));
    let value = match (x, y) {
        (Kind::Int(i), Kind::Int(j)) => i.cmp(j),
        (Kind::Float(f) | Kind::Date(f), Kind::Float(g) | Kind::Date(g)) => cmp_f64(*f, *g),
        _ => num_of(x).cmp(&num_of(y)),
    };
    value.then(is_date(dx).cmp(&is_date(dy)))
}

/// Floats with NaN lowest and -0 equal to 0, as on the number line.
fn cmp_f64(f: f64, g: f64) -> Ordering {
    match (f.is_nan(), g.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => f.partial_cmp(&g).unwrap_or(Ordering::Equal),
    }
}

pub(crate) fn num_of<'a, V: ValueView<'a>>(kind: &Kind<'a, V>) -> Num {
    match kind {
        Kind::Int(i) => Num::from_i64(*i),
        Kind::Float(f) | Kind::Date(f) => Num::from_f64(*f),
        Kind::BigInt(b) => Num::from_big(*b),
        // Only numbers reach here: rank() already separated every other kind.
        _ => Num::from_i64(0),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Value;
    use super::*;

    fn check(a: Value, b: Value, expected: Ordering) {
        assert_eq!(cmp_total(&a, &b), expected, "{a:?} vs {b:?}");
        assert_eq!(cmp_total(&b, &a), expected.reverse(), "{b:?} vs {a:?}");
    }

    #[test]
    fn order() {
        use Ordering::*;
        check(Value::Null, Value::Bool(false), Less);
        check(Value::Bool(true), Value::Int(i64::MIN), Less);
        check(Value::Int(1), Value::Float(1.0), Equal);
        check(Value::Float(-0.0), Value::Int(0), Equal);
        check(Value::Int(1), Value::Date(1.0), Less);
        check(Value::Date(1.0), Value::Float(1.5), Less);
        check(
            Value::Float(f64::NAN),
            Value::Float(f64::NEG_INFINITY),
            Less,
        );
        check(
            Value::from_magnitude(false, &[1; 9]).unwrap(),
            Value::Float(1e30),
            Less,
        );
        check(
            Value::from_magnitude(true, &[1; 9]).unwrap(),
            Value::Int(i64::MIN),
            Less,
        );
        check(
            Value::Float(f64::INFINITY),
            Value::String(String::new()),
            Less,
        );
        check(Value::from("a"), Value::from("a\0"), Less);
        check(Value::from("é"), Value::from("z"), Greater);
        check(
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Int(1), Value::Null]),
            Less,
        );
        check(
            Value::Array(vec![Value::Int(2)]),
            Value::Array(vec![Value::Int(1), Value::Null]),
            Greater,
        );
    }
}
