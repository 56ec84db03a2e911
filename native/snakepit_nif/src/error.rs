//! Failures as the terms Elixir turns into `%Snakepit.Error{}`:
//! `{category, message, details}` with an atom category and an atom-keyed map.

use rustler::{Atom, Encoder, Env, Term};
use snakepit_core::json::{JsonError, JsonErrorKind};
use snakepit_core::proto::ToolError;
use tonic::{Code, Status};

use snakepit_core::deadline::TOOL_STOPPED_KEY;

use crate::atoms;

pub struct Failure {
    pub category: Atom,
    pub message: String,
    pub details: Vec<(Atom, String)>,
}

impl Failure {
    pub fn new(category: Atom, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn with(mut self, key: Atom, value: impl Into<String>) -> Self {
        self.details.push((key, value.into()));
        self
    }

    pub fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        let mut details = Term::map_new(env);
        for (key, value) in &self.details {
            details = details.map_put(*key, value.as_str()).unwrap_or(details);
        }
        (self.category, self.message.as_str(), details).encode(env)
    }

    /// `{:error, {category, message, details}}`.
    pub fn error_tuple<'a>(&self, env: Env<'a>) -> Term<'a> {
        (atoms::error(), self.encode(env)).encode(env)
    }
}

impl Failure {
    /// A term that cannot be sent to Python: `:validation`, with its path.
    pub fn unsendable(error: JsonError) -> Self {
        Failure::new(
            atoms::validation(),
            format!("cannot send {} to Python: {}", error.path, error.message),
        )
        .with(atoms::path(), error.path)
        .with(atoms::reason(), error.kind.reason())
    }

    /// A result or chunk from Python that cannot become a term (its path
    /// starts with `result` or `chunk`): `:validation` when it passes a
    /// documented bound, `:transport` when it is not JSON at all.
    pub fn unreceivable(error: JsonError) -> Self {
        let category = if error.kind == JsonErrorKind::Syntax {
            atoms::transport()
        } else {
            atoms::validation()
        };
        Failure::new(
            category,
            format!(
                "cannot receive {} from Python: {}",
                error.path, error.message
            ),
        )
        .with(atoms::path(), error.path)
        .with(atoms::reason(), error.kind.reason())
    }
}

impl From<ToolError> for Failure {
    fn from(error: ToolError) -> Self {
        let category = match error.category.as_str() {
            "validation" => atoms::validation(),
            _ => atoms::python(),
        };
        let message = if error.error_type.is_empty() || category == atoms::validation() {
            error.message
        } else {
            format!("{}: {}", error.error_type, error.message)
        };
        Failure::new(category, message)
            .with(atoms::python_type(), error.error_type)
            .with(atoms::traceback(), error.traceback)
    }
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        let code = format!("{:?}", status.code());
        if status.code() == Code::DeadlineExceeded {
            // The worker enforces the same deadline as the NIF, a little
            // earlier, and cancels the tool: report it as the timeout it is,
            // with what the worker saw of the tool stopping (unary calls).
            let stopped = status
                .metadata()
                .get(TOOL_STOPPED_KEY)
                .and_then(|value| value.to_str().ok())
                .map(|value| value == "true");
            let message = match stopped {
                Some(true) => {
                    "the call did not finish within its timeout; the worker stopped the tool"
                }
                Some(false) => {
                    "the call did not finish within its timeout, and the tool did not stop when \
                     the worker cancelled it (it is blocked outside Python, e.g. in C or a long \
                     time.sleep); if it is still running after the pool's :cancel_grace, the \
                     worker is recycled"
                }
                None => "the call did not finish within its timeout; the worker cancelled the tool",
            };
            let failure = Failure::new(atoms::timeout(), message)
                .with(atoms::reason(), "timeout")
                .with(atoms::grpc_status(), code);
            return match stopped {
                Some(stopped) => failure.with(atoms::tool_stopped(), stopped.to_string()),
                None => failure,
            };
        }
        if status.message().contains("message length too large") {
            // tonic's words when a message exceeds the configured limit.
            return Failure::new(
                atoms::transport(),
                format!(
                    "a message was larger than the pool's :max_message_bytes ({})",
                    status.message()
                ),
            )
            .with(atoms::reason(), "message_too_large")
            .with(atoms::grpc_status(), code);
        }
        Failure::new(
            atoms::transport(),
            format!("gRPC {code}: {}", status.message()),
        )
        .with(atoms::grpc_status(), code)
    }
}

impl From<snakepit_core::CoreError> for Failure {
    fn from(error: snakepit_core::CoreError) -> Self {
        match error {
            // Only stream chunks are decoded in the core crate.
            snakepit_core::CoreError::Json(error) => Failure::unreceivable(error.at_root("chunk")),
            // What the tool produced, not the connection, is at fault.
            snakepit_core::CoreError::Chunk(message) => Failure::new(atoms::python(), message)
                .with(atoms::python_type(), "InvalidChunk")
                .with(atoms::traceback(), ""),
            error => Failure::new(atoms::transport(), error.to_string()),
        }
    }
}
