//! Where a worker's recycle request goes when a cancelled tool does not stop
//! (the watch itself is `snakepit_core::worker::stuck`).

use std::io::Write;
use std::sync::OnceLock;

use snakepit_core::worker::stuck::{StuckWatch, GRACE_ENV_VAR};

/// The process's watch, with the grace the pool gave (`:cancel_grace`): one
/// recycle request per process, however many servers it runs.
pub fn watch() -> &'static StuckWatch {
    static WATCH: OnceLock<StuckWatch> = OnceLock::new();
    WATCH.get_or_init(|| {
        let grace = StuckWatch::grace_from(std::env::var(GRACE_ENV_VAR).ok().as_deref());
        StuckWatch::new(grace, Box::new(to_stdout))
    })
}

/// One write of one short line: it reaches the pipe whole. Python's own
/// `sys.stdout` writes to stderr in a worker, so nothing else writes here.
fn to_stdout(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(line.as_bytes());
    let _ = stdout.flush();
}
