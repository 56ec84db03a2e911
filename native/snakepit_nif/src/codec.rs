//! JSON encoding of Elixir terms and decoding of JSON into terms.
//!
//! Mapping (documented for users in `Snakepit`'s moduledoc):
//!
//! | Elixir                         | JSON                              |
//! |--------------------------------|-----------------------------------|
//! | integer, float                 | number (floats keep a fraction)   |
//! | `true`, `false`, `nil`         | `true`, `false`, `null`           |
//! | other atoms                    | string                            |
//! | UTF-8 binary                   | string                            |
//! | list                           | array                             |
//! | keyword list (non-empty)       | object                            |
//! | tuple                          | array                             |
//! | map (atom/string/integer keys) | object                            |
//!
//! Pids, references, ports, functions, structs and non-UTF-8 binaries are
//! refused with the path of the bad value, before anything is sent.

use std::io::Write;

use rustler::types::tuple::get_tuple;
use rustler::{Encoder, Env, ListIterator, MapIterator, Term, TermType};
use serde_json::Value;

use crate::atoms;

/// Why a term cannot be encoded, and where in the arguments it sits.
#[derive(Debug)]
pub struct EncodeError {
    pub path: String,
    pub message: String,
}

/// Encodes `term` as compact JSON; errors name the bad value's path from `root`.
pub fn encode(term: Term<'_>, root: &str) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(128);
    let mut path = Vec::new();
    write_term(term, &mut out, &mut path).map_err(|e| EncodeError {
        path: format!("{root}{}", e.path),
        message: e.message,
    })?;
    Ok(out)
}

enum Segment {
    Key(String),
    Index(usize),
}

fn render(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => text.push_str(&format!("[{key:?}]")),
            Segment::Index(i) => text.push_str(&format!("[{i}]")),
        }
    }
    text
}

fn fail(path: &[Segment], message: impl Into<String>) -> EncodeError {
    EncodeError {
        path: render(path),
        message: message.into(),
    }
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn write_term(
    term: Term<'_>,
    out: &mut Vec<u8>,
    path: &mut Vec<Segment>,
) -> Result<(), EncodeError> {
    match term.get_type() {
        TermType::Integer => match term.decode::<i64>() {
            Ok(n) => write!(out, "{n}").map_err(|e| fail(path, e.to_string())),
            Err(_) => match term.decode::<u64>() {
                Ok(n) => write!(out, "{n}").map_err(|e| fail(path, e.to_string())),
                Err(_) => Err(fail(path, "integer is too large for JSON (beyond 64 bits)")),
            },
        },
        TermType::Float => {
            let value: f64 = term.decode().map_err(|_| fail(path, "unreadable float"))?;
            serde_json::to_writer(&mut *out, &value).map_err(|e| fail(path, e.to_string()))
        }
        TermType::Atom => {
            if term == atoms::nil().encode(term.get_env()) {
                out.extend_from_slice(b"null");
            } else if let Ok(flag) = term.decode::<bool>() {
                out.extend_from_slice(if flag { b"true" } else { b"false" });
            } else {
                let name = term
                    .atom_to_string()
                    .map_err(|_| fail(path, "unreadable atom"))?;
                write_str(out, &name);
            }
            Ok(())
        }
        TermType::Binary => {
            let text = utf8(term).ok_or_else(|| {
                fail(
                    path,
                    "binary is not valid UTF-8 text; pass raw bytes with the :binary_parameters option",
                )
            })?;
            write_str(out, text);
            Ok(())
        }
        TermType::List => {
            if is_keyword_list(term) {
                write_object(
                    term.decode::<ListIterator>()
                        .map_err(|_| fail(path, "improper list"))?
                        .map(|pair| {
                            let kv = get_tuple(pair).unwrap_or_default();
                            (kv[0], kv[1])
                        }),
                    out,
                    path,
                )
            } else {
                let items = term
                    .decode::<ListIterator>()
                    .map_err(|_| fail(path, "improper lists cannot be encoded"))?;
                write_array(items, out, path)
            }
        }
        TermType::Tuple => {
            let items = get_tuple(term).map_err(|_| fail(path, "unreadable tuple"))?;
            write_array(items.into_iter(), out, path)
        }
        TermType::Map => {
            if let Ok(module) = term.map_get(rustler::types::atom::__struct__()) {
                let name = module.atom_to_string().unwrap_or_default();
                let name = name.strip_prefix("Elixir.").unwrap_or(&name).to_owned();
                return Err(fail(
                    path,
                    format!("a %{name}{{}} struct has no JSON form; convert it to a map or a string first"),
                ));
            }
            let entries = MapIterator::new(term).ok_or_else(|| fail(path, "unreadable map"))?;
            write_object(entries, out, path)
        }
        TermType::Pid => Err(fail(path, "a pid cannot be sent to Python")),
        TermType::Port => Err(fail(path, "a port cannot be sent to Python")),
        TermType::Ref => Err(fail(path, "a reference cannot be sent to Python")),
        TermType::Fun => Err(fail(path, "a function cannot be sent to Python")),
        TermType::Unknown => Err(fail(path, "this value has no JSON form")),
    }
}

fn utf8<'a>(term: Term<'a>) -> Option<&'a str> {
    let binary = term.decode_as_binary().ok()?;
    std::str::from_utf8(binary.as_slice()).ok()
}

fn is_keyword_list(term: Term<'_>) -> bool {
    let Ok(mut items) = term.decode::<ListIterator>() else {
        return false;
    };
    let mut any = false;
    let all = items.all(|item| {
        any = true;
        matches!(get_tuple(item), Ok(kv) if kv.len() == 2 && kv[0].get_type() == TermType::Atom)
    });
    any && all
}

fn write_array<'a>(
    items: impl Iterator<Item = Term<'a>>,
    out: &mut Vec<u8>,
    path: &mut Vec<Segment>,
) -> Result<(), EncodeError> {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        path.push(Segment::Index(i));
        write_term(item, out, path)?;
        path.pop();
    }
    out.push(b']');
    Ok(())
}

fn write_object<'a>(
    entries: impl Iterator<Item = (Term<'a>, Term<'a>)>,
    out: &mut Vec<u8>,
    path: &mut Vec<Segment>,
) -> Result<(), EncodeError> {
    out.push(b'{');
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let key = key_text(key).map_err(|message| fail(path, message))?;
        write_str(out, &key);
        out.push(b':');
        path.push(Segment::Key(key));
        write_term(value, out, path)?;
        path.pop();
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
/// `null` becomes `nil`.
pub fn value_to_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value {
        Value::Null => atoms::nil().encode(env),
        Value::Bool(flag) => flag.encode(env),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.encode(env)
            } else if let Some(u) = n.as_u64() {
                u.encode(env)
            } else {
                n.as_f64().unwrap_or(f64::NAN).encode(env)
            }
        }
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
pub fn decode<'a>(env: Env<'a>, json: &[u8]) -> Result<Term<'a>, serde_json::Error> {
    let value: Value = serde_json::from_slice(json)?;
    Ok(value_to_term(env, &value))
}
