//! Decoding of the dispatcher's `describe_json` output into `DescribeResponse`.

use snakepit_core::proto::{DescribeResponse, ParameterSpec, ToolSpec, VersionInfo};

pub fn describe_response(json: &[u8], versions: VersionInfo) -> Result<DescribeResponse, String> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let text = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
    let tools = value["tools"]
        .as_array()
        .ok_or("missing \"tools\" list")?
        .iter()
        .map(|tool| ToolSpec {
            name: text(tool, "name"),
            description: text(tool, "description"),
            supports_streaming: tool["supports_streaming"].as_bool().unwrap_or(false),
            parameters: tool["parameters"]
                .as_array()
                .map(|params| {
                    params
                        .iter()
                        .map(|p| ParameterSpec {
                            name: text(p, "name"),
                            r#type: text(p, "type"),
                            required: p["required"].as_bool().unwrap_or(false),
                            default_json: text(p, "default_json"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    Ok(DescribeResponse {
        version: Some(versions),
        adapter: text(&value, "adapter"),
        worker_id: text(&value, "worker_id"),
        tools,
    })
}
