//! Tools that do not stop when their call is cancelled.
//!
//! Cancelling a sync tool raises `ToolCancelled` at its next Python
//! instruction, which never comes while the thread is blocked in C (a long
//! `time.sleep`, a socket read, a native library). Such a thread cannot be
//! stopped from inside the process, and every new call that times out on the
//! same tool would tie up one more. So when a cancelled call is still running
//! [`grace`] after the cancel, the worker asks to be recycled: it prints
//! `SNAKEPIT_RECYCLE:<reason>` (`snakepit_core::process::RECYCLE_PREFIX`) on
//! its protocol stdout, once; the pool then drains it (its other calls run to
//! their end, it takes no new ones) and replaces it, which ends the stuck
//! threads with the process.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use snakepit_core::process::RECYCLE_PREFIX;

/// Environment variable with the grace in milliseconds, set by the pool from
/// its `:cancel_grace` option.
pub const GRACE_ENV_VAR: &str = "SNAKEPIT_CANCEL_GRACE_MS";

/// The grace when the environment does not give one.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// How long a cancelled tool may keep running before the worker asks to be
/// recycled.
pub fn grace() -> Duration {
    static GRACE: OnceLock<Duration> = OnceLock::new();
    *GRACE.get_or_init(|| {
        std::env::var(GRACE_ENV_VAR)
            .ok()
            .and_then(|ms| ms.trim().parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_GRACE)
    })
}

/// Asks the pool to recycle this worker because `tool` did not stop within
/// the grace after being cancelled for `reason`; only the first call prints.
pub fn report(tool: &str, reason: &str) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if REPORTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let line = format!(
        "{RECYCLE_PREFIX}the tool {tool:?} did not stop within {} ms of being cancelled ({reason})\n",
        grace().as_millis()
    );
    // One write of one short line: it reaches the pipe whole. Python's own
    // `sys.stdout` writes to stderr in a worker, so nothing else writes here.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(line.as_bytes());
    let _ = stdout.flush();
}
