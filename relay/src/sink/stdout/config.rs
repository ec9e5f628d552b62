//! `type = "stdout"`: NDJSON on standard output. It takes no keys of its own.

use serde::Deserialize;

/// Settings of the stdout sink (none; any key beyond the common ones is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}
