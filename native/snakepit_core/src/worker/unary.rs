//! A call's deadline on the worker, and what a unary call does when it
//! passes.
//!
//! The deadline comes from the `grpc-timeout` header, read by [`Admit`] when
//! the request arrives (see `crate::deadline`, which also explains why the
//! server ends the call a little before the client would). When it passes, a
//! unary call is cancelled and waits [`CallDeadline::stop_check`] for its tool
//! to stop, then ends with `DEADLINE_EXCEEDED` saying whether the tool did
//! ([`TOOL_STOPPED_KEY`]); a tool blocked in C does not (see `stuck.rs`).

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::control::{CallHandle, CancelOnDrop, CancelReason};
use crate::auth::RequireToken;
use crate::deadline::{
    early_margin, parse_grpc_timeout, server_deadline, GRPC_TIMEOUT_HEADER, TOOL_STOPPED_KEY,
};
use crate::executor::HANDOFF;

/// The instant a call must end by, and how long after it a unary call waits
/// for its cancelled tool to stop; put in the request's extensions by
/// [`Admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDeadline {
    pub at: Instant,
    pub stop_check: Duration,
}

impl CallDeadline {
    /// The deadline of a call received at `received` with `timeout`. The stop
    /// check is a fifth of the deadline's early margin (at most 10 ms): a tool
    /// that Python can interrupt stops within it, and most of the margin is
    /// left for the status to reach the client before its own deadline on a
    /// loaded machine.
    pub fn new(received: Instant, timeout: Duration) -> Self {
        Self {
            at: server_deadline(received, timeout),
            stop_check: early_margin(timeout) / 5,
        }
    }

    /// The deadline [`Admit`] noted for `request`.
    pub fn of<T>(request: &Request<T>) -> Option<Self> {
        request.extensions().get::<Self>().copied()
    }
}

/// Checks the token and notes the call's deadline, as soon as the headers
/// are in (before a large request body is decoded).
#[derive(Clone)]
pub struct Admit {
    token: RequireToken,
}

impl Admit {
    pub fn new(token: RequireToken) -> Self {
        Self { token }
    }
}

impl Interceptor for Admit {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let received = Instant::now();
        let mut request = self.token.call(request)?;
        // A malformed value is ignored (as tonic itself does): no deadline.
        let timeout = request
            .metadata()
            .get(GRPC_TIMEOUT_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_grpc_timeout(value).ok());
        if let Some(timeout) = timeout {
            request
                .extensions_mut()
                .insert(CallDeadline::new(received, timeout));
        }
        Ok(request)
    }
}

/// The status of a call whose deadline passed.
pub fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("the call's deadline passed; the tool was cancelled")
}

/// Waits for the outcome of a unary call queued on the executor.
///
/// If it has not arrived within [`HANDOFF`], `handoff` runs (the executor's
/// `unstick`: a call still queued gets a thread of its own). If `deadline`
/// passes first, the call is cancelled through `guard`, gets the stop check
/// to stop, and the result is `DEADLINE_EXCEEDED` with [`TOOL_STOPPED_KEY`].
/// An outcome that never comes (its sender dropped) is an internal error.
pub async fn unary_outcome<T, H: CallHandle>(
    outcome: &mut oneshot::Receiver<T>,
    deadline: Option<CallDeadline>,
    guard: &CancelOnDrop<H>,
    handoff: impl FnOnce(),
) -> Result<T, Status> {
    let work = async {
        match tokio::time::timeout(HANDOFF, &mut *outcome).await {
            Ok(outcome) => outcome,
            Err(_waited) => {
                handoff();
                (&mut *outcome).await
            }
        }
    };
    let joined = match deadline {
        None => work.await,
        Some(deadline) => match within(deadline.at, work).await {
            Some(joined) => joined,
            None => {
                guard.cancel(CancelReason::Deadline);
                let stopped = tokio::time::timeout(deadline.stop_check, outcome)
                    .await
                    .is_ok();
                let mut status = deadline_exceeded();
                status.metadata_mut().insert(
                    TOOL_STOPPED_KEY,
                    MetadataValue::from_static(if stopped { "true" } else { "false" }),
                );
                return Err(status);
            }
        },
    };
    joined.map_err(|_| Status::internal("the worker's Python thread failed"))
}

/// `work`'s output, or `None` once `at` passes.
async fn within<F: Future>(at: Instant, work: F) -> Option<F::Output> {
    tokio::time::timeout_at(at.into(), work).await.ok()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::Arc;

    use super::*;
    use crate::worker::control::CallControl;
    use crate::worker::testing::{watch, Probe};

    fn running_call() -> (CancelOnDrop<Probe>, Probe, Arc<CallControl<Probe>>) {
        let control = CallControl::new("tool".into(), watch(Duration::from_secs(60)).0);
        let probe = Probe::default();
        control.start(Some(probe.clone()));
        (CancelOnDrop::new(control.clone()), probe, control)
    }

    fn stopped_metadata(status: &Status) -> &str {
        status
            .metadata()
            .get(TOOL_STOPPED_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("missing")
    }

    #[test]
    fn the_deadline_and_stop_check_follow_the_timeout() {
        let now = Instant::now();
        let deadline = CallDeadline::new(now, Duration::from_millis(300));
        assert_eq!(deadline.at, now + Duration::from_millis(270));
        assert_eq!(deadline.stop_check, Duration::from_millis(6));
        let long = CallDeadline::new(now, Duration::from_secs(30));
        assert_eq!(long.stop_check, Duration::from_millis(10));
    }

    #[test]
    fn admit_notes_the_deadline_and_refuses_a_missing_token() {
        let token = "secret-token";
        let mut admit = Admit::new(RequireToken::new(token));
        assert!(admit.call(Request::new(())).is_err());
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(crate::auth::TOKEN_METADATA_KEY, token.parse().unwrap());
        let plain = admit.call(request).expect("admitted");
        assert_eq!(CallDeadline::of(&plain), None);
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(crate::auth::TOKEN_METADATA_KEY, token.parse().unwrap());
        request.set_timeout(Duration::from_secs(2));
        let before = Instant::now();
        let timed = admit.call(request).expect("admitted");
        let deadline = CallDeadline::of(&timed).expect("a deadline");
        assert!(deadline.at >= before + Duration::from_millis(1950));
        assert!(deadline.at <= Instant::now() + Duration::from_millis(1950));
    }

    #[tokio::test(start_paused = true)]
    async fn an_outcome_in_time_is_returned_without_a_hand_off() {
        let (guard, probe, _control) = running_call();
        let (done, mut outcome) = oneshot::channel();
        done.send(7).unwrap();
        let handed_off = Cell::new(false);
        let deadline = CallDeadline::new(Instant::now(), Duration::from_secs(1));
        let result = unary_outcome(&mut outcome, Some(deadline), &guard, || {
            handed_off.set(true)
        })
        .await;
        assert_eq!(result.unwrap(), 7);
        assert!(!handed_off.get());
        assert!(probe.cancels().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_outcome_is_handed_off_then_returned() {
        let (guard, _probe, _control) = running_call();
        let (done, mut outcome) = oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(HANDOFF * 5).await;
            done.send("late").unwrap();
        });
        let handed_off = Cell::new(0);
        let result = unary_outcome(&mut outcome, None, &guard, || {
            handed_off.set(handed_off.get() + 1)
        })
        .await;
        assert_eq!(result.unwrap(), "late");
        assert_eq!(handed_off.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tool_that_stops_within_the_check_says_so() {
        let (guard, probe, control) = running_call();
        let (done, mut outcome) = oneshot::channel::<()>();
        let deadline = CallDeadline::new(Instant::now(), Duration::from_millis(100));
        // The tool stops as soon as it is cancelled (here: when the
        // background cancel has reached the handle).
        let stopping = tokio::spawn(async move {
            while probe.cancels().is_empty() {
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            control.finish();
            drop(done);
            probe
        });
        let status = unary_outcome(&mut outcome, Some(deadline), &guard, || {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(stopped_metadata(&status), "true");
        assert_eq!(stopping.await.unwrap().cancels(), [CancelReason::Deadline]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tool_that_keeps_running_past_the_check_says_so() {
        let (guard, probe, _control) = running_call();
        let (_done, mut outcome) = oneshot::channel::<()>();
        let start = tokio::time::Instant::now();
        let deadline = CallDeadline::new(Instant::now(), Duration::from_millis(100));
        let status = unary_outcome(&mut outcome, Some(deadline), &guard, || {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(stopped_metadata(&status), "false");
        // The deadline (90 ms) plus the stop check (2 ms), not more.
        assert!(
            start.elapsed() <= Duration::from_millis(93),
            "{:?}",
            start.elapsed()
        );
        while probe.cancels().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(probe.cancels(), [CancelReason::Deadline]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_outcome_is_an_internal_error() {
        let (guard, _probe, _control) = running_call();
        let (done, mut outcome) = oneshot::channel::<()>();
        drop(done);
        let status = unary_outcome(&mut outcome, None, &guard, || {})
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
    }
}
