//! `[commands]`: which commands from operators the agent takes, and the policy of each handler.
//! Checked by [`CommandsConfig::validate`] (called from [`crate::Config::validate`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// `[commands]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    /// Take commands (registers with the `commands` capability).
    pub enabled: bool,
    /// Ledger of executed command ids and the update staging area; empty: `spool.dir`.
    pub state_dir: PathBuf,
    /// Commands running at once; a command beyond it is refused.
    pub max_running: usize,
    /// `run_command`.
    pub run: RunConfig,
    /// `mavlink_command_long`.
    pub mavlink: MavlinkCommandConfig,
    /// `update_agent`.
    pub update: UpdateConfig,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            enabled: false,
            state_dir: PathBuf::new(),
            max_running: 4,
            run: RunConfig::default(),
            mavlink: MavlinkCommandConfig::default(),
            update: UpdateConfig::default(),
        }
    }
}

/// `[commands.run]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Timeout when the payload names none, ms.
    pub default_timeout_ms: u64,
    /// Longest timeout a payload may ask for, ms.
    pub max_timeout_ms: u64,
    /// Output (stdout + stderr) sent per command; beyond it the process group is killed.
    pub max_output_bytes: u64,
    /// Working directory of the commands.
    pub workdir: PathBuf,
    /// The whole environment of the commands (nothing is inherited).
    pub env: BTreeMap<String, String>,
    /// The executables allowed.
    pub allow: Vec<AllowedProgram>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            default_timeout_ms: 10_000,
            max_timeout_ms: 300_000,
            max_output_bytes: 64 * 1024,
            workdir: PathBuf::from("/"),
            env: BTreeMap::new(),
            allow: Vec::new(),
        }
    }
}

/// One `[[commands.run.allow]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllowedProgram {
    /// An absolute path, or a name looked up in `PATH` once when the agent starts.
    pub program: String,
    /// Most arguments (after the program).
    #[serde(default = "default_max_args")]
    pub max_args: usize,
    /// When not empty: every argument must be one of these.
    #[serde(default)]
    pub args: Vec<String>,
    /// When set: every argument must match this regular expression (the whole argument).
    #[serde(default)]
    pub arg_pattern: Option<String>,
}

fn default_max_args() -> usize {
    16
}

/// `[commands.mavlink]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MavlinkCommandConfig {
    /// Forward `mavlink_command_long` to the vehicle.
    pub enabled: bool,
    /// How long to wait for the matching `COMMAND_ACK`, ms (restarted by `IN_PROGRESS` acks).
    pub ack_timeout_ms: u64,
    /// When not empty: only these `MAV_CMD` numbers.
    pub allow_commands: Vec<u16>,
    /// Component id the agent sends as (its system id is `mavlink.heartbeat_system_id`).
    pub component_id: u8,
}

impl Default for MavlinkCommandConfig {
    fn default() -> Self {
        MavlinkCommandConfig {
            enabled: true,
            ack_timeout_ms: 3_000,
            allow_commands: Vec::new(),
            component_id: 191,
        }
    }
}

/// `[commands.update]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// Take `update_agent`.
    pub enabled: bool,
    /// Largest binary downloaded.
    pub max_bytes: u64,
    /// Whole download, ms.
    pub timeout_ms: u64,
    /// CA (PEM) trusted for `https://` downloads; empty: `relay.ca_file`.
    pub ca_file: PathBuf,
    /// When not empty: the URL must start with one of these.
    pub allowed_url_prefixes: Vec<String>,
    /// After staging, stop the agent (exit 0) so its supervisor restarts it and installs the
    /// update (systemd: `Restart=always` + the `--apply-update` `ExecStartPre`).
    pub restart_after_staging: bool,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            enabled: false,
            max_bytes: 64 << 20,
            timeout_ms: 300_000,
            ca_file: PathBuf::new(),
            allowed_url_prefixes: Vec::new(),
            restart_after_staging: false,
        }
    }
}

/// A checked allowlist entry.
#[derive(Debug, Clone)]
pub struct Program {
    /// What runs.
    pub path: PathBuf,
    /// Most arguments.
    pub max_args: usize,
    /// Allowed arguments (empty: any).
    pub args: BTreeSet<String>,
    /// Pattern every argument must match.
    pub pattern: Option<regex::Regex>,
}

/// The checked `[commands]`.
#[derive(Debug, Clone)]
pub struct CommandsValidated {
    /// Ledger and staging directory.
    pub state_dir: PathBuf,
    /// Commands at once.
    pub max_running: usize,
    /// run_command policy.
    pub run: RunPolicy,
    /// mavlink_command_long policy (`None`: disabled).
    pub mavlink: Option<MavlinkPolicy>,
    /// update_agent policy (`None`: disabled).
    pub update: Option<UpdatePolicy>,
}

/// Checked `[commands.run]`.
#[derive(Debug, Clone)]
pub struct RunPolicy {
    /// By the names a payload may use: the configured name, and the resolved path.
    pub programs: HashMap<String, Program>,
    /// Default timeout.
    pub default_timeout: Duration,
    /// Cap on timeouts.
    pub max_timeout: Duration,
    /// Output cap.
    pub max_output_bytes: u64,
    /// Working directory.
    pub workdir: PathBuf,
    /// Environment.
    pub env: BTreeMap<String, String>,
}

/// Checked `[commands.mavlink]`.
#[derive(Debug, Clone)]
pub struct MavlinkPolicy {
    /// Ack timeout.
    pub ack_timeout: Duration,
    /// Allowed MAV_CMD numbers (empty: all).
    pub allow_commands: BTreeSet<u16>,
    /// Our system id.
    pub system_id: u8,
    /// Our component id.
    pub component_id: u8,
}

/// Checked `[commands.update]`.
#[derive(Debug, Clone)]
pub struct UpdatePolicy {
    /// Size cap.
    pub max_bytes: u64,
    /// Download timeout.
    pub timeout: Duration,
    /// Trust for https.
    pub ca_file: PathBuf,
    /// URL prefixes (empty: any).
    pub allowed_url_prefixes: Vec<String>,
    /// Stop after staging.
    pub restart_after_staging: bool,
}

/// Finds `name` in `path` (a `PATH` value): the first executable file.
pub fn which(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path).map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

impl CommandsConfig {
    /// Checks the section; `None` when commands are off. `spool_dir` is the default state
    /// directory, `relay_ca` the default CA of downloads, `system_id` the agent's MAVLink system
    /// id, `path` the `PATH` that program names are resolved in.
    pub fn validate(
        &self,
        spool_dir: &Path,
        relay_ca: &Path,
        system_id: u8,
        path: &str,
    ) -> Result<Option<CommandsValidated>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        if self.max_running == 0 {
            return Err(invalid("commands.max_running", "must be > 0"));
        }
        let r = &self.run;
        if r.default_timeout_ms == 0 || r.max_timeout_ms < r.default_timeout_ms {
            return Err(invalid(
                "commands.run.default_timeout_ms",
                "must be > 0 and at most commands.run.max_timeout_ms",
            ));
        }
        if r.max_output_bytes == 0 {
            return Err(invalid("commands.run.max_output_bytes", "must be > 0"));
        }
        if !r.workdir.is_absolute() {
            return Err(invalid("commands.run.workdir", "an absolute path"));
        }
        let mut programs = HashMap::new();
        for a in &r.allow {
            let resolved = if a.program.contains('/') {
                let p = PathBuf::from(&a.program);
                if !p.is_absolute() {
                    return Err(invalid(
                        "commands.run.allow.program",
                        format!("{:?}: an absolute path or a bare name", a.program),
                    ));
                }
                p
            } else {
                which(&a.program, path).ok_or_else(|| {
                    invalid(
                        "commands.run.allow.program",
                        format!("{:?} is not an executable in PATH", a.program),
                    )
                })?
            };
            let pattern = match &a.arg_pattern {
                Some(p) => Some(regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    invalid("commands.run.allow.arg_pattern", format!("{p:?}: {e}"))
                })?),
                None => None,
            };
            let program = Program {
                path: resolved.clone(),
                max_args: a.max_args,
                args: a.args.iter().cloned().collect(),
                pattern,
            };
            programs.insert(a.program.clone(), program.clone());
            programs.insert(resolved.display().to_string(), program);
        }
        let mavlink = if self.mavlink.enabled {
            if self.mavlink.ack_timeout_ms == 0 {
                return Err(invalid("commands.mavlink.ack_timeout_ms", "must be > 0"));
            }
            Some(MavlinkPolicy {
                ack_timeout: Duration::from_millis(self.mavlink.ack_timeout_ms),
                allow_commands: self.mavlink.allow_commands.iter().copied().collect(),
                system_id,
                component_id: self.mavlink.component_id,
            })
        } else {
            None
        };
        let u = &self.update;
        let update = if u.enabled {
            if u.max_bytes == 0 || u.timeout_ms == 0 {
                return Err(invalid(
                    "commands.update",
                    "max_bytes and timeout_ms must be > 0",
                ));
            }
            Some(UpdatePolicy {
                max_bytes: u.max_bytes,
                timeout: Duration::from_millis(u.timeout_ms),
                ca_file: if u.ca_file.as_os_str().is_empty() {
                    relay_ca.to_path_buf()
                } else {
                    u.ca_file.clone()
                },
                allowed_url_prefixes: u.allowed_url_prefixes.clone(),
                restart_after_staging: u.restart_after_staging,
            })
        } else {
            None
        };
        Ok(Some(CommandsValidated {
            state_dir: if self.state_dir.as_os_str().is_empty() {
                spool_dir.to_path_buf()
            } else {
                self.state_dir.clone()
            },
            max_running: self.max_running,
            run: RunPolicy {
                programs,
                default_timeout: Duration::from_millis(r.default_timeout_ms),
                max_timeout: Duration::from_millis(r.max_timeout_ms),
                max_output_bytes: r.max_output_bytes,
                workdir: r.workdir.clone(),
                env: r.env.clone(),
            },
            mavlink,
            update,
        }))
    }
}
