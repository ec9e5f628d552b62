//! Commands from operators (issue 21's agent side): the agent registers with the `commands`
//! capability, takes the library's typed command stream, and runs each command with its
//! handler, at most `commands.max_running` at once (a command beyond that is refused):
//!
//! | type | handler |
//! |---|---|
//! | `run_command` | [`run`]: an allowlisted executable, no shell, cleared environment, timeout, output limit |
//! | `mavlink_command_long` | [`mavlink_cmd`]: `COMMAND_LONG` to the vehicle, its `COMMAND_ACK` awaited |
//! | `update_agent` | [`update`]: a checksum-verified binary staged for the next start |
//!
//! Any other type is refused with the reason. Execution is at most once (the library's ledger in
//! `commands.state_dir`); every outcome is counted in `contrail_agent_commands_total{type,outcome}`
//! and logged.

pub mod config;
pub mod mavlink_cmd;
pub mod run;
pub mod update;

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use contrail_protocol::client::commands::{Commands, IncomingCommand, Outcome};
use contrail_protocol::proto::CommandStatus;

use crate::links::Links;
use crate::stats::{CommandLimit, Stats};
use config::CommandsValidated;

/// Unix ms now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The metric label of a command type (a fixed set).
pub fn type_label(kind: &str) -> &'static str {
    match kind {
        "run_command" => "run_command",
        "mavlink_command_long" => "mavlink_command_long",
        "update_agent" => "update_agent",
        _ => "other",
    }
}

/// The metric label of an outcome.
pub fn outcome_label(s: CommandStatus) -> &'static str {
    match s {
        CommandStatus::Succeeded => "succeeded",
        CommandStatus::Refused => "refused",
        CommandStatus::Cancelled => "cancelled",
        CommandStatus::Expired => "expired",
        _ => "failed",
    }
}

/// What the handlers share.
pub struct Commander {
    /// The policy.
    pub policy: CommandsValidated,
    /// The write path to the vehicles.
    pub links: Arc<Links>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// MAVLink sequence of the packets the agent sends.
    seq: AtomicU8,
    /// Notified when the agent should stop to install a staged update.
    pub restart: Arc<tokio::sync::Notify>,
}

impl Commander {
    /// A commander with `policy`.
    pub fn new(policy: CommandsValidated, links: Arc<Links>, stats: Arc<Stats>) -> Self {
        Commander {
            policy,
            links,
            stats,
            seq: AtomicU8::new(0),
            restart: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

/// Takes commands until the stream ends; runs at most `max_running` at once. Owns the tasks it
/// starts (aborted when this future is dropped: their handles then report `FAILED`).
pub async fn serve(mut commands: Commands, ctx: Arc<Commander>) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            c = commands.next() => {
                let Some(cmd) = c else { break };
                if tasks.len() >= ctx.policy.max_running {
                    ctx.stats.limit_hit(CommandLimit::MaxRunning);
                    let kind = cmd.kind.clone();
                    let outcome = Outcome::refused(format!(
                        "busy: commands.max_running ({}) commands are already running",
                        ctx.policy.max_running
                    ));
                    report(&ctx, &cmd.id, &kind, &outcome);
                    let _ = cmd.handle.finish(outcome).await;
                    continue;
                }
                tasks.spawn(one(ctx.clone(), cmd));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

fn report(ctx: &Commander, id: &str, kind: &str, o: &Outcome) {
    ctx.stats
        .command_finished(type_label(kind), outcome_label(o.status));
    tracing::info!(
        command = %id,
        r#type = %kind,
        status = outcome_label(o.status),
        exit_code = o.exit_code,
        message = %o.message,
        "command finished"
    );
}

async fn one(ctx: Arc<Commander>, cmd: IncomingCommand) {
    let mut handle = cmd.handle;
    tracing::info!(command = %cmd.id, r#type = %cmd.kind, "command started");
    ctx.stats.commands_running.fetch_add(1, Relaxed);
    let p = &ctx.policy;
    let outcome = match cmd.kind.as_str() {
        "run_command" => run::run(&cmd.payload, &p.run, &ctx.stats, &mut handle).await,
        "mavlink_command_long" => match &p.mavlink {
            Some(m) => {
                mavlink_cmd::run(
                    &cmd.payload,
                    m,
                    &ctx.links,
                    &ctx.seq,
                    &ctx.stats,
                    &mut handle,
                )
                .await
            }
            None => Outcome::refused("mavlink_command_long is disabled (commands.mavlink.enabled)"),
        },
        "update_agent" => match &p.update {
            Some(u) => update::run(&cmd.payload, u, &p.state_dir, &ctx.stats, &mut handle).await,
            None => Outcome::refused("update_agent is disabled (commands.update.enabled)"),
        },
        other => Outcome::refused(format!(
            "unknown command type {other:?} (run_command, mavlink_command_long, update_agent)"
        )),
    };
    ctx.stats.commands_running.fetch_sub(1, Relaxed);
    report(&ctx, &cmd.id, &cmd.kind, &outcome);
    let restart = cmd.kind == "update_agent"
        && outcome.status == CommandStatus::Succeeded
        && p.update.as_ref().is_some_and(|u| u.restart_after_staging);
    if let Err(e) = handle.finish(outcome).await {
        tracing::warn!(command = %cmd.id, error = %e, "could not report the result");
    }
    if restart {
        // The result is in the ledger: if it does not reach the relay before the agent stops,
        // the relay sends the command again and the restarted agent answers from the ledger.
        tracing::info!(command = %cmd.id, "update staged: stopping so that the next start installs it");
        ctx.restart.notify_one();
    }
}
