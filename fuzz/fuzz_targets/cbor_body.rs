//! CBOR request bodies: any bytes either fail to parse or parse to a value that our encoder
//! writes and our parser reads back identically (Dates within ±2^51 ms exactly, beyond that to
//! within 2 ms, see `value::cbor`), from the owned value and its archived form alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::value::{self, cbor, Value};

/// Identity, with the float-seconds precision of tag 1 allowed for far-away dates.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Date(x), Value::Date(y)) if x.abs() >= (1u64 << 51) as f64 => (x - y).abs() <= 2.0,
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| same(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len()
                && xs.iter().zip(ys.iter()).all(|((kx, x), (ky, y))| kx == ky && same(x, y))
        }
        _ => a.is_identical(b),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(first) = cbor::parse(data) else {
        return;
    };
    let bytes = cbor::to_vec(&first);
    let second = match cbor::parse(&bytes) {
        Ok(v) => v,
        Err(e) => panic!("our own CBOR does not parse: {e}: {bytes:02x?}"),
    };
    assert!(same(&first, &second), "{first:?} != {second:?}");

    let archived = value::to_archived_bytes(&first);
    let view = value::access(&archived).expect("archived value validates");
    assert_eq!(cbor::to_vec(view), bytes);
});
