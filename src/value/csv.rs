//! CSV for collections (docs/rest.md, `text/csv`): a header row of quoted names, then one row per
//! record. Strings are quoted with `""` escaping; numbers and booleans bare (numbers as in JSON);
//! Dates as quoted ISO strings; Bytes as quoted base64; nested arrays and objects as quoted JSON
//! text; null, invalid dates and missing properties as an empty field. Rows end with `\n`, as
//! HarperDB's CSV output does.
//!
//! [`Reader`] reads CSV text (RFC 4180: quoted fields with `""` escapes, `,` separators, `\n` or
//! `\r\n` row ends, blank lines skipped, a leading UTF-8 BOM ignored) one row at a time, within
//! [`CsvLimits`]. It only splits text into fields: what a field means (its type, its column) is
//! the caller's business (the Operations API's CSV loads in `resource::jobs`).

use std::fmt;

use super::json;
use super::view::{Kind, ValueView};

/// Bounds on CSV input; every one is checked before the work it bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvLimits {
    /// Whole input, in bytes.
    pub bytes_max: usize,
    /// Rows, the header included.
    pub rows_max: u64,
    /// Fields in one row.
    pub fields_max: usize,
    /// Bytes of one field after unquoting.
    pub field_bytes_max: usize,
}

/// Why CSV input was refused. `row` counts rows from 1 (the header), blank lines not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvError {
    TooLarge {
        bytes_max: usize,
    },
    NotUtf8,
    TooManyRows {
        rows_max: u64,
    },
    TooManyFields {
        row: u64,
        fields_max: usize,
    },
    FieldTooLong {
        row: u64,
        field_bytes_max: usize,
    },
    UnterminatedQuote {
        row: u64,
    },
    /// Text between a closing quote and the next separator.
    StrayQuote {
        row: u64,
    },
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsvError::TooLarge { bytes_max } => {
                write!(f, "CSV input is larger than {bytes_max} bytes")
            }
            CsvError::NotUtf8 => write!(f, "CSV input is not valid UTF-8"),
            CsvError::TooManyRows { rows_max } => {
                write!(f, "CSV input has more than {rows_max} rows")
            }
            CsvError::TooManyFields { row, fields_max } => {
                write!(f, "CSV row {row} has more than {fields_max} fields")
            }
            CsvError::FieldTooLong {
                row,
                field_bytes_max,
            } => write!(
                f,
                "CSV row {row} has a field longer than {field_bytes_max} bytes"
            ),
            CsvError::UnterminatedQuote { row } => {
                write!(f, "CSV row {row} has a quoted field that is never closed")
            }
            CsvError::StrayQuote { row } => write!(
                f,
                "CSV row {row} has text after a closing quote (quotes inside a quoted field are written \"\")"
            ),
        }
    }
}

/// Reads rows of CSV text within limits; see the module comment for the dialect.
pub struct Reader<'a> {
    rest: &'a str,
    limits: CsvLimits,
    row: u64,
}

impl<'a> Reader<'a> {
    /// Checks the size and the encoding of the whole input once, so rows split on plain bytes.
    pub fn new(input: &'a [u8], limits: CsvLimits) -> Result<Self, CsvError> {
        if input.len() > limits.bytes_max {
            return Err(CsvError::TooLarge {
                bytes_max: limits.bytes_max,
            });
        }
        let text = std::str::from_utf8(input).map_err(|_| CsvError::NotUtf8)?;
        Ok(Reader {
            rest: text.strip_prefix('\u{feff}').unwrap_or(text),
            limits,
            row: 0,
        })
    }

    /// The number of the row last read (1 = the first row).
    pub fn row(&self) -> u64 {
        self.row
    }

    /// Reads the next row into `fields` (cleared first). `Ok(false)` at the end of the input.
    pub fn next_row(&mut self, fields: &mut Vec<String>) -> Result<bool, CsvError> {
        fields.clear();
        // Blank lines separate nothing; skipping them keeps a trailing newline harmless.
        loop {
            if let Some(r) = self.rest.strip_prefix("\r\n") {
                self.rest = r;
            } else if let Some(r) = self.rest.strip_prefix('\n') {
                self.rest = r;
            } else {
                break;
            }
        }
        if self.rest.is_empty() {
            return Ok(false);
        }
        if self.row >= self.limits.rows_max {
            return Err(CsvError::TooManyRows {
                rows_max: self.limits.rows_max,
            });
        }
        self.row += 1;
        loop {
            if fields.len() >= self.limits.fields_max {
                return Err(CsvError::TooManyFields {
                    row: self.row,
                    fields_max: self.limits.fields_max,
                });
            }
            let (field, end) = self.field()?;
            if field.len() > self.limits.field_bytes_max {
                return Err(CsvError::FieldTooLong {
                    row: self.row,
                    field_bytes_max: self.limits.field_bytes_max,
                });
            }
            fields.push(field);
            if !end {
                return Ok(true);
            }
        }
    }

    /// One field and whether another follows it in this row (a `,` came after it).
    fn field(&mut self) -> Result<(String, bool), CsvError> {
        let bytes = self.rest.as_bytes();
        let (field, after) = if bytes.first() == Some(&b'"') {
            let mut out = String::new();
            let mut i = 1;
            loop {
                let Some(q) = memchr::memchr(b'"', bytes.get(i..).unwrap_or_default()) else {
                    return Err(CsvError::UnterminatedQuote { row: self.row });
                };
                // Quotes are ASCII, so every index here is a character boundary.
                out.push_str(self.rest.get(i..i + q).unwrap_or_default());
                if out.len() > self.limits.field_bytes_max {
                    return Err(CsvError::FieldTooLong {
                        row: self.row,
                        field_bytes_max: self.limits.field_bytes_max,
                    });
                }
                i += q + 1;
                if bytes.get(i) == Some(&b'"') {
                    out.push('"');
                    i += 1;
                } else {
                    break;
                }
            }
            (out, i)
        } else {
            let end = memchr::memchr3(b',', b'\n', b'\r', bytes).unwrap_or(bytes.len());
            // A lone `\r` inside an unquoted field is kept; only `\r\n` ends a row.
            let mut end = end;
            while bytes.get(end) == Some(&b'\r') && bytes.get(end + 1) != Some(&b'\n') {
                end = match memchr::memchr3(
                    b',',
                    b'\n',
                    b'\r',
                    bytes.get(end + 1..).unwrap_or_default(),
                ) {
                    Some(j) => end + 1 + j,
                    None => bytes.len(),
                };
            }
            (self.rest.get(..end).unwrap_or_default().to_string(), end)
        };
        let tail = self.rest.get(after..).unwrap_or_default();
        if let Some(r) = tail.strip_prefix(',') {
            self.rest = r;
            Ok((field, true))
        } else if let Some(r) = tail.strip_prefix("\r\n") {
            self.rest = r;
            Ok((field, false))
        } else if let Some(r) = tail.strip_prefix('\n') {
            self.rest = r;
            Ok((field, false))
        } else if tail.is_empty() {
            self.rest = tail;
            Ok((field, false))
        } else {
            Err(CsvError::StrayQuote { row: self.row })
        }
    }
}

/// Appends the header row: each field name quoted.
pub fn write_header<F: AsRef<str>>(fields: &[F], out: &mut Vec<u8>) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_quoted(field.as_ref().as_bytes(), out);
    }
    out.push(b'\n');
}

/// Appends one row: the properties `fields` of `record` (absent when it is not an object).
pub fn write_row<'a, F: AsRef<str>, V: ValueView<'a>>(fields: &[F], record: V, out: &mut Vec<u8>) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(value) = record.get(field.as_ref()) {
            write_field(value, out);
        }
    }
    out.push(b'\n');
}

fn write_field<'a, V: ValueView<'a>>(value: V, out: &mut Vec<u8>) {
    match value.kind() {
        Kind::Null => {}
        Kind::Bool(_) | Kind::Int(_) | Kind::BigInt(_) => json::write(value, out),
        Kind::Float(f) if f.is_finite() => json::write(value, out),
        Kind::Float(_) => {}
        Kind::String(s) => write_quoted(s.as_bytes(), out),
        Kind::Date(ms) => {
            let mut text = Vec::with_capacity(32);
            if json::write_iso_date(ms, &mut text) {
                write_quoted(&text, out);
            }
        }
        Kind::Bytes(b) => {
            out.push(b'"');
            json::write_base64(b, out);
            out.push(b'"');
        }
        Kind::Array(_) | Kind::Object(_) => {
            let start = out.len();
            json::write(value, out);
            // Quote the JSON text in place: double every quote, then wrap.
            let quotes = out[start..].iter().filter(|&&b| b == b'"').count();
            if quotes == 0 {
                out.insert(start, b'"');
                out.push(b'"');
                return;
            }
            let text = out.split_off(start);
            write_quoted(&text, out);
        }
    }
}

fn write_quoted(text: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let mut rest = text;
    while let Some(i) = memchr::memchr(b'"', rest) {
        out.extend_from_slice(&rest[..=i]);
        out.push(b'"');
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::super::{Object, Value};
    use super::*;

    fn check(record: Value, expected: &str) {
        let fields = ["id", "name", "tags", "when"];
        let mut out = Vec::new();
        write_row(&fields, &record, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    const LIMITS: CsvLimits = CsvLimits {
        bytes_max: 1000,
        rows_max: 4,
        fields_max: 3,
        field_bytes_max: 8,
    };

    /// Reads all of `input`; the rows, or the error after the rows read before it.
    fn check_read(input: &str, expected: Result<&[&[&str]], CsvError>) {
        let got = (|| {
            let mut reader = Reader::new(input.as_bytes(), LIMITS)?;
            let mut rows = Vec::new();
            let mut fields = Vec::new();
            while reader.next_row(&mut fields)? {
                rows.push(fields.clone());
            }
            Ok(rows)
        })();
        let expected = expected.map(|rows| {
            rows.iter()
                .map(|r| r.iter().map(|f| f.to_string()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        });
        assert_eq!(got, expected, "{input:?}");
    }

    #[test]
    fn reads_rows() {
        check_read("a,b\n1,2\n", Ok(&[&["a", "b"], &["1", "2"]]));
        check_read("a,b\r\n1,2", Ok(&[&["a", "b"], &["1", "2"]]));
        check_read("\u{feff}a\n\n\nx\n", Ok(&[&["a"], &["x"]]));
        check_read("a,,\n", Ok(&[&["a", "", ""]]));
        check_read(
            "\"a,b\",\"say \"\"hi\"\"\"\n",
            Ok(&[&["a,b", "say \"hi\""]]),
        );
        check_read("\"tw\nline\",x", Ok(&[&["tw\nline", "x"]]));
        check_read("a\rb,c", Ok(&[&["a\rb", "c"]]));
        check_read("\"\"", Ok(&[&[""]]));
        check_read("é,ü", Ok(&[&["é", "ü"]]));
        check_read("", Ok(&[]));
        check_read("\"open,x", Err(CsvError::UnterminatedQuote { row: 1 }));
        check_read("a\n\"x\"y", Err(CsvError::StrayQuote { row: 2 }));
        check_read(
            "a,b,c,d",
            Err(CsvError::TooManyFields {
                row: 1,
                fields_max: 3,
            }),
        );
        check_read(
            "123456789",
            Err(CsvError::FieldTooLong {
                row: 1,
                field_bytes_max: 8,
            }),
        );
        check_read(
            "\"12345\"\"6789\"",
            Err(CsvError::FieldTooLong {
                row: 1,
                field_bytes_max: 8,
            }),
        );
        check_read("1\n2\n3\n4\n5", Err(CsvError::TooManyRows { rows_max: 4 }));
        check_read(
            &"x".repeat(1001),
            Err(CsvError::TooLarge { bytes_max: 1000 }),
        );
        let bad = Reader::new(&[b'a', 0xff], LIMITS).err();
        assert_eq!(bad, Some(CsvError::NotUtf8));
    }

    #[test]
    fn written_rows_read_back() {
        let mut o = Object::new();
        o.insert("id", Value::Int(1));
        o.insert("name", Value::from("a \"b\",\nc"));
        let mut out = Vec::new();
        write_header(&["id", "name", "tags", "when"], &mut out);
        write_row(&["id", "name", "tags", "when"], &Value::Object(o), &mut out);
        let mut reader = Reader::new(
            &out,
            CsvLimits {
                field_bytes_max: 100,
                fields_max: 10,
                ..LIMITS
            },
        )
        .unwrap();
        let mut fields = Vec::new();
        assert!(reader.next_row(&mut fields).unwrap());
        assert_eq!(fields, ["id", "name", "tags", "when"]);
        assert!(reader.next_row(&mut fields).unwrap());
        assert_eq!(fields, ["1", "a \"b\",\nc", "", ""]);
        assert!(!reader.next_row(&mut fields).unwrap());
    }

    proptest::proptest! {
        /// The fuzz target's property on inputs made of CSV's own characters: reading never
        /// panics, and every row read, written back, reads back the same.
        #[test]
        fn any_input_reads_or_fails_and_rows_round_trip(input in "[a,\"\r\n é]{0,64}") {
            if let Ok(mut reader) = Reader::new(input.as_bytes(), LIMITS) {
                let mut fields = Vec::new();
                while let Ok(true) = reader.next_row(&mut fields) {
                    let mut out = Vec::new();
                    write_header(&fields, &mut out);
                    let wide = CsvLimits { bytes_max: usize::MAX, ..LIMITS };
                    let mut again = Reader::new(&out, wide).unwrap();
                    let mut back = Vec::new();
                    proptest::prop_assert_eq!(again.next_row(&mut back), Ok(true));
                    proptest::prop_assert_eq!(&back, &fields);
                }
            }
        }
    }

    #[test]
    fn rows() {
        let mut header = Vec::new();
        write_header(&["id", "say \"hi\""], &mut header);
        assert_eq!(
            String::from_utf8(header).unwrap(),
            "\"id\",\"say \"\"hi\"\"\"\n"
        );
        let mut o = Object::new();
        o.insert("name", Value::from("a \"b\", c"));
        o.insert("id", Value::Float(1.5));
        o.insert("tags", Value::Array(vec![Value::from("x"), Value::Int(2)]));
        o.insert("when", Value::Date(0.0));
        check(
            Value::Object(o),
            "1.5,\"a \"\"b\"\", c\",\"[\"\"x\"\",2]\",\"1970-01-01T00:00:00.000Z\"\n",
        );
        let mut o = Object::new();
        o.insert("id", Value::Int(7));
        o.insert("name", Value::Null);
        o.insert("tags", Value::Array(vec![]));
        check(Value::Object(o), "7,,\"[]\",\n");
        check(Value::Int(3), ",,,\n");
    }
}
