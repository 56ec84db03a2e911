//! The gRPC client that calls a worker.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::AttachToken;
use crate::proto::worker_service_client::WorkerServiceClient;
use crate::CoreError;

/// Largest message a worker may send or receive, until limits become configurable.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A cheap-to-clone client for one worker; clones share the HTTP/2 connection.
pub type WorkerClient = WorkerServiceClient<InterceptedService<Channel, AttachToken>>;

/// Connects to a worker serving on `127.0.0.1:<port>`.
pub async fn connect(port: u16, token: &str) -> Result<WorkerClient, CoreError> {
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
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}
