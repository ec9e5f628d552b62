//! contrail-loadgen: drives a Contrail relay (or, for comparison, an MQTT broker or a NATS
//! server) the way a fleet does, and reports throughput, ack and end-to-end latency, loss and
//! duplicates. See `loadgen/scenarios/` for the named scenarios and `benches/README.md` for
//! how the figures are produced.

/// mimalloc instead of glibc's allocator: the loadgen's agents, connection drivers and
/// endpoint drivers allocate on one worker thread and free on another (a received datagram's
/// buffer, an event queue's block), which glibc serves from its arenas under a lock rather
/// than from the per-thread cache.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod brokers;
mod commands;
mod contrail;
mod ctx;
mod deliveries;
mod hist;
mod mavmix;
mod procfs;
mod report;
mod run;
mod scenario;
mod track;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use contrail_protocol::client::{config::load_ca_file, Trust};

use scenario::{parse_duration, Overrides, Plan, Rate, ScenarioFile};

/// What to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetArg {
    /// A Contrail relay (agents over QUIC, live subscriber for e2e).
    Contrail,
    /// An MQTT 3.1.1 broker (TCP).
    Mqtt,
    /// A NATS server.
    Nats,
}

/// MQTT client implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MqttClientArg {
    /// The harness's hand-written MQTT 3.1.1.
    Raw,
    /// rumqttc.
    Rumqttc,
}

/// contrail-loadgen: simulated fleets with hdrhistogram reports.
#[derive(Debug, Parser)]
#[command(name = "contrail-loadgen", version, about)]
struct Cli {
    /// Built-in scenario (max, fleet, conns, conns100k, soak, cpu100, cpu10k, mavlink-fleet,
    /// commands) or a
    /// TOML file.
    #[arg(long)]
    scenario: Option<String>,
    /// Relay (or broker) address, `host:port`; repeat for fail-over (agents rotate through them).
    #[arg(long = "relay", default_value = "127.0.0.1:4433")]
    relays: Vec<String>,
    /// What to drive.
    #[arg(long, value_enum, default_value = "contrail")]
    target: TargetArg,
    /// MQTT QoS (0 or 1).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// MQTT client code: the harness's own MQTT 3.1.1 (`raw`) or `rumqttc` (for comparison).
    #[arg(long, value_enum, default_value = "raw")]
    mqtt_client: MqttClientArg,
    /// CA certificate (PEM) trusted for the relay (or, with --target nats, enables TLS).
    #[arg(long, default_value = ".contrail/dev/cert.pem")]
    ca: PathBuf,
    /// Use TLS to NATS (with --ca).
    #[arg(long)]
    tls: bool,
    /// Name the relay's certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Auth token (agents and subscriber).
    #[arg(
        long,
        env = "CONTRAIL_LOADGEN_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    token: String,
    /// Agents (publishers).
    #[arg(long)]
    agents: Option<usize>,
    /// Per-agent rate: Hz, `max` (as fast as credits allow) or `idle`.
    #[arg(long)]
    rate: Option<Rate>,
    /// Payload per frame: bytes, or `mavlink-mix` (real MAVLink 2 packets in a vehicle's
    /// message mix: HEARTBEAT 1 Hz, ATTITUDE 50 Hz, GLOBAL_POSITION_INT 10 Hz, ...; 100
    /// messages per second of the vehicle, so `--rate 100` is its own pace).
    #[arg(long)]
    payload: Option<scenario::Payload>,
    /// Measured duration (e.g. 10s, 2m).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Warm-up after all agents connected, not measured.
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<std::time::Duration>,
    /// Spread agent start times over this.
    #[arg(long, value_parser = parse_duration)]
    ramp_up: Option<std::time::Duration>,
    /// Connects in flight at once.
    #[arg(long)]
    connect_concurrency: Option<usize>,
    /// Print latency and RSS every interval (soak).
    #[arg(long, value_parser = parse_duration)]
    interval: Option<std::time::Duration>,
    /// Fraction of the agents that send at `--rate` (spread evenly); the others stay idle with
    /// heartbeats (Contrail target).
    #[arg(long)]
    streaming: Option<f64>,
    /// After every agent connected, this long with every agent idle before the streaming
    /// agents start; the report's `idle` section gives relay CPU and RSS over it.
    #[arg(long, value_parser = parse_duration)]
    idle_phase: Option<std::time::Duration>,
    /// Fail when errors / frames sent exceeds this.
    #[arg(long)]
    max_error_rate: Option<f64>,
    /// Pid of a local relay (or broker): report its RSS per session and CPU per frame.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Skip the subscriber (ack latency only).
    #[arg(long)]
    no_e2e: bool,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// UDP sockets the Contrail agents share (default: one per 128 agents, 2 to 16). Every
    /// agent still has its own QUIC connection and session.
    #[arg(long)]
    sockets: Option<usize>,
    /// Packets the relay may receive from an agent before it must send a QUIC ACK (QUIC
    /// ACK-frequency extension; 0: QUIC's default of every other packet).
    #[arg(long, default_value_t = contrail_protocol::client::config::DEFAULT_ACK_ELICITING_THRESHOLD)]
    ack_threshold: u32,
    /// Longest the relay may hold back a QUIC ACK of an agent's packets, ms (QUIC
    /// ACK-frequency extension; 0: QUIC's 25 ms).
    #[arg(long, default_value_t = contrail_protocol::client::config::DEFAULT_MAX_ACK_DELAY.as_millis() as u64)]
    max_ack_delay_ms: u64,
    /// Largest UDP payload for agents and the subscriber (QUIC path-MTU discovery ceiling; the
    /// relay's `limits.max_udp_payload_bytes` must allow it too). Loopback and jumbo-frame LANs
    /// carry up to 65527.
    #[arg(long, default_value_t = contrail_protocol::client::config::DEFAULT_MAX_UDP_PAYLOAD)]
    max_udp_payload: u16,
    /// Let agents that share a socket share TLS session tickets, so that connects after the
    /// first resume (a gateway's view). Off by default: every simulated drone is distinct and
    /// pays a first connect's full handshake (certificate verification included).
    #[arg(long)]
    tls_resumption: bool,
    /// The agents' QUIC idle timeout in ms. An idle agent pings at the relay's heartbeat or
    /// every third of this, whichever is shorter (the relay's `limits.idle_timeout_ms` must be
    /// longer than its heartbeat for long heartbeats to pay).
    #[arg(long, default_value_t = 30_000)]
    idle_timeout_ms: u64,
    /// Scenario `commands`: the relay admin API to submit through.
    #[arg(long, default_value = "http://127.0.0.1:2112")]
    commands_api: String,
    /// Scenario `commands`: an operator token of the command API.
    #[arg(
        long,
        env = "CONTRAIL_LOADGEN_COMMANDS_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    commands_token: String,
    /// Scenario `commands`: commands submitted per second (to random agents); 0 connects the
    /// agents and submits nothing (the A side of an A/B).
    #[arg(long, default_value_t = 100.0)]
    commands_rate: f64,
    /// Scenario `commands`: more relay pids whose CPU counts (beside --relay-pid).
    #[arg(long)]
    commands_relay_pid: Vec<u32>,
    /// Worker threads (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Run the e2e subscriber as a task on the agents' runtime instead of on a thread and
    /// runtime of its own (the default since round 11; kept for A/B runs).
    #[arg(long)]
    shared_subscriber: bool,
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("address `{addr}`"))?
        .next()
        .with_context(|| format!("address `{addr}` resolves to nothing"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONTRAIL_LOADGEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(ok) => {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("contrail-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<bool> {
    if cli.scenario.as_deref() == Some("commands") {
        return commands_main(cli);
    }
    let file = cli
        .scenario
        .as_deref()
        .map(ScenarioFile::load)
        .transpose()?;
    let overrides = Overrides {
        agents: cli.agents,
        rate: cli.rate,
        payload: cli.payload,
        warmup: cli.warmup,
        duration: cli.duration,
        ramp_up: cli.ramp_up,
        connect_concurrency: cli.connect_concurrency,
        interval: cli.interval,
        max_error_rate: cli.max_error_rate,
        streaming: cli.streaming,
        idle_phase: cli.idle_phase,
    };
    let plan = Plan::build(file.as_ref(), &overrides)?;
    if plan.mavlink_mix && cli.target != TargetArg::Contrail {
        anyhow::bail!("--payload mavlink-mix needs --target contrail");
    }
    if (plan.streaming < 1.0 || !plan.idle_phase.is_zero()) && cli.target != TargetArg::Contrail {
        anyhow::bail!("streaming < 1 and idle_phase need --target contrail");
    }
    let relays = cli
        .relays
        .iter()
        .map(|r| resolve(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if cli.target == TargetArg::Mqtt && cli.qos > 1 {
        anyhow::bail!("--qos must be 0 or 1");
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = cli.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build()?;
    let agents = plan.agents;
    let ctx = Arc::new(ctx::RunCtx::new(plan.clone(), ctx::run_prefix()));
    let driver = match cli.target {
        TargetArg::Contrail => {
            let certs = load_ca_file(&cli.ca).with_context(|| {
                format!(
                    "trust: {} (the relay writes its development certificate there; pass --ca)",
                    cli.ca.display()
                )
            })?;
            let trust = Trust::CaDer(certs);
            let sockets = cli
                .sockets
                .unwrap_or_else(|| agents.div_ceil(128).clamp(2, 16))
                .clamp(1, agents.max(1));
            let endpoints = {
                let _rt = rt.enter();
                contrail::Target::bind_endpoints(
                    &relays,
                    &trust,
                    sockets,
                    contrail::EndpointOptions {
                        ack_eliciting_threshold: cli.ack_threshold,
                        max_ack_delay: std::time::Duration::from_millis(cli.max_ack_delay_ms),
                        max_udp_payload_bytes: cli.max_udp_payload,
                        tls_resumption: cli.tls_resumption,
                        idle_timeout: std::time::Duration::from_millis(cli.idle_timeout_ms),
                    },
                )?
            };
            run::Driver::Contrail(contrail::Target {
                relays,
                server_name: cli.server_name.clone(),
                trust,
                token: cli.token.clone(),
                endpoints,
                max_udp_payload_bytes: cli.max_udp_payload,
                idle_timeout: std::time::Duration::from_millis(cli.idle_timeout_ms),
            })
        }
        TargetArg::Mqtt => run::Driver::Broker(
            brokers::Target::new(
                if cli.qos == 0 {
                    brokers::Kind::MqttQos0
                } else {
                    brokers::Kind::MqttQos1
                },
                relays[0],
                None,
                agents,
            )
            .with_mqtt_client(match cli.mqtt_client {
                MqttClientArg::Raw => brokers::MqttClient::Raw,
                MqttClientArg::Rumqttc => brokers::MqttClient::Rumqttc,
            }),
        ),
        TargetArg::Nats => run::Driver::Broker(brokers::Target::new(
            brokers::Kind::Nats,
            relays[0],
            cli.tls.then(|| cli.ca.clone()),
            agents,
        )),
    };
    let opts = run::RunOptions {
        e2e: !cli.no_e2e,
        relay_pid: cli.relay_pid,
        quiet: cli.quiet,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        subscriber_thread: !cli.shared_subscriber,
    };
    let report = rt.block_on(run::execute(ctx, driver, opts));
    print!("{}", report.table());
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(report.verdict.ok)
}

/// Scenario `commands` (issue 21): agents taking commands, submits through the HTTP API.
fn commands_main(cli: Cli) -> anyhow::Result<bool> {
    let relays = cli
        .relays
        .iter()
        .map(|r| resolve(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let certs = load_ca_file(&cli.ca)
        .with_context(|| format!("trust: {} (pass --ca)", cli.ca.display()))?;
    let mut relay_pids = cli.commands_relay_pid.clone();
    relay_pids.extend(cli.relay_pid);
    let opts = commands::Opts {
        relays,
        trust: Trust::CaDer(certs),
        server_name: cli.server_name.clone(),
        token: cli.token.clone(),
        agents: cli.agents.unwrap_or(200),
        rate: cli.commands_rate,
        duration: cli.duration.unwrap_or(std::time::Duration::from_secs(20)),
        api: cli.commands_api.trim_end_matches('/').to_owned(),
        api_token: cli.commands_token.clone(),
        relay_pids,
        json: cli.json.clone(),
        connect_concurrency: cli.connect_concurrency.unwrap_or(256),
        sockets: cli
            .sockets
            .unwrap_or_else(|| cli.agents.unwrap_or(200).div_ceil(128).clamp(2, 16)),
    };
    if !(cli.commands_rate.is_finite() && (0.0..=100_000.0).contains(&cli.commands_rate)) {
        anyhow::bail!("--commands-rate must be in [0, 100000] (0: connect only)");
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = cli.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build()?;
    let ok = rt.block_on(commands::run(opts))?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(ok)
}
