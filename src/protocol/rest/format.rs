//! Content types both ways (docs/rest.md): `Accept` negotiation with q-values and server weights,
//! the collection framings (JSON array, CBOR indefinite-length array, concatenated MessagePack,
//! CSV with a header row), and request bodies by `Content-Type` (JSON sniffed when absent;
//! anything else kept as `{contentType, data}`).

use crate::value::{self, cbor, csv, json, msgpack, Value, ValueView};

/// A response encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Cbor,
    MsgPack,
    Csv,
}

/// The list a 406 names.
pub const SUPPORTED: &str =
    "application/json, application/cbor, application/x-msgpack, text/csv, text/event-stream";

/// Media types in one `Accept` header considered at most; the rest are ignored.
const ACCEPT_ITEMS_MAX: usize = 32;

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Cbor => "application/cbor",
            Format::MsgPack => "application/x-msgpack",
            Format::Csv => "text/csv",
        }
    }

    /// The format a URL extension (`.json`, `.cbor`, `.msgpack`, `.csv`) asks for.
    pub fn from_extension(ext: &str) -> Option<Format> {
        Some(match ext {
            "json" => Format::Json,
            "cbor" => Format::Cbor,
            "msgpack" => Format::MsgPack,
            "csv" => Format::Csv,
            _ => return None,
        })
    }

    /// `client q × server weight`, best wins; no header or `*/*` → JSON; `None` → 406.
    pub fn negotiate(accept: Option<&str>) -> Option<Format> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
            return Some(Format::Json);
        };
        let mut best: Option<(f32, Format)> = None;
        for item in accept.split(',').take(ACCEPT_ITEMS_MAX) {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim();
            let mut q = 1.0f32;
            for param in parts {
                if let Some(v) = param.trim().strip_prefix("q=") {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
            let (format, weight) = match media.to_ascii_lowercase().as_str() {
                "application/json" | "application/*" | "*/*" => (Format::Json, 0.8),
                "application/cbor" => (Format::Cbor, 1.0),
                "application/x-msgpack" | "application/msgpack" => (Format::MsgPack, 0.9),
                "text/csv" | "text/*" => (Format::Csv, 0.1),
                _ => continue,
            };
            let score = q * weight;
            if score > 0.0 && best.is_none_or(|(s, _)| score > s) {
                best = Some((score, format));
            }
        }
        best.map(|(_, f)| f)
    }

    /// Encodes one value.
    pub fn write_one<'a, V: ValueView<'a>>(self, v: V, out: &mut Vec<u8>) {
        match self {
            Format::Json => json::write(v, out),
            Format::Cbor => cbor::write(v, out),
            Format::MsgPack => msgpack::write(v, out),
            Format::Csv => {
                let fields = object_fields(v);
                let names: Vec<&str> = fields.iter().map(String::as_str).collect();
                csv::write_header(&names, out);
                csv::write_row(&names, v, out);
            }
        }
    }

    /// `{"error": message}` in this format (CSV errors are JSON).
    pub fn write_error(self, message: &str, out: &mut Vec<u8>) {
        let mut object = value::Object::new();
        object.insert("error", Value::String(message.to_string()));
        let v = Value::Object(object);
        match self {
            Format::Json | Format::Csv => json::write(&v, out),
            f => f.write_one(&v, out),
        }
    }
}

fn object_fields<'a, V: ValueView<'a>>(v: V) -> Vec<String> {
    match v.kind() {
        value::Kind::Object(entries) => entries.map(|(k, _)| k.to_string()).collect(),
        _ => Vec::new(),
    }
}

/// Writes a collection item by item in one format.
pub struct CollectionWriter {
    format: Format,
    count: u64,
    /// CSV columns, fixed by the declared attributes or the first record.
    fields: Vec<String>,
}

impl CollectionWriter {
    pub fn new(format: Format, fields: Vec<String>) -> Self {
        CollectionWriter {
            format,
            count: 0,
            fields,
        }
    }

    pub fn start(&mut self, out: &mut Vec<u8>) {
        match self.format {
            Format::Json => out.push(b'['),
            Format::Cbor => cbor::write_indefinite_array_start(out),
            Format::MsgPack | Format::Csv => {}
        }
    }

    pub fn item<'a, V: ValueView<'a>>(&mut self, v: V, out: &mut Vec<u8>) {
        match self.format {
            Format::Json => {
                if self.count > 0 {
                    out.push(b',');
                }
                json::write(v, out);
            }
            Format::Cbor => cbor::write(v, out),
            Format::MsgPack => msgpack::write(v, out),
            Format::Csv => {
                if self.count == 0 {
                    if self.fields.is_empty() {
                        self.fields = object_fields(v);
                    }
                    let names: Vec<&str> = self.fields.iter().map(String::as_str).collect();
                    csv::write_header(&names, out);
                }
                let names: Vec<&str> = self.fields.iter().map(String::as_str).collect();
                match v.kind() {
                    value::Kind::Object(_) => csv::write_row(&names, v, out),
                    // A bare selected value: one column.
                    _ => {
                        let mut wrapped = value::Object::new();
                        wrapped.insert(
                            names.first().copied().unwrap_or("value"),
                            crate::query::to_owned(v),
                        );
                        csv::write_row(&names, &Value::Object(wrapped), out);
                    }
                }
            }
        }
        self.count += 1;
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.format {
            Format::Json => out.push(b']'),
            Format::Cbor => cbor::write_break(out),
            Format::MsgPack => {}
            Format::Csv => {
                if self.count == 0 {
                    let names: Vec<&str> = self.fields.iter().map(String::as_str).collect();
                    csv::write_header(&names, out);
                }
            }
        }
    }
}

/// A decoded request body.
pub enum Body {
    /// JSON, CBOR or MessagePack.
    Structured(Value),
    /// Any other type, kept as `{contentType, data}`.
    Raw(Value),
}

/// Decodes a body by its `Content-Type`; without one, JSON when it starts with `{` or `[`.
pub fn decode_body(content_type: Option<&str>, body: &[u8]) -> Result<Body, String> {
    let media = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|m| !m.is_empty());
    let parsed = match media.as_deref() {
        Some("application/json") => json::parse(body),
        Some("application/cbor") => cbor::parse(body),
        Some("application/x-msgpack" | "application/msgpack") => msgpack::parse(body),
        None if matches!(
            body.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        ) =>
        {
            json::parse(body)
        }
        other => {
            let media = other.unwrap_or("application/octet-stream").to_string();
            let data = if media.starts_with("text/") {
                match std::str::from_utf8(body) {
                    Ok(text) => Value::String(text.to_string()),
                    Err(_) => Value::Bytes(body.to_vec()),
                }
            } else {
                Value::Bytes(body.to_vec())
            };
            let mut record = value::Object::new();
            record.insert("contentType", Value::String(media));
            record.insert("data", data);
            return Ok(Body::Raw(Value::Object(record)));
        }
    };
    parsed
        .map(Body::Structured)
        .map_err(|e| format!("Invalid request body: {e}"))
}

/// A record stored from a raw body: its type and bytes, to serve as they came.
/// `key` is the table's primary key property, which the stored record holds besides the two.
pub fn raw_content<'a, V: ValueView<'a>>(
    record: V,
    key: Option<&str>,
) -> Option<(&'a str, &'a [u8])> {
    let value::Kind::Object(mut entries) = record.kind() else {
        return None;
    };
    if !entries.all(|(k, _)| k == "contentType" || k == "data" || Some(k) == key) {
        return None;
    }
    let content_type = match record.get("contentType")?.kind() {
        value::Kind::String(s) => s,
        _ => return None,
    };
    let data = match record.get("data")?.kind() {
        value::Kind::String(s) => s.as_bytes(),
        value::Kind::Bytes(b) => b,
        _ => return None,
    };
    Some((content_type, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(accept: Option<&str>, expected: Option<Format>) {
        assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
    }

    #[test]
    fn negotiation() {
        check(None, Some(Format::Json));
        check(Some("*/*"), Some(Format::Json));
        check(Some("application/json"), Some(Format::Json));
        check(
            Some("application/json, application/cbor"),
            Some(Format::Cbor),
        );
        check(
            Some("application/cbor;q=0.5, application/json"),
            Some(Format::Json),
        );
        check(
            Some("application/x-msgpack, application/json;q=0.9"),
            Some(Format::MsgPack),
        );
        check(Some("text/csv"), Some(Format::Csv));
        check(Some("text/html"), None);
        check(Some("application/json;q=0"), None);
    }
}
