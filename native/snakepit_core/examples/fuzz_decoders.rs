//! A mutational fuzzer for the decoders that read what a worker (or any peer)
//! sends: the JSON reader (`json::parse`), the chunk envelope, the ready
//! line, and the protobuf messages of both services.
//!
//! ```text
//! cargo run --release -p snakepit_core --example fuzz_decoders -- [SECONDS] [SEED]
//! ```
//!
//! It runs on stable Rust without instrumentation: inputs are valid documents
//! (random JSON values, encoded protobuf messages) mutated by bit flips,
//! insertions, deletions, splices and deep nesting. For every input it checks
//! that no decoder panics and that what `json::parse` accepts reads back the
//! same after re-serialization; a failure prints the input (hex) and exits 1.
//! The test command runs it for a few seconds; run it longer by hand.

use std::collections::HashMap;
use std::panic;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use snakepit_core::envelope::{chunk_envelope, BinaryMode};
use snakepit_core::json;
use snakepit_core::process::parse_ready_line;
use snakepit_core::proto::{
    ExecuteToolRequest, ExecuteToolResponse, Payload, PayloadKind, ToolChunk,
};

fn random_value(rng: &mut StdRng, depth: usize) -> Value {
    let container = depth > 0 && rng.random_bool(0.4);
    if container {
        let size = rng.random_range(0..5);
        if rng.random_bool(0.5) {
            Value::Array((0..size).map(|_| random_value(rng, depth - 1)).collect())
        } else {
            Value::Object(
                (0..size)
                    .map(|i| (format!("k{i}\u{e9}"), random_value(rng, depth - 1)))
                    .collect(),
            )
        }
    } else {
        match rng.random_range(0..7) {
            0 => Value::Null,
            1 => Value::Bool(rng.random()),
            2 => json!(rng.random::<i64>()),
            3 => json!(rng.random::<u64>()),
            4 => {
                let f = f64::from_bits(rng.random());
                if f.is_finite() {
                    json!(f)
                } else {
                    json!(0.5)
                }
            }
            5 => Value::String("a\"\\\n\u{1}\u{e9}\u{1f600}".into()),
            _ => serde_json::from_str(&"9".repeat(rng.random_range(20..60))).unwrap(),
        }
    }
}

/// A valid input of one of the kinds, as bytes.
fn seed_input(rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 | 1 => serde_json::to_vec(&random_value(rng, 6)).unwrap(),
        2 => {
            let chunk = ToolChunk {
                payload: Some(Payload {
                    kind: PayloadKind::Json as i32,
                    data: serde_json::to_vec(&random_value(rng, 3)).unwrap().into(),
                }),
                is_final: rng.random(),
                metadata: HashMap::from([("k".into(), "v".into())]),
                error: None,
            };
            chunk.encode_to_vec()
        }
        _ => {
            let request = ExecuteToolRequest {
                tool_name: "echo".into(),
                arguments_json: serde_json::to_vec(&random_value(rng, 3)).unwrap(),
                binary_arguments: HashMap::from([("b".into(), vec![0, 1, 2])]),
                session_id: "s".into(),
                metadata: HashMap::new(),
            };
            request.encode_to_vec()
        }
    }
}

fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..rng.random_range(1..6) {
        let len = input.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = rng.random_range(0..=len);
                let byte = *b"{}[]\",:0-.eE\\u9tfn "
                    .get(rng.random_range(0..21))
                    .unwrap_or(&0xff);
                input.insert(i, byte);
            }
            2 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(16));
                input.drain(i..i + n);
            }
            3 if !corpus.is_empty() => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                if !other.is_empty() {
                    let from = rng.random_range(0..other.len());
                    let to = rng.random_range(from..=other.len());
                    let at = rng.random_range(0..=len);
                    input.splice(at..at, other[from..to].iter().copied());
                }
            }
            4 => {
                // Nesting around the bound.
                let depth = json::MAX_DEPTH + rng.random_range(0..3) - 1;
                let (open, close) = if rng.random_bool(0.5) {
                    ("[".repeat(depth), "]".repeat(depth))
                } else {
                    ("{\"a\":".repeat(depth), "}".repeat(depth))
                };
                let mut nested = open.into_bytes();
                nested.extend_from_slice(input);
                nested.extend_from_slice(close.as_bytes());
                *input = nested;
            }
            5 if len > 0 => {
                let i = rng.random_range(0..len);
                input[i] = rng.random();
            }
            _ => input.extend_from_slice(b"1e999"),
        }
    }
}

/// Runs every decoder on `input`; an error names the broken invariant.
fn check(input: &[u8]) -> Result<(), String> {
    if let Ok(value) = json::parse(input) {
        let again = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        let reread = json::parse(&again).map_err(|e| format!("re-read failed: {e}"))?;
        if reread != value {
            return Err("re-read differs".into());
        }
        if let Value::Number(n) = &value {
            // Classification never loses a number's kind.
            let _ = json::exact(n);
        }
    }
    let payload = Payload {
        kind: PayloadKind::Json as i32,
        data: Bytes::copy_from_slice(input),
    };
    let _ = chunk_envelope(Some(payload), false, &HashMap::new(), BinaryMode::Base64);
    if let Ok(text) = std::str::from_utf8(input) {
        let _ = parse_ready_line(text);
    }
    if let Ok(chunk) = ToolChunk::decode(input) {
        let _ = chunk_envelope(
            chunk.payload,
            chunk.is_final,
            &chunk.metadata,
            BinaryMode::Raw,
        );
    }
    let _ = ExecuteToolResponse::decode(input);
    let _ = ExecuteToolRequest::decode(input);
    Ok(())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let seed: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let corpus: Vec<Vec<u8>> = (0..256).map(|_| seed_input(&mut rng)).collect();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    panic::set_hook(Box::new(|_| {}));
    let mut runs: u64 = 0;
    let mut accepted: u64 = 0;
    while Instant::now() < deadline {
        for _ in 0..1000 {
            let mut input = corpus[rng.random_range(0..corpus.len())].clone();
            if rng.random_bool(0.9) {
                mutate(&mut rng, &mut input, &corpus);
            }
            let outcome = panic::catch_unwind(|| check(&input));
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(broken)) => Some(broken),
                Err(_) => Some("a decoder panicked".to_owned()),
            };
            if let Some(failure) = failure {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                eprintln!("fuzz_decoders: {failure} (seed {seed}, run {runs}); input (hex): {hex}");
                std::process::exit(1);
            }
            accepted += u64::from(json::parse(&input).is_ok());
            runs += 1;
        }
    }
    println!(
        "fuzz_decoders: {runs} inputs in {seconds} s (seed {seed}), {accepted} valid JSON, no failure"
    );
}
