//! Settings of the live sink and its subscribers.

use std::time::Duration;

use super::config::{DEFAULT_MAX_SUBSCRIBERS, DEFAULT_SUBSCRIBER_QUEUE_FRAMES};

/// Settings of the live sink and its subscribers.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// Subscriber connections served at once (more are refused with `TOO_MANY_SESSIONS`).
    pub max_subscribers: usize,
    /// Largest queue a subscriber may ask for, in frames; also what it gets when it asks for 0.
    pub max_queue_frames: usize,
    /// Token `Subscribe.auth_token` must match; `None`: no authentication.
    pub token: Option<String>,
    /// Time allowed from connection to Subscribe.
    pub handshake_timeout: Duration,
    /// Largest control message accepted.
    pub max_frame_bytes: usize,
}

impl Default for LiveSettings {
    fn default() -> Self {
        LiveSettings {
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
            max_queue_frames: DEFAULT_SUBSCRIBER_QUEUE_FRAMES,
            token: None,
            handshake_timeout: Duration::from_secs(5),
            max_frame_bytes: 64 * 1024,
        }
    }
}
