//! `type = "redis_streams"`: settings of the Redis Streams sink.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::sink::setting::{check_timeout_ms, invalid, InvalidSetting};
use crate::sink::template::Template;

/// Default stream key template: one stream per agent.
pub const DEFAULT_KEY: &str = "contrail:telemetry:{agent_id}";
/// Default approximate stream length (`MAXLEN ~`).
pub const DEFAULT_MAXLEN: u64 = 1_000_000;
/// Default connect / write timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

fn default_key() -> String {
    DEFAULT_KEY.to_owned()
}
fn default_maxlen() -> u64 {
    DEFAULT_MAXLEN
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// Keys of a `redis_streams` sink entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamsConfig {
    /// `redis://[user:pass@]host:port[/db]`, or `rediss://…` for TLS.
    pub url: String,
    /// Password (overrides one in the URL).
    #[serde(default)]
    pub password: Option<String>,
    /// PEM file of the CA that signed the server's certificate (`rediss://` only; default:
    /// the system's roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Stream key template, `{agent_id}` placeholder (without it one stream takes all agents).
    #[serde(default = "default_key")]
    pub key: String,
    /// `MAXLEN ~` per stream (0: no trimming).
    #[serde(default = "default_maxlen")]
    pub maxlen: u64,
    /// Connect and per-write timeout, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Validated settings of one Redis Streams sink.
#[derive(Debug, Clone)]
pub struct RedisStreamsSettings {
    /// `redis://…` or `rediss://…`.
    pub url: String,
    /// Password (overrides one in the URL).
    pub password: Option<String>,
    /// CA file for `rediss://`.
    pub tls_ca_file: Option<PathBuf>,
    /// Stream key template.
    pub key: Template,
    /// `MAXLEN ~` per stream; 0 disables trimming.
    pub maxlen: u64,
    /// Bound on connecting and on one pipeline's round trip.
    pub timeout: Duration,
}

impl RedisStreamsConfig {
    /// A config for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        RedisStreamsConfig {
            url: url.into(),
            password: None,
            tls_ca_file: None,
            key: default_key(),
            maxlen: DEFAULT_MAXLEN,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// Checks the values (pure; no connection is made).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let tls = self.url.starts_with("rediss://");
        if !(self.url.starts_with("redis://") || tls) {
            return Err(invalid("url", "must start with redis:// or rediss://"));
        }
        redis::Client::open(self.url.as_str()).map_err(|e| invalid("url", e.to_string()))?;
        if self.tls_ca_file.is_some() && !tls {
            return Err(invalid("tls_ca_file", "only used with a rediss:// url"));
        }
        if self.key.is_empty() {
            return Err(invalid("key", "must not be empty"));
        }
        if self.password.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("password", "must not be empty"));
        }
        check_timeout_ms(self.timeout_ms)
    }

    /// Validated runtime settings.
    pub fn settings(&self) -> Result<RedisStreamsSettings, InvalidSetting> {
        self.validate()?;
        Ok(RedisStreamsSettings {
            url: self.url.clone(),
            password: self.password.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            key: Template::parse(&self.key),
            maxlen: self.maxlen,
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RedisStreamsConfig, String> {
        let c: RedisStreamsConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_and_full_example() {
        let s = parse("url = \"redis://127.0.0.1:6379/\"")
            .expect("valid")
            .settings()
            .expect("settings");
        assert_eq!(s.key.render("d1"), "contrail:telemetry:d1");
        assert_eq!(s.maxlen, DEFAULT_MAXLEN);
        assert_eq!(s.timeout, Duration::from_secs(5));
        let s = parse(
            "url = \"rediss://r:6379/2\"\npassword = \"pw\"\ntls_ca_file = \"/ca.pem\"\nkey = \"all\"\nmaxlen = 0\ntimeout_ms = 250",
        )
        .expect("valid")
        .settings()
        .expect("settings");
        assert!(!s.key.has_placeholder());
        assert_eq!(s.maxlen, 0);
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(s.timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("", "url"),
            ("url = \"nats://x:4222\"", "url"),
            ("url = \"redis://x\"\nkey = \"\"", "key"),
            ("url = \"redis://x\"\ntimeout_ms = 0", "timeout_ms"),
            ("url = \"redis://x\"\ntls_ca_file = \"/ca\"", "tls_ca_file"),
            ("url = \"redis://x\"\nsubject = \"a.b\"", "subject"),
            ("url = \"redis://x\"\npath = \"/tmp/x\"", "path"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(parse("url = \"redis://x\"\nmaxlen = \"big\"").is_err());
    }
}
