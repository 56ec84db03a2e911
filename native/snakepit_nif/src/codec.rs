//! JSON encoding of Elixir terms and decoding of JSON into terms.
//!
//! Mapping (documented for users in `Snakepit`'s moduledoc):
//!
//! | Elixir                         | JSON                              |
//! |--------------------------------|-----------------------------------|
//! | integer (any size)             | number (integer)                  |
//! | float                          | number (shortest exact text)      |
//! | `true`, `false`, `nil`         | `true`, `false`, `null`           |
//! | other atoms                    | string                            |
//! | UTF-8 binary                   | string                            |
//! | list                           | array                             |
//! | keyword list (non-empty)       | object                            |
//! | tuple                          | array                             |
//! | map (atom/string/integer keys) | object                            |
//!
//! Refused with the path of the bad value, before anything is sent: pids,
//! references, ports, functions, structs, non-UTF-8 binaries, improper lists,
//! integers longer than [`MAX_INTEGER_DIGITS`] digits, values nested deeper
//! than [`MAX_DEPTH`], and maps or keyword lists whose keys would collide as
//! JSON keys (`:a` and `"a"`, `1` and `"1"`, a repeated keyword).
//!
//! Decoding is [`snakepit_core::json::parse`] (exact numbers, no merged keys,
//! the same depth bound) followed by [`value_to_term`].
//!
//! Both directions recurse once per level of nesting, so [`MAX_DEPTH`] bounds
//! the stack they use, whichever thread they run on.

use std::collections::HashSet;
use std::io::Write;

use rustler::types::tuple::get_tuple;
use rustler::{BigInt, Encoder, Env, ListIterator, MapIterator, Term, TermType};
use serde_json::Value;
use snakepit_core::json::{
    self, Exact, JsonError, JsonErrorKind, PathError, Segment, MAX_DEPTH, MAX_INTEGER_DIGITS,
};

use crate::atoms;

/// Encodes `term` as compact JSON; errors name the bad value's path from `root`.
pub fn encode(term: Term<'_>, root: &str) -> Result<Vec<u8>, JsonError> {
    let mut out = Vec::with_capacity(128);
    write_term(term, &mut out, 0).map_err(|e| e.at(root))?;
    Ok(out)
}

fn unsupported(message: impl Into<String>) -> PathError {
    PathError::new(JsonErrorKind::Unsupported, message)
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// Writes `term`, which sits `depth` containers deep.
fn write_term(term: Term<'_>, out: &mut Vec<u8>, depth: usize) -> Result<(), PathError> {
    match term.get_type() {
        TermType::Integer => write_integer(term, out),
        TermType::Float => {
            let value: f64 = term.decode().map_err(|_| unsupported("unreadable float"))?;
            // The shortest text that reads back as the same double (ryu).
            serde_json::to_writer(&mut *out, &value).map_err(|e| unsupported(e.to_string()))
        }
        TermType::Atom => {
            if term == atoms::nil().encode(term.get_env()) {
                out.extend_from_slice(b"null");
            } else if let Ok(flag) = term.decode::<bool>() {
                out.extend_from_slice(if flag { b"true" } else { b"false" });
            } else {
                let name = term
                    .atom_to_string()
                    .map_err(|_| unsupported("unreadable atom"))?;
                write_str(out, &name);
            }
            Ok(())
        }
        TermType::Binary => {
            let text = utf8(term).ok_or_else(|| {
                unsupported(
                    "binary is not valid UTF-8 text; pass raw bytes with the :binary_parameters option",
                )
            })?;
            write_str(out, text);
            Ok(())
        }
        TermType::List => {
            enter(depth + 1)?;
            // Fails for an improper list such as `[1 | 2]`.
            term.list_length()
                .map_err(|_| unsupported("an improper list has no JSON form"))?;
            match keyword_pairs(term) {
                Some(pairs) => write_object(pairs.into_iter(), out, depth + 1),
                None => {
                    let items = term
                        .decode::<ListIterator>()
                        .map_err(|_| unsupported("unreadable list"))?;
                    write_array(items, out, depth + 1)
                }
            }
        }
        TermType::Tuple => {
            enter(depth + 1)?;
            let items = get_tuple(term).map_err(|_| unsupported("unreadable tuple"))?;
            write_array(items.into_iter(), out, depth + 1)
        }
        TermType::Map => {
            enter(depth + 1)?;
            if let Ok(module) = term.map_get(rustler::types::atom::__struct__()) {
                let name = module.atom_to_string().unwrap_or_default();
                let name = name.strip_prefix("Elixir.").unwrap_or(&name).to_owned();
                return Err(unsupported(format!(
                    "a %{name}{{}} struct has no JSON form; convert it to a map or a string first"
                )));
            }
            let entries = MapIterator::new(term).ok_or_else(|| unsupported("unreadable map"))?;
            write_object(entries, out, depth + 1)
        }
        TermType::Pid => Err(unsupported("a pid cannot be sent to Python")),
        TermType::Port => Err(unsupported("a port cannot be sent to Python")),
        TermType::Ref => Err(unsupported("a reference cannot be sent to Python")),
        TermType::Fun => Err(unsupported("a function cannot be sent to Python")),
        TermType::Unknown => Err(unsupported("this value has no JSON form")),
    }
}

/// Refuses a container that would be `depth` deep.
fn enter(depth: usize) -> Result<(), PathError> {
    if depth > MAX_DEPTH {
        return Err(PathError::new(
            JsonErrorKind::TooDeep,
            json::too_deep_message(),
        ));
    }
    Ok(())
}

/// Bits of the largest magnitude that may have `MAX_INTEGER_DIGITS` digits:
/// ⌈4300 · log2(10)⌉ = 14 285.
const MAX_INTEGER_BITS: u64 = 14_285;

/// Integers of any size, as decimal text of at most [`MAX_INTEGER_DIGITS`] digits.
fn write_integer(term: Term<'_>, out: &mut Vec<u8>) -> Result<(), PathError> {
    if let Ok(n) = term.decode::<i64>() {
        let _ = write!(out, "{n}");
        return Ok(());
    }
    if let Ok(n) = term.decode::<u64>() {
        let _ = write!(out, "{n}");
        return Ok(());
    }
    let big: BigInt = term
        .decode()
        .map_err(|_| unsupported("unreadable integer"))?;
    // 10^4300 < 2^14285: refuse what is longer before the (quadratic)
    // conversion to decimal text.
    if big.bits() > MAX_INTEGER_BITS {
        return Err(PathError::new(
            JsonErrorKind::NumberOutOfRange,
            format!(
                "integer of {} bits is longer than the {MAX_INTEGER_DIGITS} digits allowed",
                big.bits()
            ),
        ));
    }
    let text = big.to_string();
    let digits = text.trim_start_matches('-').len();
    if digits > MAX_INTEGER_DIGITS {
        return Err(PathError::new(
            JsonErrorKind::NumberOutOfRange,
            json::integer_too_long_message(digits),
        ));
    }
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

fn utf8<'a>(term: Term<'a>) -> Option<&'a str> {
    let binary = term.decode_as_binary().ok()?;
    std::str::from_utf8(binary.as_slice()).ok()
}

/// The pairs of a non-empty keyword list (`[{atom, value}, ...]`), else `None`.
fn keyword_pairs(term: Term<'_>) -> Option<Vec<(Term<'_>, Term<'_>)>> {
    let mut pairs = Vec::new();
    for item in term.decode::<ListIterator>().ok()? {
        match get_tuple(item) {
            Ok(kv) if kv.len() == 2 && kv[0].get_type() == TermType::Atom => {
                pairs.push((kv[0], kv[1]));
            }
            _ => return None,
        }
    }
    (!pairs.is_empty()).then_some(pairs)
}

fn write_array<'a>(
    items: impl Iterator<Item = Term<'a>>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), PathError> {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_term(item, out, depth).map_err(|e| e.within(Segment::Index(i)))?;
    }
    out.push(b']');
    Ok(())
}

/// Keys already written in one object. Most objects are small: a linear
/// scan over them beats hashing.
struct SeenKeys {
    few: Vec<String>,
    many: HashSet<String>,
}

impl SeenKeys {
    const FEW: usize = 16;

    fn new() -> Self {
        Self {
            few: Vec::new(),
            many: HashSet::new(),
        }
    }

    /// Records `key`; false when it was seen before.
    fn insert(&mut self, key: &str) -> bool {
        if self.many.is_empty() {
            if self.few.iter().any(|seen| seen == key) {
                return false;
            }
            if self.few.len() < Self::FEW {
                self.few.push(key.to_owned());
                return true;
            }
            self.many.extend(self.few.drain(..));
        }
        self.many.insert(key.to_owned())
    }
}

fn write_object<'a>(
    entries: impl Iterator<Item = (Term<'a>, Term<'a>)>,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), PathError> {
    let mut seen = SeenKeys::new();
    out.push(b'{');
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let key = key_text(key).map_err(unsupported)?;
        if !seen.insert(&key) {
            return Err(PathError::new(
                JsonErrorKind::DuplicateKey,
                json::duplicate_key_message(&key),
            ));
        }
        write_str(out, &key);
        out.push(b':');
        write_term(value, out, depth).map_err(|e| e.within(Segment::Key(key)))?;
    }
    out.push(b'}');
    Ok(())
}

fn key_text(key: Term<'_>) -> Result<String, String> {
    match key.get_type() {
        TermType::Atom => key
            .atom_to_string()
            .map_err(|_| "unreadable atom key".into()),
        TermType::Binary => utf8(key)
            .map(str::to_owned)
            .ok_or_else(|| "map key is a binary that is not UTF-8".into()),
        TermType::Integer => key
            .decode::<i64>()
            .map(|n| n.to_string())
            .map_err(|_| "integer map key is too large".into()),
        _ => Err(format!(
            "map keys must be atoms, strings or integers, got {:?}",
            key.get_type()
        )),
    }
}

/// Decodes a JSON value into a term: objects become maps with string keys,
/// `null` becomes `nil`, numbers keep their exact value (integers of any
/// size, doubles bit for bit).
pub fn value_to_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value {
        Value::Null => atoms::nil().encode(env),
        Value::Bool(flag) => flag.encode(env),
        Value::Number(n) => match json::exact(n) {
            Exact::Int(i) => i.encode(env),
            Exact::UInt(u) => u.encode(env),
            // `json::parse` admits only decimal digits here.
            Exact::Big(digits) => BigInt::parse_bytes(digits.as_bytes(), 10)
                .map_or_else(|| atoms::nil().encode(env), |big| big.encode(env)),
            Exact::Float(f) => f.encode(env),
        },
        Value::String(text) => text.encode(env),
        Value::Array(items) => items
            .iter()
            .map(|item| value_to_term(env, item))
            .collect::<Vec<_>>()
            .encode(env),
        Value::Object(map) => object_to_term(env, map),
    }
}

/// Maps with more keys than this are hash maps in the VM (flat maps below).
const FLAT_MAP_MAX_KEYS: usize = 32;

/// A JSON object as an Elixir map with string keys.
///
/// Small maps are built in one step from arrays. Larger ones are built key by
/// key: OTP 25's `enif_make_map_from_arrays` crashes the VM when it builds a
/// hash map outside a scheduler thread, which is where results and chunks
/// are decoded (the runtime's threads).
pub fn object_to_term<'a>(env: Env<'a>, map: &serde_json::Map<String, Value>) -> Term<'a> {
    if map.len() <= FLAT_MAP_MAX_KEYS {
        let keys: Vec<Term<'a>> = map.keys().map(|k| k.encode(env)).collect();
        let values: Vec<Term<'a>> = map.values().map(|v| value_to_term(env, v)).collect();
        // JSON object keys are unique after parsing, so this cannot fail.
        return Term::map_from_term_arrays(env, &keys, &values)
            .unwrap_or_else(|_| Term::map_new(env));
    }
    map.iter().fold(Term::map_new(env), |term, (key, value)| {
        // Putting into a map term cannot fail.
        term.map_put(key.encode(env), value_to_term(env, value))
            .unwrap_or(term)
    })
}

/// Decodes tool-result JSON into a term.
pub fn decode<'a>(env: Env<'a>, json: &[u8]) -> Result<Term<'a>, JsonError> {
    Ok(value_to_term(env, &json::parse(json)?))
}
