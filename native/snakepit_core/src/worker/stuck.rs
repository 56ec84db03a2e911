//! Tools that do not stop when their call is cancelled.
//!
//! Cancelling a sync Python tool raises `ToolCancelled` at its next Python
//! instruction, which never comes while the thread is blocked in C (a long
//! `time.sleep`, a socket read, a native library). Such a thread cannot be
//! stopped from inside the process, and every new call that times out on the
//! same tool would tie up one more. So when a cancelled call is still running
//! [`StuckWatch::grace`] after the cancel (see
//! `control::CallControl::cancel_in_background`), the worker asks to be
//! recycled: it sends `SNAKEPIT_RECYCLE:<reason>` ([`RECYCLE_PREFIX`]) on its
//! protocol stdout, once; the pool then drains it (its other calls run to
//! their end, it takes no new ones) and replaces it, which ends the stuck
//! threads with the process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::process::RECYCLE_PREFIX;

/// Environment variable with the grace in milliseconds, set by the pool from
/// its `:cancel_grace` option.
pub const GRACE_ENV_VAR: &str = "SNAKEPIT_CANCEL_GRACE_MS";

/// The grace when the environment does not give one.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// Where a recycle request goes: one whole line, written at once.
pub type RecycleSink = Box<dyn Fn(&str) + Send + Sync>;

/// The worker's watch over cancelled calls: how long they may keep running,
/// and the one recycle request it sends when one overstays.
pub struct StuckWatch {
    grace: Duration,
    requested: AtomicBool,
    sink: RecycleSink,
}

impl StuckWatch {
    pub fn new(grace: Duration, sink: RecycleSink) -> Self {
        Self {
            grace,
            requested: AtomicBool::new(false),
            sink,
        }
    }

    /// The grace given as [`GRACE_ENV_VAR`]'s value (milliseconds), or
    /// [`DEFAULT_GRACE`] when it is missing or unreadable.
    pub fn grace_from(value: Option<&str>) -> Duration {
        value
            .and_then(|ms| ms.trim().parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_GRACE)
    }

    /// How long a cancelled tool may keep running before the worker asks to
    /// be recycled.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Asks for the worker to be recycled because `tool` did not stop within
    /// the grace after being cancelled for `reason`. Only the first request
    /// is sent (one recycles the worker); returns whether this one was.
    pub fn report(&self, tool: &str, reason: &str) -> bool {
        if self.requested.swap(true, Ordering::SeqCst) {
            return false;
        }
        let line = format!(
            "{RECYCLE_PREFIX}the tool {tool:?} did not stop within {} ms of being cancelled ({reason})\n",
            self.grace.as_millis()
        );
        (self.sink)(&line);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::testing::watch;

    #[test]
    fn reads_the_grace_from_its_variable() {
        assert_eq!(
            StuckWatch::grace_from(Some("250")),
            Duration::from_millis(250)
        );
        assert_eq!(
            StuckWatch::grace_from(Some(" 40\n")),
            Duration::from_millis(40)
        );
        assert_eq!(StuckWatch::grace_from(Some("soon")), DEFAULT_GRACE);
        assert_eq!(StuckWatch::grace_from(Some("-1")), DEFAULT_GRACE);
        assert_eq!(StuckWatch::grace_from(None), DEFAULT_GRACE);
    }

    #[test]
    fn sends_one_recycle_request_however_many_tools_are_stuck() {
        let (watch, lines) = watch(Duration::from_millis(40));
        assert!(watch.report("sleepy", "deadline_exceeded"));
        assert!(!watch.report("sleepy", "cancelled"));
        assert!(!watch.report("other", "cancelled"));
        let lines = lines.lock().unwrap();
        assert_eq!(
            *lines,
            [format!(
                "{RECYCLE_PREFIX}the tool \"sleepy\" did not stop within 40 ms of being cancelled (deadline_exceeded)\n"
            )]
        );
    }
}
