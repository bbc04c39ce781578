//! Record validation against a table's declared attributes (docs/applications.md). Only `Date` (ISO string
//! or epoch ms) and `BigInt` (number or decimal string) are coerced; every other mismatch is an
//! error, and all problems of one write form one message joined by `. `.

use crate::schema::{FieldType, TableDef};
use crate::value::{Object, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// The whole record is being written: required attributes must be present.
    Full,
    /// Only the listed properties change (PATCH, update): check what is there.
    Partial,
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => {
            let mut out = Vec::new();
            crate::value::json::write(other, &mut out);
            String::from_utf8_lossy(&out).into_owned()
        }
    }
}

/// Checks one value against a type, coercing in place where docs/applications.md ("Types")
/// allows. `Err` is the reason.
fn check(ty: &FieldType, value: &mut Value) -> Result<(), &'static str> {
    if matches!(value, Value::Null) {
        return Ok(());
    }
    let ok = match ty {
        FieldType::Any | FieldType::Blob => true,
        FieldType::ID => matches!(value, Value::String(_) | Value::Int(_)),
        FieldType::String => matches!(value, Value::String(_)),
        FieldType::Int => matches!(value, Value::Int(i) if i32::try_from(*i).is_ok()),
        FieldType::Long => matches!(value, Value::Int(i) if i.unsigned_abs() <= 1 << 53),
        FieldType::Float => matches!(value, Value::Int(_) | Value::Float(_)),
        FieldType::Boolean => matches!(value, Value::Bool(_)),
        FieldType::BigInt => match value {
            Value::Int(_) | Value::BigInt(_) => true,
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() => {
                *value = Value::Int(*f as i64);
                true
            }
            Value::String(s)
                if !s.is_empty()
                    && s.trim_start_matches('-')
                        .bytes()
                        .all(|b| b.is_ascii_digit()) =>
            {
                match crate::value::json::parse(s.as_bytes()) {
                    Ok(n @ (Value::Int(_) | Value::BigInt(_))) => {
                        *value = n;
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        },
        FieldType::Date => match value {
            Value::Date(_) => true,
            Value::Int(ms) => {
                *value = Value::Date(*ms as f64);
                true
            }
            Value::Float(ms) if ms.is_finite() => {
                *value = Value::Date(*ms);
                true
            }
            Value::String(s) => match crate::util::parse_iso8601_ms(s) {
                Some(ms) => {
                    *value = Value::Date(ms);
                    true
                }
                None => false,
            },
            _ => false,
        },
        FieldType::Bytes => match value {
            Value::Bytes(_) => true,
            // JSON carries bytes as base64 text.
            Value::String(s) => match crate::util::decode_base64(s) {
                Some(bytes) => {
                    *value = Value::Bytes(bytes);
                    true
                }
                None => false,
            },
            _ => false,
        },
        FieldType::Array(element) => match value {
            Value::Array(items) => items.iter_mut().all(|item| check(element, item).is_ok()),
            _ => false,
        },
        FieldType::Object(_) => matches!(value, Value::Object(_)),
    };
    if ok {
        Ok(())
    } else {
        Err(expectation(ty))
    }
}

fn expectation(ty: &FieldType) -> &'static str {
    match ty {
        FieldType::ID => "must be a string or an integer",
        FieldType::String => "must be a string",
        FieldType::Int => "must be an integer (from -2147483648 to 2147483647)",
        FieldType::Long => "must be an integer (from -9007199254740992 to 9007199254740992)",
        FieldType::Float => "must be a number",
        FieldType::BigInt => "must be an integer",
        FieldType::Boolean => "must be a boolean",
        FieldType::Date => "must be a Date (ISO-8601 string or epoch milliseconds)",
        FieldType::Bytes => "must be binary data (base64 in JSON)",
        FieldType::Array(_) => "must be an array of the declared type",
        FieldType::Object(_) => "must be an object",
        FieldType::Any | FieldType::Blob => "is invalid",
    }
}

/// Validates (and coerces) `record` for a write to `def`. The error is the 400 message
/// docs/rest.md shows.
pub fn validate_record(
    def: &TableDef,
    record: &mut Object,
    mode: Validation,
) -> Result<(), String> {
    let mut problems: Vec<String> = Vec::new();
    let mut entries = std::mem::take(record).into_entries();
    for (name, value) in entries.iter_mut() {
        match def.attribute(name) {
            Some(attr) if attr.relationship.is_some() => {
                problems.push(format!(
                    "Property {name} is a relationship and cannot be written"
                ));
            }
            Some(attr) => {
                if attr.required && matches!(value, Value::Null) {
                    problems.push(format!("Property {name} is required (and not null)"));
                } else if let Err(why) = check(&attr.ty, value) {
                    problems.push(format!(
                        "Value {} in property {name} {why}",
                        describe(value)
                    ));
                }
            }
            None if def.sealed => problems.push(format!("Property {name} is not allowed")),
            None => {}
        }
    }
    *record = Object::from_entries(entries);
    if mode == Validation::Full {
        for attr in &def.attributes {
            let generated = attr.primary_key
                || attr.created_time
                || attr.updated_time
                || attr.relationship.is_some();
            if attr.required && !generated && record.get(&attr.name).is_none() {
                problems.push(format!("Property {} is required", attr.name));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(". "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::parse_schema_str;
    use crate::value::json;

    fn check_write(schema: &str, body: &str, mode: Validation, expected: Result<&str, &str>) {
        let def = parse_schema_str(schema, "t.graphql")
            .unwrap()
            .tables
            .remove(0);
        let Value::Object(mut record) = json::parse(body.as_bytes()).unwrap() else {
            panic!("not an object")
        };
        let got = validate_record(&def, &mut record, mode)
            .map(|()| String::from_utf8(json::to_vec(&Value::Object(record))).unwrap());
        assert_eq!(got.as_deref().map_err(String::as_str), expected, "{body}");
    }

    const DOG: &str = "type Dog @table { id: ID @primaryKey name: String! age: Int born: Date big: BigInt tags: [String] data: Bytes }";

    #[test]
    fn types_and_coercions() {
        use Validation::*;
        check_write(
            DOG,
            r#"{"name":"Rex","age":3,"extra":true}"#,
            Full,
            Ok(r#"{"name":"Rex","age":3,"extra":true}"#),
        );
        check_write(
            DOG,
            r#"{"name":"Rex","age":"old"}"#,
            Full,
            Err(
                r#"Value "old" in property age must be an integer (from -2147483648 to 2147483647)"#,
            ),
        );
        check_write(DOG, r#"{"name":"Rex","age":3000000000}"#, Full, Err("Value 3000000000 in property age must be an integer (from -2147483648 to 2147483647)"));
        check_write(DOG, r#"{"age":1}"#, Full, Err("Property name is required"));
        check_write(DOG, r#"{"age":1}"#, Partial, Ok(r#"{"age":1}"#));
        check_write(
            DOG,
            r#"{"name":null}"#,
            Partial,
            Err("Property name is required (and not null)"),
        );
        check_write(
            DOG,
            r#"{"name":"a","born":"2024-06-10T06:13:20.125Z"}"#,
            Full,
            Ok(r#"{"name":"a","born":"2024-06-10T06:13:20.125Z"}"#),
        );
        check_write(
            DOG,
            r#"{"name":"a","born":0}"#,
            Full,
            Ok(r#"{"name":"a","born":"1970-01-01T00:00:00.000Z"}"#),
        );
        check_write(
            DOG,
            r#"{"name":"a","big":"123456789012345678901234567890"}"#,
            Full,
            Ok(r#"{"name":"a","big":123456789012345678901234567890}"#),
        );
        check_write(
            DOG,
            r#"{"name":"a","tags":["x",1]}"#,
            Full,
            Err(r#"Value ["x",1] in property tags must be an array of the declared type"#),
        );
        check_write(
            DOG,
            r#"{"name":1,"age":"x"}"#,
            Full,
            Err(
                r#"Value 1 in property name must be a string. Value "x" in property age must be an integer (from -2147483648 to 2147483647)"#,
            ),
        );
        check_write(
            DOG,
            r#"{"name":"a","data":"aGk="}"#,
            Full,
            Ok(r#"{"name":"a","data":"aGk="}"#),
        );
        check_write(
            "type S @table @sealed { id: ID @primaryKey a: Int }",
            r#"{"a":1,"b":2}"#,
            Full,
            Err("Property b is not allowed"),
        );
    }
}
