//! Agent configuration and TLS/QUIC endpoint set-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ClientError;
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
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max: Duration,
    /// Seq the first frame gets (1 for a fresh agent). With a spool that holds state, the
    /// spool decides (after its last frame).
    pub first_seq: u64,
    /// Optional on-disk spool of unacked frames, so a process restart loses nothing.
    pub spool: Option<super::spool::SpoolConfig>,
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
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
            first_seq: 1,
            spool: None,
        }
    }
}

/// Reads CA certificates from a PEM file.
pub fn load_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = std::fs::read(path)
        .map_err(|e| ClientError::Config(format!("reading {}: {e}", path.display())))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let certs =
        certs.map_err(|e| ClientError::Config(format!("parsing {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ClientError::Config(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Builds a rustls client config (TLS 1.3 only, ring) with the given ALPN.
pub fn rustls_client_config(
    trust: &Trust,
    client_auth: Option<&ClientAuth>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, ClientError> {
    let certs = match trust {
        Trust::CaFile(path) => load_ca_file(path)?,
        Trust::CaDer(certs) => certs.clone(),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| ClientError::Config(format!("trust root: {e}")))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| ClientError::Config(e.to_string()))?
    .with_root_certificates(roots);
    let mut tls = match client_auth {
        Some(auth) => builder
            .with_client_auth_cert(auth.chain.clone(), auth.key.clone_key())
            .map_err(|e| ClientError::Config(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// Builds a quinn client config from a rustls config with Contrail's transport settings.
pub fn quinn_client_config(
    tls: rustls::ClientConfig,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, ClientError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    transport.keep_alive_interval(Some(idle_timeout / 3));
    transport.stream_receive_window(quinn::VarInt::from_u32(4 * 1024 * 1024));
    transport.send_window(8 * 1024 * 1024);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

pub(super) fn build_endpoint(config: &ClientConfig) -> Result<quinn::Endpoint, ClientError> {
    if config.relays.is_empty() {
        return Err(ClientError::Config("no relay address".into()));
    }
    let tls = rustls_client_config(
        &config.trust,
        config.client_auth.as_ref(),
        crate::ALPN_AGENT,
    )?;
    let quic = quinn_client_config(tls, config.idle_timeout)?;
    let bind: SocketAddr = if config.relays[0].is_ipv6() {
        "[::]:0"
            .parse()
            .map_err(|_| ClientError::Config("bind".into()))?
    } else {
        "0.0.0.0:0"
            .parse()
            .map_err(|_| ClientError::Config("bind".into()))?
    };
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|e| ClientError::Config(format!("binding UDP socket: {e}")))?;
    endpoint.set_default_client_config(quic);
    Ok(endpoint)
}
