//! The error a sink's own config check returns: which key, and why. A leaf module, so the
//! per-sink `config.rs` files import nothing above them.

/// A sink setting that is missing, out of range or inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct InvalidSetting {
    /// The key inside the `[[sinks]]` entry.
    pub key: &'static str,
    /// Why it was refused.
    pub reason: String,
}

/// Shorthand for an [`InvalidSetting`].
pub fn invalid(key: &'static str, reason: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        key,
        reason: reason.into(),
    }
}

/// Checks a connect/write timeout in milliseconds.
pub fn check_timeout_ms(ms: u64) -> Result<(), InvalidSetting> {
    if ms == 0 || ms > 600_000 {
        return Err(invalid("timeout_ms", "must be 1..=600000"));
    }
    Ok(())
}
