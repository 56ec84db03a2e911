//! Variable types and their constraints, as tabled in `bridge.proto`.
//!
//! Validation also normalizes: both doors into the store (Elixir and the
//! bridge) then read back exactly the same JSON for the same write, e.g. a
//! float variable set to `3` holds `3.0` and an integer set to `3.0` holds `3`.

use std::cmp::Ordering;
use std::fmt;

use serde_json::{Map, Number, Value};

use super::StoreError;

/// The type of a variable; fixed at registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VarType {
    Float,
    Integer,
    String,
    Boolean,
    Choice,
    Module,
    Embedding,
    Tensor,
    Json,
}

impl VarType {
    /// Every type, in the order of the protocol's table.
    pub const ALL: [VarType; 9] = [
        VarType::Float,
        VarType::Integer,
        VarType::String,
        VarType::Boolean,
        VarType::Choice,
        VarType::Module,
        VarType::Embedding,
        VarType::Tensor,
        VarType::Json,
    ];

    /// The name used on the wire and by users.
    pub fn as_str(self) -> &'static str {
        match self {
            VarType::Float => "float",
            VarType::Integer => "integer",
            VarType::String => "string",
            VarType::Boolean => "boolean",
            VarType::Choice => "choice",
            VarType::Module => "module",
            VarType::Embedding => "embedding",
            VarType::Tensor => "tensor",
            VarType::Json => "json",
        }
    }

    /// The type named `name`; an unknown name is an `InvalidType` error that
    /// lists the valid ones, so the caller can show it as is.
    pub fn parse(name: &str) -> Result<VarType, StoreError> {
        VarType::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| {
                let valid: Vec<&str> = VarType::ALL.iter().map(|t| t.as_str()).collect();
                StoreError::InvalidType(format!(
                    "unknown variable type {name:?}; valid types are {}",
                    valid.join(", ")
                ))
            })
    }

    /// Constraint keys the type accepts.
    fn constraint_keys(self) -> &'static [&'static str] {
        match self {
            VarType::Float | VarType::Integer => &["min", "max"],
            VarType::String => &["min_length", "max_length", "choices"],
            VarType::Boolean | VarType::Json => &[],
            VarType::Choice | VarType::Module => &["choices"],
            VarType::Embedding => &["dimensions", "min", "max"],
            VarType::Tensor => &["shape"],
        }
    }
}

impl fmt::Display for VarType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks `constraints` for a variable of type `var_type` and returns them as
/// a JSON object (`Null` becomes `{}`). Unknown keys and values of the wrong
/// kind are refused, so a typo never turns into a silently ignored limit.
pub fn validate_constraints(var_type: VarType, constraints: &Value) -> Result<Value, StoreError> {
    let empty = Map::new();
    let object = match constraints {
        Value::Null => &empty,
        Value::Object(object) => object,
        other => {
            return Err(bad_constraints(format!(
                "constraints must be a JSON object, got {}",
                kind(other)
            )))
        }
    };
    let allowed = var_type.constraint_keys();
    for key in object.keys() {
        if !allowed.contains(&key.as_str()) {
            let expected = if allowed.is_empty() {
                "it takes none".to_string()
            } else {
                format!("it takes {}", allowed.join(", "))
            };
            return Err(bad_constraints(format!(
                "unknown constraint {key:?} for type {var_type}; {expected}"
            )));
        }
    }

    let number = |key: &str| -> Result<Option<&Number>, StoreError> {
        match object.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(Some(n)),
            Some(other) => Err(bad_constraints(format!(
                "constraint {key:?} must be a number, got {}",
                describe(other)
            ))),
        }
    };
    let count = |key: &str, minimum: u64| -> Result<Option<u64>, StoreError> {
        match object.get(key) {
            None => Ok(None),
            Some(value) => match value.as_u64() {
                Some(n) if n >= minimum => Ok(Some(n)),
                _ => Err(bad_constraints(format!(
                    "constraint {key:?} must be an integer of at least {minimum}, got {}",
                    describe(value)
                ))),
            },
        }
    };

    match var_type {
        VarType::Float | VarType::Integer | VarType::Embedding => {
            if let (Some(min), Some(max)) = (number("min")?, number("max")?) {
                if compare(min, max) == Ordering::Greater {
                    return Err(bad_constraints(format!(
                        "constraint \"min\" ({min}) is above \"max\" ({max})"
                    )));
                }
            }
            if var_type == VarType::Embedding {
                count("dimensions", 1)?;
            }
        }
        VarType::String => {
            let min = count("min_length", 0)?;
            let max = count("max_length", 0)?;
            if let (Some(min), Some(max)) = (min, max) {
                if min > max {
                    return Err(bad_constraints(format!(
                        "constraint \"min_length\" ({min}) is above \"max_length\" ({max})"
                    )));
                }
            }
            check_choices(object.get("choices"), true)?;
        }
        VarType::Module => check_choices(object.get("choices"), true)?,
        VarType::Choice => match object.get("choices") {
            None => {
                return Err(bad_constraints(
                    "type choice requires the constraint \"choices\" (a non-empty array)".into(),
                ))
            }
            some => check_choices(some, false)?,
        },
        VarType::Tensor => {
            if let Some(shape) = object.get("shape") {
                shape_of(shape).map_err(|message| {
                    bad_constraints(format!("constraint \"shape\" {message}"))
                })?;
            }
        }
        VarType::Boolean | VarType::Json => {}
    }
    Ok(Value::Object(object.clone()))
}

/// Checks `value` for the variable `name` of type `var_type` with the
/// (already validated) `constraints`, and returns it normalized. Failures are
/// `InvalidValue` errors whose message says what is wrong in user terms.
pub fn validate_value(
    name: &str,
    var_type: VarType,
    constraints: &Value,
    value: &Value,
) -> Result<Value, StoreError> {
    let invalid = |message: String| StoreError::InvalidValue {
        name: name.to_string(),
        message,
    };
    let constraint = |key: &str| constraints.get(key);
    let bound = |key: &str| constraint(key).and_then(Value::as_number);

    match var_type {
        VarType::Float => {
            let n = expect_number(value).map_err(invalid)?;
            check_range(n, bound("min"), bound("max")).map_err(invalid)?;
            Ok(float_value(n))
        }
        VarType::Integer => {
            let n = expect_number(value).map_err(invalid)?;
            let n = integral(n).ok_or_else(|| invalid(format!("{n} is not an integer")))?;
            check_range(&n, bound("min"), bound("max")).map_err(invalid)?;
            Ok(Value::Number(n))
        }
        VarType::String => {
            let text = expect_string(value).map_err(invalid)?;
            let length = text.chars().count() as u64;
            if let Some(min) = constraint("min_length").and_then(Value::as_u64) {
                if length < min {
                    return Err(invalid(format!(
                        "{} has {length} characters, fewer than the minimum {min}",
                        short(value)
                    )));
                }
            }
            if let Some(max) = constraint("max_length").and_then(Value::as_u64) {
                if length > max {
                    return Err(invalid(format!(
                        "{} has {length} characters, more than the maximum {max}",
                        short(value)
                    )));
                }
            }
            check_membership(value, constraint("choices")).map_err(invalid)?;
            Ok(value.clone())
        }
        VarType::Boolean => match value {
            Value::Bool(_) => Ok(value.clone()),
            other => Err(invalid(format!(
                "expected true or false, got {}",
                describe(other)
            ))),
        },
        VarType::Choice => {
            check_membership(value, constraint("choices")).map_err(invalid)?;
            Ok(value.clone())
        }
        VarType::Module => {
            let text = expect_string(value).map_err(invalid)?;
            if text.is_empty() {
                return Err(invalid("a module name must not be empty".into()));
            }
            check_membership(value, constraint("choices")).map_err(invalid)?;
            Ok(value.clone())
        }
        VarType::Embedding => {
            let Value::Array(items) = value else {
                return Err(invalid(format!(
                    "expected an array of numbers, got {}",
                    describe(value)
                )));
            };
            if let Some(dimensions) = constraint("dimensions").and_then(Value::as_u64) {
                if items.len() as u64 != dimensions {
                    return Err(invalid(format!(
                        "expected {dimensions} dimensions, got {}",
                        items.len()
                    )));
                }
            }
            let (min, max) = (bound("min"), bound("max"));
            let mut normalized = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let n = expect_number(item)
                    .map_err(|message| invalid(format!("element {index}: {message}")))?;
                check_range(n, min, max)
                    .map_err(|message| invalid(format!("element {index}: {message}")))?;
                normalized.push(float_value(n));
            }
            Ok(Value::Array(normalized))
        }
        VarType::Tensor => {
            let (shape, data) = tensor_parts(value).map_err(invalid)?;
            if let Some(expected) = constraint("shape") {
                if let Ok(expected_shape) = shape_of(expected) {
                    if expected_shape != shape {
                        return Err(invalid(format!(
                            "shape {} differs from the required shape {}",
                            short(&value["shape"]),
                            short(expected)
                        )));
                    }
                }
            }
            let elements = shape
                .iter()
                .try_fold(1u64, |acc, d| acc.checked_mul(*d))
                .ok_or_else(|| invalid("the shape's element count overflows".into()))?;
            if data.len() as u64 != elements {
                return Err(invalid(format!(
                    "shape {} holds {elements} elements but data has {}",
                    short(&value["shape"]),
                    data.len()
                )));
            }
            for (index, item) in data.iter().enumerate() {
                expect_number(item)
                    .map_err(|message| invalid(format!("data element {index}: {message}")))?;
            }
            Ok(value.clone())
        }
        VarType::Json => Ok(value.clone()),
    }
}

fn bad_constraints(message: String) -> StoreError {
    StoreError::InvalidConstraints(message)
}

/// `choices`, when present, must be a non-empty array of scalars.
fn check_choices(choices: Option<&Value>, strings_only: bool) -> Result<(), StoreError> {
    let Some(choices) = choices else {
        return Ok(());
    };
    let what = if strings_only {
        "a non-empty array of strings"
    } else {
        "a non-empty array of strings, numbers or booleans"
    };
    let ok = match choices {
        Value::Array(items) => {
            !items.is_empty()
                && items.iter().all(|item| match item {
                    Value::String(_) => true,
                    Value::Number(_) | Value::Bool(_) => !strings_only,
                    _ => false,
                })
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(bad_constraints(format!(
            "constraint \"choices\" must be {what}, got {}",
            describe(choices)
        )))
    }
}

fn check_membership(value: &Value, choices: Option<&Value>) -> Result<(), String> {
    let Some(Value::Array(items)) = choices else {
        return Ok(());
    };
    if items.iter().any(|choice| same_scalar(choice, value)) {
        Ok(())
    } else {
        Err(format!(
            "{} is not one of the choices {}",
            short(value),
            short(choices.unwrap_or(&Value::Null))
        ))
    }
}

/// Equality where `1` and `1.0` are the same number.
fn same_scalar(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare(x, y) == Ordering::Equal,
        _ => a == b,
    }
}

fn expect_number(value: &Value) -> Result<&Number, String> {
    match value {
        Value::Number(n) => Ok(n),
        other => Err(format!("expected a number, got {}", describe(other))),
    }
}

fn expect_string(value: &Value) -> Result<&str, String> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(format!("expected a string, got {}", describe(other))),
    }
}

/// The integer `n` denotes, if any (`3.0` is `3`).
fn integral(n: &Number) -> Option<Number> {
    if n.is_i64() || n.is_u64() {
        return Some(n.clone());
    }
    let f = n.as_f64()?;
    // The bounds are exactly representable: -2^63 and 2^63.
    if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
        Some(Number::from(f as i64))
    } else {
        None
    }
}

fn float_value(n: &Number) -> Value {
    n.as_f64()
        .and_then(Number::from_f64)
        .map(Value::Number)
        .unwrap_or_else(|| Value::Number(n.clone()))
}

/// Exact for integers, IEEE order otherwise.
fn compare(a: &Number, b: &Number) -> Ordering {
    fn as_int(n: &Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => {
            let x = a.as_f64().unwrap_or(f64::NAN);
            let y = b.as_f64().unwrap_or(f64::NAN);
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
    }
}

fn check_range(n: &Number, min: Option<&Number>, max: Option<&Number>) -> Result<(), String> {
    if let Some(min) = min {
        if compare(n, min) == Ordering::Less {
            return Err(format!("{n} is below the minimum {min}"));
        }
    }
    if let Some(max) = max {
        if compare(n, max) == Ordering::Greater {
            return Err(format!("{n} is above the maximum {max}"));
        }
    }
    Ok(())
}

/// A shape: an array of non-negative integers.
fn shape_of(value: &Value) -> Result<Vec<u64>, String> {
    let fail = || {
        format!(
            "must be an array of non-negative integers, got {}",
            describe(value)
        )
    };
    let Value::Array(items) = value else {
        return Err(fail());
    };
    items
        .iter()
        .map(|item| item.as_u64().ok_or_else(fail))
        .collect()
}

fn tensor_parts(value: &Value) -> Result<(Vec<u64>, &Vec<Value>), String> {
    const EXPECTED: &str = "expected an object {\"shape\": [...], \"data\": [...]}";
    let Value::Object(object) = value else {
        return Err(format!("{EXPECTED}, got {}", describe(value)));
    };
    if let Some(key) = object.keys().find(|k| *k != "shape" && *k != "data") {
        return Err(format!("{EXPECTED}; unexpected key {key:?}"));
    }
    let shape = object
        .get("shape")
        .ok_or_else(|| format!("{EXPECTED}; \"shape\" is missing"))?;
    let shape = shape_of(shape).map_err(|message| format!("\"shape\" {message}"))?;
    match object.get("data") {
        Some(Value::Array(data)) => Ok((shape, data)),
        Some(other) => Err(format!(
            "\"data\" must be an array of numbers, got {}",
            describe(other)
        )),
        None => Err(format!("{EXPECTED}; \"data\" is missing")),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value for a "got ..." message: its kind and, compactly, itself.
fn describe(value: &Value) -> String {
    match value {
        Value::Null | Value::Number(_) | Value::Bool(_) => short(value),
        other => format!("{} {}", kind(other), short(other)),
    }
}

/// The value as compact JSON, cut short when long.
fn short(value: &Value) -> String {
    const LIMIT: usize = 60;
    let text = value.to_string();
    if text.len() <= LIMIT {
        return text;
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn value(var_type: VarType, constraints: Value, v: Value) -> Result<Value, StoreError> {
        let constraints = validate_constraints(var_type, &constraints)?;
        validate_value("x", var_type, &constraints, &v)
    }

    fn message(result: Result<Value, StoreError>) -> String {
        match result {
            Err(StoreError::InvalidValue { name, message }) => {
                assert_eq!(name, "x");
                message
            }
            other => panic!("expected InvalidValue, got {other:?}"),
        }
    }

    fn constraints_error(var_type: VarType, constraints: Value) -> String {
        match validate_constraints(var_type, &constraints) {
            Err(StoreError::InvalidConstraints(message)) => message,
            other => panic!("expected InvalidConstraints, got {other:?}"),
        }
    }

    #[test]
    fn type_names_round_trip() {
        for t in VarType::ALL {
            assert_eq!(VarType::parse(t.as_str()), Ok(t));
        }
        let err = VarType::parse("number").unwrap_err();
        assert_eq!(err.reason(), "invalid_type");
        let text = err.to_string();
        assert!(text.contains("\"number\""), "{text}");
        assert!(text.contains("float, integer, string"), "{text}");
        assert!(VarType::parse("Float").is_err());
    }

    #[test]
    fn null_constraints_become_empty_object() {
        for t in VarType::ALL {
            if t == VarType::Choice {
                continue;
            }
            assert_eq!(validate_constraints(t, &Value::Null), Ok(json!({})));
            assert_eq!(validate_constraints(t, &json!({})), Ok(json!({})));
        }
    }

    #[test]
    fn constraints_must_be_an_object() {
        let text = constraints_error(VarType::Float, json!([1, 2]));
        assert!(text.contains("JSON object"), "{text}");
    }

    #[test]
    fn unknown_constraint_keys_are_refused() {
        let text = constraints_error(VarType::Float, json!({"minimum": 1}));
        assert!(
            text.contains("\"minimum\"") && text.contains("min, max"),
            "{text}"
        );
        constraints_error(VarType::Boolean, json!({"min": 1}));
        constraints_error(VarType::Json, json!({"schema": {}}));
        constraints_error(VarType::Integer, json!({"choices": [1]}));
        constraints_error(VarType::Tensor, json!({"dimensions": 3}));
        constraints_error(VarType::Embedding, json!({"shape": [3]}));
        constraints_error(VarType::Module, json!({"max_length": 3}));
    }

    #[test]
    fn constraint_kinds_are_checked() {
        constraints_error(VarType::Float, json!({"min": "0"}));
        let text = constraints_error(VarType::Float, json!({"min": 5, "max": 1}));
        assert!(text.contains("above"), "{text}");
        constraints_error(VarType::Integer, json!({"min": 2.5, "max": 2}));
        constraints_error(VarType::String, json!({"min_length": -1}));
        constraints_error(VarType::String, json!({"max_length": 1.5}));
        constraints_error(VarType::String, json!({"min_length": 3, "max_length": 2}));
        constraints_error(VarType::String, json!({"choices": "a"}));
        constraints_error(VarType::String, json!({"choices": []}));
        constraints_error(VarType::String, json!({"choices": ["a", 1]}));
        constraints_error(VarType::Choice, json!({}));
        constraints_error(VarType::Choice, json!({"choices": []}));
        constraints_error(VarType::Choice, json!({"choices": [["a"]]}));
        constraints_error(VarType::Module, json!({"choices": [1]}));
        constraints_error(VarType::Embedding, json!({"dimensions": 0}));
        constraints_error(VarType::Embedding, json!({"dimensions": -3}));
        constraints_error(VarType::Embedding, json!({"min": 1, "max": 0}));
        constraints_error(VarType::Tensor, json!({"shape": [2, -1]}));
        constraints_error(VarType::Tensor, json!({"shape": 3}));

        // Valid ones are kept as given.
        let ok = json!({"min": 0, "max": 1.5});
        assert_eq!(validate_constraints(VarType::Float, &ok), Ok(ok.clone()));
        assert!(validate_constraints(VarType::Integer, &json!({"min": 1, "max": 1})).is_ok());
        assert!(validate_constraints(
            VarType::String,
            &json!({"min_length": 0, "max_length": 5, "choices": ["a"]})
        )
        .is_ok());
        assert!(validate_constraints(VarType::Choice, &json!({"choices": ["a", 2, true]})).is_ok());
        assert!(validate_constraints(VarType::Embedding, &json!({"dimensions": 3})).is_ok());
        assert!(validate_constraints(VarType::Tensor, &json!({"shape": [0, 2]})).is_ok());
    }

    #[test]
    fn float_values() {
        assert_eq!(
            value(VarType::Float, json!(null), json!(1.5)),
            Ok(json!(1.5))
        );
        // Integers are stored as floats.
        let stored = value(VarType::Float, json!(null), json!(3)).unwrap();
        assert!(stored.is_f64());
        assert_eq!(stored, json!(3.0));
        let text = message(value(VarType::Float, json!({"max": 10}), json!(12.5)));
        assert_eq!(text, "12.5 is above the maximum 10");
        let text = message(value(VarType::Float, json!({"min": 0}), json!(-1)));
        assert_eq!(text, "-1 is below the minimum 0");
        assert!(value(VarType::Float, json!({"min": 0, "max": 10}), json!(10)).is_ok());
        let text = message(value(VarType::Float, json!(null), json!("1.5")));
        assert_eq!(text, "expected a number, got a string \"1.5\"");
        message(value(VarType::Float, json!(null), json!(null)));
        message(value(VarType::Float, json!(null), json!(true)));
    }

    #[test]
    fn integer_values() {
        assert_eq!(value(VarType::Integer, json!(null), json!(7)), Ok(json!(7)));
        let stored = value(VarType::Integer, json!(null), json!(3.0)).unwrap();
        assert!(stored.is_i64());
        assert_eq!(stored, json!(3));
        assert_eq!(
            value(VarType::Integer, json!(null), json!(u64::MAX)),
            Ok(json!(u64::MAX))
        );
        assert_eq!(
            message(value(VarType::Integer, json!(null), json!(3.5))),
            "3.5 is not an integer"
        );
        message(value(VarType::Integer, json!(null), json!(1e300)));
        assert_eq!(
            message(value(
                VarType::Integer,
                json!({"min": 1, "max": 5}),
                json!(6)
            )),
            "6 is above the maximum 5"
        );
        assert!(value(VarType::Integer, json!({"min": 1, "max": 5}), json!(5)).is_ok());
        message(value(VarType::Integer, json!(null), json!("3")));
        // Exact comparison for big integers.
        let max = json!({"max": 9007199254740992u64});
        assert!(value(VarType::Integer, max.clone(), json!(9007199254740992u64)).is_ok());
        message(value(VarType::Integer, max, json!(9007199254740993u64)));
    }

    #[test]
    fn string_values() {
        assert_eq!(
            value(VarType::String, json!(null), json!("")),
            Ok(json!(""))
        );
        message(value(VarType::String, json!(null), json!(1)));
        let c = json!({"min_length": 2, "max_length": 4});
        // Lengths count characters, not bytes.
        assert!(value(VarType::String, c.clone(), json!("éé")).is_ok());
        assert!(value(VarType::String, c.clone(), json!("éééé")).is_ok());
        assert_eq!(
            message(value(VarType::String, c.clone(), json!("a"))),
            "\"a\" has 1 characters, fewer than the minimum 2"
        );
        message(value(VarType::String, c, json!("abcde")));
        let c = json!({"choices": ["red", "green"]});
        assert!(value(VarType::String, c.clone(), json!("red")).is_ok());
        assert_eq!(
            message(value(VarType::String, c, json!("blue"))),
            "\"blue\" is not one of the choices [\"red\",\"green\"]"
        );
    }

    #[test]
    fn boolean_values() {
        assert_eq!(
            value(VarType::Boolean, json!(null), json!(true)),
            Ok(json!(true))
        );
        assert_eq!(
            value(VarType::Boolean, json!(null), json!(false)),
            Ok(json!(false))
        );
        message(value(VarType::Boolean, json!(null), json!(1)));
        message(value(VarType::Boolean, json!(null), json!("true")));
    }

    #[test]
    fn choice_values() {
        let c = json!({"choices": ["a", "b", 3]});
        assert!(value(VarType::Choice, c.clone(), json!("a")).is_ok());
        assert!(value(VarType::Choice, c.clone(), json!(3)).is_ok());
        assert!(value(VarType::Choice, c.clone(), json!(3.0)).is_ok());
        message(value(VarType::Choice, c.clone(), json!("c")));
        message(value(VarType::Choice, c, json!(null)));
        assert!(validate_constraints(VarType::Choice, &Value::Null).is_err());
    }

    #[test]
    fn module_values() {
        assert!(value(VarType::Module, json!(null), json!("numpy.linalg")).is_ok());
        message(value(VarType::Module, json!(null), json!("")));
        message(value(VarType::Module, json!(null), json!(3)));
        let c = json!({"choices": ["ChainOfThought", "Predict"]});
        assert!(value(VarType::Module, c.clone(), json!("Predict")).is_ok());
        message(value(VarType::Module, c, json!("ReAct")));
    }

    #[test]
    fn embedding_values() {
        let stored = value(VarType::Embedding, json!(null), json!([1, 2.5, -3])).unwrap();
        assert_eq!(stored, json!([1.0, 2.5, -3.0]));
        assert!(stored.as_array().unwrap().iter().all(Value::is_f64));
        assert_eq!(
            value(VarType::Embedding, json!(null), json!([])),
            Ok(json!([]))
        );
        message(value(VarType::Embedding, json!(null), json!("1,2")));
        assert_eq!(
            message(value(VarType::Embedding, json!(null), json!([1, "2"]))),
            "element 1: expected a number, got a string \"2\""
        );
        let c = json!({"dimensions": 3, "min": -1, "max": 1});
        assert!(value(VarType::Embedding, c.clone(), json!([0, 0.5, -1])).is_ok());
        assert_eq!(
            message(value(VarType::Embedding, c.clone(), json!([0, 0]))),
            "expected 3 dimensions, got 2"
        );
        assert_eq!(
            message(value(VarType::Embedding, c, json!([0, 1.5, 0]))),
            "element 1: 1.5 is above the maximum 1"
        );
    }

    #[test]
    fn tensor_values() {
        let t = json!({"shape": [2, 3], "data": [1, 2, 3, 4, 5, 6.5]});
        assert_eq!(
            value(VarType::Tensor, json!(null), t.clone()),
            Ok(t.clone())
        );
        assert!(value(
            VarType::Tensor,
            json!(null),
            json!({"shape": [], "data": [1]})
        )
        .is_ok());
        assert!(value(
            VarType::Tensor,
            json!(null),
            json!({"shape": [0], "data": []})
        )
        .is_ok());
        assert_eq!(
            message(value(
                VarType::Tensor,
                json!(null),
                json!({"shape": [2, 2], "data": [1, 2, 3]})
            )),
            "shape [2,2] holds 4 elements but data has 3"
        );
        message(value(VarType::Tensor, json!(null), json!([1, 2])));
        message(value(VarType::Tensor, json!(null), json!({"shape": [1]})));
        message(value(VarType::Tensor, json!(null), json!({"data": [1]})));
        message(value(
            VarType::Tensor,
            json!(null),
            json!({"shape": [-1], "data": []}),
        ));
        message(value(
            VarType::Tensor,
            json!(null),
            json!({"shape": [1], "data": ["a"]}),
        ));
        message(value(
            VarType::Tensor,
            json!(null),
            json!({"shape": [1], "data": [1], "dtype": "f32"}),
        ));
        message(value(
            VarType::Tensor,
            json!(null),
            json!({"shape": [u64::MAX, 4], "data": []}),
        ));
        let c = json!({"shape": [2, 3]});
        assert!(value(VarType::Tensor, c.clone(), t).is_ok());
        assert_eq!(
            message(value(
                VarType::Tensor,
                c,
                json!({"shape": [3, 2], "data": [1, 2, 3, 4, 5, 6]})
            )),
            "shape [3,2] differs from the required shape [2,3]"
        );
    }

    #[test]
    fn json_values() {
        for v in [json!(null), json!({"a": [1, "b"]}), json!("s"), json!(1.5)] {
            assert_eq!(value(VarType::Json, json!(null), v.clone()), Ok(v));
        }
    }

    #[test]
    fn long_values_are_cut_short_in_messages() {
        let long = "x".repeat(500);
        let text = message(value(VarType::Float, json!(null), json!(long)));
        assert!(text.len() < 120, "{text}");
        assert!(text.ends_with('…'), "{text}");
    }
}
