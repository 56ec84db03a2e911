//! The node's session store: sessions, their typed variables, and watchers.
//!
//! This store is the single owner of session state (DESIGN.md contract 8).
//! The NIF hosts one store per node; Elixir reaches it through NIF calls and
//! Python through the bridge server (`crate::bridge`), so a change made by
//! either side is seen by both.
//!
//! All operations take one mutex for a short, bounded time. Watchers are
//! bounded channels fed with `try_send` under that mutex, which gives every
//! watcher the changes of a variable in version order and never makes a
//! writer wait for a slow watcher: a watcher whose buffer is full is dropped
//! and learns why (`WatchEnd::Overflow`) after draining what it had. A
//! watcher that is a process mailbox (an Elixir watcher) is bounded the same
//! way by [`forward`] (see `mailbox.rs`).
//!
//! Variables are named by id or name wherever one is expected. Ids are
//! `var_<n>`, unique in the store, and names may not start with `var_` (nor
//! contain `*`, the pattern wildcard), so an identifier is never ambiguous.
//! Every operation naming a session renews its time to live; sessions end
//! when deleted or when `Store::expire_sessions` finds them unused too long.

mod mailbox;
mod pattern;
mod store;
mod types;
mod watch;

pub use mailbox::{answers, forward, Answerer, Answers, Mailbox};
pub use store::{EndListener, Store, StoreConfig, MAX_WATCH_BUFFER};
pub use types::{validate_constraints, validate_value, VarType};
pub use watch::{Watch, WatchEnd};

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::Value;

/// Who made a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Elixir,
    Python,
    Client,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Elixir => "elixir",
            Source::Python => "python",
            Source::Client => "client",
        }
    }

    /// `""` means `Client`; anything else unknown is `None`.
    pub fn parse(text: &str) -> Option<Source> {
        match text {
            "elixir" => Some(Source::Elixir),
            "python" => Some(Source::Python),
            "" | "client" => Some(Source::Client),
            _ => None,
        }
    }
}

/// A session as seen from outside.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    pub created_at: SystemTime,
    pub last_used_at: SystemTime,
    pub ttl: Duration,
    pub expires_at: SystemTime,
    pub metadata: HashMap<String, String>,
    pub variable_count: usize,
    pub watcher_count: usize,
}

/// A variable's current state.
#[derive(Clone, Debug, PartialEq)]
pub struct Variable {
    pub id: String,
    pub name: String,
    pub var_type: VarType,
    pub value: Value,
    /// Always a JSON object (`{}` when none).
    pub constraints: Value,
    /// Given at registration.
    pub metadata: HashMap<String, String>,
    pub version: u64,
    /// Who wrote the current value.
    pub source: Source,
    /// Metadata of the write that produced the current value.
    pub update_metadata: HashMap<String, String>,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// What a registration asks for.
#[derive(Clone, Debug)]
pub struct VariableSpec {
    pub name: String,
    /// Type name as written by users ("float", "integer", ...).
    pub var_type: String,
    pub value: Value,
    /// A JSON object, or `Value::Null` for none.
    pub constraints: Value,
    pub metadata: HashMap<String, String>,
}

/// One write.
#[derive(Clone, Debug)]
pub struct VariableWrite {
    /// A name or an id.
    pub identifier: String,
    pub value: Value,
    pub expected_version: Option<u64>,
    pub metadata: HashMap<String, String>,
}

/// The kind of a [`VariableUpdate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateType {
    InitialValue,
    ValueChange,
    Deleted,
}

impl UpdateType {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateType::InitialValue => "initial_value",
            UpdateType::ValueChange => "value_change",
            UpdateType::Deleted => "deleted",
        }
    }
}

/// One event delivered to a watcher.
#[derive(Clone, Debug, PartialEq)]
pub struct VariableUpdate {
    pub update_type: UpdateType,
    /// The variable after the change (for `Deleted`: its last state).
    pub variable: Variable,
    /// The value before the change (`ValueChange` only).
    pub old_value: Option<Value>,
    pub source: Source,
    pub metadata: HashMap<String, String>,
    pub timestamp: SystemTime,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Deleted,
    Expired,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Deleted => "deleted",
            EndReason::Expired => "expired",
        }
    }
}

/// Every way a store operation can fail. `reason()` is the machine-readable
/// name used on the wire (`x-snakepit-error`) and in Elixir errors.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("session {0:?} not found")]
    SessionNotFound(String),
    #[error("variable {identifier:?} not found in session {session:?}")]
    VariableNotFound { session: String, identifier: String },
    #[error("variable {0:?} already exists")]
    VariableExists(String),
    #[error("variable {name:?} is at version {actual}, not {expected}")]
    VersionConflict {
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("invalid value for {name:?}: {message}")]
    InvalidValue { name: String, message: String },
    #[error("{0}")]
    InvalidType(String),
    #[error("{0}")]
    InvalidConstraints(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the node holds its maximum of {max} sessions")]
    SessionQuotaExceeded { max: usize },
    #[error("session {session:?} holds its maximum of {max} variables")]
    VariableQuotaExceeded { session: String, max: usize },
}

impl StoreError {
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::SessionNotFound(_) => "session_not_found",
            StoreError::VariableNotFound { .. } => "variable_not_found",
            StoreError::VariableExists(_) => "variable_exists",
            StoreError::VersionConflict { .. } => "version_conflict",
            StoreError::InvalidValue { .. } => "invalid_value",
            StoreError::InvalidType(_) => "invalid_type",
            StoreError::InvalidConstraints(_) => "invalid_constraints",
            StoreError::InvalidArgument(_) => "invalid_argument",
            StoreError::SessionQuotaExceeded { .. } => "session_quota_exceeded",
            StoreError::VariableQuotaExceeded { .. } => "variable_quota_exceeded",
        }
    }
}
