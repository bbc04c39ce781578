//! MessagePack request bodies: any bytes either fail to parse or parse to a value that our encoder
//! writes and our parser reads back identically, from the owned value and its archived form alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::value::{self, msgpack};

fuzz_target!(|data: &[u8]| {
    let Ok(first) = msgpack::parse(data) else {
        return;
    };
    let bytes = msgpack::to_vec(&first);
    let second = match msgpack::parse(&bytes) {
        Ok(v) => v,
        Err(e) => panic!("our own MessagePack does not parse: {e}: {bytes:02x?}"),
    };
    assert!(first.is_identical(&second), "{first:?} != {second:?}");

    let archived = value::to_archived_bytes(&first);
    let view = value::access(&archived).expect("archived value validates");
    assert_eq!(msgpack::to_vec(view), bytes);
});
