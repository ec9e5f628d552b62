//! `type = "file"`: settings of the file sink.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::sink::setting::{invalid, InvalidSetting};

/// On-disk record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// One JSON object per line.
    #[default]
    Ndjson,
    /// 4-byte big-endian length + `contrail.v1.StoredFrame`, back to back.
    Protobuf,
}

/// Settings of a file sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Active file; rotated files get a `.N` suffix.
    pub path: PathBuf,
    /// Record format.
    #[serde(default)]
    pub format: FileFormat,
    /// Rotate when the active file would exceed this many bytes (0: never).
    #[serde(default)]
    pub rotate_bytes: u64,
    /// Rotate a non-empty active file once it is this many seconds old (0: never). Checked at
    /// each write, so a quiet sink rotates with its next write.
    #[serde(default)]
    pub rotate_interval_secs: u64,
    /// `fdatasync` after every write.
    #[serde(default)]
    pub fsync: bool,
}

impl FileConfig {
    /// A config writing NDJSON to `path`, never rotating, without fsync.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileConfig {
            path: path.into(),
            format: FileFormat::Ndjson,
            rotate_bytes: 0,
            rotate_interval_secs: 0,
            fsync: false,
        }
    }

    /// Time-based rotation interval, if any.
    pub fn rotate_interval(&self) -> Option<Duration> {
        (self.rotate_interval_secs > 0).then(|| Duration::from_secs(self.rotate_interval_secs))
    }

    /// Checks the values (pure).
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.path.as_os_str().is_empty() {
            return Err(invalid("path", "file sinks need a path"));
        }
        if self.rotate_interval_secs > 366 * 86_400 {
            return Err(invalid("rotate_interval_secs", "must be at most a year"));
        }
        Ok(())
    }
}
