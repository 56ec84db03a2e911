//! Failures as the terms Elixir turns into `%Snakepit.Error{}`:
//! `{category, message, details}` with an atom category and an atom-keyed map.

use rustler::{Atom, Encoder, Env, Term};
use snakepit_core::proto::ToolError;
use tonic::{Code, Status};

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
            // earlier, and has stopped the tool: report it as the timeout it is.
            return Failure::new(
                atoms::timeout(),
                "the call did not finish within its timeout; the worker stopped the tool",
            )
            .with(atoms::reason(), "timeout")
            .with(atoms::grpc_status(), code);
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
            // What the tool produced, not the connection, is at fault.
            snakepit_core::CoreError::Chunk(message) => Failure::new(atoms::python(), message)
                .with(atoms::python_type(), "InvalidChunk")
                .with(atoms::traceback(), ""),
            error => Failure::new(atoms::transport(), error.to_string()),
        }
    }
}
