//! Between the store's types and the wire's.
//!
//! Times travel as Unix microseconds and values as JSON text. JSON that does
//! not parse is refused here (`invalid_argument`, naming the field) before the
//! store sees the request; whether a parsed value fits its variable is the
//! store's call (`invalid_value`).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tonic::Status;

use super::status::invalid_argument;
use crate::proto;
use crate::session::{self, Source};

/// Unix time in microseconds (negative before 1970, saturating far away).
pub(crate) fn micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros())
            .map(|us| -us)
            .unwrap_or(i64::MIN),
    }
}

/// JSON text of a value.
pub(crate) fn json_bytes(value: &Value) -> Vec<u8> {
    // A `Value` always serializes: its map keys are strings.
    serde_json::to_vec(value).expect("a JSON value serializes")
}

/// Parses the JSON text of `field` (exact numbers, no merged keys, bounded
/// nesting: see `json::parse`).
pub(crate) fn parse_json(field: &str, bytes: &[u8]) -> Result<Value, Status> {
    crate::json::parse(bytes).map_err(|e| {
        invalid_argument(match e.kind {
            crate::json::JsonErrorKind::Syntax => format!("{field} is not valid JSON: {e}"),
            _ => format!("{field}: {e}"),
        })
    })
}

/// Parses constraints, where empty text means none (`{}`).
pub(crate) fn parse_constraints(field: &str, bytes: &[u8]) -> Result<Value, Status> {
    if bytes.is_empty() {
        Ok(Value::Object(serde_json::Map::new()))
    } else {
        parse_json(field, bytes)
    }
}

/// A writer's source; empty means `client`.
pub(crate) fn source(text: &str) -> Result<Source, Status> {
    Source::parse(text).ok_or_else(|| {
        invalid_argument(format!(
            "source {text:?} is not \"elixir\", \"python\" or \"client\""
        ))
    })
}

pub(crate) fn session_info(info: &session::SessionInfo) -> proto::SessionInfo {
    proto::SessionInfo {
        session_id: info.id.clone(),
        created_at_us: micros(info.created_at),
        last_used_at_us: micros(info.last_used_at),
        ttl_seconds: u32::try_from(info.ttl.as_secs()).unwrap_or(u32::MAX),
        expires_at_us: micros(info.expires_at),
        metadata: info.metadata.clone(),
        variable_count: saturating_u32(info.variable_count),
        watcher_count: saturating_u32(info.watcher_count),
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(crate) fn variable(var: &session::Variable) -> proto::Variable {
    proto::Variable {
        id: var.id.clone(),
        name: var.name.clone(),
        r#type: var.var_type.as_str().to_owned(),
        value_json: json_bytes(&var.value),
        constraints_json: json_bytes(&var.constraints),
        metadata: var.metadata.clone(),
        version: var.version,
        source: var.source.as_str().to_owned(),
        update_metadata: var.update_metadata.clone(),
        created_at_us: micros(var.created_at),
        updated_at_us: micros(var.updated_at),
    }
}

pub(crate) fn variables(vars: &[session::Variable]) -> Vec<proto::Variable> {
    vars.iter().map(variable).collect()
}

pub(crate) fn update(update: &session::VariableUpdate) -> proto::VariableUpdate {
    proto::VariableUpdate {
        update_type: update.update_type.as_str().to_owned(),
        variable_id: update.variable.id.clone(),
        variable: Some(variable(&update.variable)),
        old_value_json: update
            .old_value
            .as_ref()
            .map(json_bytes)
            .unwrap_or_default(),
        update_source: update.source.as_str().to_owned(),
        update_metadata: update.metadata.clone(),
        timestamp_us: micros(update.timestamp),
        version: update.variable.version,
    }
}

/// The update a quiet watch stream sends so its client knows it is alive.
pub(crate) fn heartbeat(now: SystemTime) -> proto::VariableUpdate {
    proto::VariableUpdate {
        update_type: "heartbeat".to_owned(),
        timestamp_us: micros(now),
        ..Default::default()
    }
}

pub(crate) fn variable_spec(
    request: proto::RegisterVariableRequest,
) -> Result<session::VariableSpec, Status> {
    Ok(session::VariableSpec {
        value: parse_json("value_json", &request.value_json)?,
        constraints: parse_constraints("constraints_json", &request.constraints_json)?,
        name: request.name,
        var_type: request.r#type,
        metadata: request.metadata,
    })
}

/// One write; `field` names it in errors (`write`, `writes[2]`).
pub(crate) fn write(
    field: &str,
    write: proto::VariableWrite,
) -> Result<session::VariableWrite, Status> {
    Ok(session::VariableWrite {
        value: parse_json(&format!("{field}.value_json"), &write.value_json)?,
        identifier: write.identifier,
        expected_version: write.expected_version,
        metadata: write.metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::error_reason;
    use std::collections::HashMap;
    use std::time::Duration;

    #[test]
    fn times_are_unix_microseconds() {
        assert_eq!(micros(UNIX_EPOCH), 0);
        assert_eq!(
            micros(UNIX_EPOCH + Duration::from_micros(1_500_001)),
            1_500_001
        );
        assert_eq!(micros(UNIX_EPOCH - Duration::from_micros(7)), -7);
    }

    #[test]
    fn bad_json_is_an_invalid_argument_naming_the_field() {
        let status = parse_json("writes[1].value_json", b"{nope").unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(error_reason(&status), Some("invalid_argument"));
        assert!(status
            .message()
            .starts_with("writes[1].value_json is not valid JSON"));
        assert!(parse_json("value_json", b"").is_err());
        assert_eq!(
            parse_json("value_json", b" 1.5 ").unwrap(),
            Value::from(1.5)
        );
    }

    #[test]
    fn empty_constraints_are_an_empty_object() {
        assert_eq!(
            parse_constraints("constraints_json", b"").unwrap(),
            serde_json::json!({})
        );
        assert_eq!(
            parse_constraints("constraints_json", br#"{"min":1}"#).unwrap(),
            serde_json::json!({"min": 1})
        );
        assert!(parse_constraints("constraints_json", b"{").is_err());
    }

    #[test]
    fn sources_default_to_client() {
        assert_eq!(source("").unwrap(), Source::Client);
        assert_eq!(source("python").unwrap(), Source::Python);
        let status = source("ruby").unwrap_err();
        assert_eq!(error_reason(&status), Some("invalid_argument"));
    }

    #[test]
    fn writes_keep_identifier_version_and_metadata() {
        let converted = write(
            "write",
            proto::VariableWrite {
                identifier: "x".into(),
                value_json: b"[1,2]".to_vec(),
                expected_version: Some(3),
                metadata: HashMap::from([("why".into(), "test".into())]),
            },
        )
        .unwrap();
        assert_eq!(converted.identifier, "x");
        assert_eq!(converted.value, serde_json::json!([1, 2]));
        assert_eq!(converted.expected_version, Some(3));
        assert_eq!(converted.metadata["why"], "test");
    }
}
