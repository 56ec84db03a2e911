//! A worker's exit status survives a parent that ignores SIGCHLD, as the
//! BEAM does (the kernel would otherwise reap the worker and drop its status).
//! In a test binary of its own: it changes the process's signal disposition.

use std::sync::Arc;
use std::time::Duration;

use snakepit_core::process::{launch, EventSink, ExitInfo, WorkerEvent, WorkerSpec};
use tokio::sync::mpsc;

#[tokio::test]
async fn exit_status_is_kept_when_the_parent_ignores_sigchld() {
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
    for round in 0..5 {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sink: EventSink = Arc::new(move |event| {
            let _ = tx.send(event);
        });
        let spec = WorkerSpec {
            worker_id: format!("exit-{round}"),
            executable: "/bin/sh".into(),
            // Exits with status 3 a little after announcing readiness, so
            // that `Ready` is reported before `Exited`.
            args: vec!["-c".into(), "echo GRPC_READY:1; sleep 0.2; exit 3".into()],
            env: vec![],
            cwd: None,
            start_timeout: Duration::from_secs(10),
            output_limits: Default::default(),
        };
        let _worker = launch(spec, sink).expect("spawn /bin/sh");
        let status = loop {
            match rx.recv().await.expect("an event") {
                WorkerEvent::Exited { status } => break status,
                WorkerEvent::StartFailed { message } => panic!("start failed: {message}"),
                _ => continue,
            }
        };
        assert_eq!(status, ExitInfo::Code(3), "round {round}");
    }
}
