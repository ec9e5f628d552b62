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
