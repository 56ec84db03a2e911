//! `Describe`: a worker's versions and tools, for `Snakepit.describe/1`.

use rustler::{Encoder, Env, LocalPid, ResourceArc, Term};
use serde_json::{json, Value};
use snakepit_core::proto::{DescribeRequest, DescribeResponse};
use tokio_util::sync::CancellationToken;

use crate::atoms;
use crate::call::{client_of, expire, timed_out, timeout_of, CallResource};
use crate::codec::value_to_term;
use crate::error::Failure;
use crate::reply::Reply;
use crate::runtime::runtime;
use crate::worker::WorkerResource;

/// Sends `{tag, {:ok, description}}` (a string-keyed map) or `{tag, {:error, failure}}`.
#[rustler::nif]
fn worker_describe<'a>(
    env: Env<'a>,
    worker: ResourceArc<WorkerResource>,
    owner: LocalPid,
    tag: Term<'a>,
    timeout_ms: u64,
) -> Term<'a> {
    let mut client = match client_of(&worker) {
        Ok(client) => client,
        Err(failure) => return failure.error_tuple(env),
    };
    let timeout = timeout_of(timeout_ms);
    let cancel = CancellationToken::new();
    let cancelled = cancel.clone();
    let mut reply = Reply::new(owner, tag);
    runtime().spawn(async move {
        let outcome = tokio::select! {
            _ = cancelled.cancelled() => return,
            _ = expire(timeout) => Err(timed_out(timeout)),
            response = client.describe(DescribeRequest {}) => response
                .map(|r| description(r.into_inner()))
                .map_err(Failure::from),
        };
        reply.send(|env| match outcome {
            Ok(value) => (atoms::ok(), value_to_term(env, &value)).encode(env),
            Err(failure) => failure.error_tuple(env),
        });
    });
    (atoms::ok(), ResourceArc::new(CallResource { cancel })).encode(env)
}

fn description(response: DescribeResponse) -> Value {
    let version = response.version.unwrap_or_default();
    let tools: Vec<Value> = response
        .tools
        .into_iter()
        .map(|tool| {
            let parameters: Vec<Value> = tool
                .parameters
                .into_iter()
                .map(|p| {
                    let mut parameter = json!({
                        "name": p.name,
                        "type": p.r#type,
                        "required": p.required,
                    });
                    if let Ok(default) = serde_json::from_str::<Value>(&p.default_json) {
                        parameter["default"] = default;
                    }
                    parameter
                })
                .collect();
            json!({
                "name": tool.name,
                "description": tool.description,
                "supports_streaming": tool.supports_streaming,
                "parameters": parameters,
            })
        })
        .collect();
    json!({
        "protocol_version": version.protocol_version,
        "bridge_version": version.bridge_version,
        "runtime_version": version.runtime_version,
        "adapter": response.adapter,
        "worker_id": response.worker_id,
        "tools": tools,
    })
}
