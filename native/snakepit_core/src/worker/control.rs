//! Stopping a call's tool when its caller goes away or its deadline passes.
//!
//! Every tool call gets a [`CallControl`], shared by the blocking thread that
//! runs the tool and by a [`CancelOnDrop`] guard that the async side owns: the
//! handler future of a unary call, the response stream of a streaming or
//! duplex call. tonic drops those when the client cancels the call
//! (RST_STREAM) or the connection goes, which drops the guard, which cancels
//! the call; the deadline timers cancel explicitly, with their own reason, and
//! so does the task reading a duplex call's inputs when that request stream
//! fails.
//!
//! Cancelling calls the running call's [`CallHandle`] (in the Python
//! extension, `CallHandle.cancel(reason)` of `snakepit_bridge/cancellation.py`,
//! which needs the GIL), so the guard hands it to a blocking thread instead of
//! waiting on an async worker thread. The handle is created in the call's
//! blocking thread, so a cancel can come before it exists: the state records
//! that, and the call then never starts.
//!
//! A cancelled call that is still running after the grace has a tool that
//! cannot be interrupted: the worker then asks to be recycled (`stuck.rs`).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::stuck::StuckWatch;

/// Why a call is cancelled; the strings match `snakepit_bridge.errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The client cancelled the call or disconnected.
    Caller,
    /// The call's deadline passed.
    Deadline,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Caller => "cancelled",
            CancelReason::Deadline => "deadline_exceeded",
        }
    }
}

/// What stops a running call's tool.
pub trait CallHandle: Send + Sync + 'static {
    /// Asks the tool to stop, for `reason`. Runs on a blocking thread: it may
    /// wait (for the GIL, say). The handle copes with a call that finishes
    /// meanwhile.
    fn cancel(&self, reason: CancelReason);
}

enum State<H> {
    /// The handle does not exist yet.
    Starting,
    Running(Arc<H>),
    /// Cancelled before it ran: it never will.
    Cancelled,
    /// Cancelled while running, and not finished yet.
    Stopping,
    Finished,
}

/// One call's cancellation state.
pub struct CallControl<H> {
    /// For the report of a tool that does not stop.
    tool: String,
    stuck: &'static StuckWatch,
    state: Mutex<State<H>>,
    /// The reason of the first cancel asked for.
    reason: OnceLock<CancelReason>,
}

impl<H: CallHandle> CallControl<H> {
    /// The control of a call of `tool`, watched by `stuck` once cancelled.
    pub fn new(tool: String, stuck: &'static StuckWatch) -> Arc<Self> {
        Arc::new(Self {
            tool,
            stuck,
            state: Mutex::new(State::Starting),
            reason: OnceLock::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State<H>> {
        // Nothing panics while holding the lock; recover the data if it did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// In the call's thread, before running the tool, with the handle made
    /// for it (`None` when making it failed: the call then runs without
    /// cancellation). Returns the handle to run with, or `None` when the call
    /// was cancelled already and must not run.
    pub fn start(&self, handle: Option<H>) -> Option<Option<Arc<H>>> {
        let handle = handle.map(Arc::new);
        let mut state = self.state();
        match *state {
            State::Starting => {
                *state = match &handle {
                    Some(handle) => State::Running(handle.clone()),
                    None => State::Finished,
                };
                Some(handle)
            }
            // Cancelled while queued: it is over without running.
            _ => {
                *state = State::Finished;
                None
            }
        }
    }

    /// In the call's thread, once the tool is done: later cancels do nothing.
    pub fn finish(&self) {
        *self.state() = State::Finished;
    }

    /// Whether the call was cancelled (and has not finished since).
    pub fn is_cancelled(&self) -> bool {
        matches!(*self.state(), State::Cancelled | State::Stopping)
    }

    /// Whether the call was cancelled while running and has not finished.
    fn is_stopping(&self) -> bool {
        matches!(*self.state(), State::Stopping)
    }

    fn is_live(&self) -> bool {
        matches!(*self.state(), State::Starting | State::Running(_))
    }

    /// Cancels the call; the first reason asked for wins. May block in the
    /// handle: call it on a blocking thread.
    pub fn cancel(&self, reason: CancelReason) {
        let reason = *self.reason.get_or_init(|| reason);
        let handle = {
            let mut state = self.state();
            match std::mem::replace(&mut *state, State::Cancelled) {
                State::Running(handle) => {
                    *state = State::Stopping;
                    Some(handle)
                }
                State::Starting | State::Cancelled => None,
                old @ (State::Stopping | State::Finished) => {
                    *state = old;
                    None
                }
            }
        };
        // Outside the lock: the handle may take a while.
        if let Some(handle) = handle {
            handle.cancel(reason);
        }
    }

    /// Cancels the call from async code: the handle runs on one of
    /// `runtime`'s blocking threads, never on the calling thread. Only the
    /// first request counts (the deadline passing, then the response being
    /// dropped, is one cancel, for the deadline). A call still running the
    /// grace after it is reported as stuck.
    pub fn cancel_in_background(
        self: &Arc<Self>,
        reason: CancelReason,
        runtime: &tokio::runtime::Handle,
    ) {
        if !self.is_live() || self.reason.set(reason).is_err() {
            return;
        }
        let control = self.clone();
        drop(runtime.spawn_blocking(move || control.cancel(reason)));
        // Counted from the cancel being asked for, waits in the handle included.
        let control = self.clone();
        drop(runtime.spawn(async move {
            tokio::time::sleep(control.stuck.grace()).await;
            if control.is_stopping() {
                control.stuck.report(&control.tool, reason.as_str());
            }
        }));
    }
}

/// Cancels its call when dropped (the caller went away) or when told to
/// (the deadline passed), unless the call has finished.
pub struct CancelOnDrop<H: CallHandle> {
    control: Arc<CallControl<H>>,
    runtime: tokio::runtime::Handle,
}

impl<H: CallHandle> CancelOnDrop<H> {
    /// Must be created inside the tokio runtime.
    pub fn new(control: Arc<CallControl<H>>) -> Self {
        Self {
            control,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Cancels the call in the background, without blocking this thread.
    /// Only the first request counts.
    pub fn cancel(&self, reason: CancelReason) {
        self.control.cancel_in_background(reason, &self.runtime);
    }
}

impl<H: CallHandle> Drop for CancelOnDrop<H> {
    fn drop(&mut self) {
        self.cancel(CancelReason::Caller);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::worker::testing::{watch, Probe};

    const GRACE: Duration = Duration::from_millis(100);

    fn control() -> Arc<CallControl<Probe>> {
        CallControl::new("sleepy".into(), watch(GRACE).0)
    }

    #[test]
    fn a_call_cancelled_before_it_starts_never_runs() {
        let control = control();
        control.cancel(CancelReason::Caller);
        assert!(control.is_cancelled());
        let probe = Probe::default();
        assert!(control.start(Some(probe.clone())).is_none());
        // Nothing was running, so nothing was interrupted.
        assert!(probe.cancels().is_empty());
        assert!(!control.is_cancelled(), "over without running");
    }

    #[test]
    fn a_running_call_is_cancelled_once_with_the_first_reason() {
        let control = control();
        let probe = Probe::default();
        let handle = control.start(Some(probe.clone())).expect("not cancelled");
        assert!(handle.is_some());
        assert!(!control.is_cancelled());
        control.cancel(CancelReason::Deadline);
        control.cancel(CancelReason::Caller);
        assert_eq!(probe.cancels(), [CancelReason::Deadline]);
        assert!(control.is_cancelled());
        control.finish();
        assert!(!control.is_cancelled());
    }

    #[test]
    fn a_finished_call_ignores_cancels() {
        let control = control();
        let probe = Probe::default();
        control.start(Some(probe.clone()));
        control.finish();
        control.cancel(CancelReason::Caller);
        assert!(probe.cancels().is_empty());
        assert!(!control.is_cancelled());
    }

    #[test]
    fn a_call_without_a_handle_runs_uncancellable() {
        let control = control();
        assert_eq!(control.start(None).map(|h| h.is_none()), Some(true));
        control.cancel(CancelReason::Caller);
        assert!(!control.is_cancelled());
    }

    /// Lets the runtime's blocking threads and timers run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_guard_cancels_for_the_caller_and_the_deadline_wins_first() {
        let control = control();
        let probe = Probe::default();
        control.start(Some(probe.clone()));
        let guard = CancelOnDrop::new(control.clone());
        guard.cancel(CancelReason::Deadline);
        drop(guard);
        while probe.cancels().is_empty() {
            settle().await;
        }
        settle().await;
        assert_eq!(probe.cancels(), [CancelReason::Deadline]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tool_that_stops_within_the_grace_asks_for_nothing() {
        let (stuck, lines) = watch(GRACE);
        let control = CallControl::new("quick".into(), stuck);
        let probe = Probe::default();
        control.start(Some(probe.clone()));
        drop(CancelOnDrop::new(control.clone()));
        while probe.cancels().is_empty() {
            settle().await;
        }
        control.finish();
        tokio::time::sleep(GRACE * 2).await;
        assert!(lines.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn tools_that_do_not_stop_ask_for_one_recycle() {
        let (stuck, lines) = watch(GRACE);
        let first = CallControl::new("sleepy".into(), stuck);
        let second = CallControl::new("sleepy".into(), stuck);
        for control in [&first, &second] {
            control.start(Some(Probe::default()));
            CancelOnDrop::new(control.clone()).cancel(CancelReason::Deadline);
        }
        tokio::time::sleep(GRACE / 2).await;
        assert!(lines.lock().unwrap().is_empty(), "not before the grace");
        tokio::time::sleep(GRACE).await;
        settle().await;
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("\"sleepy\""));
        assert!(lines[0].contains("(deadline_exceeded)"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_cancelled_while_queued_is_not_reported_stuck() {
        let (stuck, lines) = watch(GRACE);
        let control: Arc<CallControl<Probe>> = CallControl::new("queued".into(), stuck);
        drop(CancelOnDrop::new(control.clone()));
        tokio::time::sleep(GRACE * 2).await;
        settle().await;
        assert!(control.is_cancelled());
        assert!(lines.lock().unwrap().is_empty());
    }
}
