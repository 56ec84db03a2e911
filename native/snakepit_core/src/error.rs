//! The error type of the core crate.

/// Failures of the core crate, encoded at each boundary (NIF terms, Python exceptions).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The worker process could not be spawned.
    #[error("cannot spawn worker `{executable}`: {source}")]
    Spawn {
        executable: String,
        #[source]
        source: std::io::Error,
    },
    /// Connecting to a worker's gRPC endpoint failed.
    #[error("cannot connect to worker at {address}: {message}")]
    Connect { address: String, message: String },
    /// The bridge server could not start, or a client could not reach it.
    #[error("snakepit bridge at {address}: {message}")]
    Bridge { address: String, message: String },
    /// A payload was not valid JSON, or passed a bound of `json::parse`.
    #[error("{0}")]
    Json(#[from] crate::json::JsonError),
    /// A stream chunk that the envelope cannot hold as it is (a reserved
    /// key; see `envelope.rs`).
    #[error("invalid chunk: {0}")]
    Chunk(String),
}
