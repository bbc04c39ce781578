//! Fuzzes the CSV reader behind the Operations API's CSV loads: any input must read or fail
//! without panicking, within its limits, and every row it reads, written back as CSV, must read
//! back to the same fields.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool::value::csv::{self, CsvLimits, Reader};

const LIMITS: CsvLimits = CsvLimits {
    bytes_max: 1 << 16,
    rows_max: 1000,
    fields_max: 64,
    field_bytes_max: 4096,
};

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = Reader::new(data, LIMITS) else {
        return;
    };
    let mut fields = Vec::new();
    while let Ok(true) = reader.next_row(&mut fields) {
        assert!(fields.len() <= LIMITS.fields_max);
        assert!(reader.row() <= LIMITS.rows_max);
        // Written as a header row (every field quoted), the fields must read back unchanged.
        let mut out = Vec::new();
        csv::write_header(&fields, &mut out);
        let mut again = Reader::new(&out, CsvLimits { bytes_max: usize::MAX, ..LIMITS })
            .expect("written CSV is UTF-8");
        let mut back = Vec::new();
        assert_eq!(again.next_row(&mut back), Ok(true));
        assert_eq!(back, fields);
    }
});
