//! The gRPC client that calls a worker.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::AttachToken;
use crate::proto::worker_service_client::WorkerServiceClient;
use crate::CoreError;

/// Default largest message either side sends or accepts (256 MiB): a single
/// result or chunk beyond it fails with a clear error. Pools can change it.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Environment variable through which workers learn the limit.
pub const MAX_MESSAGE_ENV_VAR: &str = "SNAKEPIT_MAX_MESSAGE_BYTES";

/// A cheap-to-clone client for one worker; clones share the HTTP/2 connection.
pub type WorkerClient = WorkerServiceClient<InterceptedService<Channel, AttachToken>>;

/// Connects to a worker serving on `127.0.0.1:<port>`, with the default limit.
pub async fn connect(port: u16, token: &str) -> Result<WorkerClient, CoreError> {
    connect_with_limit(port, token, MAX_MESSAGE_BYTES).await
}

/// Connects to a worker serving on `127.0.0.1:<port>`; messages larger than
/// `max_message_bytes` are refused in both directions.
pub async fn connect_with_limit(
    port: u16,
    token: &str,
    max_message_bytes: usize,
) -> Result<WorkerClient, CoreError> {
    let failed = |message: String| CoreError::Connect { port, message };
    let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| failed(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let auth = AttachToken::new(token).map_err(|e| failed(e.message().to_owned()))?;
    Ok(WorkerServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes))
}
