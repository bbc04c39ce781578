//! Operations API bodies: arbitrary bytes through the body decoder (JSON, CBOR, MessagePack,
//! chosen by the first byte) into a typed operation must decode or fail with a 4xx, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::protocol::ops::{decode, BodyType};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let body_type = match selector % 3 {
        0 => BodyType::Json,
        1 => BodyType::Cbor,
        _ => BodyType::MsgPack,
    };
    if let Err(e) = decode(body_type, body) {
        assert!((400..500).contains(&e.status), "status {} for {:?}", e.status, e.message);
    }
});
