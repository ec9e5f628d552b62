//! The error-code enum shared by `Error` messages and QUIC application close codes.

pub use crate::proto::ErrorCode;

impl ErrorCode {
    /// The QUIC application close code for this error (the protobuf enum number).
    pub fn close_code(self) -> u32 {
        self as i32 as u32
    }

    /// Maps a QUIC application close code back to the enum; unknown numbers map to `None`.
    pub fn from_close_code(code: u64) -> Option<Self> {
        i32::try_from(code)
            .ok()
            .and_then(|c| ErrorCode::try_from(c).ok())
    }

    /// A short stable name, used in logs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            ErrorCode::Unspecified => "unspecified",
            ErrorCode::ProtocolViolation => "protocol_violation",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::NotRegistered => "not_registered",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::Superseded => "superseded",
            ErrorCode::Draining => "draining",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Internal => "internal",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Normal => "normal",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::Redirected => "redirected",
        }
    }

    /// Whether an agent should reconnect after being closed with this code.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Draining
                | ErrorCode::Internal
                | ErrorCode::Timeout
                | ErrorCode::TooManySessions
                | ErrorCode::Redirected
                | ErrorCode::Unspecified
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip() {
        for code in [
            ErrorCode::ProtocolViolation,
            ErrorCode::Unauthenticated,
            ErrorCode::NotRegistered,
            ErrorCode::FrameTooLarge,
            ErrorCode::Superseded,
            ErrorCode::Draining,
            ErrorCode::QuotaExceeded,
            ErrorCode::Internal,
            ErrorCode::Timeout,
            ErrorCode::Normal,
            ErrorCode::TooManySessions,
        ] {
            assert_eq!(
                ErrorCode::from_close_code(code.close_code().into()),
                Some(code)
            );
            assert_ne!(code.label(), "unspecified");
        }
        assert_eq!(ErrorCode::from_close_code(9999), None);
    }
}
