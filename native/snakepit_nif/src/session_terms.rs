//! Session store values as Elixir terms: `%Snakepit.Session.Info{}`,
//! `%Snakepit.Session.Variable{}` and `%Snakepit.Session.Update{}` structs
//! built directly here, so a watcher's message needs no conversion in Elixir.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustler::{Atom, Encoder, Env, Term};
use snakepit_core::session::{SessionInfo, StoreError, Variable, VariableUpdate};

use crate::codec::value_to_term;

/// A struct term: `__struct__` plus atom-keyed fields.
fn struct_term<'a>(env: Env<'a>, module: &str, fields: &[(&str, Term<'a>)]) -> Term<'a> {
    let mut map = Term::map_new(env);
    let name = Atom::from_str(env, module).expect("a valid atom");
    let struct_key = Atom::from_str(env, "__struct__").expect("a valid atom");
    map = map.map_put(struct_key, name).unwrap_or(map);
    for (key, value) in fields {
        let key = Atom::from_str(env, key).expect("a valid atom");
        map = map.map_put(key, *value).unwrap_or(map);
    }
    map
}

fn atom<'a>(env: Env<'a>, name: &str) -> Term<'a> {
    Atom::from_str(env, name).expect("a valid atom").encode(env)
}

fn string_map<'a>(env: Env<'a>, map: &HashMap<String, String>) -> Term<'a> {
    let mut term = Term::map_new(env);
    for (key, value) in map {
        term = term.map_put(key.as_str(), value.as_str()).unwrap_or(term);
    }
    term
}

/// `%DateTime{}` in UTC with microsecond precision.
pub fn datetime<'a>(env: Env<'a>, time: SystemTime) -> Term<'a> {
    let micros = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as i64;
    let seconds = micros.div_euclid(1_000_000);
    let micro = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    struct_term(
        env,
        "Elixir.DateTime",
        &[
            ("calendar", atom(env, "Elixir.Calendar.ISO")),
            ("year", year.encode(env)),
            ("month", month.encode(env)),
            ("day", day.encode(env)),
            ("hour", (of_day / 3600).encode(env)),
            ("minute", (of_day % 3600 / 60).encode(env)),
            ("second", (of_day % 60).encode(env)),
            ("microsecond", (micro, 6).encode(env)),
            ("std_offset", 0.encode(env)),
            ("utc_offset", 0.encode(env)),
            ("time_zone", "Etc/UTC".encode(env)),
            ("zone_abbr", "UTC".encode(env)),
        ],
    )
}

/// Gregorian (year, month, day) of a day count since 1970-01-01
/// (the proleptic calendar algorithm by eras of 400 years).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub fn session_info<'a>(env: Env<'a>, info: &SessionInfo) -> Term<'a> {
    struct_term(
        env,
        "Elixir.Snakepit.Session.Info",
        &[
            ("id", info.id.encode(env)),
            ("created_at", datetime(env, info.created_at)),
            ("last_used_at", datetime(env, info.last_used_at)),
            ("ttl", info.ttl.as_secs().encode(env)),
            ("expires_at", datetime(env, info.expires_at)),
            ("metadata", string_map(env, &info.metadata)),
            ("variable_count", info.variable_count.encode(env)),
            ("watcher_count", info.watcher_count.encode(env)),
        ],
    )
}

pub fn variable<'a>(env: Env<'a>, variable: &Variable) -> Term<'a> {
    struct_term(
        env,
        "Elixir.Snakepit.Session.Variable",
        &[
            ("id", variable.id.encode(env)),
            ("name", variable.name.encode(env)),
            ("type", atom(env, variable.var_type.as_str())),
            ("value", value_to_term(env, &variable.value)),
            ("constraints", value_to_term(env, &variable.constraints)),
            ("metadata", string_map(env, &variable.metadata)),
            ("version", variable.version.encode(env)),
            ("source", atom(env, variable.source.as_str())),
            (
                "update_metadata",
                string_map(env, &variable.update_metadata),
            ),
            ("created_at", datetime(env, variable.created_at)),
            ("updated_at", datetime(env, variable.updated_at)),
        ],
    )
}

pub fn update<'a>(env: Env<'a>, update: &VariableUpdate) -> Term<'a> {
    let old_value = match &update.old_value {
        Some(value) => value_to_term(env, value),
        None => atom(env, "nil"),
    };
    struct_term(
        env,
        "Elixir.Snakepit.Session.Update",
        &[
            ("type", atom(env, update.update_type.as_str())),
            ("name", update.variable.name.encode(env)),
            ("value", value_to_term(env, &update.variable.value)),
            ("old_value", old_value),
            ("version", update.variable.version.encode(env)),
            ("source", atom(env, update.source.as_str())),
            ("metadata", string_map(env, &update.metadata)),
            ("timestamp", datetime(env, update.timestamp)),
            ("variable", variable(env, &update.variable)),
        ],
    )
}

/// `{:error, {reason, message}}` with `reason` the store's machine-readable name.
pub fn store_error<'a>(env: Env<'a>, error: &StoreError) -> Term<'a> {
    (
        atom(env, "error"),
        (error.reason(), error.to_string()).encode(env),
    )
        .encode(env)
}
