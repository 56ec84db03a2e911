//! Where a worker serves: a loopback TCP port, or a Unix socket.
//!
//! The worker chooses its address itself and announces it on its ready line:
//!
//! * `GRPC_READY:<port>`: TCP on `127.0.0.1:<port>` (the default transport);
//! * `GRPC_READY:unix:@<name>`: a Unix socket in Linux's abstract namespace.
//!
//! An abstract socket has no file, so nothing is left behind however the
//! worker ends. Like the loopback port it can be reached by any local user,
//! and like every endpoint it refuses requests without the node's token.
//! A Unix socket skips the kernel's TCP stack: on the same machine a round
//! trip costs less CPU and less time (`bench/` measures both transports).

use std::fmt;

/// The ready line's prefix for a Unix socket address.
pub const UNIX_PREFIX: &str = "unix:@";

/// Longest abstract socket name (the kernel's limit is 107 bytes).
pub const MAX_UNIX_NAME: usize = 100;

/// A worker's gRPC endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerAddress {
    /// `127.0.0.1:<port>`.
    Tcp(u16),
    /// A socket in the abstract namespace, by name (without the leading `@`).
    Unix(String),
}

impl WorkerAddress {
    /// Parses what follows `GRPC_READY:`: a port, or `unix:@<name>`. Port 0,
    /// an empty name and names with control characters are refused.
    pub fn parse(text: &str) -> Option<WorkerAddress> {
        let text = text.trim();
        if let Some(name) = text.strip_prefix(UNIX_PREFIX) {
            let valid = !name.is_empty()
                && name.len() <= MAX_UNIX_NAME
                && !name.chars().any(char::is_control);
            return valid.then(|| WorkerAddress::Unix(name.to_owned()));
        }
        text.parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .map(WorkerAddress::Tcp)
    }

    /// What the ready line carries after `GRPC_READY:`: the port alone for
    /// TCP, `unix:@<name>` for a Unix socket.
    pub fn announced(&self) -> String {
        match self {
            WorkerAddress::Tcp(port) => port.to_string(),
            WorkerAddress::Unix(_) => self.to_string(),
        }
    }

    /// The whole ready line a worker prints once it serves at this address.
    pub fn ready_line(&self) -> String {
        format!("{}{}", crate::process::READY_PREFIX, self.announced())
    }

    /// The TCP port, if this is a TCP address.
    pub fn port(&self) -> Option<u16> {
        match self {
            WorkerAddress::Tcp(port) => Some(*port),
            WorkerAddress::Unix(_) => None,
        }
    }
}

/// The socket address of the abstract Unix socket `name` (Linux only; an
/// `Unsupported` error elsewhere). Servers bind it, clients connect to it.
#[cfg(target_os = "linux")]
pub fn abstract_socket(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

/// Abstract Unix sockets exist on Linux only.
#[cfg(not(target_os = "linux"))]
pub fn abstract_socket(_name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "the unix transport needs Linux (abstract sockets)",
    ))
}

impl fmt::Display for WorkerAddress {
    /// `127.0.0.1:<port>` or `unix:@<name>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerAddress::Tcp(port) => write!(f, "127.0.0.1:{port}"),
            WorkerAddress::Unix(name) => write!(f, "{UNIX_PREFIX}{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_unix_names() {
        assert_eq!(
            WorkerAddress::parse("50051"),
            Some(WorkerAddress::Tcp(50051))
        );
        assert_eq!(
            WorkerAddress::parse("unix:@snakepit-1-ab"),
            Some(WorkerAddress::Unix("snakepit-1-ab".into()))
        );
        assert_eq!(WorkerAddress::parse("0"), None);
        assert_eq!(WorkerAddress::parse("unix:@"), None);
        assert_eq!(WorkerAddress::parse("unix:/tmp/x.sock"), None);
        assert_eq!(WorkerAddress::parse("unix:@a\u{7}b"), None);
        assert_eq!(
            WorkerAddress::parse(&format!("unix:@{}", "n".repeat(101))),
            None
        );
    }

    #[test]
    fn displays_as_announced() {
        assert_eq!(WorkerAddress::Tcp(7).to_string(), "127.0.0.1:7");
        assert_eq!(WorkerAddress::Unix("w".into()).to_string(), "unix:@w");
        assert_eq!(WorkerAddress::Tcp(7).port(), Some(7));
        assert_eq!(WorkerAddress::Unix("w".into()).port(), None);
        for address in [WorkerAddress::Tcp(7), WorkerAddress::Unix("w-1".into())] {
            let line = address.ready_line();
            assert_eq!(crate::process::parse_ready_line(&line), Some(address));
        }
        assert_eq!(WorkerAddress::Tcp(7).ready_line(), "GRPC_READY:7");
    }
}
