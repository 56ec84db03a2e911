//! What went wrong with a call, classified once for every caller.
//!
//! A [`Failure`] is what the NIF encodes as `{category, message, details}`
//! and Elixir wraps in `%Snakepit.Error{}`: a [`Category`] (where it went
//! wrong), a readable message, and details, among them a machine-readable
//! [`Reason`]. This module decides them from what the call saw: a gRPC
//! status, a tool's error, a JSON document refused at the boundary, or a
//! worker process that died under the call ([`rpc_failure`]).

use std::future::Future;
use std::time::Duration;

use tonic::{Code, Status};

use crate::deadline::TOOL_STOPPED_KEY;
use crate::json::{JsonError, JsonErrorKind};
use crate::process::ExitInfo;
use crate::proto::ToolError;
use crate::CoreError;

/// Where a call went wrong (`Snakepit.Error`'s `:category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Bad input, refused before anything was sent or by the worker.
    Validation,
    /// The worker process is not ready or died.
    Worker,
    /// The call ran out of time.
    Timeout,
    /// The tool raised an exception (or produced what cannot be delivered).
    Python,
    /// gRPC failed between the VM and the worker.
    Transport,
}

/// The machine-readable reason of a failure (`details.reason`, an atom).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A value with no JSON form (a pid, a function, ...).
    InvalidArgument,
    /// A binary parameter that is not a binary, or has a bad name.
    InvalidBinaryParameter,
    /// A payload that is not JSON text.
    InvalidJson,
    /// Nested deeper than `json::MAX_DEPTH`.
    TooDeep,
    /// An object with the same key twice.
    DuplicateKey,
    /// A number beyond what both sides can represent.
    NumberOutOfRange,
    /// A message larger than the pool's `:max_message_bytes`.
    MessageTooLarge,
    /// The worker has no connected client yet.
    NotReady,
    /// The worker process died during the call.
    WorkerExited,
    /// The call did not finish within its timeout.
    Timeout,
    /// No chunk arrived within the stream's idle timeout.
    IdleTimeout,
    /// The NIF task running the call panicked.
    Panicked,
    /// The worker refused: it has no such tool.
    UnknownTool,
    /// The worker refused: the arguments do not fit the tool.
    InvalidArguments,
    /// The worker refused: a streaming tool called as a unary one.
    StreamingTool,
    /// The worker holds no object for a ref (it never did: the ref belongs
    /// to an earlier process of the worker, or was forged).
    RefLost,
    /// The ref's object was released, expired or exhausted.
    RefReleased,
    /// The session or process already holds the pool's most live refs.
    TooManyRefs,
    /// The pool does not allow the universal call (or not into that module).
    CallNotAllowed,
    /// A fetch named a ref that is not an iterator.
    NotAnIterator,
    /// The worker refused for another reason.
    Refused,
}

impl Reason {
    /// The reason of a refused JSON document.
    pub fn of_json(kind: JsonErrorKind) -> Self {
        match kind {
            JsonErrorKind::Syntax => Reason::InvalidJson,
            JsonErrorKind::TooDeep => Reason::TooDeep,
            JsonErrorKind::DuplicateKey => Reason::DuplicateKey,
            JsonErrorKind::NumberOutOfRange => Reason::NumberOutOfRange,
            JsonErrorKind::Unsupported => Reason::InvalidArgument,
        }
    }

    /// The reason of a request the worker's dispatcher refused, by the type
    /// name of its refusal.
    pub fn of_refusal(error_type: &str) -> Self {
        match error_type {
            "UnknownTool" => Reason::UnknownTool,
            "InvalidArguments" => Reason::InvalidArguments,
            "StreamingTool" => Reason::StreamingTool,
            "TooDeep" => Reason::TooDeep,
            "RefLost" => Reason::RefLost,
            "RefReleased" => Reason::RefReleased,
            "TooManyRefs" => Reason::TooManyRefs,
            "CallNotAllowed" => Reason::CallNotAllowed,
            "NotAnIterator" => Reason::NotAnIterator,
            _ => Reason::Refused,
        }
    }
}

/// A failed call: `{category, message, details}` at the NIF boundary, where
/// each `Some` field is one entry of the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub category: Category,
    pub message: String,
    pub reason: Option<Reason>,
    /// Where in the arguments (or the result) the offending value is.
    pub path: Option<String>,
    /// The Python exception's type name.
    pub python_type: Option<String>,
    /// The Python traceback.
    pub traceback: Option<String>,
    /// The gRPC status of a failed RPC.
    pub grpc_status: Option<Code>,
    /// Whether the worker saw a timed-out tool stop.
    pub tool_stopped: Option<bool>,
}

impl Failure {
    pub fn new(category: Category, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
            reason: None,
            path: None,
            python_type: None,
            traceback: None,
            grpc_status: None,
            tool_stopped: None,
        }
    }

    pub fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    fn with_grpc_status(mut self, code: Code) -> Self {
        self.grpc_status = Some(code);
        self
    }

    /// A term that cannot be sent to Python: `:validation`, with its path.
    pub fn unsendable(error: JsonError) -> Self {
        Failure::new(
            Category::Validation,
            format!("cannot send {} to Python: {}", error.path, error.message),
        )
        .with_reason(Reason::of_json(error.kind))
        .with_path(error.path)
    }

    /// A result or chunk from Python that cannot become a term (its path
    /// starts with `result` or `chunk`): `:validation` when it passes a
    /// documented bound, `:transport` when it is not JSON at all.
    pub fn unreceivable(error: JsonError) -> Self {
        let category = if error.kind == JsonErrorKind::Syntax {
            Category::Transport
        } else {
            Category::Validation
        };
        Failure::new(
            category,
            format!(
                "cannot receive {} from Python: {}",
                error.path, error.message
            ),
        )
        .with_reason(Reason::of_json(error.kind))
        .with_path(error.path)
    }

    /// A message of `size` bytes larger than the worker's `limit`, refused
    /// before anything is sent (the worker would refuse it after the whole
    /// of it had been sent). `what` names it: "a request", "an input".
    pub fn too_large(what: &str, size: usize, limit: usize) -> Self {
        Failure::new(
            Category::Validation,
            format!(
                "{what} of {size} bytes is larger than the pool's :max_message_bytes ({limit})"
            ),
        )
        .with_reason(Reason::MessageTooLarge)
    }

    /// The call's own deadline passed (`None`: it had none).
    pub fn timed_out(timeout: Option<Duration>) -> Self {
        let ms = timeout.map_or(0, |t| t.as_millis());
        Failure::new(
            Category::Timeout,
            format!("the call did not finish within {ms} ms"),
        )
        .with_reason(Reason::Timeout)
    }

    /// No chunk arrived within a stream's idle timeout.
    pub fn idle_timeout(idle: Option<Duration>) -> Self {
        let ms = idle.map_or(0, |t| t.as_millis());
        Failure::new(
            Category::Timeout,
            format!("no chunk arrived for {ms} ms (idle timeout)"),
        )
        .with_reason(Reason::IdleTimeout)
    }
}

impl From<ToolError> for Failure {
    fn from(error: ToolError) -> Self {
        if error.category == "validation" {
            // A refusal by the worker's dispatcher: its type name is the
            // reason; there is no Python exception to show.
            let reason = Reason::of_refusal(&error.error_type);
            return Failure::new(Category::Validation, error.message).with_reason(reason);
        }
        let message = if error.error_type.is_empty() {
            error.message
        } else {
            format!("{}: {}", error.error_type, error.message)
        };
        let mut failure = Failure::new(Category::Python, message);
        failure.python_type = non_empty(error.error_type);
        failure.traceback = non_empty(error.traceback);
        failure
    }
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        let code = status.code();
        if code == Code::DeadlineExceeded || crate::deadline::client_timed_out(&status) {
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
            let mut failure = Failure::new(Category::Timeout, message)
                .with_reason(Reason::Timeout)
                .with_grpc_status(code);
            failure.tool_stopped = stopped;
            return failure;
        }
        if status.message().contains("message length too large") {
            // tonic's words when a message exceeds the configured limit.
            return Failure::new(
                Category::Transport,
                format!(
                    "a message was larger than the pool's :max_message_bytes ({})",
                    status.message()
                ),
            )
            .with_reason(Reason::MessageTooLarge)
            .with_grpc_status(code);
        }
        Failure::new(
            Category::Transport,
            format!("gRPC {code:?}: {}", status.message()),
        )
        .with_grpc_status(code)
    }
}

impl From<CoreError> for Failure {
    fn from(error: CoreError) -> Self {
        match error {
            // Only stream chunks are decoded in the core crate.
            CoreError::Json(error) => Failure::unreceivable(error.at_root("chunk")),
            // What the tool produced, not the connection, is at fault.
            CoreError::Chunk(message) => {
                let mut failure = Failure::new(Category::Python, message);
                failure.python_type = Some("InvalidChunk".to_owned());
                failure
            }
            error => Failure::new(Category::Transport, error.to_string()),
        }
    }
}

/// What classifying a failed RPC needs to know of the worker that served it.
pub trait Worker: Sync {
    fn worker_id(&self) -> &str;

    /// How the worker's process ended, waiting at most `grace` for it to
    /// end; `None` while it still runs.
    fn exit_within(&self, grace: Duration) -> impl Future<Output = Option<ExitInfo>> + Send;
}

/// How long to wait, after an RPC failed, for news that the worker died.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

/// The failure of an RPC: `:worker` when the worker process died under it,
/// otherwise what the gRPC status says.
pub async fn rpc_failure<W: Worker + ?Sized>(worker: &W, status: Status) -> Failure {
    let connection_lost = matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    ) && !crate::deadline::client_timed_out(&status);
    if connection_lost {
        if let Some(exit) = worker.exit_within(EXIT_GRACE).await {
            return Failure::new(
                Category::Worker,
                format!(
                    "worker {} exited during the call ({exit})",
                    worker.worker_id()
                ),
            )
            .with_reason(Reason::WorkerExited)
            .with_grpc_status(status.code());
        }
    }
    Failure::from(status)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tonic::metadata::MetadataValue;

    use super::*;

    /// A worker that has exited with `exit` (or still runs), counting the
    /// times it was asked.
    struct FakeWorker {
        exit: Option<ExitInfo>,
        asked: AtomicUsize,
    }

    impl FakeWorker {
        fn new(exit: Option<ExitInfo>) -> Self {
            Self {
                exit,
                asked: AtomicUsize::new(0),
            }
        }
    }

    impl Worker for FakeWorker {
        fn worker_id(&self) -> &str {
            "w1"
        }

        fn exit_within(&self, grace: Duration) -> impl Future<Output = Option<ExitInfo>> + Send {
            self.asked.fetch_add(1, Ordering::Relaxed);
            let exit = self.exit;
            async move {
                if exit.is_none() {
                    tokio::time::sleep(grace).await;
                }
                exit
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_to_a_dead_worker_is_a_worker_failure() {
        let worker = FakeWorker::new(Some(ExitInfo::Code(3)));
        for status in [
            Status::unavailable("connection reset"),
            Status::unknown("h2 protocol error"),
            Status::internal("stream reset"),
            Status::cancelled("gone"),
        ] {
            let code = status.code();
            let failure = rpc_failure(&worker, status).await;
            assert_eq!(failure.category, Category::Worker);
            assert_eq!(failure.reason, Some(Reason::WorkerExited));
            assert_eq!(failure.grpc_status, Some(code));
            assert_eq!(
                failure.message,
                "worker w1 exited during the call (exit status 3)"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_connection_to_a_live_worker_is_a_transport_failure_after_the_grace() {
        let worker = FakeWorker::new(None);
        let started = tokio::time::Instant::now();
        let failure = rpc_failure(&worker, Status::unavailable("connection reset")).await;
        assert_eq!(started.elapsed(), EXIT_GRACE);
        assert_eq!(failure.category, Category::Transport);
        assert_eq!(failure.reason, None);
        assert_eq!(failure.grpc_status, Some(Code::Unavailable));
        assert_eq!(failure.message, "gRPC Unavailable: connection reset");
    }

    #[tokio::test]
    async fn other_statuses_never_wait_for_the_worker() {
        let worker = FakeWorker::new(Some(ExitInfo::Signal(9)));
        let failure = rpc_failure(&worker, Status::invalid_argument("bad")).await;
        assert_eq!(failure.category, Category::Transport);
        let failure = rpc_failure(&worker, Status::deadline_exceeded("late")).await;
        assert_eq!(failure.category, Category::Timeout);
        assert_eq!(worker.asked.load(Ordering::Relaxed), 0);
    }

    fn deadline_exceeded(stopped: Option<&'static str>) -> Status {
        let mut status = Status::deadline_exceeded("deadline");
        if let Some(stopped) = stopped {
            status
                .metadata_mut()
                .insert(TOOL_STOPPED_KEY, MetadataValue::from_static(stopped));
        }
        status
    }

    #[test]
    fn a_deadline_exceeded_is_a_timeout_with_what_the_worker_saw_of_the_tool() {
        for (metadata, stopped) in [
            (Some("true"), Some(true)),
            (Some("false"), Some(false)),
            (None, None),
        ] {
            let failure = Failure::from(deadline_exceeded(metadata));
            assert_eq!(failure.category, Category::Timeout);
            assert_eq!(failure.reason, Some(Reason::Timeout));
            assert_eq!(failure.grpc_status, Some(Code::DeadlineExceeded));
            assert_eq!(failure.tool_stopped, stopped);
        }
        let blocked = Failure::from(deadline_exceeded(Some("false")));
        assert!(blocked.message.contains(":cancel_grace"), "{blocked:?}");
    }

    #[test]
    fn tonics_own_timeout_is_a_timeout_other_cancels_are_not() {
        let expired = Status::cancelled(tonic::TimeoutExpired(()).to_string());
        assert!(crate::deadline::client_timed_out(&expired));
        let failure = Failure::from(expired);
        assert_eq!(failure.category, Category::Timeout);
        assert_eq!(failure.reason, Some(Reason::Timeout));

        let cancelled = Status::cancelled("the client went away");
        assert!(!crate::deadline::client_timed_out(&cancelled));
        assert_eq!(Failure::from(cancelled).category, Category::Transport);
    }

    #[test]
    fn tonics_message_too_large_is_recognised() {
        let status = Status::out_of_range(
            "Error, decoded message length too large: found 300 bytes, the limit is: 100 bytes",
        );
        let failure = Failure::from(status);
        assert_eq!(failure.category, Category::Transport);
        assert_eq!(failure.reason, Some(Reason::MessageTooLarge));
        assert_eq!(failure.grpc_status, Some(Code::OutOfRange));
        assert!(failure.message.contains(":max_message_bytes"));
    }

    #[test]
    fn a_tool_exception_keeps_its_type_and_traceback() {
        let failure = Failure::from(ToolError {
            category: "python".into(),
            error_type: "KeyError".into(),
            message: "'x'".into(),
            traceback: "Traceback ...".into(),
        });
        assert_eq!(failure.category, Category::Python);
        assert_eq!(failure.message, "KeyError: 'x'");
        assert_eq!(failure.python_type.as_deref(), Some("KeyError"));
        assert_eq!(failure.traceback.as_deref(), Some("Traceback ..."));
        assert_eq!(failure.reason, None);

        let bare = Failure::from(ToolError {
            category: "python".into(),
            message: "boom".into(),
            ..Default::default()
        });
        assert_eq!(bare.message, "boom");
        assert_eq!((bare.python_type, bare.traceback), (None, None));
    }

    #[test]
    fn a_refusal_by_the_worker_is_a_validation_failure_with_its_reason() {
        for (error_type, reason) in [
            ("UnknownTool", Reason::UnknownTool),
            ("InvalidArguments", Reason::InvalidArguments),
            ("StreamingTool", Reason::StreamingTool),
            ("TooDeep", Reason::TooDeep),
            ("RefLost", Reason::RefLost),
            ("RefReleased", Reason::RefReleased),
            ("TooManyRefs", Reason::TooManyRefs),
            ("CallNotAllowed", Reason::CallNotAllowed),
            ("NotAnIterator", Reason::NotAnIterator),
            ("SomethingNew", Reason::Refused),
        ] {
            let failure = Failure::from(ToolError {
                category: "validation".into(),
                error_type: error_type.into(),
                message: "refused".into(),
                traceback: "Traceback ...".into(),
            });
            assert_eq!(failure.category, Category::Validation);
            assert_eq!(failure.message, "refused");
            assert_eq!(failure.reason, Some(reason));
            assert_eq!((failure.python_type, failure.traceback), (None, None));
        }
    }

    #[test]
    fn json_refusals_name_their_reason_and_path() {
        let error = JsonError {
            kind: JsonErrorKind::Unsupported,
            path: "args[\"a\"]".into(),
            message: "a pid has no JSON form".into(),
        };
        let failure = Failure::unsendable(error);
        assert_eq!(failure.category, Category::Validation);
        assert_eq!(failure.reason, Some(Reason::InvalidArgument));
        assert_eq!(failure.path.as_deref(), Some("args[\"a\"]"));

        let syntax = JsonError {
            kind: JsonErrorKind::Syntax,
            path: "result".into(),
            message: "expected value".into(),
        };
        let failure = Failure::unreceivable(syntax);
        assert_eq!(failure.category, Category::Transport);
        assert_eq!(failure.reason, Some(Reason::InvalidJson));

        let deep = JsonError {
            kind: JsonErrorKind::TooDeep,
            path: "result[0]".into(),
            message: "too deep".into(),
        };
        assert_eq!(Failure::unreceivable(deep).category, Category::Validation);
    }

    #[test]
    fn a_chunk_with_a_reserved_key_is_the_tools_fault() {
        let failure = Failure::from(CoreError::Chunk("reserved key".into()));
        assert_eq!(failure.category, Category::Python);
        assert_eq!(failure.python_type.as_deref(), Some("InvalidChunk"));
        assert_eq!(failure.traceback, None);
    }
}
