//! Settings of the JetStream sink, from a `[[sinks]]` entry with `type = "nats_jetstream"`.

use std::time::Duration;

use crate::config::{ConfigError, SinkConfig};
use crate::sink::template::{Template, AGENT_ID};

/// Default subject template: one subject per agent.
pub const DEFAULT_SUBJECT: &str = "contrail.telemetry.{agent_id}";
/// Default stream name.
pub const DEFAULT_STREAM: &str = "CONTRAIL";
/// Default duplicate window of a stream the sink creates.
pub const DEFAULT_DUPLICATE_WINDOW_SECS: u64 = 120;
/// Default bound on outstanding publish acks.
pub const DEFAULT_MAX_PENDING_ACKS: usize = 4096;
/// Default connect / ack timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// Settings of one JetStream sink.
#[derive(Debug, Clone)]
pub struct JetStreamSettings {
    /// `nats://host:port` (credentials in the URL are honoured).
    pub url: String,
    /// Auth token.
    pub token: Option<String>,
    /// Subject template.
    pub subject: Template,
    /// Stream name.
    pub stream: String,
    /// Subjects of the stream when the sink creates it (derived from the template).
    pub stream_subjects: String,
    /// Duplicate window of a created stream.
    pub duplicate_window: Duration,
    /// Publish acks outstanding at once.
    pub max_pending_acks: usize,
    /// Bound on connecting, API requests and each publish ack.
    pub timeout: Duration,
}

/// The agent id as a subject token: `.` would split it into several tokens, so it becomes `_`
/// (the exact id is in the `Contrail-Agent` header and in the payload).
pub fn subject_token(agent_id: &str, out: &mut String) {
    out.clear();
    out.extend(agent_id.chars().map(|c| if c == '.' { '_' } else { c }));
}

fn invalid(cfg: &SinkConfig, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: format!("sinks.{}.{key}", cfg.name),
        reason: reason.into(),
    }
}

fn literal_token_ok(t: &str) -> bool {
    !t.is_empty()
        && !t
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '*' | '>' | '{' | '}'))
}

/// The stream subjects covering `template`: `prefix.>` for a per-agent template (the
/// placeholder must be a whole token after a literal prefix), else the subject itself.
fn stream_subjects(template: &str) -> Result<String, String> {
    let tokens: Vec<&str> = template.split('.').collect();
    let mut first_placeholder = None;
    for (i, t) in tokens.iter().enumerate() {
        if *t == AGENT_ID {
            first_placeholder.get_or_insert(i);
        } else if t.contains(AGENT_ID) {
            return Err(format!("{AGENT_ID} must be a whole subject token"));
        } else if !literal_token_ok(t) {
            return Err(format!(
                "token {t:?} is empty or has whitespace, a wildcard or a brace"
            ));
        }
    }
    match first_placeholder {
        None => Ok(template.to_owned()),
        Some(0) => Err(format!(
            "needs a literal prefix before {AGENT_ID} (e.g. contrail.telemetry.{AGENT_ID})"
        )),
        Some(i) => Ok(format!("{}.>", tokens[..i].join("."))),
    }
}

/// Checks the type-specific keys of a `nats_jetstream` sink (pure; no connection is made).
pub fn validate(cfg: &SinkConfig) -> Result<(), ConfigError> {
    let foreign = [
        ("path", cfg.path.is_some()),
        ("format", cfg.format.is_some()),
        ("rotate_bytes", cfg.rotate_bytes.is_some()),
        ("fsync", cfg.fsync.is_some()),
        ("key", cfg.key.is_some()),
        ("maxlen", cfg.maxlen.is_some()),
    ];
    if let Some((key, _)) = foreign.iter().find(|(_, set)| *set) {
        return Err(invalid(cfg, key, "not a nats_jetstream setting"));
    }
    let url = cfg.url.as_deref().ok_or_else(|| {
        invalid(
            cfg,
            "url",
            "nats_jetstream sinks need a url (nats://host:port)",
        )
    })?;
    if !(url.starts_with("nats://") || url.starts_with("tls://")) || url.len() <= 7 {
        return Err(invalid(
            cfg,
            "url",
            "must be nats://host:port or tls://host:port",
        ));
    }
    stream_subjects(cfg.subject.as_deref().unwrap_or(DEFAULT_SUBJECT))
        .map_err(|reason| invalid(cfg, "subject", reason))?;
    if let Some(s) = &cfg.stream {
        if s.is_empty()
            || s.chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(invalid(
                cfg,
                "stream",
                "must be non-empty without whitespace, '.', '*', '>', '/' or '\\'",
            ));
        }
    }
    if cfg.password.as_deref().is_some_and(str::is_empty) {
        return Err(invalid(cfg, "password", "must not be empty"));
    }
    if cfg.max_pending_acks.is_some_and(|n| n == 0 || n > 1 << 20) {
        return Err(invalid(cfg, "max_pending_acks", "must be 1..=1048576"));
    }
    if cfg.duplicate_window_secs == Some(0) {
        return Err(invalid(cfg, "duplicate_window_secs", "must be at least 1"));
    }
    if cfg.timeout_ms.is_some_and(|t| t == 0 || t > 600_000) {
        return Err(invalid(cfg, "timeout_ms", "must be 1..=600000"));
    }
    Ok(())
}

/// Validated settings of a `nats_jetstream` sink entry.
pub fn settings(cfg: &SinkConfig) -> Result<JetStreamSettings, ConfigError> {
    validate(cfg)?;
    let subject = cfg.subject.as_deref().unwrap_or(DEFAULT_SUBJECT);
    Ok(JetStreamSettings {
        url: cfg.url.clone().unwrap_or_default(),
        token: cfg.password.clone(),
        subject: Template::parse(subject),
        stream: cfg
            .stream
            .clone()
            .unwrap_or_else(|| DEFAULT_STREAM.to_owned()),
        stream_subjects: stream_subjects(subject).map_err(|r| invalid(cfg, "subject", r))?,
        duplicate_window: Duration::from_secs(
            cfg.duplicate_window_secs
                .unwrap_or(DEFAULT_DUPLICATE_WINDOW_SECS),
        ),
        max_pending_acks: cfg.max_pending_acks.unwrap_or(DEFAULT_MAX_PENDING_ACKS),
        timeout: Duration::from_millis(cfg.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(extra: &str) -> Result<Config, String> {
        let c = Config::from_toml(&format!(
            "[[sinks]]\nname = \"js\"\ntype = \"nats_jetstream\"\n{extra}"
        ))
        .map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn deploy_style_entry_and_defaults() {
        let c = parse(
            "required = true\nurl = \"nats://nats:4222\"\nsubject = \"contrail.telemetry.{agent_id}\"",
        )
        .expect("valid");
        let s = settings(&c.sinks[0]).expect("settings");
        assert_eq!(s.stream, DEFAULT_STREAM);
        assert_eq!(s.stream_subjects, "contrail.telemetry.>");
        assert_eq!(s.max_pending_acks, 4096);
        assert_eq!(s.duplicate_window, Duration::from_secs(120));
        let mut tok = String::new();
        subject_token("fleet.d-1", &mut tok);
        assert_eq!(s.subject.render(&tok), "contrail.telemetry.fleet_d-1");
    }

    #[test]
    fn stream_subjects_follow_the_template() {
        assert_eq!(stream_subjects("a.{agent_id}.b").as_deref(), Ok("a.>"));
        assert_eq!(stream_subjects("all.frames").as_deref(), Ok("all.frames"));
        assert!(stream_subjects("{agent_id}.x").is_err());
        assert!(stream_subjects("a.x{agent_id}").is_err());
        assert!(stream_subjects("a..b").is_err());
        assert!(stream_subjects("a.*").is_err());
    }

    #[test]
    fn bad_values_are_named() {
        for (extra, field) in [
            ("", "url"),
            ("url = \"redis://x\"", "url"),
            (
                "url = \"nats://x:4222\"\nsubject = \"a b.{agent_id}\"",
                "subject",
            ),
            ("url = \"nats://x:4222\"\nstream = \"a.b\"", "stream"),
            (
                "url = \"nats://x:4222\"\nmax_pending_acks = 0",
                "max_pending_acks",
            ),
            ("url = \"nats://x:4222\"\ntimeout_ms = 0", "timeout_ms"),
            ("url = \"nats://x:4222\"\nkey = \"k\"", "key"),
        ] {
            let e = parse(extra).expect_err(extra);
            assert!(e.contains(&format!("sinks.js.{field}")), "{extra}: {e}");
        }
    }
}
