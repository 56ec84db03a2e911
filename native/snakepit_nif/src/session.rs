//! The node's session store, reached from Elixir (`Snakepit.Session`).
//!
//! The store (`snakepit_core::session`) is the one owner of session state; the
//! bridge server (`bridge.rs`) serves the same store to Python. These NIFs are
//! short critical sections on its mutex; the ones that convert values (which
//! may be large tensors) run on dirty CPU schedulers.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustler::{Encoder, Env, Term};
use serde_json::Value;
use snakepit_core::json::{self, JsonError};
use snakepit_core::session::{Source, Store, StoreConfig, StoreError, VariableSpec, VariableWrite};

use crate::atoms;
use crate::codec::encode;
use crate::session_terms::{session_info, store_error, variable};

static STORE: OnceLock<Arc<Store>> = OnceLock::new();

/// The node's store, created with `config` unless it exists already.
pub fn store_with(config: StoreConfig) -> &'static Arc<Store> {
    STORE.get_or_init(|| Store::new(config))
}

/// The node's store (with default limits when the bridge has not set them).
pub fn store() -> &'static Arc<Store> {
    store_with(StoreConfig::default())
}

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
    id: String,
    ttl_s: u64,
    metadata: HashMap<String, String>,
) -> Term<'a> {
    let ttl = (ttl_s > 0).then(|| Duration::from_secs(ttl_s));
    reply(
        env,
        store().create_session(&id, ttl, metadata),
        |env, info| session_info(env, &info),
    )
}

#[rustler::nif]
fn session_touch(env: Env<'_>, id: String) -> Term<'_> {
    reply(env, store().touch_session(&id), |env, info| {
        session_info(env, &info)
    })
}

#[rustler::nif]
fn session_delete(id: String) -> bool {
    store().delete_session(&id)
}

#[rustler::nif]
fn session_list(env: Env<'_>) -> Term<'_> {
    store()
        .list_sessions()
        .iter()
        .map(|info| session_info(env, info))
        .collect::<Vec<_>>()
        .encode(env)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn var_register<'a>(
    env: Env<'a>,
    session: String,
    name: String,
    var_type: String,
    value: Term<'a>,
    constraints: Term<'a>,
    metadata: HashMap<String, String>,
) -> Term<'a> {
    let result = term_to_value(value, "value").and_then(|value| {
        let constraints = term_to_value(constraints, "constraints")?;
        store().register_variable(
            &session,
            VariableSpec {
                name,
                var_type,
                value,
                constraints,
                metadata,
            },
            Source::Elixir,
        )
    });
    reply(env, result, |env, var| variable(env, &var))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn var_get(env: Env<'_>, session: String, identifier: String) -> Term<'_> {
    reply(
        env,
        store().get_variable(&session, &identifier),
        |env, var| variable(env, &var),
    )
}

#[rustler::nif(schedule = "DirtyCpu")]
fn var_get_many(env: Env<'_>, session: String, identifiers: Vec<String>) -> Term<'_> {
    reply(
        env,
        store().get_variables(&session, &identifiers),
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
    session: String,
    write: (String, Term<'a>, Option<u64>),
    metadata: HashMap<String, String>,
) -> Term<'a> {
    let result = write_of(write, &metadata)
        .and_then(|write| store().set_variable(&session, write, Source::Elixir));
    reply(env, result, |env, var| variable(env, &var))
}

#[rustler::nif(schedule = "DirtyCpu")]
fn var_set_many<'a>(
    env: Env<'a>,
    session: String,
    writes: Vec<(String, Term<'a>, Option<u64>)>,
    metadata: HashMap<String, String>,
) -> Term<'a> {
    let result = writes
        .into_iter()
        .map(|write| write_of(write, &metadata))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|writes| store().set_variables(&session, writes, Source::Elixir));
    reply(env, result, |env, vars| {
        vars.iter()
            .map(|var| variable(env, var))
            .collect::<Vec<_>>()
            .encode(env)
    })
}

#[rustler::nif(schedule = "DirtyCpu")]
fn var_list(env: Env<'_>, session: String, pattern: String) -> Term<'_> {
    reply(
        env,
        store().list_variables(&session, &pattern),
        |env, vars| {
            vars.iter()
                .map(|var| variable(env, var))
                .collect::<Vec<_>>()
                .encode(env)
        },
    )
}

#[rustler::nif]
fn var_delete(env: Env<'_>, session: String, identifier: String) -> Term<'_> {
    match store().delete_variable(&session, &identifier, Source::Elixir) {
        Ok(()) => atoms::ok().encode(env),
        Err(error) => store_error(env, &error),
    }
}
