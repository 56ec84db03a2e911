//! The per-node token that every gRPC endpoint requires.
//!
//! Endpoints bind loopback only, but any local user could still connect: the
//! token makes a request from a stranger fail with `UNAUTHENTICATED`. The token
//! travels in the `x-snakepit-token` metadata entry and reaches workers through
//! the `SNAKEPIT_TOKEN` environment variable.

use rand::RngCore;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Metadata key that carries the token.
pub const TOKEN_METADATA_KEY: &str = "x-snakepit-token";

/// Environment variable through which workers receive the token.
pub const TOKEN_ENV_VAR: &str = "SNAKEPIT_TOKEN";

/// A fresh random token: 32 bytes as 64 lowercase hex digits.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Overwrites `NAME=value` entries of `name` in the process's initial
/// environment block with zero bytes, so that `/proc/<pid>/environ` (which
/// shows that block, and which other processes of the same user can read, a
/// tool's subprocesses included) no longer holds the value. Returns whether
/// an entry was found. Linux only; elsewhere it finds nothing.
///
/// Call it once the variable is out of the live environment (`unsetenv`,
/// Python's `os.environ.pop`): until then the live environment may point
/// into that block.
pub fn scrub_initial_environment(name: &str) -> std::io::Result<bool> {
    let Some((start, end)) = initial_environment_bounds()? else {
        return Ok(false);
    };
    if end <= start {
        return Ok(false);
    }
    // SAFETY: [start, end) is this process's initial environment block, as the
    // kernel reports it: mapped and writable (it lies on the main thread's
    // stack) for the life of the process. Nothing in Rust owns it.
    let block = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
    let prefix = format!("{name}=");
    let mut found = false;
    let mut at = 0;
    while at < block.len() {
        let len = block[at..]
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(block.len() - at);
        if block[at..at + len].starts_with(prefix.as_bytes()) {
            block[at..at + len].fill(0);
            found = true;
        }
        at += len + 1;
    }
    Ok(found)
}

/// `env_start` and `env_end` from `/proc/self/stat` (fields 50 and 51).
fn initial_environment_bounds() -> std::io::Result<Option<(usize, usize)>> {
    let stat = match std::fs::read_to_string("/proc/self/stat") {
        Ok(stat) => stat,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<usize>().ok());
    Ok(field(50).zip(field(51)))
}

/// Client side: adds the token to every outgoing request.
#[derive(Clone)]
pub struct AttachToken {
    value: MetadataValue<Ascii>,
}

impl AttachToken {
    /// Fails when the token is not valid ASCII metadata.
    pub fn new(token: &str) -> Result<Self, Status> {
        let value = token
            .parse()
            .map_err(|_| Status::invalid_argument("token is not valid metadata"))?;
        Ok(Self { value })
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(TOKEN_METADATA_KEY, self.value.clone());
        Ok(request)
    }
}

/// Server side: refuses requests whose token is missing or wrong.
#[derive(Clone)]
pub struct RequireToken {
    expected: std::sync::Arc<str>,
}

impl RequireToken {
    pub fn new(token: &str) -> Self {
        Self {
            expected: token.into(),
        }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get(TOKEN_METADATA_KEY)
            .and_then(|v| v.to_str().ok());
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), self.expected.as_bytes()) => {
                Ok(request)
            }
            Some(_) => Err(Status::unauthenticated("wrong snakepit token")),
            None => Err(Status::unauthenticated("missing snakepit token")),
        }
    }
}

/// Compares without an early exit, so timing does not reveal a prefix match.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let a = generate_token();
        let b = generate_token();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn require_token_accepts_the_right_token_only() {
        let mut check = RequireToken::new("secret");
        let mut attach = AttachToken::new("secret").unwrap();
        let request = attach.call(Request::new(())).unwrap();
        assert!(check.call(request).is_ok());

        let missing = check.call(Request::new(())).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);

        let mut wrong = AttachToken::new("secreT").unwrap();
        let request = wrong.call(Request::new(())).unwrap();
        assert_eq!(
            check.call(request).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn the_initial_environment_block_can_be_scrubbed() {
        // The test runner's own block: a variable set by cargo is there.
        let read = || std::fs::read("/proc/self/environ").unwrap();
        assert!(read().windows(12).any(|w| w == b"CARGO_PKG_NA"));
        // Out of the live environment first, as the worker does; no test of
        // this crate reads that variable.
        std::env::remove_var("CARGO_PKG_NAME");
        assert!(scrub_initial_environment("CARGO_PKG_NAME").unwrap());
        assert!(!read().windows(15).any(|w| w == b"CARGO_PKG_NAME="));
        assert!(read().windows(16).any(|w| w == b"CARGO_PKG_VERSIO"));
        assert!(!scrub_initial_environment("SNAKEPIT_NO_SUCH_VARIABLE").unwrap());
    }
}
