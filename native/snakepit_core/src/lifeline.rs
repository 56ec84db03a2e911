//! A worker and everything it started die with the VM, however the VM dies.
//!
//! A worker runs in a process group of its own (its pid is the group id), and
//! the tools' subprocesses join that group unless they leave it (`setsid`,
//! `setpgid`). The VM going away reaches the worker in two ways:
//!
//! * the kernel sends it [`parent_death_signal`] when the thread that spawned
//!   it dies (`PR_SET_PDEATHSIG`, set by [`crate::process::launch`]; Linux);
//! * its stdin, a pipe whose write end only the VM holds, reaches end of file.
//!
//! Either way the worker calls [`kill_own_group`]: SIGKILL to its whole
//! process group, itself included, so the tools' subprocesses go with it. The
//! death signal is a real-time signal handled in the worker (installed by
//! [`die_with_parent`]), not SIGKILL: SIGKILL would end the worker before it
//! could take its group along. Before the handler is installed (between
//! `exec` and the worker's first lines), the signal's default action still
//! ends the worker, which has no children yet.
//!
//! Out of reach: a subprocess that moved to another process group or session
//! (`setsid`, `start_new_session=True`, daemons) is not ours to kill.

/// The signal the kernel sends a worker when the VM's spawning thread dies:
/// `SIGRTMIN + 7`, a real-time signal no runtime we know of uses, whose
/// default action ends the process.
#[cfg(target_os = "linux")]
pub fn parent_death_signal() -> libc::c_int {
    libc::SIGRTMIN() + 7
}

/// SIGKILL to the calling process's group, itself included, when it leads
/// that group (a worker started by a pool always does); otherwise (a worker
/// run by hand, in its shell's group) only the process itself exits. Never
/// returns. Async-signal-safe: only `getpgrp`, `getpid`, `kill` and `_exit`.
pub fn kill_own_group(status: libc::c_int) -> ! {
    // SAFETY: these calls only read ids, send signals and end the process.
    unsafe {
        if libc::getpgrp() == libc::getpid() {
            libc::kill(0, libc::SIGKILL);
        }
        libc::_exit(status)
    }
}

#[cfg(target_os = "linux")]
extern "C" fn on_parent_death(signal: libc::c_int) {
    kill_own_group(128 + signal);
}

/// Elsewhere than on Linux there is no parent-death signal: nothing to do.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent() -> std::io::Result<()> {
    Ok(())
}

/// Makes [`parent_death_signal`] take the calling process's group down (see
/// [`kill_own_group`]). Called by the worker before it loads any user code.
#[cfg(target_os = "linux")]
pub fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler only
    // makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_parent_death as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(parent_death_signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn gone(pid: i32) -> bool {
        // A zombie (killed, not yet reaped) counts as gone.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
            Err(_) => true,
        }
    }

    fn wait_gone(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if gone(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn the_death_signal_is_a_real_time_signal() {
        let signal = parent_death_signal();
        assert!(signal > libc::SIGRTMIN() && signal <= libc::SIGRTMAX());
    }

    /// A group leader that installed the handler takes its children along
    /// when it receives the parent-death signal. The leader is forked from
    /// this (multi-threaded) test, so between fork and its end it makes only
    /// async-signal-safe calls; its children `exec` sleep.
    #[test]
    fn the_signal_kills_the_whole_group() {
        let sleep = std::ffi::CString::new("/bin/sleep").unwrap();
        let sixty = std::ffi::CString::new("60").unwrap();
        let argv = [sleep.as_ptr(), sixty.as_ptr(), std::ptr::null()];
        let mut pipe = [0; 2];
        // SAFETY: see the doc comment; the child only calls setpgid, fork,
        // execv, sigaction, write, pause and _exit.
        let leader = unsafe {
            assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
            let leader = libc::fork();
            if leader == 0 {
                libc::setpgid(0, 0);
                let mut children = [0 as libc::pid_t; 2];
                for child in children.iter_mut() {
                    *child = libc::fork();
                    if *child == 0 {
                        libc::execv(sleep.as_ptr(), argv.as_ptr());
                        libc::_exit(127);
                    }
                }
                if die_with_parent().is_err() {
                    libc::_exit(1);
                }
                let size = std::mem::size_of_val(&children);
                libc::write(pipe[1], children.as_ptr().cast(), size);
                loop {
                    libc::pause();
                }
            }
            leader
        };
        let mut children = [0 as libc::pid_t; 2];
        // SAFETY: reads the two pids the leader wrote, into a buffer of that size.
        unsafe {
            libc::close(pipe[1]);
            let size = std::mem::size_of_val(&children);
            assert_eq!(
                libc::read(pipe[0], children.as_mut_ptr().cast(), size),
                size as isize
            );
            libc::close(pipe[0]);
        }
        assert!(children.iter().all(|pid| !gone(*pid)));

        // SAFETY: signals and reaps the process this test forked.
        let status = unsafe {
            libc::kill(leader, parent_death_signal());
            let mut status = 0;
            libc::waitpid(leader, &mut status, 0);
            status
        };
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
        for child in children {
            assert!(
                wait_gone(child),
                "child {child} outlived its group's leader"
            );
        }
    }
}
