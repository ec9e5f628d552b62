//! Settings of the Redis Streams sink, from a `[[sinks]]` entry with `type = "redis_streams"`.

use std::time::Duration;

use crate::config::{ConfigError, SinkConfig};
use crate::sink::template::Template;

/// Default stream key template: one stream per agent.
pub const DEFAULT_KEY: &str = "contrail:telemetry:{agent_id}";
/// Default approximate stream length (`MAXLEN ~`).
pub const DEFAULT_MAXLEN: u64 = 1_000_000;
/// Default connect / write timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// Settings of one Redis Streams sink.
#[derive(Debug, Clone)]
pub struct RedisStreamsSettings {
    /// `redis://[user:pass@]host:port[/db]`.
    pub url: String,
    /// Password (overrides one in the URL).
    pub password: Option<String>,
    /// Stream key template.
    pub key: Template,
    /// `MAXLEN ~` per stream; 0 disables trimming.
    pub maxlen: u64,
    /// Bound on connecting and on one pipeline's round trip.
    pub timeout: Duration,
}

fn invalid(cfg: &SinkConfig, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: format!("sinks.{}.{key}", cfg.name),
        reason: reason.into(),
    }
}

/// Checks the type-specific keys of a `redis_streams` sink (pure; no connection is made).
pub fn validate(cfg: &SinkConfig) -> Result<(), ConfigError> {
    let foreign = [
        ("path", cfg.path.is_some()),
        ("format", cfg.format.is_some()),
        ("rotate_bytes", cfg.rotate_bytes.is_some()),
        ("fsync", cfg.fsync.is_some()),
        ("subject", cfg.subject.is_some()),
        ("stream", cfg.stream.is_some()),
        ("duplicate_window_secs", cfg.duplicate_window_secs.is_some()),
        ("max_pending_acks", cfg.max_pending_acks.is_some()),
    ];
    if let Some((key, _)) = foreign.iter().find(|(_, set)| *set) {
        return Err(invalid(cfg, key, "not a redis_streams setting"));
    }
    let url = cfg.url.as_deref().ok_or_else(|| {
        invalid(
            cfg,
            "url",
            "redis_streams sinks need a url (redis://host:port)",
        )
    })?;
    if !url.starts_with("redis://") {
        return Err(invalid(cfg, "url", "must start with redis://"));
    }
    redis::Client::open(url).map_err(|e| invalid(cfg, "url", e.to_string()))?;
    if cfg.key.as_deref().is_some_and(str::is_empty) {
        return Err(invalid(cfg, "key", "must not be empty"));
    }
    if cfg.password.as_deref().is_some_and(str::is_empty) {
        return Err(invalid(cfg, "password", "must not be empty"));
    }
    if cfg.timeout_ms.is_some_and(|t| t == 0 || t > 600_000) {
        return Err(invalid(cfg, "timeout_ms", "must be 1..=600000"));
    }
    Ok(())
}

/// Validated settings of a `redis_streams` sink entry.
pub fn settings(cfg: &SinkConfig) -> Result<RedisStreamsSettings, ConfigError> {
    validate(cfg)?;
    Ok(RedisStreamsSettings {
        url: cfg.url.clone().unwrap_or_default(),
        password: cfg.password.clone(),
        key: Template::parse(cfg.key.as_deref().unwrap_or(DEFAULT_KEY)),
        maxlen: cfg.maxlen.unwrap_or(DEFAULT_MAXLEN),
        timeout: Duration::from_millis(cfg.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(extra: &str) -> Result<Config, String> {
        let c = Config::from_toml(&format!(
            "[[sinks]]\nname = \"r\"\ntype = \"redis_streams\"\n{extra}"
        ))
        .map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_and_full_example() {
        let c = parse("url = \"redis://127.0.0.1:6379/\"").expect("valid");
        let s = settings(&c.sinks[0]).expect("settings");
        assert_eq!(s.key.render("d1"), "contrail:telemetry:d1");
        assert_eq!(s.maxlen, DEFAULT_MAXLEN);
        assert_eq!(s.timeout, Duration::from_secs(5));
        let c = parse(
            "required = true\nurl = \"redis://r:6379/2\"\npassword = \"pw\"\nkey = \"all\"\nmaxlen = 0\ntimeout_ms = 250",
        )
        .expect("valid");
        let s = settings(&c.sinks[0]).expect("settings");
        assert!(!s.key.has_placeholder());
        assert_eq!(s.maxlen, 0);
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(s.timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_are_named() {
        for (extra, field) in [
            ("", "url"),
            ("url = \"nats://x:4222\"", "url"),
            ("url = \"redis://x\"\nkey = \"\"", "key"),
            ("url = \"redis://x\"\ntimeout_ms = 0", "timeout_ms"),
            ("url = \"redis://x\"\nsubject = \"a.b\"", "subject"),
            ("url = \"redis://x\"\npath = \"/tmp/x\"", "path"),
        ] {
            let e = parse(extra).expect_err(extra);
            assert!(e.contains(&format!("sinks.r.{field}")), "{extra}: {e}");
        }
        assert!(parse("url = \"redis://x\"\nmaxlen = \"big\"").is_err());
    }
}
