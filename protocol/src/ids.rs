//! Identity newtypes: agents and sessions are never bare strings.

use std::fmt;
use std::sync::Arc;

/// Longest accepted agent id, in bytes.
pub const MAX_AGENT_ID_LEN: usize = 128;

/// Why an identity string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The id was empty.
    #[error("id is empty")]
    Empty,
    /// The id was longer than allowed.
    #[error("id is too long")]
    TooLong,
    /// The id had a character outside `[A-Za-z0-9._:-]`.
    #[error("id has a character outside [A-Za-z0-9._:-]")]
    BadChar,
    /// A session id was not 32 lowercase hex characters.
    #[error("session id must be 32 lowercase hex characters")]
    BadSessionId,
}

/// A validated agent (drone) id: 1..=128 bytes of `[A-Za-z0-9._:-]`.
///
/// Shared, not copied, when cloned: a session keeps its id in several places (registration,
/// batch origin, supervisor and resume maps), and with 10,000s of sessions per relay each copy
/// would be an allocation per place.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(Arc<str>);

impl AgentId {
    /// Validates and wraps an agent id.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_AGENT_ID_LEN {
            return Err(IdError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(IdError::BadChar);
        }
        Ok(AgentId(s.into()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentId({})", self.0)
    }
}

/// A session id: 128 random bits, shown as 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// Wraps 16 random bytes (the relay draws them from a CSPRNG).
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        SessionId(bytes)
    }

    /// Parses the 32-hex-character form, as received from a peer.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(IdError::BadSessionId);
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).map_err(|_| IdError::BadSessionId)?;
        Ok(SessionId(out))
    }

    /// The 32-character lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_are_validated() {
        assert!(AgentId::new("drone-7.a_b:c").is_ok());
        assert_eq!(AgentId::new(""), Err(IdError::Empty));
        assert_eq!(AgentId::new("a b"), Err(IdError::BadChar));
        assert_eq!(AgentId::new("x".repeat(129)), Err(IdError::TooLong));
    }

    #[test]
    fn session_ids_round_trip_and_reject_junk() {
        let id = SessionId::from_random_bytes([0xab; 16]);
        assert_eq!(SessionId::parse(&id.to_hex()), Ok(id));
        assert_eq!(SessionId::parse("zz"), Err(IdError::BadSessionId));
        assert_eq!(
            SessionId::parse(&"A".repeat(32)),
            Err(IdError::BadSessionId)
        );
    }
}
