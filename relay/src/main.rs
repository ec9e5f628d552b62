//! `contrail-relay`: parses configuration, installs logging and metrics, runs the relay until a
//! signal or the admin API asks it to drain.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use contrail_relay::cli::{http_request, Cli, Command};
use contrail_relay::RelayBuilder;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Healthcheck { url }) => match http_request(&url, "GET", "/healthz", None) {
            Ok(200) => ExitCode::SUCCESS,
            Ok(code) => {
                eprintln!("healthz answered {code}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("healthz: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::HashToken { token }) => {
            println!("{}", contrail_relay::auth::hash_token(&token));
            ExitCode::SUCCESS
        }
        Some(Command::Drain {
            url,
            token_file,
            wait,
            wait_secs,
        }) => drain(&url, &token_file, wait, wait_secs),
        None => {
            let config = match cli.run.load() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("contrail-relay: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cli.run.log);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("contrail-relay: runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "relay failed");
                    eprintln!("contrail-relay: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn drain(url: &str, token_file: &std::path::Path, wait: bool, wait_secs: u64) -> ExitCode {
    let token = match std::fs::read_to_string(token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            eprintln!("{}: {e}", token_file.display());
            return ExitCode::FAILURE;
        }
    };
    match http_request(url, "POST", "/v1/admin/drain", Some(&token)) {
        Ok(200..=299) => {}
        Ok(code) => {
            eprintln!("drain answered {code}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("drain: {e}");
            return ExitCode::FAILURE;
        }
    }
    if wait {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
        while std::time::Instant::now() < deadline {
            if http_request(url, "GET", "/healthz", None).is_err() {
                return ExitCode::SUCCESS;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        eprintln!("relay still answering after {wait_secs}s");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(config: contrail_relay::Config) -> anyhow::Result<()> {
    let metrics = contrail_control::install_metrics_recorder().context("metrics recorder")?;
    let udp = std::net::UdpSocket::bind(config.listen)
        .with_context(|| format!("binding QUIC (UDP) {}", config.listen))?;
    let http = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding HTTP {}", config.http.listen))?;
    let mut builder = RelayBuilder::new(config.clone()).metrics(metrics);
    if let Some(addr) = config.grpc.listen {
        let grpc = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding gRPC {addr}"))?;
        builder = builder.grpc(grpc);
    }
    let relay = builder.start(udp, http).await?;
    if let Some(path) = relay.dev_cert_path() {
        tracing::warn!("no TLS certificate configured: serving a self-signed DEVELOPMENT certificate; agents must trust {}", path.display());
        println!(
            "development certificate (trust this in agents): {}",
            path.display()
        );
    }
    if relay.core().auth_mode() == contrail_relay::auth::AuthMode::None {
        tracing::warn!("AGENT AUTHENTICATION IS OFF (auth.mode = none): any client can register any agent id. Use auth.mode = token or jwt outside development.");
    }
    println!(
        "contrail-relay listening on {} (QUIC/UDP, ALPN contrail/1), admin HTTP on {}",
        relay.local_addr(),
        relay
            .http_addr()
            .map_or_else(|| "-".to_string(), |a| a.to_string())
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let reason = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = relay.drain_requested() => "admin API",
    };
    tracing::info!(reason, "drain requested");
    let report = relay.drain(reason).await;
    tracing::info!(?report, "stopped");
    Ok(())
}
