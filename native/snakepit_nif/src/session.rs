//! A bridge's session store, reached from Elixir (`Snakepit.Session`).
//!
//! The store (`snakepit_core::session`) is the one owner of session state; its
//! bridge server (`bridge.rs`) serves the same store to Python. Every NIF here
//! takes the bridge resource, which owns the store. They are short critical
//! sections on the store's mutex; the ones that convert values (which may be
//! large tensors) run on dirty CPU schedulers.

use std::collections::HashMap;
use std::time::Duration;

use rustler::{Encoder, Env, NifMap, ResourceArc, Term};
use serde_json::Value;
use snakepit_core::json::{self, JsonError};
use snakepit_core::session::{Source, StoreError, VariableSpec, VariableWrite};

use crate::atoms;
use crate::bridge::BridgeResource;
use crate::codec::encode;
use crate::session_terms::{session_info, store_error, variable};

/// The bridge whose store a NIF works on.
type Bridge = ResourceArc<BridgeResource>;

/// An Elixir term as a JSON value; a term JSON cannot carry is refused.
pub fn term_to_value(term: Term<'_>, root: &str) -> Result<Value, StoreError> {
    let refuse = |e: JsonError| {
        StoreError::InvalidArgument(format!("{} cannot be stored: {}", e.path, e.message))
    };
    // Reading back what `encode` wrote cannot fail; it gives the exact value.
    json::parse(&encode(term, root).map_err(refuse)?).map_err(refuse)
}

fn reply<'a, T>(
    env: Env<'a>,
    result: Result<T, StoreError>,
    build: impl FnOnce(Env<'a>, T) -> Term<'a>,
) -> Term<'a> {
    match result {
        Ok(value) => (atoms::ok(), build(env, value)).encode(env),
        Err(error) => store_error(env, &error),
    }
}

#[rustler::nif]
fn session_create<'a>(
    env: Env<'a>,
    bridge: Bridge,
    id: String,
    ttl_s: u64,
    metadata: HashMap<String, String>,
) -> Term<'a> {
    let ttl = (ttl_s > 0).then(|| Duration::from_secs(ttl_s));
    reply(
        env,
        bridge.store().create_session(&id, ttl, metadata),
        |env, info| session_info(env, &info),
    )
}

#[rustler::nif]
fn session_touch(env: Env<'_>, bridge: Bridge, id: String) -> Term<'_> {
    reply(env, bridge.store().touch_session(&id), |env, info| {
        session_info(env, &info)
    })
}

#[rustler::nif]
fn session_delete(bridge: Bridge, id: String) -> bool {
    bridge.store().delete_session(&id)
}

#[rustler::nif]
fn session_list(env: Env<'_>, bridge: Bridge) -> Term<'_> {
    bridge
        .store()
        .list_sessions()
        .iter()
        .map(|info| session_info(env, info))
        .collect::<Vec<_>>()
        .encode(env)
}

/// A variable to register, as `Snakepit.Session` passes it.
#[derive(NifMap)]
struct Registration<'a> {
    name: String,
    var_type: String,
    value: Term<'a>,
    constraints: Term<'a>,
    metadata: HashMap<String, String>,
}

#[rustler::nif(schedule = "DirtyCpu")]
fn var_register<'a>(
    env: Env<'a>,
    bridge: Bridge,
    session: String,
    registration: Registration<'a>,
) -> Term<'a> {
    let result = term_to_value(registration.value, "value").and_then(|value| {
        let constraints = term_to_value(registration.constraints, "constraints")?;
        bridge.store().register_variable(
            &session,
            VariableSpec {
                name: registration.name,
                var_type: registration.var_type,
                value,
                constraints,
                metadata: registration.metadata,
            },
            Source::Elixir,
        )
    });
    reply(env, result, |env, var| variable(env, &var))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn var_get(env: Env<'_>, bridge: Bridge, session: String, identifier: String) -> Term<'_> {
    reply(
        env,
        bridge.store().get_variable(&session, &identifier),
        |env, var| variable(env, &var),
    )
}

#[rustler::nif(schedule = "DirtyCpu")]
fn var_get_many(
    env: Env<'_>,
    bridge: Bridge,
    session: String,
    identifiers: Vec<String>,
) -> Term<'_> {
    reply(
        env,
        bridge.store().get_variables(&session, &identifiers),
        |env, (found, missing)| {
            let found: Vec<Term> = found.iter().map(|var| variable(env, var)).collect();
            (found, missing).encode(env)
        },
    )
}

/// One write as Elixir passes it: `{identifier, value, expected_version | nil}`.
fn write_of<'a>(
    (identifier, value, expected): (String, Term<'a>, Option<u64>),
    metadata: &HashMap<String, String>,
) -> Result<VariableWrite, StoreError> {
    Ok(VariableWrite {
        value: term_to_value(value, &format!("value of {identifier:?}"))?,
        identifier,
        expected_version: expected,
        metadata: metadata.clone(),
    })
}

#[rustler::nif(schedule = "DirtyCpu")]
fn var_set<'a>(
    env: Env<'a>,
    bridge: Bridge,
    session: String,
    write: (String, Term<'a>, Option<u64>),
    metadata: HashMap<String, String>,
) -> Term<'a> {
    let result = write_of(write, &metadata)
        .and_then(|write| bridge.store().set_variable(&session, write, Source::Elixir));
    reply(env, result, |env, var| variable(env, &var))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn var_set_many<'a>(
    env: Env<'a>,
    bridge: Bridge,
    session: String,
    writes: Vec<(String, Term<'a>, Option<u64>)>,
    metadata: HashMap<String, String>,
) -> Term<'a> {
    let result = writes
        .into_iter()
        .map(|write| write_of(write, &metadata))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|writes| {
            bridge
                .store()
                .set_variables(&session, writes, Source::Elixir)
        });
    reply(env, result, |env, vars| {
        vars.iter()
            .map(|var| variable(env, var))
            .collect::<Vec<_>>()
            .encode(env)
    })
}

#[rustler::nif(schedule = "DirtyCpu")]
fn var_list(env: Env<'_>, bridge: Bridge, session: String, pattern: String) -> Term<'_> {
    reply(
        env,
        bridge.store().list_variables(&session, &pattern),
        |env, vars| {
            vars.iter()
                .map(|var| variable(env, var))
                .collect::<Vec<_>>()
                .encode(env)
        },
    )
}

#[rustler::nif]
fn var_delete(env: Env<'_>, bridge: Bridge, session: String, identifier: String) -> Term<'_> {
    match bridge
        .store()
        .delete_variable(&session, &identifier, Source::Elixir)
    {
        Ok(()) => atoms::ok().encode(env),
        Err(error) => store_error(env, &error),
    }
}
