//! The chunk envelope that an `execute_stream` callback receives.
//!
//! A chunk becomes a string-keyed map: the decoded JSON object of its payload
//! (a non-object JSON value arrives as `{"data": value}`, raw bytes as
//! `{"raw_data_base64": ...}`), plus `"is_final"` and, when non-empty,
//! `"_metadata"`. The first final chunk's metadata is decorated with
//! `execution_time_ms`, `tool_type` and `worker_id`; a stream that ends without
//! a final chunk gets a synthetic one marked `"synthetic_final" => "true"`.

use std::collections::HashMap;
use std::time::Instant;

use base64::Engine;
use serde_json::{Map, Value};

use crate::proto::{Payload, PayloadKind, ToolChunk};
use crate::CoreError;

/// The value a tool produced, decoded from its payload.
pub fn decode_payload(payload: &Payload) -> Result<Value, CoreError> {
    match PayloadKind::try_from(payload.kind).unwrap_or(PayloadKind::Json) {
        PayloadKind::Json if payload.data.is_empty() => Ok(Value::Null),
        PayloadKind::Json => Ok(serde_json::from_slice(&payload.data)?),
        PayloadKind::Raw => Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(&payload.data),
        )),
    }
}

/// Builds the envelope map of one chunk, without final-chunk decoration.
pub fn chunk_envelope(
    payload: Option<&Payload>,
    is_final: bool,
    metadata: &HashMap<String, String>,
) -> Result<Map<String, Value>, CoreError> {
    let mut map = match payload {
        None => Map::new(),
        Some(payload) => {
            let raw = payload.kind == PayloadKind::Raw as i32;
            match decode_payload(payload)? {
                Value::Object(map) if !raw => map,
                value => {
                    let key = if raw { "raw_data_base64" } else { "data" };
                    Map::from_iter([(key.to_owned(), value)])
                }
            }
        }
    };
    map.insert("is_final".into(), Value::Bool(is_final));
    if !metadata.is_empty() {
        let metadata = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        map.insert("_metadata".into(), Value::Object(metadata));
    }
    Ok(map)
}

/// Turns the chunks of one stream into envelopes, in order.
pub struct StreamEnvelopes {
    started: Instant,
    worker_id: String,
    saw_final: bool,
}

impl StreamEnvelopes {
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            started: Instant::now(),
            worker_id: worker_id.into(),
            saw_final: false,
        }
    }

    /// The envelope of `chunk`; the first final one carries the decoration.
    pub fn envelope(&mut self, chunk: &ToolChunk) -> Result<Map<String, Value>, CoreError> {
        let decorate = chunk.is_final && !self.saw_final;
        self.saw_final |= chunk.is_final;
        if decorate {
            let mut metadata = chunk.metadata.clone();
            self.decorate(&mut metadata);
            chunk_envelope(chunk.payload.as_ref(), true, &metadata)
        } else {
            chunk_envelope(chunk.payload.as_ref(), chunk.is_final, &chunk.metadata)
        }
    }

    /// Call when the stream ended cleanly: the synthetic final chunk, if needed.
    pub fn finish(&mut self) -> Option<Map<String, Value>> {
        if self.saw_final {
            return None;
        }
        self.saw_final = true;
        let mut metadata = HashMap::from([("synthetic_final".to_owned(), "true".to_owned())]);
        self.decorate(&mut metadata);
        chunk_envelope(None, true, &metadata).ok()
    }

    fn decorate(&self, metadata: &mut HashMap<String, String>) {
        let elapsed = self.started.elapsed().as_millis().to_string();
        metadata.insert("execution_time_ms".into(), elapsed);
        metadata.insert("tool_type".into(), "remote".into());
        metadata.insert("worker_id".into(), self.worker_id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_chunk(text: &str, is_final: bool) -> ToolChunk {
        ToolChunk {
            payload: Some(Payload {
                kind: PayloadKind::Json as i32,
                data: text.as_bytes().to_vec(),
            }),
            is_final,
            metadata: HashMap::new(),
            error: None,
        }
    }

    #[test]
    fn objects_merge_and_scalars_wrap() {
        let mut envelopes = StreamEnvelopes::new("w1");
        let map = envelopes
            .envelope(&json_chunk(r#"{"step":1}"#, false))
            .unwrap();
        assert_eq!(Value::Object(map), json!({"step": 1, "is_final": false}));
        let map = envelopes.envelope(&json_chunk("[1,2]", false)).unwrap();
        assert_eq!(
            Value::Object(map),
            json!({"data": [1, 2], "is_final": false})
        );
    }

    #[test]
    fn raw_payloads_become_base64() {
        let payload = Payload {
            kind: PayloadKind::Raw as i32,
            data: vec![0, 255, 1],
        };
        let map = chunk_envelope(Some(&payload), false, &HashMap::new()).unwrap();
        assert_eq!(map["raw_data_base64"], json!("AP8B"));
    }

    #[test]
    fn final_chunk_is_decorated_once() {
        let mut envelopes = StreamEnvelopes::new("w7");
        let map = envelopes
            .envelope(&json_chunk(r#"{"done":true}"#, true))
            .unwrap();
        let metadata = map["_metadata"].as_object().unwrap();
        assert_eq!(metadata["worker_id"], json!("w7"));
        assert_eq!(metadata["tool_type"], json!("remote"));
        assert!(metadata["execution_time_ms"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok());
        assert_eq!(map["is_final"], json!(true));
        assert!(envelopes.finish().is_none());
    }

    #[test]
    fn missing_final_chunk_is_synthesized() {
        let mut envelopes = StreamEnvelopes::new("w1");
        envelopes
            .envelope(&json_chunk(r#"{"n":1}"#, false))
            .unwrap();
        let map = envelopes.finish().unwrap();
        assert_eq!(map["is_final"], json!(true));
        assert_eq!(map["_metadata"]["synthetic_final"], json!("true"));
        assert!(envelopes.finish().is_none());
    }

    #[test]
    fn invalid_json_is_an_error() {
        let mut envelopes = StreamEnvelopes::new("w1");
        assert!(envelopes.envelope(&json_chunk("{nope", false)).is_err());
    }
}
