//! The Operations API's condition form (`search_by_conditions`, docs/operations-api.md) to the same `Expr` the
//! URL query language produces, so one planner serves both.
//!
//! ```text
//! conditions := [ condition | group, ... ]
//! condition  := {"attribute": name | [name, ...], "comparator"?: "equals" | ..., "value": json}
//! group      := {"operator"?: "and" | "or", "conditions": conditions}
//! ```
//!
//! `sort := {"attribute": name | [name, ...], "descending"?: bool, "next"?: sort}` becomes the same
//! `SortKey` list as the URL's `sort(...)`, at most `DEPTH_MAX` keys long.
//!
//! HarperDB's older spellings `search_attribute`, `search_type` and `search_value` are read too.
//! Values stay JSON (`QueryValue::Json`); `between` takes a `[low, high]` array (inclusive).
//! Nesting is bounded by `DEPTH_MAX` and the condition count by `CONDITION_COUNT_MAX`, the same
//! bounds as the URL parser.

use std::fmt;

use serde_json::{Map, Value};

use super::ast::{Comparator, Condition, Expr, Logic, QueryValue, SortKey};
use super::parse::{join, CONDITION_COUNT_MAX, DEPTH_MAX};

/// Why a `conditions` array could not be read; becomes a 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError {
    pub message: String,
}

impl fmt::Display for ConditionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConditionError {}

fn error(message: impl Into<String>) -> ConditionError {
    ConditionError {
        message: message.into(),
    }
}

impl Logic {
    /// `"and"`/`"or"`, any case, as the `operator` field spells them.
    pub fn from_name(name: &str) -> Option<Logic> {
        if name.eq_ignore_ascii_case("and") {
            Some(Logic::And)
        } else if name.eq_ignore_ascii_case("or") {
            Some(Logic::Or)
        } else {
            None
        }
    }
}

/// Reads `conditions` (the request's array) joined by `operator` (the request's `operator`,
/// default `and`). An empty array is an empty `And`: no filter, every record.
pub fn conditions_from_json(conditions: &Value, operator: Logic) -> Result<Expr, ConditionError> {
    let mut count = 0;
    let expr = read_conditions(conditions, operator, 0, &mut count)?;
    Ok(expr.unwrap_or(Expr::And(Vec::new())))
}

fn read_conditions(
    conditions: &Value,
    operator: Logic,
    depth: usize,
    count: &mut usize,
) -> Result<Option<Expr>, ConditionError> {
    let Value::Array(items) = conditions else {
        return Err(error("conditions must be an array"));
    };
    let mut children = Vec::with_capacity(items.len());
    for item in items {
        let Value::Object(fields) = item else {
            return Err(error("each condition must be an object"));
        };
        if let Some(nested) = fields.get("conditions") {
            if depth + 1 >= DEPTH_MAX {
                return Err(error(format!(
                    "conditions nest deeper than {DEPTH_MAX} levels"
                )));
            }
            let logic = match fields.get("operator") {
                None | Some(Value::Null) => Logic::And,
                Some(Value::String(name)) => Logic::from_name(name).ok_or_else(|| {
                    error(format!(
                        "operator must be \"and\" or \"or\", not \"{name}\""
                    ))
                })?,
                Some(_) => return Err(error("operator must be \"and\" or \"or\"")),
            };
            if let Some(child) = read_conditions(nested, logic, depth + 1, count)? {
                children.push(child);
            }
        } else {
            *count += 1;
            if *count > CONDITION_COUNT_MAX {
                return Err(error(format!("more than {CONDITION_COUNT_MAX} conditions")));
            }
            children.push(Expr::Condition(read_condition(fields)?));
        }
    }
    Ok(join(children, operator))
}

/// Reads a `search_by_conditions` `sort` object and its `next` chain into sort keys, first key
/// first.
pub fn sort_from_json(sort: &Value) -> Result<Vec<SortKey>, ConditionError> {
    let mut keys = Vec::new();
    let mut current = sort;
    loop {
        let Value::Object(fields) = current else {
            return Err(error("sort must be an object"));
        };
        if keys.len() >= DEPTH_MAX {
            return Err(error(format!("sort has more than {DEPTH_MAX} keys")));
        }
        let descending = match fields.get("descending") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(flag)) => *flag,
            Some(_) => return Err(error("descending must be true or false")),
        };
        keys.push(SortKey {
            path: read_path(fields.get("attribute"))?,
            descending,
        });
        match fields.get("next") {
            None | Some(Value::Null) => return Ok(keys),
            Some(next) => current = next,
        }
    }
}

fn read_path(attribute: Option<&Value>) -> Result<Vec<String>, ConditionError> {
    match attribute {
        Some(Value::String(name)) if !name.is_empty() => Ok(vec![name.clone()]),
        Some(Value::Array(names)) if !names.is_empty() => names
            .iter()
            .map(|name| match name {
                Value::String(name) if !name.is_empty() => Ok(name.clone()),
                _ => Err(error("attribute path entries must be non-empty strings")),
            })
            .collect(),
        Some(_) => Err(error(
            "attribute must be a non-empty string or array of strings",
        )),
        None => Err(error("attribute is required")),
    }
}

fn field<'v>(fields: &'v Map<String, Value>, name: &str, legacy: &str) -> Option<&'v Value> {
    fields.get(name).or_else(|| fields.get(legacy))
}

fn read_condition(fields: &Map<String, Value>) -> Result<Condition, ConditionError> {
    let path = read_path(field(fields, "attribute", "search_attribute"))?;
    let comparator = match field(fields, "comparator", "search_type") {
        None | Some(Value::Null) => Comparator::Equal,
        Some(Value::String(name)) => comparator_from_name(name)
            .ok_or_else(|| error(format!("unknown comparator \"{name}\"")))?,
        Some(_) => return Err(error("comparator must be a string")),
    };
    let value = field(fields, "value", "search_value")
        .ok_or_else(|| error("each condition needs a value"))?;
    if comparator == Comparator::Between {
        match value {
            Value::Array(pair) if pair.len() == 2 => {}
            _ => return Err(error("between needs a value of [low, high]")),
        }
    }
    Ok(Condition {
        path,
        comparator,
        value: QueryValue::Json(value.clone()),
    })
}

fn comparator_from_name(name: &str) -> Option<Comparator> {
    Some(match name {
        "equals" => Comparator::Equal,
        "not_equal" => Comparator::NotEqual,
        "contains" => Comparator::Contains,
        "starts_with" => Comparator::StartsWith,
        "ends_with" => Comparator::EndsWith,
        "greater_than" => Comparator::Greater,
        "greater_than_equal" => Comparator::GreaterEqual,
        "less_than" => Comparator::Less,
        "less_than_equal" => Comparator::LessEqual,
        "between" => Comparator::Between,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `json` (a `conditions` array) under `and` and compares the printed `Expr`, or
    /// `error: <message>`, with `expected`.
    fn check(json: &str, expected: &str) {
        let value: Value = match serde_json::from_str(json) {
            Ok(value) => value,
            Err(error) => panic!("test JSON {json:?}: {error}"),
        };
        let actual = match conditions_from_json(&value, Logic::And) {
            Ok(expr) => format!("{expr:?}"),
            Err(error) => format!("error: {error}"),
        };
        assert_eq!(actual, expected, "conditions {json}");
    }

    #[test]
    fn conditions() {
        check(
            r#"[{"attribute":"breed","comparator":"equals","value":"Lab"}]"#,
            r#"Condition(Condition { path: ["breed"], comparator: Equal, value: Json(String("Lab")) })"#,
        );
        check(
            r#"[{"attribute":"age","value":5}]"#,
            r#"Condition(Condition { path: ["age"], comparator: Equal, value: Json(Number(5)) })"#,
        );
        check(
            r#"[{"search_attribute":"age","search_type":"greater_than","search_value":5}]"#,
            r#"Condition(Condition { path: ["age"], comparator: Greater, value: Json(Number(5)) })"#,
        );
        check(
            r#"[{"attribute":["brand","name"],"comparator":"starts_with","value":"Ac"},
                {"attribute":"age","comparator":"between","value":[2,5]}]"#,
            r#"And([Condition(Condition { path: ["brand", "name"], comparator: StartsWith, value: Json(String("Ac")) }), Condition(Condition { path: ["age"], comparator: Between, value: Json(Array [Number(2), Number(5)]) })])"#,
        );
        check(
            r#"[{"attribute":"a","comparator":"not_equal","value":null},
                {"operator":"or","conditions":[
                    {"attribute":"b","comparator":"contains","value":"x"},
                    {"attribute":"c","comparator":"ends_with","value":"y"}]}]"#,
            r#"And([Condition(Condition { path: ["a"], comparator: NotEqual, value: Json(Null) }), Or([Condition(Condition { path: ["b"], comparator: Contains, value: Json(String("x")) }), Condition(Condition { path: ["c"], comparator: EndsWith, value: Json(String("y")) })])])"#,
        );
        // A nested group with the same operator flattens; a one-condition group is its condition.
        check(
            r#"[{"attribute":"a","comparator":"less_than","value":1},
                {"conditions":[{"attribute":"b","comparator":"less_than_equal","value":2},
                               {"attribute":"c","comparator":"greater_than_equal","value":3}]},
                {"operator":"OR","conditions":[{"attribute":"d","value":true}]}]"#,
            r#"And([Condition(Condition { path: ["a"], comparator: Less, value: Json(Number(1)) }), Condition(Condition { path: ["b"], comparator: LessEqual, value: Json(Number(2)) }), Condition(Condition { path: ["c"], comparator: GreaterEqual, value: Json(Number(3)) }), Condition(Condition { path: ["d"], comparator: Equal, value: Json(Bool(true)) })])"#,
        );
        check("[]", "And([])");
        check(r#"[{"operator":"or","conditions":[]}]"#, "And([])");
    }

    #[test]
    fn errors() {
        check(r#"{"attribute":"a"}"#, "error: conditions must be an array");
        check("[1]", "error: each condition must be an object");
        check(r#"[{"value":1}]"#, "error: attribute is required");
        check(
            r#"[{"attribute":"","value":1}]"#,
            "error: attribute must be a non-empty string or array of strings",
        );
        check(
            r#"[{"attribute":[],"value":1}]"#,
            "error: attribute must be a non-empty string or array of strings",
        );
        check(
            r#"[{"attribute":["a",1],"value":1}]"#,
            "error: attribute path entries must be non-empty strings",
        );
        check(
            r#"[{"attribute":"a"}]"#,
            "error: each condition needs a value",
        );
        check(
            r#"[{"attribute":"a","comparator":"like","value":1}]"#,
            r#"error: unknown comparator "like""#,
        );
        check(
            r#"[{"attribute":"a","comparator":7,"value":1}]"#,
            "error: comparator must be a string",
        );
        check(
            r#"[{"attribute":"a","comparator":"between","value":1}]"#,
            "error: between needs a value of [low, high]",
        );
        check(
            r#"[{"attribute":"a","comparator":"between","value":[1,2,3]}]"#,
            "error: between needs a value of [low, high]",
        );
        check(
            r#"[{"operator":"xor","conditions":[]}]"#,
            r#"error: operator must be "and" or "or", not "xor""#,
        );
        check(
            r#"[{"operator":1,"conditions":[]}]"#,
            r#"error: operator must be "and" or "or""#,
        );
        check(
            r#"[{"conditions":{}}]"#,
            "error: conditions must be an array",
        );
    }

    /// Reads `json` as a `sort` object and compares the printed keys, or `error: <message>`.
    fn check_sort(json: &str, expected: &str) {
        let actual = match serde_json::from_str::<Value>(json).map(|value| sort_from_json(&value)) {
            Ok(Ok(keys)) => {
                let printed: Vec<String> = keys
                    .iter()
                    .map(|key| {
                        format!(
                            "{}{}",
                            if key.descending { "-" } else { "+" },
                            key.path.join(".")
                        )
                    })
                    .collect();
                printed.join(",")
            }
            Ok(Err(error)) => format!("error: {error}"),
            Err(error) => panic!("test JSON {json:?}: {error}"),
        };
        assert_eq!(actual, expected, "sort {json}");
    }

    #[test]
    fn sort() {
        check_sort(r#"{"attribute":"age"}"#, "+age");
        check_sort(
            r#"{"attribute":"age","descending":true,"next":{"attribute":["brand","name"],"descending":false}}"#,
            "-age,+brand.name",
        );
        check_sort(r#"{"attribute":"age","next":null}"#, "+age");
        check_sort(r#"[]"#, "error: sort must be an object");
        check_sort(
            r#"{"attribute":"a","next":1}"#,
            "error: sort must be an object",
        );
        check_sort(r#"{"descending":true}"#, "error: attribute is required");
        check_sort(
            r#"{"attribute":"a","descending":"yes"}"#,
            "error: descending must be true or false",
        );
        let mut chain = String::from(r#"{"attribute":"a"}"#);
        for _ in 0..DEPTH_MAX - 1 {
            chain = format!(r#"{{"attribute":"a","next":{chain}}}"#);
        }
        check_sort(&chain, &vec!["+a"; DEPTH_MAX].join(","));
        let longer = format!(r#"{{"attribute":"a","next":{chain}}}"#);
        check_sort(
            &longer,
            &format!("error: sort has more than {DEPTH_MAX} keys"),
        );
    }

    #[test]
    fn bounds() {
        let mut nested = String::from(r#"[{"attribute":"a","value":1}]"#);
        for _ in 0..DEPTH_MAX - 1 {
            nested = format!(r#"[{{"operator":"or","conditions":{nested}}}]"#);
        }
        check(
            &nested,
            r#"Condition(Condition { path: ["a"], comparator: Equal, value: Json(Number(1)) })"#,
        );
        let deeper = format!(r#"[{{"conditions":{nested}}}]"#);
        check(
            &deeper,
            &format!("error: conditions nest deeper than {DEPTH_MAX} levels"),
        );
        let many = |count: usize| {
            format!(
                "[{}]",
                vec![r#"{"attribute":"a","value":1}"#; count].join(",")
            )
        };
        let read = |json: String| {
            serde_json::from_str::<Value>(&json)
                .map(|value| conditions_from_json(&value, Logic::Or).is_ok())
        };
        assert!(matches!(read(many(CONDITION_COUNT_MAX)), Ok(true)));
        check(
            &many(CONDITION_COUNT_MAX + 1),
            &format!("error: more than {CONDITION_COUNT_MAX} conditions"),
        );
    }
}
