//! `contrail-agent`: parse the configuration, install logging, run until SIGINT/SIGTERM.

use clap::Parser;
use contrail_agent::{client_config, Cli, RunningAgent};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let validated = match cli.load().and_then(|c| c.validate().map(|v| (c, v))) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("contrail-agent: configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (config, v) = validated;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    if cli.check {
        println!("{v:#?}");
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(target) = &cli.apply_update {
        return apply_update(&v, target);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("contrail-agent: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(v)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "contrail-agent stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--apply-update [TARGET]`: installs a staged update over TARGET (default: this executable).
fn apply_update(v: &contrail_agent::Validated, target: &std::path::Path) -> std::process::ExitCode {
    use contrail_agent::commands::update::{apply, Applied};
    let Some(commands) = &v.commands else {
        tracing::info!("commands are off: no update to apply");
        return std::process::ExitCode::SUCCESS;
    };
    let target = if target.as_os_str().is_empty() {
        match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot tell which executable to update");
                return std::process::ExitCode::FAILURE;
            }
        }
    } else {
        target.to_path_buf()
    };
    match apply(&commands.state_dir, &target) {
        Ok(Applied::Nothing) => {
            tracing::info!("no staged update");
            std::process::ExitCode::SUCCESS
        }
        Ok(Applied::Installed(m)) => {
            tracing::info!(target = %target.display(), sha256 = %m.sha256, size = m.size, url = %m.url, command = %m.command_id, "update installed");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(target = %target.display(), error = %e, "update not installed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(v: contrail_agent::Validated) -> anyhow::Result<()> {
    let running = RunningAgent::start(&v, client_config(&v)).await?;
    tracing::info!(agent = %v.agent_id, relays = ?v.relays, http = ?running.http_addr(), "contrail-agent started");
    running.run_until(shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
