//! JSON request bodies: any bytes either fail to parse or parse to a value whose JSON text is a
//! fixed point (parse → write → parse → write gives the same text), from the owned value and from
//! its archived form alike, and whose key encoding round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::value::{self, json, key};

fuzz_target!(|data: &[u8]| {
    let Ok(first) = json::parse(data) else {
        return;
    };
    let text = json::to_vec(&first);
    let second = match json::parse(&text) {
        Ok(v) => v,
        Err(e) => panic!("our own JSON does not parse: {e}: {}", String::from_utf8_lossy(&text)),
    };
    assert_eq!(json::to_vec(&second), text);

    let archived = value::to_archived_bytes(&second);
    let view = value::access(&archived).expect("archived value validates");
    assert_eq!(json::to_vec(view), text);

    let mut k = Vec::new();
    key::encode_unbounded(&second, &mut k);
    let back = key::decode(&k).expect("key decodes");
    assert_eq!(value::cmp_total(&back, &second), std::cmp::Ordering::Equal);
});
