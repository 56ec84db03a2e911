//! Atoms shared by the NIF modules.

rustler::atoms! {
    ok,
    error,
    nil,
    chunk,
    done,
    ready,
    start_failed,
    log,
    stdout,
    stderr,
    exit,
    exit_status,
    signal,
    snakepit_worker,
    // error categories
    validation,
    worker,
    timeout,
    python,
    transport,
    // error detail keys
    path,
    python_type,
    traceback,
    grpc_status,
    reason,
    not_ready,
    // capacity
    capacity,
    recycle,
    drained,
    draining,
    busy,
    in_flight,
    served,
}
