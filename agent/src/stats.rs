//! The agent's counters and their Prometheus text (no global recorder: several agents can run
//! in one test process). Labels are fixed sets: drop causes, and MAVLink message names (a
//! dialect's names, at most a few hundred; unknown ids are dropped before they are counted).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

use crate::framer::SkipCounts;

/// Why a message (or bytes) did not become a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// A packet whose checksum failed.
    BadCrc,
    /// A packet cut short.
    Truncated,
    /// A message id the dialect does not know.
    UnknownMessage,
    /// Excluded (or not included) by name.
    Filtered,
    /// Over its configured rate.
    RateLimited,
    /// The queue from the sources was full (datagram sources).
    QueueFull,
    /// The spool could not take it (disk error).
    SpoolError,
}

impl DropCause {
    const ALL: [DropCause; 7] = [
        DropCause::BadCrc,
        DropCause::Truncated,
        DropCause::UnknownMessage,
        DropCause::Filtered,
        DropCause::RateLimited,
        DropCause::QueueFull,
        DropCause::SpoolError,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropCause::BadCrc => "bad_crc",
            DropCause::Truncated => "truncated",
            DropCause::UnknownMessage => "unknown_message",
            DropCause::Filtered => "filtered",
            DropCause::RateLimited => "rate_limited",
            DropCause::QueueFull => "queue_full",
            DropCause::SpoolError => "spool_error",
        }
    }
}

/// A command limit that was hit (`contrail_agent_command_limit_hits_total{limit}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandLimit {
    /// `commands.max_running`: a command refused.
    MaxRunning,
    /// `commands.run.max_output_bytes`: output truncated, process killed.
    OutputBytes,
    /// A `run_command` timeout: process killed.
    Timeout,
    /// `commands.mavlink.ack_timeout_ms`: no `COMMAND_ACK` in time.
    AckTimeout,
    /// Commands waiting for acks at once (64).
    AckWaiters,
    /// A MAVLink link's write queue (16 packets) was full.
    WriteQueue,
    /// `commands.update.max_bytes` or `timeout_ms`.
    Update,
}

impl CommandLimit {
    const ALL: [CommandLimit; 7] = [
        CommandLimit::MaxRunning,
        CommandLimit::OutputBytes,
        CommandLimit::Timeout,
        CommandLimit::AckTimeout,
        CommandLimit::AckWaiters,
        CommandLimit::WriteQueue,
        CommandLimit::Update,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CommandLimit::MaxRunning => "max_running",
            CommandLimit::OutputBytes => "output_bytes",
            CommandLimit::Timeout => "timeout",
            CommandLimit::AckTimeout => "ack_timeout",
            CommandLimit::AckWaiters => "ack_waiters",
            CommandLimit::WriteQueue => "write_queue",
            CommandLimit::Update => "update",
        }
    }
}

/// Counters of one agent.
#[derive(Debug, Default)]
pub struct Stats {
    drops: [AtomicU64; 7],
    junk_bytes: AtomicU64,
    /// Frames handed to the spool.
    pub frames: AtomicU64,
    /// Received messages by (name) -> count.
    by_name: Mutex<BTreeMap<&'static str, u64>>,
    /// Commands finished by (type, outcome) -> count.
    commands: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Commands running now.
    pub commands_running: AtomicU64,
    limit_hits: [AtomicU64; 7],
}

impl Stats {
    /// Counts `n` drops of `cause`.
    pub fn count_drop(&self, cause: DropCause, n: u64) {
        self.drops[cause as usize].fetch_add(n, Relaxed);
    }

    /// Drops of `cause` so far.
    pub fn dropped(&self, cause: DropCause) -> u64 {
        self.drops[cause as usize].load(Relaxed)
    }

    /// Counts a framer's skips.
    pub fn skipped(&self, s: &SkipCounts) {
        self.count_drop(DropCause::BadCrc, s.bad_crc);
        self.count_drop(DropCause::Truncated, s.truncated);
        self.count_drop(DropCause::UnknownMessage, s.unknown_message);
        self.junk_bytes.fetch_add(s.junk_bytes, Relaxed);
    }

    /// Junk bytes skipped between packets.
    pub fn junk_bytes(&self) -> u64 {
        self.junk_bytes.load(Relaxed)
    }

    /// Counts received messages by name (one lock per batch).
    pub fn received(&self, names: impl IntoIterator<Item = &'static str>) {
        let mut map = self.by_name.lock();
        for n in names {
            *map.entry(n).or_insert(0) += 1;
        }
    }

    /// Counts a finished command (`kind` and `outcome` are fixed label sets).
    pub fn command_finished(&self, kind: &'static str, outcome: &'static str) {
        *self.commands.lock().entry((kind, outcome)).or_insert(0) += 1;
    }

    /// Counts a command limit hit.
    pub fn limit_hit(&self, limit: CommandLimit) {
        self.limit_hits[limit as usize].fetch_add(1, Relaxed);
    }

    /// Hits of `limit` so far.
    pub fn limit_hits(&self, limit: CommandLimit) -> u64 {
        self.limit_hits[limit as usize].load(Relaxed)
    }

    /// Commands finished of `kind` with `outcome`.
    pub fn commands_of(&self, kind: &str, outcome: &str) -> u64 {
        self.commands
            .lock()
            .iter()
            .filter(|((k, o), _)| *k == kind && *o == outcome)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Messages received of `name`.
    pub fn received_of(&self, name: &str) -> u64 {
        self.by_name.lock().get(name).copied().unwrap_or(0)
    }

    /// Prometheus text of these counters plus the agent library's.
    pub fn render(&self, lib: &contrail_protocol::client::AgentStats, link_up: bool) -> String {
        let mut out = String::with_capacity(4096);
        let line = |out: &mut String, s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let _ = writeln!(
            out,
            "# HELP contrail_agent_link_up 1 while a relay session is registered.\n# TYPE contrail_agent_link_up gauge\ncontrail_agent_link_up {}",
            u8::from(link_up)
        );
        let _ = writeln!(
            out,
            "# HELP contrail_agent_spool_frames Frames in the spool not yet acked.\n# TYPE contrail_agent_spool_frames gauge"
        );
        line(
            &mut out,
            format!("contrail_agent_spool_frames {}", lib.spool_frames),
        );
        let _ = writeln!(
            out,
            "# HELP contrail_agent_spool_bytes Bytes of the spool's segment files.\n# TYPE contrail_agent_spool_bytes gauge"
        );
        line(
            &mut out,
            format!("contrail_agent_spool_bytes {}", lib.spool_bytes),
        );
        let _ = writeln!(
            out,
            "# HELP contrail_agent_dropped_total Messages that did not become frames, or frames dropped unacked, by cause.\n# TYPE contrail_agent_dropped_total counter"
        );
        for cause in DropCause::ALL {
            line(
                &mut out,
                format!(
                    "contrail_agent_dropped_total{{cause=\"{}\"}} {}",
                    cause.label(),
                    self.dropped(cause)
                ),
            );
        }
        line(
            &mut out,
            format!(
                "contrail_agent_dropped_total{{cause=\"spool_full\"}} {}",
                lib.dropped
            ),
        );
        let _ = writeln!(
            out,
            "# HELP contrail_agent_junk_bytes_total Bytes skipped between MAVLink packets.\n# TYPE contrail_agent_junk_bytes_total counter"
        );
        line(
            &mut out,
            format!("contrail_agent_junk_bytes_total {}", self.junk_bytes()),
        );
        let _ = writeln!(
            out,
            "# HELP contrail_agent_messages_total MAVLink messages received, by name (rate: rate() of it).\n# TYPE contrail_agent_messages_total counter"
        );
        for (name, n) in self.by_name.lock().iter() {
            line(
                &mut out,
                format!("contrail_agent_messages_total{{name=\"{name}\"}} {n}"),
            );
        }
        let _ = writeln!(
            out,
            "# HELP contrail_agent_commands_total Commands from operators finished, by type and outcome.\n# TYPE contrail_agent_commands_total counter"
        );
        for ((kind, outcome), n) in self.commands.lock().iter() {
            line(
                &mut out,
                format!(
                    "contrail_agent_commands_total{{type=\"{kind}\",outcome=\"{outcome}\"}} {n}"
                ),
            );
        }
        let _ = writeln!(
            out,
            "# HELP contrail_agent_command_limit_hits_total Command limits hit, by limit.\n# TYPE contrail_agent_command_limit_hits_total counter"
        );
        for limit in CommandLimit::ALL {
            line(
                &mut out,
                format!(
                    "contrail_agent_command_limit_hits_total{{limit=\"{}\"}} {}",
                    limit.label(),
                    self.limit_hits(limit)
                ),
            );
        }
        let _ = writeln!(
            out,
            "# HELP contrail_agent_commands_running Commands from operators running now.\n# TYPE contrail_agent_commands_running gauge\ncontrail_agent_commands_running {}",
            self.commands_running.load(Relaxed)
        );
        for (name, help, v) in [
            (
                "contrail_agent_frames_total",
                "Frames handed to the spool.",
                self.frames.load(Relaxed),
            ),
            (
                "contrail_agent_frames_acked",
                "Highest seq the relay acked (or the spool dropped).",
                lib.acked,
            ),
            (
                "contrail_agent_reconnects_total",
                "Sessions registered after the first.",
                lib.reconnects,
            ),
            (
                "contrail_agent_resent_total",
                "Frames written again after a reconnect.",
                lib.resent,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        out
    }
}
