//! Call deadlines: the `grpc-timeout` request header and the instant at which
//! a server gives up on a call.
//!
//! A gRPC client sends its remaining time with each call, as `grpc-timeout`
//! (tonic: `Request::set_timeout`). The value is 1 to 8 ASCII digits followed
//! by a unit: `H` hours, `M` minutes, `S` seconds, `m` milliseconds,
//! `u` microseconds, `n` nanoseconds (see gRPC's PROTOCOL-HTTP2.md).
//!
//! The server turns it into an [`Instant`] with [`server_deadline`], which ends
//! the call slightly *before* the client's own clock runs out: the client
//! started counting before the request was sent, so a server counting the full
//! timeout from the moment the headers arrived would always be late. Being a
//! little early means the client receives the server's `DEADLINE_EXCEEDED`
//! (rather than giving up on its own, which tonic reports as `CANCELLED`
//! "Timeout expired"), and the Python work is already being stopped when the
//! client moves on.

use std::fmt;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

/// Metadata key of the timeout header.
pub const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";

/// Status metadata of a worker's `DEADLINE_EXCEEDED` for a unary call:
/// `"true"` when the cancelled tool stopped before the status was sent,
/// `"false"` when it was still running (blocked outside Python).
pub const TOOL_STOPPED_KEY: &str = "x-snakepit-tool-stopped";

/// The longest a server ends a call before the client's deadline; see
/// [`early_margin`].
pub const MAX_EARLY_MARGIN: Duration = Duration::from_millis(50);

/// A `grpc-timeout` value that does not follow the gRPC spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTimeout(pub String);

impl fmt::Display for InvalidTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid grpc-timeout value {:?}", self.0)
    }
}

impl std::error::Error for InvalidTimeout {}

/// Parses a `grpc-timeout` value such as `1500m`, `2S` or `100u`.
pub fn parse_grpc_timeout(value: &str) -> Result<Duration, InvalidTimeout> {
    let invalid = || InvalidTimeout(value.to_owned());
    let (&unit, digits) = value.as_bytes().split_last().ok_or_else(invalid)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    // At most 8 digits: no overflow here, nor in the multiplications below.
    let amount = digits
        .iter()
        .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
    Ok(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return Err(invalid()),
    })
}

/// How long before the client's deadline the server ends the call: a tenth of
/// the timeout, at most [`MAX_EARLY_MARGIN`]. On loopback the request
/// travels in well under a millisecond, so this is ample for the server's
/// status to reach the client first, while a short timeout keeps most of its
/// time.
pub fn early_margin(timeout: Duration) -> Duration {
    (timeout / 10).min(MAX_EARLY_MARGIN)
}

/// Whether `status` is tonic's own answer to a request whose `grpc-timeout`
/// passed before the server's: `CANCELLED` "Timeout expired". The server
/// answers a little early ([`early_margin`]), but on a loaded machine its
/// answer may still come late; the call then ran out of time all the same,
/// and callers report it as the deadline it is.
pub fn client_timed_out(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Cancelled
        && status.message() == tonic::TimeoutExpired(()).to_string()
}

/// The instant at which a server ends a call that arrived at `received` with
/// `timeout`: `received + timeout - early_margin(timeout)`.
pub fn server_deadline(received: Instant, timeout: Duration) -> Instant {
    let budget = timeout - early_margin(timeout);
    // A timeout of up to 99999999 hours does not fit every platform's Instant.
    received
        .checked_add(budget)
        .unwrap_or_else(|| received + Duration::from_secs(365 * 24 * 3600))
}

/// The server deadline of a request received at `received`, from its
/// `grpc-timeout` metadata. `None` when the client set no timeout; a malformed
/// value is ignored (as tonic itself does), so the call simply has no deadline.
pub fn request_deadline(metadata: &MetadataMap, received: Instant) -> Option<Instant> {
    let value = metadata.get(GRPC_TIMEOUT_HEADER)?.to_str().ok()?;
    let timeout = parse_grpc_timeout(value).ok()?;
    Some(server_deadline(received, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("2S", Duration::from_secs(2)),
            ("1500m", Duration::from_millis(1500)),
            ("100u", Duration::from_micros(100)),
            ("7n", Duration::from_nanos(7)),
            ("0m", Duration::ZERO),
            ("99999999S", Duration::from_secs(99_999_999)),
            ("00000010m", Duration::from_millis(10)),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_grpc_timeout(value), Ok(expected), "{value}");
        }
    }

    #[test]
    fn rejects_malformed_values() {
        for value in [
            "",
            "m",
            "10",
            "10x",
            "10 m",
            " 10m",
            "-1m",
            "+1m",
            "1.5S",
            "123456789m",
            "10mm",
            "１0m",
            "10ms",
            "10é",
        ] {
            assert_eq!(
                parse_grpc_timeout(value),
                Err(InvalidTimeout(value.to_owned())),
                "{value:?}"
            );
        }
        assert_eq!(
            InvalidTimeout("10x".into()).to_string(),
            "invalid grpc-timeout value \"10x\""
        );
    }

    #[test]
    fn the_server_ends_a_little_before_the_client() {
        assert_eq!(early_margin(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            early_margin(Duration::from_millis(100)),
            Duration::from_millis(10)
        );
        assert_eq!(early_margin(Duration::from_secs(30)), MAX_EARLY_MARGIN);
        let now = Instant::now();
        assert_eq!(
            server_deadline(now, Duration::from_millis(300)),
            now + Duration::from_millis(270)
        );
        assert_eq!(
            server_deadline(now, Duration::from_secs(10)),
            now + Duration::from_millis(9950)
        );
        assert_eq!(server_deadline(now, Duration::ZERO), now);
        // The largest value the header can carry does not overflow.
        assert!(server_deadline(now, Duration::from_secs(99_999_999 * 3600)) > now);
    }

    #[test]
    fn reads_the_deadline_from_request_metadata() {
        let now = Instant::now();
        let mut metadata = MetadataMap::new();
        assert_eq!(request_deadline(&metadata, now), None);
        metadata.insert(GRPC_TIMEOUT_HEADER, "2S".parse().unwrap());
        assert_eq!(
            request_deadline(&metadata, now),
            Some(now + Duration::from_millis(1950))
        );
        metadata.insert(GRPC_TIMEOUT_HEADER, "soon".parse().unwrap());
        assert_eq!(request_deadline(&metadata, now), None);
    }

    #[test]
    fn reads_what_tonic_clients_send() {
        let mut request = tonic::Request::new(());
        request.set_timeout(Duration::from_millis(1500));
        let value = request.metadata().get(GRPC_TIMEOUT_HEADER).unwrap();
        assert_eq!(
            parse_grpc_timeout(value.to_str().unwrap()),
            Ok(Duration::from_millis(1500))
        );
    }
}
