//! The numbers `snakepit_core` shares with the Elixir side
//! (`Snakepit.Limits`) and the Python package (`snakepit_bridge.limits`),
//! for the test that checks they agree (`test/snakepit/limits_test.exs`).

use rustler::NifMap;
use snakepit_core::{client, json, PROTOCOL_VERSION};

#[derive(NifMap)]
pub struct Limits {
    max_message_bytes: usize,
    max_depth: usize,
    max_integer_digits: usize,
    protocol_version: String,
}

#[rustler::nif]
fn limits() -> Limits {
    Limits {
        max_message_bytes: client::MAX_MESSAGE_BYTES,
        max_depth: json::MAX_DEPTH,
        max_integer_digits: json::MAX_INTEGER_DIGITS,
        protocol_version: PROTOCOL_VERSION.to_owned(),
    }
}
