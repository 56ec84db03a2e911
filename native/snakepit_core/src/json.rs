//! JSON text to [`serde_json::Value`], exactly and within documented bounds.
//!
//! Every JSON document that crosses between Elixir and Python (tool results,
//! stream chunks, session variables) is read here rather than by
//! `serde_json::from_slice`, for three reasons:
//!
//! * **Exact numbers.** Numbers keep their literal text (serde_json's
//!   `arbitrary_precision`), so a double is parsed once, correctly rounded,
//!   by whoever converts it, and integers of any size survive. Integers are
//!   bounded by [`MAX_INTEGER_DIGITS`] (Python's default int/str conversion
//!   limit, so both sides accept the same integers); doubles beyond the
//!   range of an IEEE double are refused, never turned into infinity.
//! * **No merged keys.** An object that names a key twice (Python writes
//!   `{1: "a", "1": "b"}` that way) is refused; serde_json keeps the last.
//! * **Bounded nesting**, the same [`MAX_DEPTH`] in both directions, with
//!   the path of the value that goes too deep.
//!
//! Errors carry a [`JsonErrorKind`] and the path of the offending value in
//! the same notation as the encoder's errors (`["key"][0]`).

use std::fmt;

use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// The deepest nesting of arrays and objects (or Elixir lists, maps and
/// tuples) that crosses between Elixir and Python, in either direction.
///
/// Encoding and decoding recurse once per level, on threads whose stacks
/// may be small (a dirty scheduler's is 320 KiB by default): this bound
/// keeps them far from the end of it.
///
/// Shared with `Snakepit.Limits` and `snakepit_bridge.limits`
/// (`test/snakepit/limits_test.exs` checks).
pub const MAX_DEPTH: usize = 128;

/// The most decimal digits of an integer that crosses between Elixir and
/// Python: CPython refuses to convert longer ones to or from text by default
/// (`sys.get_int_max_str_digits()`).
///
/// Shared with `Snakepit.Limits` (`test/snakepit/limits_test.exs` checks).
pub const MAX_INTEGER_DIGITS: usize = 4300;

/// Why a JSON document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonErrorKind {
    /// Not JSON text (or not UTF-8).
    Syntax,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// An object with the same key twice.
    DuplicateKey,
    /// An integer longer than [`MAX_INTEGER_DIGITS`], or a number beyond the
    /// range of a double.
    NumberOutOfRange,
    /// A value that has no JSON form (an Elixir pid, a function, ...).
    Unsupported,
}

impl JsonErrorKind {
    /// The reason as the snake_case word used in error details.
    pub fn reason(self) -> &'static str {
        match self {
            JsonErrorKind::Syntax => "invalid_json",
            JsonErrorKind::TooDeep => "too_deep",
            JsonErrorKind::DuplicateKey => "duplicate_key",
            JsonErrorKind::NumberOutOfRange => "number_out_of_range",
            JsonErrorKind::Unsupported => "invalid_argument",
        }
    }
}

/// A refused JSON document: what is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub kind: JsonErrorKind,
    /// The path of the offending value from the document's root, e.g.
    /// `["items"][3]`; empty for the root.
    pub path: String,
    pub message: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{} at {}", self.message, self.path)
        }
    }
}

impl std::error::Error for JsonError {}

impl JsonError {
    /// The same error with its path under `root` (e.g. `result`).
    pub fn at_root(mut self, root: &str) -> Self {
        self.path.insert_str(0, root);
        self
    }
}

/// One step of a path into a document.
#[derive(Debug, Clone)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Renders a path as `["key"][0]...`.
pub fn render_path(path: &[Segment]) -> String {
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                text.push('[');
                // Debug quoting escapes quotes and control characters.
                text.push_str(&format!("{key:?}"));
                text.push(']');
            }
            Segment::Index(i) => text.push_str(&format!("[{i}]")),
        }
    }
    text
}

/// The message for a value nested deeper than [`MAX_DEPTH`].
pub fn too_deep_message() -> String {
    format!("nested deeper than {MAX_DEPTH} levels of lists and maps")
}

/// The message for an integer longer than [`MAX_INTEGER_DIGITS`].
pub fn integer_too_long_message(digits: usize) -> String {
    format!("integer of {digits} digits is longer than the {MAX_INTEGER_DIGITS} digits allowed")
}

/// The message for a key that appears twice in one object.
pub fn duplicate_key_message(key: &str) -> String {
    format!("the key {key:?} appears more than once; the values would be merged")
}

/// Parses one JSON document (surrounding whitespace allowed).
pub fn parse(text: &[u8]) -> Result<Value, JsonError> {
    let text = std::str::from_utf8(text).map_err(|e| JsonError {
        kind: JsonErrorKind::Syntax,
        path: String::new(),
        message: format!("JSON text is not valid UTF-8 (byte {})", e.valid_up_to()),
    })?;
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    let read = |parser: &mut Parser<'_>| {
        parser.skip_whitespace();
        let value = parser.value(0)?;
        parser.skip_whitespace();
        if parser.pos != parser.bytes.len() {
            return Err(parser.syntax("unexpected text after the JSON value"));
        }
        Ok(value)
    };
    read(&mut parser).map_err(|error| error.at(""))
}

/// An error on its way out of a recursive conversion: each container it
/// passes through adds its segment ([`PathError::within`]), so no path is
/// kept while all goes well.
#[derive(Debug)]
pub struct PathError {
    kind: JsonErrorKind,
    message: String,
    reversed_path: Vec<Segment>,
}

impl PathError {
    pub fn new(kind: JsonErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            reversed_path: Vec::new(),
        }
    }

    /// The same error, one container further out.
    pub fn within(mut self, segment: Segment) -> Self {
        self.reversed_path.push(segment);
        self
    }

    /// The error with its path rendered after `root` (e.g. `args`).
    pub fn at(self, root: &str) -> JsonError {
        let path: Vec<Segment> = self.reversed_path.into_iter().rev().collect();
        JsonError {
            kind: self.kind,
            path: format!("{root}{}", render_path(&path)),
            message: self.message,
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, kind: JsonErrorKind, message: impl Into<String>) -> PathError {
        PathError::new(kind, message)
    }

    fn syntax(&self, what: &str) -> PathError {
        self.error(
            JsonErrorKind::Syntax,
            format!("invalid JSON: {what} (byte {})", self.pos),
        )
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect_word(&mut self, word: &str, value: Value) -> Result<Value, PathError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.syntax("unexpected character"))
        }
    }

    /// Reads the value at the current position, `depth` containers deep.
    fn value(&mut self, depth: usize) -> Result<Value, PathError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.expect_word("true", Value::Bool(true)),
            Some(b'f') => self.expect_word("false", Value::Bool(false)),
            Some(b'n') => self.expect_word("null", Value::Null),
            Some(_) => Err(self.syntax("unexpected character")),
            None => Err(self.syntax("unexpected end of input")),
        }
    }

    /// Refuses a container that would be `depth` deep.
    fn enter(&self, depth: usize) -> Result<(), PathError> {
        if depth > MAX_DEPTH {
            return Err(self.error(JsonErrorKind::TooDeep, too_deep_message()));
        }
        Ok(())
    }

    fn array(&mut self, depth: usize) -> Result<Value, PathError> {
        self.enter(depth)?;
        self.pos += 1; // [
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_whitespace();
            let item = self
                .value(depth)
                .map_err(|e| e.within(Segment::Index(items.len())))?;
            items.push(item);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.syntax("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, PathError> {
        self.enter(depth)?;
        self.pos += 1; // {
        let mut map = Map::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.syntax("expected a string key"));
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.syntax("expected ':'"));
            }
            self.pos += 1;
            self.skip_whitespace();
            let slot = match map.entry(key) {
                Entry::Vacant(slot) => slot,
                Entry::Occupied(slot) => {
                    let message = duplicate_key_message(slot.key());
                    return Err(self.error(JsonErrorKind::DuplicateKey, message));
                }
            };
            let value = self
                .value(depth)
                .map_err(|e| e.within(Segment::Key(slot.key().clone())))?;
            slot.insert(value);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.syntax("expected ',' or '}'")),
            }
        }
    }

    fn string(&mut self) -> Result<String, PathError> {
        self.pos += 1; // "
        let start = self.pos;
        // Fast path: no escapes.
        while let Some(b) = self.peek() {
            match b {
                b'"' => {
                    let text = self.text[start..self.pos].to_owned();
                    self.pos += 1;
                    return Ok(text);
                }
                b'\\' => break,
                0..=0x1f => return Err(self.syntax("control character in a string")),
                _ => self.pos += 1,
            }
        }
        let mut text = self.text[start..self.pos].to_owned();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.syntax("unterminated string"));
            };
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(text);
                }
                b'\\' => {
                    self.pos += 1;
                    let Some(escape) = self.peek() else {
                        return Err(self.syntax("unterminated string"));
                    };
                    self.pos += 1;
                    match escape {
                        b'"' => text.push('"'),
                        b'\\' => text.push('\\'),
                        b'/' => text.push('/'),
                        b'b' => text.push('\u{8}'),
                        b'f' => text.push('\u{c}'),
                        b'n' => text.push('\n'),
                        b'r' => text.push('\r'),
                        b't' => text.push('\t'),
                        b'u' => text.push(self.unicode_escape()?),
                        _ => return Err(self.syntax("invalid escape")),
                    }
                }
                0..=0x1f => return Err(self.syntax("control character in a string")),
                _ => {
                    // Copy up to the next quote or backslash in one go; the
                    // text is UTF-8 and both are ASCII, so this is a char
                    // boundary.
                    let run = self.bytes[self.pos..]
                        .iter()
                        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                        .map_or(self.bytes.len(), |n| self.pos + n);
                    text.push_str(&self.text[self.pos..run]);
                    self.pos = run;
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, PathError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.syntax("invalid \\u escape"))?;
        let code =
            u32::from_str_radix(digits, 16).map_err(|_| self.syntax("invalid \\u escape"))?;
        self.pos += 4;
        Ok(code)
    }

    fn unicode_escape(&mut self) -> Result<char, PathError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(self.syntax("lone surrogate in a \\u escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.syntax("lone surrogate in a \\u escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.syntax("lone surrogate in a \\u escape")),
            code => code,
        };
        char::from_u32(code).ok_or_else(|| self.syntax("invalid \\u escape"))
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Value, PathError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        let int_digits = self.digits();
        if int_digits == 0 {
            return Err(self.syntax("expected a digit"));
        }
        if int_digits > 1 && self.bytes[int_start] == b'0' {
            return Err(self.syntax("leading zero in a number"));
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.syntax("expected a digit after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            integer = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.syntax("expected a digit in the exponent"));
            }
        }
        let literal = &self.text[start..self.pos];
        if integer {
            if int_digits > MAX_INTEGER_DIGITS {
                return Err(self.error(
                    JsonErrorKind::NumberOutOfRange,
                    integer_too_long_message(int_digits),
                ));
            }
        } else {
            let value: f64 = literal.parse().map_err(|_| self.syntax("invalid number"))?;
            if !value.is_finite() {
                return Err(self.error(
                    JsonErrorKind::NumberOutOfRange,
                    format!("{} is beyond the range of a double", abbreviate(literal)),
                ));
            }
        }
        // The literal is valid JSON, so it is a valid number; its text is
        // kept (arbitrary_precision) for exact conversion later.
        literal
            .parse::<Number>()
            .map(Value::Number)
            .map_err(|_| self.syntax("invalid number"))
    }
}

fn abbreviate(text: &str) -> String {
    if text.len() <= 40 {
        text.to_owned()
    } else {
        format!("{}... ({} characters)", &text[..40], text.len())
    }
}

/// The exact value of a number read by [`parse`] (or built by serde_json).
#[derive(Debug, Clone, PartialEq)]
pub enum Exact<'a> {
    Int(i64),
    UInt(u64),
    /// An integer beyond 64 bits, as its decimal text (with a leading `-`
    /// when negative).
    Big(&'a str),
    Float(f64),
}

/// Classifies `number` without losing anything: integers stay integers
/// whatever their size, doubles are parsed from their text (correctly
/// rounded).
pub fn exact(number: &Number) -> Exact<'_> {
    if let Some(i) = number.as_i64() {
        return Exact::Int(i);
    }
    if let Some(u) = number.as_u64() {
        return Exact::UInt(u);
    }
    let text = number.as_str();
    if !text.contains(['.', 'e', 'E']) {
        return Exact::Big(text);
    }
    Exact::Float(number.as_f64().unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn kind(text: &str) -> JsonErrorKind {
        parse(text.as_bytes()).unwrap_err().kind
    }

    #[test]
    fn parses_what_serde_json_parses() {
        for text in [
            r#"{"a":[1,-2,3.5,"x",null,true,false,{}],"b":{"c":[]}}"#,
            r#"  [ "\u00e9\ud83d\ude00\n\"\\\/" , 0 , -0.0 , 1e5, 1E-5 ]  "#,
            r#""plain""#,
            "0",
        ] {
            assert_eq!(
                parse(text.as_bytes()).unwrap(),
                serde_json::from_str::<Value>(text).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn doubles_are_exact() {
        // serde_json's default parser returns 0.0915847874050736 here.
        let value = parse(b"0.09158478740507359").unwrap();
        let Value::Number(n) = value else { panic!() };
        assert_eq!(exact(&n), Exact::Float(0.09158478740507359));
        for text in [
            "5e-324",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
        ] {
            let Value::Number(n) = parse(text.as_bytes()).unwrap() else {
                panic!()
            };
            assert_eq!(exact(&n), Exact::Float(text.parse().unwrap()));
        }
    }

    #[test]
    fn integers_keep_every_digit() {
        let big = format!("-{}", "9".repeat(100));
        let Value::Number(n) = parse(big.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(exact(&n), Exact::Big(&big));
        let Value::Number(n) = parse(b"18446744073709551615").unwrap() else {
            panic!()
        };
        assert_eq!(exact(&n), Exact::UInt(u64::MAX));
        let Value::Number(n) = parse(b"-9223372036854775808").unwrap() else {
            panic!()
        };
        assert_eq!(exact(&n), Exact::Int(i64::MIN));
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        assert_eq!(kind("1e400"), JsonErrorKind::NumberOutOfRange);
        assert_eq!(kind("-1e400"), JsonErrorKind::NumberOutOfRange);
        let long = "1".repeat(MAX_INTEGER_DIGITS + 1);
        let error = parse(format!("{{\"n\":{long}}}").as_bytes()).unwrap_err();
        assert_eq!(error.kind, JsonErrorKind::NumberOutOfRange);
        assert_eq!(error.path, r#"["n"]"#);
        assert!(parse("1".repeat(MAX_INTEGER_DIGITS).as_bytes()).is_ok());
    }

    #[test]
    fn duplicate_keys_are_refused_with_their_path() {
        let error = parse(br#"{"a":{"1":"x","1":"y"}}"#).unwrap_err();
        assert_eq!(error.kind, JsonErrorKind::DuplicateKey);
        assert_eq!(error.path, r#"["a"]"#);
        assert!(error.message.contains("\"1\""));
        // The same key after unescaping is the same key.
        assert_eq!(kind(r#"{"a":1,"\u0061":2}"#), JsonErrorKind::DuplicateKey);
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_is_bounded() {
        assert!(parse(nested(MAX_DEPTH).as_bytes()).is_ok());
        let error = parse(nested(MAX_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(error.kind, JsonErrorKind::TooDeep);
        assert_eq!(error.path, "[0]".repeat(MAX_DEPTH));
        // Far deeper than any stack would allow when recursing without a bound.
        assert_eq!(kind(&nested(1_000_000)), JsonErrorKind::TooDeep);
        let objects = format!("{}1{}", "{\"a\":".repeat(500), "}".repeat(500));
        assert_eq!(kind(&objects), JsonErrorKind::TooDeep);
    }

    #[test]
    fn malformed_text_is_a_syntax_error() {
        for text in [
            "",
            " ",
            "[",
            "]",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "-",
            "1.",
            "1e",
            ".5",
            "+1",
            "tru",
            "nul",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "\"a\u{1}b\"",
            "[1] 2",
            "NaN",
            "Infinity",
            "{1:2}",
        ] {
            assert_eq!(kind(text), JsonErrorKind::Syntax, "{text:?}");
        }
        assert_eq!(parse(b"\"\xff\"").unwrap_err().kind, JsonErrorKind::Syntax);
    }

    #[test]
    fn serialization_writes_numbers_as_read() {
        let text = r#"{"big":123456789012345678901234567890,"f":0.1,"g":1e-7}"#;
        let value = parse(text.as_bytes()).unwrap();
        assert_eq!(serde_json::to_string(&value).unwrap(), text);
        assert_eq!(value["f"], json!(0.1));
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(8, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(".*", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trips_serde_json_output(value in arbitrary_json()) {
            let text = serde_json::to_vec(&value).unwrap();
            prop_assert_eq!(parse(&text).unwrap(), value.clone());
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            prop_assert_eq!(parse(&pretty).unwrap(), value);
        }

        #[test]
        fn every_double_is_read_back_bit_for_bit(bits in any::<u64>()) {
            let f = f64::from_bits(bits);
            prop_assume!(f.is_finite());
            // Shortest round-trip text, as both ryu and Python's repr write it.
            let text = serde_json::to_string(&serde_json::Number::from_f64(f).unwrap()).unwrap();
            let Value::Number(n) = parse(text.as_bytes()).unwrap() else { panic!() };
            match exact(&n) {
                Exact::Float(g) => prop_assert_eq!(g.to_bits(), f.to_bits()),
                other => prop_assert!(false, "{text} read as {other:?}"),
            }
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let mine = parse(&bytes);
            let theirs = serde_json::from_slice::<Value>(&bytes);
            // Whatever serde_json accepts within the bounds, this accepts too.
            if let (Err(e), Ok(_)) = (&mine, &theirs) {
                prop_assert_ne!(e.kind, JsonErrorKind::Syntax, "{:?}", e);
            }
            if let Ok(value) = mine {
                prop_assert_eq!(Ok(value), theirs.map_err(|_| ()));
            }
        }
    }
}
