//! `Describe`: a worker's versions and tools, for `Snakepit.describe/1`.

use rustler::{Env, LocalPid, ResourceArc, Term};
use serde_json::{json, Value};
use snakepit_core::proto::{DescribeRequest, DescribeResponse};

use crate::call::{client_of, spawn_call, timeout_of};
use crate::codec::value_to_term;
use crate::error::FailureTerm;
use crate::reply::Reply;
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
    let work = async move {
        let response = client.describe(DescribeRequest {}).await?;
        Ok(description(response.into_inner()))
    };
    spawn_call(
        env,
        Reply::for_call(owner, tag),
        timeout_of(timeout_ms),
        work,
        |env, value| Ok(value_to_term(env, &value)),
    )
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
