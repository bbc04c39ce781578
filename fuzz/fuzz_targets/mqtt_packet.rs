//! Fuzzes the MQTT codec at both protocol levels: `check` then `decode` must never panic, and
//! every packet that decodes must encode and decode back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::protocol::mqtt::{check, decode, encode, Level};

fuzz_target!(|data: &[u8]| {
    for level in [Level::V4, Level::V5] {
        let Ok(Some(len)) = check(data, 1 << 20) else {
            continue;
        };
        let Some(packet_bytes) = data.get(..len) else {
            panic!("check returned {len} for {} bytes", data.len());
        };
        if let Ok(packet) = decode(packet_bytes, level) {
            let mut out = Vec::new();
            encode(&packet, level, &mut out);
            assert_eq!(check(&out, usize::MAX), Ok(Some(out.len())));
            assert_eq!(
                decode(&out, level).as_ref(),
                Ok(&packet),
                "round trip of {packet_bytes:02x?} via {out:02x?}"
            );
        }
    }
});
