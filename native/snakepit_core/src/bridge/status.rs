//! Failures as gRPC statuses with a machine-readable reason.
//!
//! The code alone cannot tell `session_not_found` from `variable_not_found`
//! (both NOT_FOUND), so every status the bridge returns also carries the
//! reason in the `x-snakepit-error` metadata entry, which gRPC sends with the
//! status in the trailers. The table of reasons and codes is in `bridge.proto`.

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::session::{EndReason, StoreError};

/// Metadata key of the reason.
pub const ERROR_METADATA_KEY: &str = "x-snakepit-error";

/// A status with `reason` in its metadata (left out if it is not a valid
/// metadata value).
pub fn status_with_reason(code: Code, reason: &str, message: String) -> Status {
    let mut metadata = MetadataMap::new();
    if let Ok(value) = reason.parse() {
        metadata.insert(ERROR_METADATA_KEY, value);
    }
    Status::with_metadata(code, message, metadata)
}

/// A status with `reason` in its metadata.
pub(crate) fn with_reason(code: Code, reason: &'static str, message: String) -> Status {
    status_with_reason(code, reason, message)
}

/// The status of a store failure.
pub(crate) fn from_store(error: StoreError) -> Status {
    let code = match &error {
        StoreError::SessionNotFound(_) | StoreError::VariableNotFound { .. } => Code::NotFound,
        StoreError::VariableExists(_) => Code::AlreadyExists,
        StoreError::VersionConflict { .. } => Code::Aborted,
        StoreError::InvalidValue { .. }
        | StoreError::InvalidType(_)
        | StoreError::InvalidConstraints(_)
        | StoreError::InvalidArgument(_) => Code::InvalidArgument,
        StoreError::SessionQuotaExceeded { .. } | StoreError::VariableQuotaExceeded { .. } => {
            Code::ResourceExhausted
        }
    };
    with_reason(code, error.reason(), error.to_string())
}

/// A request the bridge refuses before reaching the store.
pub(crate) fn invalid_argument(message: String) -> Status {
    with_reason(Code::InvalidArgument, "invalid_argument", message)
}

/// The end of a watch whose buffer overflowed.
pub(crate) fn watch_overflow(buffer: usize) -> Status {
    with_reason(
        Code::ResourceExhausted,
        "watch_overflow",
        format!(
            "the watch fell more than {buffer} updates behind and was dropped; \
             watch again with initial values to resync"
        ),
    )
}

/// The end of a watch whose session ended.
pub(crate) fn session_ended(session: &str, reason: EndReason) -> Status {
    let how = match reason {
        EndReason::Deleted => "was deleted",
        EndReason::Expired => "expired",
    };
    with_reason(
        Code::NotFound,
        "session_ended",
        format!("session {session} {how}"),
    )
}

/// The reason a bridge status carries (`"version_conflict"`, ...), if any.
pub fn error_reason(status: &Status) -> Option<&str> {
    status.metadata().get(ERROR_METADATA_KEY)?.to_str().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_the_codes_of_the_proto_table() {
        let cases = [
            (StoreError::SessionNotFound("s".into()), Code::NotFound),
            (
                StoreError::VariableNotFound {
                    session: "s".into(),
                    identifier: "x".into(),
                },
                Code::NotFound,
            ),
            (StoreError::VariableExists("x".into()), Code::AlreadyExists),
            (
                StoreError::VersionConflict {
                    name: "x".into(),
                    expected: 1,
                    actual: 2,
                },
                Code::Aborted,
            ),
            (
                StoreError::InvalidValue {
                    name: "x".into(),
                    message: "too big".into(),
                },
                Code::InvalidArgument,
            ),
            (StoreError::InvalidType("t".into()), Code::InvalidArgument),
            (
                StoreError::InvalidConstraints("c".into()),
                Code::InvalidArgument,
            ),
            (
                StoreError::InvalidArgument("a".into()),
                Code::InvalidArgument,
            ),
            (
                StoreError::SessionQuotaExceeded { max: 1 },
                Code::ResourceExhausted,
            ),
            (
                StoreError::VariableQuotaExceeded {
                    session: "s".into(),
                    max: 1,
                },
                Code::ResourceExhausted,
            ),
        ];
        for (error, code) in cases {
            let reason = error.reason();
            let message = error.to_string();
            let status = from_store(error);
            assert_eq!(status.code(), code, "{reason}");
            assert_eq!(error_reason(&status), Some(reason));
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn watch_ends_name_their_reason() {
        let status = session_ended("abc", EndReason::Expired);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(error_reason(&status), Some("session_ended"));
        assert_eq!(status.message(), "session abc expired");
        assert_eq!(
            session_ended("abc", EndReason::Deleted).message(),
            "session abc was deleted"
        );
        let status = watch_overflow(8);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(error_reason(&status), Some("watch_overflow"));
        assert_eq!(error_reason(&Status::internal("x")), None);
    }
}
