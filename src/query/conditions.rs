//! The Operations API's condition form (`search_by_conditions`, SPEC §4.3) to the same `Expr` the
//! URL query language produces, so one planner serves both.
//!
//! ```text
//! conditions := [ condition | group, ... ]
//! condition  := {"attribute": name | [name, ...], "comparator"?: "equals" | ..., "value": json}
//! group      := {"operator"?: "and" | "or", "conditions": conditions}
//! ```
//!
//! HarperDB's older spellings `search_attribute`, `search_type` and `search_value` are read too.
//! Values stay JSON (`QueryValue::Json`); `between` takes a `[low, high]` array (inclusive).
//! Nesting is bounded by `DEPTH_MAX` and the condition count by `CONDITION_COUNT_MAX`, the same
//! bounds as the URL parser.

use std::fmt;

use serde_json::{Map, Value};

use super::ast::{Comparator, Condition, Expr, Logic, QueryValue};
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

fn field<'v>(fields: &'v Map<String, Value>, name: &str, legacy: &str) -> Option<&'v Value> {
    fields.get(name).or_else(|| fields.get(legacy))
}

fn read_condition(fields: &Map<String, Value>) -> Result<Condition, ConditionError> {
    let path = match field(fields, "attribute", "search_attribute") {
        Some(Value::String(name)) if !name.is_empty() => vec![name.clone()],
        Some(Value::Array(names)) if !names.is_empty() => names
            .iter()
            .map(|name| match name {
                Value::String(name) if !name.is_empty() => Ok(name.clone()),
                _ => Err(error("attribute path entries must be non-empty strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(error(
                "attribute must be a non-empty string or array of strings",
            ))
        }
        None => return Err(error("each condition needs an attribute")),
    };
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
