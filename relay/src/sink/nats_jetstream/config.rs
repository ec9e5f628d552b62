//! `type = "nats_jetstream"`: settings of the JetStream sink.

use std::time::Duration;

use serde::Deserialize;

use crate::sink::setting::{check_timeout_ms, invalid, InvalidSetting};
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

fn default_subject() -> String {
    DEFAULT_SUBJECT.to_owned()
}
fn default_stream() -> String {
    DEFAULT_STREAM.to_owned()
}
fn default_duplicate_window_secs() -> u64 {
    DEFAULT_DUPLICATE_WINDOW_SECS
}
fn default_max_pending_acks() -> usize {
    DEFAULT_MAX_PENDING_ACKS
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// Keys of a `nats_jetstream` sink entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsJetstreamConfig {
    /// `nats://host:port` or `tls://host:port` (credentials in the URL are honoured).
    pub url: String,
    /// Auth token.
    #[serde(default)]
    pub password: Option<String>,
    /// Subject template (`{agent_id}` a whole token after a literal prefix).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Stream name, created when missing.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Duplicate window of a created stream, seconds.
    #[serde(default = "default_duplicate_window_secs")]
    pub duplicate_window_secs: u64,
    /// Publish acks awaited concurrently.
    #[serde(default = "default_max_pending_acks")]
    pub max_pending_acks: usize,
    /// Connect and per-ack timeout, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl NatsJetstreamConfig {
    /// A config for `url` with every default.
    pub fn new(url: impl Into<String>) -> Self {
        NatsJetstreamConfig {
            url: url.into(),
            password: None,
            subject: default_subject(),
            stream: default_stream(),
            duplicate_window_secs: DEFAULT_DUPLICATE_WINDOW_SECS,
            max_pending_acks: DEFAULT_MAX_PENDING_ACKS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// Checks the values (pure; no connection is made).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        self.settings().map(|_| ())
    }

    /// Validated runtime settings.
    pub fn settings(&self) -> Result<JetStreamSettings, InvalidSetting> {
        let url = &self.url;
        if !(url.starts_with("nats://") || url.starts_with("tls://")) || url.len() <= 7 {
            return Err(invalid(
                "url",
                "must be nats://host:port or tls://host:port",
            ));
        }
        let stream_subjects =
            stream_subjects(&self.subject).map_err(|reason| invalid("subject", reason))?;
        let s = &self.stream;
        if s.is_empty()
            || s.chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            return Err(invalid(
                "stream",
                "must be non-empty without whitespace, '.', '*', '>', '/' or '\\'",
            ));
        }
        if self.password.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("password", "must not be empty"));
        }
        if self.max_pending_acks == 0 || self.max_pending_acks > 1 << 20 {
            return Err(invalid("max_pending_acks", "must be 1..=1048576"));
        }
        if self.duplicate_window_secs == 0 {
            return Err(invalid("duplicate_window_secs", "must be at least 1"));
        }
        check_timeout_ms(self.timeout_ms)?;
        Ok(JetStreamSettings {
            url: self.url.clone(),
            token: self.password.clone(),
            subject: Template::parse(&self.subject),
            stream: self.stream.clone(),
            stream_subjects,
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            max_pending_acks: self.max_pending_acks,
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JetStreamSettings, String> {
        let c: NatsJetstreamConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.settings().map_err(|e| e.to_string())
    }

    #[test]
    fn deploy_style_entry_and_defaults() {
        let s = parse("url = \"nats://nats:4222\"\nsubject = \"contrail.telemetry.{agent_id}\"")
            .expect("valid");
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
        for (text, key) in [
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
            (
                "url = \"nats://x:4222\"\nsubscriber_token = \"k\"",
                "subscriber_token",
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
