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
//!
//! Reserved keys: `"is_final"` and `"_metadata"` ([`RESERVED_KEYS`]) are the
//! envelope's own, and [`NODE_METADATA_KEYS`] are the node's within
//! `"_metadata"`. A chunk whose JSON object already holds a reserved key, or
//! whose metadata uses a node key, is refused ([`CoreError::Chunk`], naming
//! the key) rather than having one value silently replace the other. The
//! Python worker lifts a yielded dict's `"is_final"` (a boolean) and
//! `"_metadata"` (a dict of strings) into the chunk's flag and metadata
//! before sending, and refuses them ill-typed; what reaches this check is a
//! `StreamChunk` whose `data` holds such a key, or a worker of another kind.

use std::collections::HashMap;
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::proto::{Payload, PayloadKind, ToolChunk};
use crate::CoreError;

/// The envelope's own keys: a chunk's JSON object may not hold them.
pub const RESERVED_KEYS: [&str; 2] = ["is_final", "_metadata"];

/// The metadata keys the node writes (on the final chunk, or the synthetic
/// one): a tool's chunk metadata may not use them.
pub const NODE_METADATA_KEYS: [&str; 4] = [
    "execution_time_ms",
    "tool_type",
    "worker_id",
    "synthetic_final",
];

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
    /// The size of the chunk's payload as the worker sent it (JSON text or
    /// raw bytes), for the caller's accounting.
    pub payload_bytes: usize,
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
    let payload_bytes = payload.as_ref().map_or(0, |p| p.data.len());
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
            Value::Object(map) => {
                if let Some(key) = RESERVED_KEYS.iter().find(|k| map.contains_key(**k)) {
                    return Err(CoreError::Chunk(format!(
                        "the chunk's data holds the envelope's reserved key {key:?}; \
                         a tool marks the final chunk and adds metadata with \
                         StreamChunk(is_final=..., metadata=...), or with a \
                         yielded dict's \"is_final\" (a boolean) and \"_metadata\" \
                         (a dict of strings)"
                    )));
                }
                map
            }
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
    Ok(Envelope {
        fields,
        raw_data,
        payload_bytes,
    })
}

/// The node's metadata on the last chunk of a stream: the first chunk the
/// tool marks final, else a synthetic final chunk when the stream ends.
pub struct FinalMetadata {
    started: Instant,
    worker_id: String,
    saw_final: bool,
}

impl FinalMetadata {
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            started: Instant::now(),
            worker_id: worker_id.into(),
            saw_final: false,
        }
    }

    /// Adds the node's keys to `metadata` when the chunk is the first final one.
    pub fn on_chunk(&mut self, is_final: bool, metadata: &mut HashMap<String, String>) {
        let decorate = is_final && !self.saw_final;
        self.saw_final |= is_final;
        if decorate {
            self.decorate(metadata);
        }
    }

    /// The metadata of the synthetic final chunk, when no chunk was final.
    pub fn synthetic(&mut self) -> Option<HashMap<String, String>> {
        if self.saw_final {
            return None;
        }
        self.saw_final = true;
        let mut metadata = HashMap::from([("synthetic_final".to_owned(), "true".to_owned())]);
        self.decorate(&mut metadata);
        Some(metadata)
    }

    fn decorate(&self, metadata: &mut HashMap<String, String>) {
        let elapsed = self.started.elapsed().as_millis().to_string();
        metadata.insert("execution_time_ms".into(), elapsed);
        metadata.insert("tool_type".into(), "remote".into());
        metadata.insert("worker_id".into(), self.worker_id.clone());
    }
}

/// The error of a chunk whose metadata uses a key the node writes.
pub fn check_chunk_metadata(metadata: &HashMap<String, String>) -> Result<(), CoreError> {
    match NODE_METADATA_KEYS
        .iter()
        .find(|k| metadata.contains_key(**k))
    {
        Some(key) => Err(CoreError::Chunk(format!(
            "the chunk's metadata uses {key:?}, a key the node writes \
             (reserved: {NODE_METADATA_KEYS:?})"
        ))),
        None => Ok(()),
    }
}

/// Turns the chunks of one stream into envelopes, in order.
pub struct StreamEnvelopes {
    last: FinalMetadata,
    mode: BinaryMode,
}

impl StreamEnvelopes {
    pub fn new(worker_id: impl Into<String>, mode: BinaryMode) -> Self {
        Self {
            last: FinalMetadata::new(worker_id),
            mode,
        }
    }

    /// The envelope of `chunk`; the first final one carries the decoration.
    pub fn envelope(&mut self, chunk: ToolChunk) -> Result<Envelope, CoreError> {
        check_chunk_metadata(&chunk.metadata)?;
        let mut metadata = chunk.metadata;
        self.last.on_chunk(chunk.is_final, &mut metadata);
        chunk_envelope(chunk.payload, chunk.is_final, &metadata, self.mode)
    }

    /// Call when the stream ended cleanly: the synthetic final chunk, if needed.
    pub fn finish(&mut self) -> Option<Envelope> {
        let metadata = self.last.synthetic()?;
        chunk_envelope(None, true, &metadata, self.mode).ok()
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

    fn refusal(result: Result<Envelope, CoreError>) -> String {
        match result {
            Err(CoreError::Chunk(message)) => message,
            other => panic!("expected a refused chunk, got {other:?}"),
        }
    }

    #[test]
    fn reserved_keys_in_the_data_are_refused_by_name() {
        let mut envelopes = StreamEnvelopes::new("w1", BinaryMode::Base64);
        let message = refusal(envelopes.envelope(json_chunk(r#"{"is_final":"yes"}"#, false)));
        assert!(message.contains(r#""is_final""#), "{message}");
        let message = refusal(envelopes.envelope(json_chunk(r#"{"a":1,"_metadata":5}"#, true)));
        assert!(message.contains(r#""_metadata""#), "{message}");
        // Inside a non-object value they are plain data.
        let list = envelopes.envelope(json_chunk(r#"[{"is_final":1}]"#, false));
        assert_eq!(
            fields(list.unwrap()),
            json!({"data": [{"is_final": 1}], "is_final": false})
        );
    }

    #[test]
    fn the_node_metadata_keys_are_refused_by_name() {
        for key in NODE_METADATA_KEYS {
            let mut envelopes = StreamEnvelopes::new("w1", BinaryMode::Base64);
            let mut chunk = json_chunk("{}", false);
            chunk.metadata.insert(key.to_owned(), "x".to_owned());
            let message = refusal(envelopes.envelope(chunk));
            assert!(message.contains(&format!("{key:?}")), "{message}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// JSON values whose text round-trips exactly (floats with few
        /// significant bits, which every parser reads back bit for bit).
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1_000_000i32..1_000_000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(key(), inner, 0..6)
                        .prop_map(|map| Value::Object(map.into_iter().collect())),
                ]
            })
        }

        /// Keys of any kind, reserved ones included now and then.
        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => ".{0,8}",
                1 => prop::sample::select(vec![
                    "is_final".to_owned(),
                    "_metadata".to_owned(),
                    "data".to_owned(),
                    "raw_data_base64".to_owned(),
                ]),
            ]
        }

        fn metadata() -> impl Strategy<Value = HashMap<String, String>> {
            prop::collection::hash_map(
                prop_oneof![4 => ".{0,8}", 1 => prop::sample::select(NODE_METADATA_KEYS.to_vec()).prop_map(str::to_owned)],
                ".{0,8}",
                0..4,
            )
        }

        fn chunk(
            payload: Option<Payload>,
            is_final: bool,
            metadata: HashMap<String, String>,
        ) -> ToolChunk {
            ToolChunk {
                payload,
                is_final,
                metadata,
                error: None,
            }
        }

        fn json_payload(value: &Value) -> Option<Payload> {
            Some(Payload {
                kind: PayloadKind::Json as i32,
                data: Bytes::from(serde_json::to_vec(value).unwrap()),
            })
        }

        /// What `_metadata` must be: the chunk's metadata, as JSON strings.
        fn metadata_json(metadata: &HashMap<String, String>) -> Value {
            Value::Object(
                metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            )
        }

        /// The envelope's own keys are the reserved ones, and hold the flag and
        /// the metadata exactly.
        fn check_reserved(
            fields: &Map<String, Value>,
            is_final: bool,
            metadata: &HashMap<String, String>,
        ) {
            assert_eq!(fields["is_final"], Value::Bool(is_final));
            if metadata.is_empty() {
                assert!(!fields.contains_key("_metadata"));
            } else {
                assert_eq!(fields["_metadata"], metadata_json(metadata));
            }
        }

        fn node_key(metadata: &HashMap<String, String>) -> Option<&'static str> {
            NODE_METADATA_KEYS
                .into_iter()
                .find(|k| metadata.contains_key(*k))
        }

        proptest! {
            /// Any JSON value and metadata: the envelope holds every key of an
            /// object (or the value under "data"), the flag and the metadata,
            /// nothing else; a reserved key in the object or a node key in the
            /// metadata is refused, by name, and nothing is replaced.
            #[test]
            fn json_chunks(value in json_value(), is_final: bool, metadata in metadata()) {
                let mut envelopes = StreamEnvelopes::new("w", BinaryMode::Base64);
                let result = envelopes.envelope(chunk(json_payload(&value), is_final, metadata.clone()));
                let reserved = value
                    .as_object()
                    .and_then(|map| RESERVED_KEYS.into_iter().find(|k| map.contains_key(*k)));
                if let Some(key) = node_key(&metadata).or(reserved) {
                    let message = refusal(result);
                    prop_assert!(message.contains(&format!("{key:?}")), "{}", message);
                    return Ok(());
                }
                let mut fields = result.unwrap().fields;
                let mut expected = metadata.clone();
                if is_final {
                    // The first final chunk is decorated: the node's keys join.
                    let decoration = fields["_metadata"].as_object().unwrap().clone();
                    for key in ["execution_time_ms", "tool_type", "worker_id"] {
                        expected.insert(key.into(), decoration[key].as_str().unwrap().into());
                    }
                    prop_assert_eq!(&decoration["worker_id"], "w");
                }
                check_reserved(&fields, is_final, &expected);
                fields.remove("is_final");
                fields.remove("_metadata");
                match value {
                    Value::Object(map) => prop_assert_eq!(fields, map),
                    value => prop_assert_eq!(Value::Object(fields), json!({"data": value})),
                }
            }

            /// Raw bytes: base64 under "raw_data_base64" that decodes to them,
            /// or the bytes themselves beside the fields.
            #[test]
            fn raw_chunks(bytes in prop::collection::vec(any::<u8>(), 0..64), is_final: bool,
                          metadata in metadata(), raw: bool) {
                prop_assume!(node_key(&metadata).is_none());
                let payload = Payload { kind: PayloadKind::Raw as i32, data: Bytes::from(bytes.clone()) };
                let mode = if raw { BinaryMode::Raw } else { BinaryMode::Base64 };
                let envelope = chunk_envelope(Some(payload), is_final, &metadata, mode).unwrap();
                check_reserved(&envelope.fields, is_final, &metadata);
                let own = 1 + usize::from(!metadata.is_empty());
                if raw {
                    prop_assert_eq!(envelope.raw_data, Some(Bytes::from(bytes)));
                    prop_assert_eq!(envelope.fields.len(), own);
                } else {
                    let text = envelope.fields["raw_data_base64"].as_str().unwrap();
                    let decoded = base64::engine::general_purpose::STANDARD.decode(text).unwrap();
                    prop_assert_eq!(decoded, bytes);
                    prop_assert_eq!(envelope.fields.len(), own + 1);
                }
            }

            /// Over a stream, exactly one chunk carries the final decoration:
            /// the first final one, or a synthetic one at the end.
            #[test]
            fn one_decorated_final_per_stream(finals in prop::collection::vec(any::<bool>(), 0..8)) {
                let mut envelopes = StreamEnvelopes::new("w", BinaryMode::Base64);
                let mut decorated = Vec::new();
                for (index, is_final) in finals.iter().enumerate() {
                    let fields = envelopes.envelope(json_chunk("{}", *is_final)).unwrap().fields;
                    if fields.contains_key("_metadata") {
                        decorated.push(index);
                    }
                }
                let synthetic = envelopes.finish();
                match finals.iter().position(|f| *f) {
                    Some(first) => {
                        prop_assert_eq!(decorated, vec![first]);
                        prop_assert!(synthetic.is_none());
                    }
                    None => {
                        prop_assert!(decorated.is_empty());
                        let fields = synthetic.unwrap().fields;
                        prop_assert_eq!(&fields["_metadata"]["synthetic_final"], "true");
                    }
                }
            }
        }
    }
}
