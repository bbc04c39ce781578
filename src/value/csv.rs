//! CSV for collections (SPEC §3.5, `text/csv`): a header row of quoted names, then one row per
//! record. Strings are quoted with `""` escaping; numbers and booleans bare (numbers as in JSON);
//! Dates as quoted ISO strings; Bytes as quoted base64; nested arrays and objects as quoted JSON
//! text; null, invalid dates and missing properties as an empty field. Rows end with `\n`, as
//! HarperDB's CSV output does. This module only writes; CSV request bodies are not accepted.

use super::json;
use super::view::{Kind, ValueView};

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
