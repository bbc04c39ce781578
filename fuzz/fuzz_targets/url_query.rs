//! Fuzzes the URL query parser: any input must parse or fail without panicking, and every query
//! that parses must print canonically and parse back to the same AST.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::query;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = query::parse(raw) {
        let printed = parsed.to_string();
        assert_eq!(
            query::parse(&printed),
            Ok(parsed),
            "round trip of {raw:?} via {printed:?}"
        );
    }
});
