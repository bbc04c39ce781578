//! Arbitrary text as a schema file: parsing must return a schema or a located error, never panic
//! or overflow the stack.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(source) = std::str::from_utf8(data) {
        if let Ok(schema) = tidepool::schema::parse_schema_str(source, "fuzz.graphql") {
            // The derived views must not panic either.
            for table in &schema.tables {
                let _ = table.describe();
                let _ = table.key_type();
            }
        }
    }
});
