//! `contrail-tail`: prints the frames passing through a relay, live, as NDJSON (the stdout
//! sink's fields) or one readable line per frame. Drop counts go to stderr.
//!
//! ```text
//! contrail-tail --relay 127.0.0.1:4433 --agent 'drone-*' --kind 33 --format line
//! contrail-tail --mavlink ATTITUDE --mavlink HEARTBEAT
//! ```
//!
//! Frames of content type `application/x-mavlink` are shown decoded (NDJSON: a `"mavlink"`
//! member with name, ids, sequence and fields; line: the name and ids); `--mavlink NAME`
//! selects them by message name.

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use contrail_protocol::client::subscriber::{
    Policy, Subscriber, SubscriberConfig, SubscriberError,
};
use contrail_protocol::client::Trust;
use contrail_protocol::StoredView;
use contrail_relay::mavlink::JsonDecoder;
use contrail_relay::sink::Filter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One JSON object per frame (same fields as the stdout sink).
    Ndjson,
    /// One readable line per frame.
    Line,
}

/// Print the frames passing through a Contrail relay, live.
#[derive(Debug, Parser)]
#[command(name = "contrail-tail", version)]
struct Args {
    /// Relay QUIC address (host:port).
    #[arg(long, default_value = "127.0.0.1:4433")]
    relay: String,
    /// PEM file of the CA (or the relay's development certificate) to trust.
    #[arg(long, default_value = ".contrail/dev/cert.pem")]
    ca: PathBuf,
    /// Name the relay's certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Only agents matching this glob (repeatable; `drone-*`).
    #[arg(long = "agent", value_name = "PATTERN")]
    agents: Vec<String>,
    /// Only this frame kind (repeatable).
    #[arg(long = "kind", value_name = "N")]
    kinds: Vec<u32>,
    /// Only MAVLink frames of this message name (repeatable; `ATTITUDE`). The relay is asked
    /// for the matching kinds (MAVLink frames carry the message id as their kind, unless
    /// `--kind` is given) and each frame's packet header is checked here.
    #[arg(long = "mavlink", value_name = "NAME")]
    mavlink: Vec<String>,
    /// Only this flight id.
    #[arg(long = "flight", value_name = "ID")]
    flight: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "ndjson")]
    format: Format,
    /// Bearer token, when the relay requires one.
    #[arg(long, env = "CONTRAIL_SUBSCRIBER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Ask the relay to wait for us instead of dropping frames (on a required live sink this
    /// throttles agents: use with care).
    #[arg(long)]
    block: bool,
    /// Requested queue size at the relay, frames (0: the relay's default).
    #[arg(long, default_value_t = 0)]
    queue_frames: u32,
    /// Exit after this many frames.
    #[arg(long)]
    count: Option<u64>,
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))
}

fn render_line(out: &mut Vec<u8>, v: &StoredView<'_>, mavlink: &JsonDecoder) {
    let f = v.frame();
    let decoded = mavlink.decode(f.content_type(), f.payload());
    let mav = match &decoded {
        Some(d) => {
            use mavlink::Message as _;
            format!(
                " {} sys={} comp={} mavseq={}",
                d.message.message_name(),
                d.header.system_id,
                d.header.component_id,
                d.header.sequence
            )
        }
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "{} seq={} kind={} flight={} sent_at={} received_at={} {}B {}{mav}",
        v.agent_id(),
        f.seq(),
        f.kind(),
        if f.flight_id().is_empty() {
            "-"
        } else {
            f.flight_id()
        },
        f.sent_at_unix_ns(),
        v.received_at_unix_ns(),
        f.payload().len(),
        if f.content_type().is_empty() {
            "-"
        } else {
            f.content_type()
        },
    );
}

/// The local MAVLink name filter and the kinds to ask the relay for.
fn mavlink_filter(names: &[String], kinds: Vec<u32>) -> anyhow::Result<(Filter, Vec<u32>)> {
    let filter = Filter::default()
        .with_mavlink_names(names, &[])
        .map_err(|e| anyhow::anyhow!("--mavlink {}: {}", e.pattern, e.reason))?;
    if !kinds.is_empty() || names.is_empty() {
        return Ok((filter, kinds));
    }
    let mut ids: Vec<u32> = names
        .iter()
        .filter_map(|n| contrail_relay::mavlink::packet::message_id(n))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok((filter, ids))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (filter, kinds) = mavlink_filter(&args.mavlink, args.kinds)?;
    let mavlink = JsonDecoder::new("tail");
    let mut cfg = SubscriberConfig::new(resolve(&args.relay)?, Trust::CaFile(args.ca.clone()));
    cfg.server_name = args.server_name;
    cfg.agent_patterns = args.agents;
    cfg.kinds = kinds;
    cfg.flight_id = args.flight.unwrap_or_default();
    cfg.auth_token = args.token.unwrap_or_default();
    cfg.policy = if args.block {
        Policy::Block
    } else {
        Policy::DropOldest
    };
    cfg.queue_frames = args.queue_frames;
    let mut sub = Subscriber::connect(cfg)
        .await
        .with_context(|| format!("subscribing to {}", args.relay))?;
    eprintln!(
        "contrail-tail: subscribed to {} as {} (queue {} frames, {})",
        args.relay,
        sub.subscriber_id(),
        sub.queue_frames(),
        if args.block { "block" } else { "drop_oldest" }
    );
    let mut stdout = tokio::io::stdout();
    let mut out = Vec::with_capacity(64 * 1024);
    let mut printed = 0u64;
    let mut reported_dropped = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    let result = loop {
        let batch = tokio::select! {
            b = sub.next_batch() => b,
            _ = tokio::signal::ctrl_c() => break Ok(()),
        };
        let batch = match batch {
            Ok(Some(b)) => b,
            Ok(None) => break Ok(()),
            Err(SubscriberError::Rejected {
                code: contrail_protocol::ErrorCode::Draining,
                message,
            }) => {
                eprintln!("contrail-tail: relay is draining ({message})");
                break Ok(());
            }
            Err(e) => break Err(anyhow::Error::new(e)),
        };
        out.clear();
        for v in batch.iter() {
            if printed == limit {
                break;
            }
            let f = v.frame();
            if !filter.admits_mavlink(f.content_type(), f.payload()) {
                continue;
            }
            match args.format {
                Format::Ndjson => {
                    contrail_relay::sink::ndjson::render_stored(&mut out, &v, &mavlink)
                }
                Format::Line => render_line(&mut out, &v, &mavlink),
            }
            printed += 1;
        }
        use tokio::io::AsyncWriteExt as _;
        if stdout.write_all(&out).await.is_err() || stdout.flush().await.is_err() {
            break Ok(()); // stdout closed (e.g. piped into head)
        }
        let dropped = sub.stats().dropped;
        if dropped > reported_dropped {
            eprintln!(
                "contrail-tail: relay dropped {} frames for this subscriber ({dropped} in total)",
                dropped - reported_dropped
            );
            reported_dropped = dropped;
        }
        if printed == limit {
            break Ok(());
        }
    };
    let stats = sub.stats();
    eprintln!(
        "contrail-tail: {} frames received, {} dropped by the relay",
        stats.frames_received, stats.dropped
    );
    sub.close().await;
    result
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("contrail-tail: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("contrail-tail: {e:#}");
            ExitCode::FAILURE
        }
    }
}
