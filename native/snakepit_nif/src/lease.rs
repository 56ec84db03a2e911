//! Leases: the right to send one call or stream to a worker.
//!
//! Capacity is counted here, in atomics, so that checking a worker out costs
//! no message to any process. A lease is a resource held by the caller; it is
//! released explicitly when the call ends, and by its destructor if the caller
//! dies first, so a killed caller never leaks capacity.
//!
//! Releasing notifies the pool only when it matters: when a full worker frees
//! a slot (someone may be queued for it) and when a draining worker becomes
//! idle (it can now be stopped).

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use rustler::{Atom, Encoder, Env, ResourceArc, Term};

use crate::atoms;
use crate::worker::{Notice, WorkerResource, WorkerShared};

pub struct Lease {
    shared: Arc<WorkerShared>,
    released: AtomicBool,
}

#[rustler::resource_impl]
impl rustler::Resource for Lease {}

impl Lease {
    /// Gives the slot back (once; later calls do nothing).
    pub(crate) fn release(&self) {
        if self.released.swap(true, SeqCst) {
            return;
        }
        let shared = &self.shared;
        let before = shared.in_flight.fetch_sub(1, SeqCst);
        if shared.draining.load(SeqCst) {
            if before == 1 {
                shared.notify(Notice::Drained);
            }
        } else if before == shared.capacity {
            shared.notify(Notice::Capacity);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Only an atomic and an unbounded channel send: safe in a destructor.
        self.release();
    }
}

/// `{:ok, lease}`, or `:busy` when the worker is at capacity, or `:draining`
/// when it takes no new work.
#[rustler::nif]
fn lease_acquire(env: Env<'_>, worker: ResourceArc<WorkerResource>) -> Term<'_> {
    let shared = &worker.shared;
    if shared.draining.load(SeqCst) {
        return atoms::draining().encode(env);
    }
    let taken = shared
        .in_flight
        .fetch_update(SeqCst, SeqCst, |n| (n < shared.capacity).then_some(n + 1));
    if taken.is_err() {
        return atoms::busy().encode(env);
    }
    let lease = Lease {
        shared: shared.clone(),
        released: AtomicBool::new(false),
    };
    // Re-check after taking the slot: a drain that started meanwhile saw our
    // slot (and waits for it) or we see its flag (and give the slot back).
    if shared.draining.load(SeqCst) {
        drop(lease);
        return atoms::draining().encode(env);
    }
    let served = shared.served.fetch_add(1, SeqCst) + 1;
    if shared.max_requests > 0 && served == shared.max_requests {
        shared.draining.store(true, SeqCst);
        shared.notify(Notice::Recycle);
    }
    (atoms::ok(), ResourceArc::new(lease)).encode(env)
}

/// Gives the lease's slot back (idempotent).
#[rustler::nif]
fn lease_release(lease: ResourceArc<Lease>) -> Atom {
    lease.release();
    atoms::ok()
}

/// Stops taking new work; `:drained` follows once nothing is in flight.
#[rustler::nif]
fn worker_drain(worker: ResourceArc<WorkerResource>) -> Atom {
    let shared = &worker.shared;
    if !shared.draining.swap(true, SeqCst) && shared.in_flight.load(SeqCst) == 0 {
        shared.notify(Notice::Drained);
    }
    atoms::ok()
}

/// `%{in_flight:, served:, capacity:, draining:, output_dropped_lines:,
/// output_dropped_bytes:}`.
#[rustler::nif]
fn worker_load(env: Env<'_>, worker: ResourceArc<WorkerResource>) -> Term<'_> {
    let shared = &worker.shared;
    let dropped = worker.output().dropped_total();
    let pairs = [
        (
            atoms::in_flight(),
            shared.in_flight.load(SeqCst).encode(env),
        ),
        (atoms::served(), shared.served.load(SeqCst).encode(env)),
        (atoms::capacity(), shared.capacity.encode(env)),
        (atoms::draining(), shared.draining.load(SeqCst).encode(env)),
        (atoms::output_dropped_lines(), dropped.lines.encode(env)),
        (atoms::output_dropped_bytes(), dropped.bytes.encode(env)),
    ];
    Term::map_from_pairs(env, &pairs).unwrap_or_else(|_| Term::map_new(env))
}

/// A lease held by Rust code (an outside call) that gives its slot back when
/// dropped. Dropping the `ResourceArc` alone would not: the resource lives
/// on while any process heap still references the lease term (the pool's,
/// until its next garbage collection), and only then releases.
pub(crate) struct HeldLease(pub(crate) ResourceArc<Lease>);

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.0.release();
    }
}
