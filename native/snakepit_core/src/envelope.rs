//! The chunk envelope that an `execute_stream` callback receives.
//!
//! A chunk becomes a string-keyed map: the decoded JSON object of its payload
//! (a non-object JSON value arrives as `{"data": value}`, raw bytes as
//! `{"raw_data_base64": ...}`), plus `"is_final"` and, when non-empty,
//! `"_metadata"`. The first final chunk's metadata is decorated with
//! `execution_time_ms`, `tool_type` and `worker_id`; a stream that ends without
//! a final chunk gets a synthetic one marked `"synthetic_final" => "true"`.
//!
//! With [`BinaryMode::Raw`], raw bytes are not base64-encoded: the envelope
//! carries them aside (`Envelope::raw_data`) for the caller to place under
//! `"data"` as a binary, so no copy is spent on text.

use std::collections::HashMap;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::proto::{Payload, PayloadKind, ToolChunk};
use crate::CoreError;

/// How raw (non-JSON) chunk payloads reach the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryMode {
    /// As a base64 string under `"raw_data_base64"` (the seeds' envelope).
    Base64,
    /// As the bytes themselves, under `"data"`.
    Raw,
}

/// One chunk as the caller receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The JSON fields of the envelope.
    pub fields: Map<String, Value>,
    /// In [`BinaryMode::Raw`], the raw payload, to be put under `"data"`
    /// (a slice of the receive buffer, not a copy).
    pub raw_data: Option<Bytes>,
}

/// The value a tool produced, decoded from its JSON payload.
pub fn decode_json(data: &[u8]) -> Result<Value, CoreError> {
    if data.is_empty() {
        Ok(Value::Null)
    } else {
        Ok(crate::json::parse(data)?)
    }
}

/// Builds the envelope of one chunk, without final-chunk decoration.
pub fn chunk_envelope(
    payload: Option<Payload>,
    is_final: bool,
    metadata: &HashMap<String, String>,
    mode: BinaryMode,
) -> Result<Envelope, CoreError> {
    let mut raw_data = None;
    let mut fields = match payload {
        None => Map::new(),
        Some(payload) if payload.kind == PayloadKind::Raw as i32 => match mode {
            BinaryMode::Base64 => {
                let text = base64::engine::general_purpose::STANDARD.encode(&payload.data);
                Map::from_iter([("raw_data_base64".to_owned(), Value::String(text))])
            }
            BinaryMode::Raw => {
                raw_data = Some(payload.data);
                Map::new()
            }
        },
        Some(payload) => match decode_json(&payload.data)? {
            Value::Object(map) => map,
            value => Map::from_iter([("data".to_owned(), value)]),
        },
    };
    fields.insert("is_final".into(), Value::Bool(is_final));
    if !metadata.is_empty() {
        let metadata = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        fields.insert("_metadata".into(), Value::Object(metadata));
    }
    Ok(Envelope { fields, raw_data })
}

/// Turns the chunks of one stream into envelopes, in order.
pub struct StreamEnvelopes {
    started: Instant,
    worker_id: String,
    mode: BinaryMode,
    saw_final: bool,
}

impl StreamEnvelopes {
    pub fn new(worker_id: impl Into<String>, mode: BinaryMode) -> Self {
        Self {
            started: Instant::now(),
            worker_id: worker_id.into(),
            mode,
            saw_final: false,
        }
    }

    /// The envelope of `chunk`; the first final one carries the decoration.
    pub fn envelope(&mut self, chunk: ToolChunk) -> Result<Envelope, CoreError> {
        let decorate = chunk.is_final && !self.saw_final;
        self.saw_final |= chunk.is_final;
        let mut metadata = chunk.metadata;
        if decorate {
            self.decorate(&mut metadata);
        }
        chunk_envelope(chunk.payload, chunk.is_final, &metadata, self.mode)
    }

    /// Call when the stream ended cleanly: the synthetic final chunk, if needed.
    pub fn finish(&mut self) -> Option<Envelope> {
        if self.saw_final {
            return None;
        }
        self.saw_final = true;
        let mut metadata = HashMap::from([("synthetic_final".to_owned(), "true".to_owned())]);
        self.decorate(&mut metadata);
        chunk_envelope(None, true, &metadata, self.mode).ok()
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
                data: Bytes::copy_from_slice(text.as_bytes()),
            }),
            is_final,
            metadata: HashMap::new(),
            error: None,
        }
    }

    fn fields(envelope: Envelope) -> Value {
        Value::Object(envelope.fields)
    }

    #[test]
    fn objects_merge_and_scalars_wrap() {
        let mut envelopes = StreamEnvelopes::new("w1", BinaryMode::Base64);
        let object = envelopes.envelope(json_chunk(r#"{"step":1}"#, false));
        assert_eq!(
            fields(object.unwrap()),
            json!({"step": 1, "is_final": false})
        );
        let list = envelopes.envelope(json_chunk("[1,2]", false));
        assert_eq!(
            fields(list.unwrap()),
            json!({"data": [1, 2], "is_final": false})
        );
    }

    #[test]
    fn raw_payloads_become_base64_or_stay_bytes() {
        let payload = Payload {
            kind: PayloadKind::Raw as i32,
            data: Bytes::from_static(&[0, 255, 1]),
        };
        let none = HashMap::new();
        let base64 = chunk_envelope(Some(payload.clone()), false, &none, BinaryMode::Base64);
        let base64 = base64.unwrap();
        assert_eq!(base64.fields["raw_data_base64"], json!("AP8B"));
        assert_eq!(base64.raw_data, None);

        let raw = chunk_envelope(Some(payload), false, &none, BinaryMode::Raw).unwrap();
        assert_eq!(raw.raw_data, Some(Bytes::from_static(&[0, 255, 1])));
        assert_eq!(fields(raw), json!({"is_final": false}));
    }

    #[test]
    fn final_chunk_is_decorated_once() {
        let mut envelopes = StreamEnvelopes::new("w7", BinaryMode::Base64);
        let map = fields(
            envelopes
                .envelope(json_chunk(r#"{"done":true}"#, true))
                .unwrap(),
        );
        let metadata = map["_metadata"].as_object().unwrap();
        assert_eq!(metadata["worker_id"], json!("w7"));
        assert_eq!(metadata["tool_type"], json!("remote"));
        let elapsed = metadata["execution_time_ms"].as_str().unwrap();
        assert!(elapsed.parse::<u64>().is_ok());
        assert_eq!(map["is_final"], json!(true));
        assert!(envelopes.finish().is_none());
    }

    #[test]
    fn missing_final_chunk_is_synthesized() {
        let mut envelopes = StreamEnvelopes::new("w1", BinaryMode::Base64);
        envelopes.envelope(json_chunk(r#"{"n":1}"#, false)).unwrap();
        let map = fields(envelopes.finish().unwrap());
        assert_eq!(map["is_final"], json!(true));
        assert_eq!(map["_metadata"]["synthetic_final"], json!("true"));
        assert!(envelopes.finish().is_none());
    }

    #[test]
    fn invalid_json_is_an_error() {
        let mut envelopes = StreamEnvelopes::new("w1", BinaryMode::Base64);
        assert!(envelopes.envelope(json_chunk("{nope", false)).is_err());
    }
}
