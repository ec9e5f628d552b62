//! Agent configuration and TLS/QUIC endpoint set-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[cfg(test)]
use super::SpoolError;
use super::{ClientConfigError, ClientError};
use crate::AgentId;

/// How the agent decides to trust the relay's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// A PEM file of CA certificates; the relay's development certificate file pins that
    /// certificate (it is its own, only, root).
    CaFile(PathBuf),
    /// CA or pinned certificates in DER form.
    CaDer(Vec<CertificateDer<'static>>),
}

/// A client certificate for mutual TLS.
#[derive(Debug)]
pub struct ClientAuth {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClientAuth {
    fn clone(&self) -> Self {
        ClientAuth {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Everything an agent needs to stream.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Relays to try, in order; on failure or drain the agent moves to the next one.
    pub relays: Vec<SocketAddr>,
    /// Name the relay's certificate must carry.
    pub server_name: String,
    /// Trust roots.
    pub trust: Trust,
    /// Optional client certificate (mTLS).
    pub client_auth: Option<ClientAuth>,
    /// This agent's id.
    pub agent_id: AgentId,
    /// Reported agent version.
    pub agent_version: String,
    /// Reported platform.
    pub platform: String,
    /// Token or JWT for relays with authentication on.
    pub auth_token: String,
    /// Max frames held unacked locally (the relay's `max_inflight` may lower it).
    pub max_buffered: usize,
    /// Time allowed for connect + register.
    pub connect_timeout: Duration,
    /// QUIC idle timeout. An idle session keeps its connection alive with the Contrail `Ping`
    /// alone, every heartbeat interval the relay names at Register or every third of this,
    /// whichever is shorter (and not at all while telemetry flows): there is no separate QUIC
    /// keep-alive, so an idle agent costs the relay one ping and one pong per interval.
    pub idle_timeout: Duration,
    /// Packets the relay may receive from this agent before it must send a QUIC ACK (asked
    /// for with the QUIC ACK-frequency extension; 0 keeps QUIC's default of every other
    /// packet). Fewer ACKs save the relay a send per couple of packets at high rates; the
    /// relay still ACKs within its max ACK delay.
    pub ack_eliciting_threshold: u32,
    /// Longest the relay may hold back a QUIC ACK of this agent's packets (asked for with the
    /// QUIC ACK-frequency extension; zero keeps QUIC's 25 ms). Longer than the relay's
    /// `limits.ack_delay_ms` lets the relay's QUIC ACK ride in the packet that carries its
    /// Contrail ack instead of a packet of its own for every frame of a slow agent. Loss
    /// recovery on this agent waits up to this much longer for an ACK.
    pub max_ack_delay: Duration,
    /// Largest UDP payload this agent sends or accepts: the ceiling of QUIC path-MTU discovery
    /// (which settles lower on paths that carry less) and the datagram size the socket reads.
    /// The default suits Ethernet and the internet; jumbo-frame LANs and loopback can go up to
    /// 65527, which cuts per-packet work at high rates.
    pub max_udp_payload_bytes: u16,
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max: Duration,
    /// Seq the first frame gets (1 for a fresh agent). With a spool that holds state, the
    /// spool decides (after its last frame).
    pub first_seq: u64,
    /// Optional on-disk spool of unacked frames, so a process restart loses nothing.
    pub spool: Option<super::spool::SpoolConfig>,
    /// The vehicle's identity sent at Register (`Register.identity`); update it later with
    /// [`Agent::set_identity`](super::Agent::set_identity).
    pub identity: Option<crate::proto::DroneIdentity>,
    /// Optional features named at Register (`Register.capabilities`).
    pub capabilities: Vec<String>,
    /// Keep the relay's TLS session tickets and offer them when reconnecting (TLS 1.3
    /// resumption, still with a fresh key exchange): a reconnect skips verifying the relay's
    /// certificate chain and the relay skips signing. On by default. Agents on a
    /// [`SharedEndpoint`] share one ticket store; a load generator that simulates distinct
    /// drones turns it off so that every connect pays a first connect's full handshake.
    pub tls_resumption: bool,
}

impl ClientConfig {
    /// Defaults for one relay.
    pub fn new(relay: SocketAddr, agent_id: AgentId, trust: Trust) -> Self {
        ClientConfig {
            relays: vec![relay],
            server_name: "localhost".to_string(),
            trust,
            client_auth: None,
            agent_id,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            platform: std::env::consts::OS.to_string(),
            auth_token: String::new(),
            max_buffered: 65_536,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            ack_eliciting_threshold: DEFAULT_ACK_ELICITING_THRESHOLD,
            max_ack_delay: DEFAULT_MAX_ACK_DELAY,
            max_udp_payload_bytes: DEFAULT_MAX_UDP_PAYLOAD,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
            first_seq: 1,
            spool: None,
            identity: None,
            capabilities: Vec::new(),
            tls_resumption: true,
        }
    }
}

/// Default [`ClientConfig::ack_eliciting_threshold`].
pub const DEFAULT_ACK_ELICITING_THRESHOLD: u32 = 16;

/// Default [`ClientConfig::max_ack_delay`]: a little longer than the relay's default
/// `limits.ack_delay_ms` (100 ms), so the relay's QUIC ACK rides on its Contrail ack.
pub const DEFAULT_MAX_ACK_DELAY: Duration = Duration::from_millis(125);

/// Default largest UDP payload (QUIC's usual ceiling for Ethernet paths).
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 1452;

/// QUIC path-MTU discovery up to `max_udp_payload` (QUIC's default ceiling when smaller).
///
/// The search stops at steps under `(ceiling - 1200) * 3 / 4` bytes (at least 20, at most
/// 1024): with the default ceiling of 1452 that is a single probe straight at the ceiling
/// instead of quinn's five-probe binary search, which matters when thousands of agents connect
/// at once (every probe is a full-size padded packet each side sends and parses). A path that
/// drops the probe stays at 1200 until the next discovery round.
pub fn mtu_discovery(max_udp_payload: u16) -> quinn::MtuDiscoveryConfig {
    let ceiling = max_udp_payload.max(DEFAULT_MAX_UDP_PAYLOAD);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(ceiling);
    mtu.minimum_change(((ceiling - 1200) * 3 / 4).clamp(20, 1024));
    mtu
}

/// An endpoint configuration accepting datagrams of up to `max_udp_payload` bytes.
pub fn endpoint_config(max_udp_payload: u16) -> Result<quinn::EndpointConfig, ClientConfigError> {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(max_udp_payload.clamp(1200, 65_527))
        .map_err(ClientConfigError::UdpPayload)?;
    Ok(config)
}

/// The rustls crypto provider Contrail uses on both ends, composed from two of rustls' own:
/// - key exchange, signing keys, signature verification and randomness from aws-lc-rs: its
///   X25519 costs about half of ring's (≈ 25 vs 45 µs for a key pair plus agreement here) and
///   Ed25519 signs in 7 µs (ring 18); these dominate a full handshake on both ends;
/// - the cipher suites (for QUIC: packet and header protection) from ring, whose keys held
///   per connection are smaller: with aws-lc-rs' an idle session costs ≈ 0.85 KiB more.
///
/// The suites are ordered AES-128-GCM/SHA-256 first. The handshake's key schedule then runs on
/// SHA-256 (hardware SHA on current x86 and ARM) instead of SHA-384, and every packet is sealed
/// with AES-128 rather than AES-256; both remain standard TLS 1.3 suites, and a peer may still
/// pick another.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let aws = rustls::crypto::aws_lc_rs::default_provider();
    let mut provider = rustls::crypto::CryptoProvider {
        cipher_suites: rustls::crypto::ring::default_provider().cipher_suites,
        ..aws
    };
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 2,
        _ => 3,
    });
    provider
}

/// Makes [`crypto_provider`] the process default, for libraries that build their rustls
/// configurations with `ClientConfig::builder()` (async-nats, for `tls://` servers): the build
/// holds two providers (aws-lc-rs, and the ring that async-nats enables), so rustls cannot pick
/// one by itself. Idempotent; a default installed earlier by the application stays.
pub fn install_default_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = crypto_provider().install_default();
    });
}

/// The QUIC ACK-frequency request to a peer: ACK after `threshold` ack-eliciting packets or
/// `max_ack_delay` (0 packets: no request at all, QUIC's default of every other packet within
/// 25 ms; a zero delay: QUIC's 25 ms).
///
/// The delay is requested as given. Upstream quinn-proto 0.11 clamps it to max(RTT, 25 ms),
/// which on a LAN makes a 20 Hz agent's every frame draw an ACK packet of its own; Contrail
/// builds against `third_party/quinn-proto`, which honours it (and asks for an immediate ACK
/// when the congestion window is nearly full, so the longer delay cannot stall slow start).
pub fn ack_frequency(threshold: u32, max_ack_delay: Duration) -> Option<quinn::AckFrequencyConfig> {
    (threshold > 0).then(|| {
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(quinn::VarInt::from_u32(threshold));
        ack.max_ack_delay((!max_ack_delay.is_zero()).then_some(max_ack_delay));
        ack
    })
}

/// A client endpoint on `socket` (datagrams up to `max_udp_payload`) with `client` as its
/// default client configuration.
pub(super) fn client_endpoint(
    socket: std::net::UdpSocket,
    max_udp_payload: u16,
    client: quinn::ClientConfig,
) -> Result<quinn::Endpoint, ClientConfigError> {
    let runtime = quinn::default_runtime().ok_or(ClientConfigError::NoRuntime)?;
    let mut endpoint =
        quinn::Endpoint::new(endpoint_config(max_udp_payload)?, None, socket, runtime)
            .map_err(|e| ClientConfigError::Socket(Arc::new(e)))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Asks for `bytes` of kernel receive and send buffer on `socket` (best effort: the kernel
/// caps it at `net.core.rmem_max` / `wmem_max`; a failure is logged and the socket keeps its
/// default).
pub fn size_socket_buffers(socket: &std::net::UdpSocket, bytes: usize) {
    let sock = socket2::SockRef::from(socket);
    for (what, res) in [
        ("receive", sock.set_recv_buffer_size(bytes)),
        ("send", sock.set_send_buffer_size(bytes)),
    ] {
        if let Err(e) = res {
            tracing::warn!(error = %e, what, bytes, "could not size the UDP socket buffer");
        }
    }
}

/// Reads CA certificates from a PEM file.
pub fn load_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = std::fs::read(path).map_err(|e| ClientConfigError::ReadCa {
        path: path.to_path_buf(),
        source: Arc::new(e),
    })?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let certs = certs.map_err(|e| ClientConfigError::ParseCa {
        path: path.to_path_buf(),
        source: Arc::new(e),
    })?;
    if certs.is_empty() {
        return Err(ClientConfigError::NoCertificate {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(certs)
}

/// Builds a rustls client config (TLS 1.3 only, [`crypto_provider`]) with the given ALPN.
pub fn rustls_client_config(
    trust: &Trust,
    client_auth: Option<&ClientAuth>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, ClientError> {
    let certs = match trust {
        Trust::CaFile(path) => load_ca_file(path)?,
        Trust::CaDer(certs) => certs.clone(),
    };
    let provider = Arc::new(crypto_provider());
    let verifier = super::verify::RelayCertVerifier::new(certs, provider.clone())?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ClientConfigError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut tls = match client_auth {
        Some(auth) => builder
            .with_client_auth_cert(auth.chain.clone(), auth.key.clone_key())
            .map_err(ClientConfigError::ClientCertificate)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// Builds a quinn client config from a rustls config with Contrail's transport settings.
/// `keep_alive` is QUIC's own keep-alive interval: `None` for agents, whose session pings at
/// its heartbeat; a raw client that sends nothing for a while wants `Some(idle_timeout / 3)`.
pub fn quinn_client_config(
    tls: rustls::ClientConfig,
    idle_timeout: Duration,
    keep_alive: Option<Duration>,
    ack_eliciting_threshold: u32,
    max_ack_delay: Duration,
    max_udp_payload: u16,
) -> Result<quinn::ClientConfig, ClientError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(ClientConfigError::QuicCrypto)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    transport.keep_alive_interval(keep_alive);
    transport.stream_receive_window(quinn::VarInt::from_u32(4 * 1024 * 1024));
    transport.send_window(8 * 1024 * 1024);
    transport.mtu_discovery_config(Some(mtu_discovery(max_udp_payload)));
    transport.ack_frequency_config(ack_frequency(ack_eliciting_threshold, max_ack_delay));
    // The relay never opens streams towards an agent: allowing none spares every connection
    // quinn's per-stream state for the 100 + 100 it would otherwise set up front.
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The unspecified local address of `relay`'s family, port 0.
pub fn bind_addr(relay: SocketAddr) -> SocketAddr {
    if relay.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    }
}

/// Binds a client endpoint whose default client config comes from `config`'s trust, client
/// certificate and idle timeout.
pub(super) fn build_endpoint(config: &ClientConfig) -> Result<quinn::Endpoint, ClientError> {
    let Some(first) = config.relays.first() else {
        return Err(ClientConfigError::NoRelay.into());
    };
    let socket = std::net::UdpSocket::bind(bind_addr(*first))
        .map_err(|e| ClientConfigError::Socket(Arc::new(e)))?;
    endpoint_on(config, socket)
}

/// A client endpoint on `socket` whose default client config comes from `config`'s trust,
/// client certificate and transport settings.
fn endpoint_on(
    config: &ClientConfig,
    socket: std::net::UdpSocket,
) -> Result<quinn::Endpoint, ClientError> {
    let mut tls = rustls_client_config(
        &config.trust,
        config.client_auth.as_ref(),
        crate::ALPN_AGENT,
    )?;
    if !config.tls_resumption {
        tls.resumption = rustls::client::Resumption::disabled();
    }
    // No QUIC keep-alive: the session's pinger sends a Contrail Ping at least every third of the
    // idle timeout while nothing else goes out (driver.rs), so a QUIC PING would only double
    // an idle agent's packets (and the relay's: it acknowledges both).
    let quic = quinn_client_config(
        tls,
        config.idle_timeout,
        None,
        config.ack_eliciting_threshold,
        config.max_ack_delay,
        config.max_udp_payload_bytes,
    )?;
    Ok(client_endpoint(socket, config.max_udp_payload_bytes, quic)?)
}

/// One UDP socket (a quinn client endpoint) that several agents share, each with its own QUIC
/// connection and session.
///
/// A real drone has one agent and lets [`Agent::connect`](super::Agent::connect) bind its own
/// socket. A process that runs many agents (a gateway, `contrail-loadgen`) shares a few of these
/// instead: the TLS configuration is built once, and one socket read returns datagrams for many
/// connections rather than one wake-up per datagram per socket. The endpoint's trust roots,
/// client certificate and idle timeout apply to every agent on it (the agents' own
/// [`ClientConfig::trust`] and [`ClientConfig::client_auth`] are not consulted).
#[derive(Debug, Clone)]
pub struct SharedEndpoint {
    pub(super) endpoint: quinn::Endpoint,
}

impl SharedEndpoint {
    /// Binds a socket for agents configured like `config` (trust, client certificate, idle
    /// timeout, address family of the first relay).
    pub fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        Ok(SharedEndpoint {
            endpoint: build_endpoint(config)?,
        })
    }

    /// Like [`new`](Self::new), on a socket the caller bound (and sized: many connections on
    /// one socket want larger kernel buffers than the default).
    pub fn from_socket(
        config: &ClientConfig,
        socket: std::net::UdpSocket,
    ) -> Result<Self, ClientError> {
        Ok(SharedEndpoint {
            endpoint: endpoint_on(config, socket)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_are_typed_with_their_source() {
        use std::error::Error as _;
        let missing = std::path::Path::new("/nonexistent/contrail-ca.pem");
        match load_ca_file(missing) {
            Err(ClientError::Config(ClientConfigError::ReadCa { path, source })) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected ReadCa, got {other:?}"),
        }
        let empty = std::env::temp_dir().join(format!("contrail-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "no PEM here\n").expect("write");
        let e = load_ca_file(&empty).expect_err("no certificate");
        let _ = std::fs::remove_file(&empty);
        assert!(
            matches!(
                e,
                ClientError::Config(ClientConfigError::NoCertificate { .. })
            ),
            "{e:?}"
        );
        let e = ClientError::from(SpoolError::Append(Arc::new(std::io::Error::other("disk"))));
        let inner = e.source().expect("spool error is the source");
        assert!(inner.source().is_some(), "the io error is kept as a source");
        assert_eq!(e.to_string(), "spool: append: disk");
    }

    #[test]
    fn the_provider_offers_x25519_first_and_aes_128_gcm_first() {
        let p = crypto_provider();
        let groups: Vec<_> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups[0], rustls::NamedGroup::X25519, "{groups:?}");
        // Only aws-lc-rs has the hybrid post-quantum group (listed, not offered first).
        assert!(
            groups.contains(&rustls::NamedGroup::X25519MLKEM768),
            "aws-lc-rs key exchange: {groups:?}"
        );
        let suites: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites[..3],
            [
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            ],
            "{suites:?}"
        );
    }

    #[test]
    fn installing_the_default_provider_lets_libraries_build_configs() {
        // Two providers are compiled in (aws-lc-rs and ring), so rustls has no default of its
        // own and `ClientConfig::builder()` (async-nats' way) would panic without this.
        install_default_crypto_provider();
        install_default_crypto_provider();
        let default = rustls::crypto::CryptoProvider::get_default().expect("a process default");
        assert_eq!(default.kx_groups[0].name(), rustls::NamedGroup::X25519);
        let _ = rustls::ClientConfig::builder();
    }
}
