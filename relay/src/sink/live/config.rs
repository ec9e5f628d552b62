//! `type = "live"`: settings of the live subscription sink.

use serde::Deserialize;

use crate::sink::setting::{invalid, InvalidSetting};

/// Default `max_subscribers`.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 64;
/// Default `subscriber_queue_frames`.
pub const DEFAULT_SUBSCRIBER_QUEUE_FRAMES: usize = 65_536;
/// Largest accepted `subscriber_queue_frames`.
pub const MAX_SUBSCRIBER_QUEUE_FRAMES: usize = 1 << 24;

fn default_max_subscribers() -> usize {
    DEFAULT_MAX_SUBSCRIBERS
}

fn default_queue_frames() -> usize {
    DEFAULT_SUBSCRIBER_QUEUE_FRAMES
}

/// Keys of a `live` sink entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// Subscriber connections served at once (more are refused with `TOO_MANY_SESSIONS`).
    #[serde(default = "default_max_subscribers")]
    pub max_subscribers: usize,
    /// Largest queue a subscriber may ask for, frames; also the default.
    #[serde(default = "default_queue_frames")]
    pub subscriber_queue_frames: usize,
    /// Token subscribers must present (default: `http.admin_token`; none: no auth).
    #[serde(default)]
    pub subscriber_token: Option<String>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
            subscriber_queue_frames: DEFAULT_SUBSCRIBER_QUEUE_FRAMES,
            subscriber_token: None,
        }
    }
}

impl LiveConfig {
    /// Checks the values (pure).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.max_subscribers == 0 {
            return Err(invalid("max_subscribers", "must be at least 1"));
        }
        if self.subscriber_queue_frames == 0
            || self.subscriber_queue_frames > MAX_SUBSCRIBER_QUEUE_FRAMES
        {
            return Err(invalid("subscriber_queue_frames", "must be 1..=16777216"));
        }
        if self.subscriber_token.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("subscriber_token", "must not be empty"));
        }
        Ok(())
    }
}
