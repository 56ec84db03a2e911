//! A program outside the pools running a tool on a node, through the node's
//! bridge (`Execute` / `ExecuteStream` of `proto/snakepit/v1/bridge.proto`).
//!
//! ```text
//! outside_call ADDRESS TOKEN TOOL [PARAMETERS_JSON] [--stream] [--take N]
//!              [--pool P] [--session S] [--affinity A] [--timeout-ms N]
//! ```
//!
//! `PARAMETERS_JSON` is a JSON object; each value is sent as the JSON text of
//! one parameter. Prints one JSON line: the result (`{"result": ...,
//! "worker_id": ..., "execution_time_ms": ...}`), the tool's error
//! (`{"error": {...}}`) or the call's status (`{"status": "NOT_FOUND",
//! "reason": ..., "message": ...}`); with `--stream`, a line per chunk
//! (`{"data": ..., "is_final": ..., "metadata": {...}}`). `--take N` stops
//! reading after N chunks and goes away, which stops the tool.

use std::collections::HashMap;
use std::process::ExitCode;

use serde_json::{json, Map, Value};
use snakepit_core::bridge::{connect_bridge, error_reason};
use snakepit_core::proto::{execute_response::Outcome, ExecuteRequest, Payload, PayloadKind};

fn payload_json(payload: Option<&Payload>) -> Value {
    match payload {
        None => Value::Null,
        Some(p) if p.kind == PayloadKind::Raw as i32 => json!({ "raw_bytes": p.data.len() }),
        Some(p) => serde_json::from_slice(&p.data).unwrap_or(Value::Null),
    }
}

fn status_line(status: &tonic::Status) -> Value {
    json!({
        "status": format!("{:?}", status.code()),
        "reason": error_reason(status),
        "message": status.message(),
    })
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: outside_call ADDRESS TOKEN TOOL [PARAMETERS_JSON] [--stream] [--take N] \
         [--pool P] [--session S] [--affinity A] [--timeout-ms N]"
    );
    ExitCode::from(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return usage();
    }
    let (address, token, tool) = (&args[0], &args[1], &args[2]);
    let mut request = ExecuteRequest {
        tool_name: tool.clone(),
        ..Default::default()
    };
    let (mut stream, mut take) = (false, usize::MAX);
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().cloned().unwrap_or_default();
        match arg.as_str() {
            "--stream" => stream = true,
            "--take" => take = value().parse().unwrap_or(usize::MAX),
            "--pool" => request.pool = value(),
            "--session" => request.session_id = value(),
            "--affinity" => request.affinity = value(),
            "--timeout-ms" => request.timeout_ms = value().parse().unwrap_or(0),
            text => match serde_json::from_str::<Map<String, Value>>(text) {
                Ok(object) => {
                    request.parameters = object
                        .into_iter()
                        .map(|(k, v)| (k, v.to_string()))
                        .collect::<HashMap<_, _>>()
                }
                // Sent as it is: the node checks it.
                Err(_) => {
                    request.parameters = HashMap::from([("raw".to_owned(), text.to_owned())]);
                }
            },
        }
    }
    let mut client = match connect_bridge(address, token).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("cannot connect to {address}: {error}");
            return ExitCode::from(1);
        }
    };
    if !stream {
        let line = match client.execute(request).await {
            Ok(response) => {
                let response = response.into_inner();
                match response.outcome {
                    Some(Outcome::Result(payload)) => json!({
                        "result": payload_json(Some(&payload)),
                        "worker_id": response.worker_id,
                        "execution_time_ms": response.execution_time_ms,
                    }),
                    Some(Outcome::Error(error)) => json!({ "error": {
                        "category": error.category,
                        "type": error.error_type,
                        "message": error.message,
                    }}),
                    None => json!({ "result": null }),
                }
            }
            Err(status) => status_line(&status),
        };
        println!("{line}");
        return ExitCode::SUCCESS;
    }
    let mut chunks = match client.execute_stream(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            println!("{}", status_line(&status));
            return ExitCode::SUCCESS;
        }
    };
    let mut seen = 0;
    while seen < take {
        match chunks.message().await {
            Ok(Some(chunk)) => {
                seen += 1;
                let line = match chunk.error {
                    Some(error) => json!({ "error": {
                        "category": error.category,
                        "type": error.error_type,
                        "message": error.message,
                    }}),
                    None => json!({
                        "data": payload_json(chunk.payload.as_ref()),
                        "is_final": chunk.is_final,
                        "metadata": chunk.metadata,
                    }),
                };
                println!("{line}");
            }
            Ok(None) => break,
            Err(status) => {
                println!("{}", status_line(&status));
                break;
            }
        }
    }
    ExitCode::SUCCESS
}
