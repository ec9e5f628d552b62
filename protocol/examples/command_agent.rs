//! Example agent that takes commands from operators (the command downlink's library API).
//!
//! Handles `run_command` with an allowlist of executables (`echo`, `uptime`, `df` here), a
//! timeout and an output limit, streaming stdout/stderr back and reporting the exit code;
//! anything else is refused and the refusal reported as the result. Commands run at most once:
//! the ledger lives in `STATE_DIR` (restart the agent with the same directory).
//!
//! ```text
//! cargo run -p contrail-protocol --example command_agent -- \
//!     127.0.0.1:4433 .contrail/dev/cert.pem drone-1 /tmp/drone-1-state
//! ```

use std::time::Duration;

use contrail_protocol::client::commands::{CommandOptions, IncomingCommand, Outcome, OutputKind};
use contrail_protocol::client::{Agent, ClientConfig, Trust};
use contrail_protocol::AgentId;

const ALLOWED: &[&str] = &["echo", "uptime", "df"];
const MAX_OUTPUT: usize = 64 * 1024;
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let relay = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:4433".into())
        .parse()?;
    let ca = args
        .next()
        .unwrap_or_else(|| ".contrail/dev/cert.pem".into());
    let agent_id = AgentId::new(args.next().unwrap_or_else(|| "drone-1".into()))?;
    let state = args
        .next()
        .unwrap_or_else(|| "/tmp/contrail-agent-state".into());
    let config = ClientConfig::new(relay, agent_id, Trust::CaFile(ca.into()));
    let (agent, mut commands) =
        Agent::connect_with_commands(config, CommandOptions::new(state)).await?;
    eprintln!("registered: {:?}; waiting for commands", agent.session());
    while let Some(cmd) = commands.next().await {
        eprintln!("command {} ({})", cmd.id, cmd.kind);
        tokio::spawn(run(cmd));
    }
    Ok(())
}

async fn run(cmd: IncomingCommand) {
    let mut handle = cmd.handle;
    let outcome = match cmd.kind.as_str() {
        "run_command" => run_command(&cmd.payload, &mut handle).await,
        other => Outcome::refused(format!("unknown command type {other:?}")),
    };
    if let Err(e) = handle.finish(outcome).await {
        eprintln!("could not report: {e}");
    }
}

async fn run_command(
    payload: &[u8],
    handle: &mut contrail_protocol::client::commands::CommandHandle,
) -> Outcome {
    let v: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return Outcome::refused(format!("payload is not JSON: {e}")),
    };
    let argv: Vec<String> = match serde_json::from_value(v["argv"].clone()) {
        Ok(a) => a,
        Err(_) => return Outcome::refused("payload needs argv: [program, args...]"),
    };
    let Some(program) = argv.first() else {
        return Outcome::refused("empty argv");
    };
    if !ALLOWED.contains(&program.as_str()) {
        return Outcome::refused(format!("{program:?} is not allowlisted"));
    }
    if argv.iter().any(|a| a.len() > 256) {
        return Outcome::refused("argument longer than 256 bytes");
    }
    let timeout = v["timeout_ms"]
        .as_u64()
        .map_or(MAX_TIMEOUT, Duration::from_millis)
        .min(MAX_TIMEOUT);
    let child = tokio::process::Command::new(program)
        .args(&argv[1..])
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(timeout, child).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Outcome::failed(-1, format!("cannot start: {e}")),
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => return Outcome::failed(-1, format!("killed after {timeout:?}")),
    };
    let stdout = &out.stdout[..out.stdout.len().min(MAX_OUTPUT)];
    let stderr = &out.stderr[..out.stderr.len().min(MAX_OUTPUT)];
    if handle.output(OutputKind::Stdout, stdout).await.is_err()
        || handle.output(OutputKind::Stderr, stderr).await.is_err()
    {
        return Outcome::failed(-1, "agent closed while sending output");
    }
    match out.status.code() {
        Some(0) => Outcome::succeeded(0),
        Some(c) => Outcome::failed(c, "non-zero exit"),
        None => Outcome::failed(-1, "killed by a signal"),
    }
}
