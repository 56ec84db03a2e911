//! The call handling of a worker's gRPC server, apart from the language that
//! runs the tools.
//!
//! The Python extension (`native/snakepit_py`) serves `WorkerService` and runs
//! each tool in Python; what it does around the tool does not need Python and
//! lives here, where `cargo test` reaches it:
//!
//! - [`control`]: a call's cancellation state (cancelled before it started,
//!   while running, after it finished) and the guard that cancels a call
//!   whose caller went away;
//! - [`stuck`]: a cancelled tool still running after the grace makes the
//!   worker ask to be recycled, once;
//! - [`unary`]: the call's deadline from `grpc-timeout`, and what a unary call
//!   does when it passes (cancel, give the tool a moment to stop, say whether
//!   it did);
//! - [`stream`]: the loop that moves a streaming tool's chunks into a bounded
//!   buffer, and the response stream that reads them, ends at the deadline
//!   and cancels the tool when dropped;
//! - [`inputs`]: the client's inputs of a duplex call, read lazily so HTTP/2
//!   flow control holds back a client faster than the tool.
//!
//! The extension plugs in through two small traits: [`control::CallHandle`]
//! (stop a running tool) and [`stream::ChunkSource`] (the next chunk of a
//! streaming tool, and how to wait without holding the interpreter).

pub mod control;
pub mod inputs;
pub mod stream;
pub mod stuck;
pub mod unary;

#[cfg(test)]
pub(crate) mod testing {
    //! A call handle and a stuck-call watch that record what happens to them.

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::control::{CallHandle, CancelReason};
    use super::stuck::StuckWatch;

    /// Records the cancels it receives.
    #[derive(Clone, Default)]
    pub struct Probe(pub Arc<Mutex<Vec<CancelReason>>>);

    impl Probe {
        pub fn cancels(&self) -> Vec<CancelReason> {
            self.0.lock().unwrap().clone()
        }
    }

    impl CallHandle for Probe {
        fn cancel(&self, reason: CancelReason) {
            self.0.lock().unwrap().push(reason);
        }
    }

    /// A watch with `grace` whose recycle requests land in the returned list.
    pub fn watch(grace: Duration) -> (&'static StuckWatch, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let watch = StuckWatch::new(
            grace,
            Box::new(move |line: &str| sink.lock().unwrap().push(line.to_owned())),
        );
        (Box::leak(Box::new(watch)), lines)
    }
}
