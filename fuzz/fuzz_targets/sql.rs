//! SQL statements: any text either fails with a typed error (never a panic) or, for a SELECT
//! without tables, computes a result that encodes as JSON and parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::resource::sql;
use tidepool::value::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(Some(rows)) = sql::evaluate_standalone(text) else {
        return;
    };
    let value = Value::Array(rows);
    let bytes = json::to_vec(&value);
    let back = json::parse(&bytes).expect("our own JSON parses");
    assert_eq!(json::to_vec(&back), bytes);
});
