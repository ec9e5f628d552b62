//! TLS for the QUIC endpoint: configured PEM files, or a generated development certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use contrail_control::metric_names as m;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Limits, TlsConfig};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading or writing a PEM file failed.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A PEM file held no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// rustls/quinn refused the configuration.
    #[error("tls: {0}")]
    Config(String),
}

/// Certificate chain and key the relay serves, and where the dev certificate was written.
pub struct Identity {
    /// Chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// Path of the development certificate agents can trust (None with configured certs).
    pub dev_cert_path: Option<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(io(path))?;
    let chain: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let chain = chain.map_err(io(path))?;
    if chain.is_empty() {
        return Err(TlsError::Pem(format!(
            "{} holds no certificate",
            path.display()
        )));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(io(path))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(io(path))?
        .ok_or_else(|| TlsError::Pem(format!("{} holds no private key", path.display())))
}

/// Loads the configured certificate, or generates (once) and reuses a development certificate
/// in `dev_cert_dir`.
pub fn load_or_generate(cfg: &TlsConfig) -> Result<Identity, TlsError> {
    if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
        return Ok(Identity {
            chain: read_chain(cert)?,
            key: read_key(key)?,
            dev_cert_path: None,
        });
    }
    let dir = &cfg.dev_cert_dir;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok(Identity {
            chain: read_chain(&cert_path)?,
            key: read_key(&key_path)?,
            dev_cert_path: Some(cert_path),
        });
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.extend(cfg.dev_cert_names.iter().cloned());
    // Ed25519: of the signatures every TLS 1.3 stack verifies, the cheapest to sign (relay)
    // and to verify (agent, once per full handshake: the pinned certificate itself is checked
    // by its bytes, see the agent library's `client/verify.rs`).
    let failed = |e: rcgen::Error| TlsError::Config(format!("generating dev certificate: {e}"));
    let signing_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(failed)?;
    let mut params = rcgen::CertificateParams::new(names).map_err(failed)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Contrail development relay");
    let cert = params.self_signed(&signing_key).map_err(failed)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
    write_private(&key_path, signing_key.serialize_pem().as_bytes())?;
    Ok(Identity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::try_from(signing_key.serialize_der())
            .map_err(|e| TlsError::Pem(e.to_string()))?,
        dev_cert_path: Some(cert_path),
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))
}

/// Stateless session tickets (rustls' rotating ticketer) that count what clients bring back:
/// `contrail_tls_tickets_total{result="resumed"}` for tickets that decrypted (rustls then
/// resumes, unless the stored session does not fit the new handshake, e.g. another ALPN),
/// `{result="refused"}` for the others (a rotated-out key, another relay's, garbage).
struct CountingTicketer {
    inner: Arc<dyn rustls::server::ProducesTickets>,
    resumed: metrics::Counter,
    refused: metrics::Counter,
}

impl std::fmt::Debug for CountingTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingTicketer").finish_non_exhaustive()
    }
}

impl rustls::server::ProducesTickets for CountingTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher);
        match plain {
            Some(_) => self.resumed.increment(1),
            None => self.refused.increment(1),
        }
        plain
    }
}

/// The quinn server configuration: TLS 1.3 only, the given ALPNs, Contrail's transport limits,
/// `session_tickets` stateless resumption tickets per handshake (0: no resumption).
pub fn server_config(
    identity: &Identity,
    limits: &Limits,
    alpns: &[&[u8]],
    client_ca: Option<&Path>,
    session_tickets: usize,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = Arc::new(contrail_protocol::client::config::crypto_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            // Mutual TLS: clients must present a certificate chaining to `client_ca`. Live
            // subscribers (no client certificate) are allowed through the handshake and
            // checked by token instead; agents without a certificate fail at Register.
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_chain(path)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Config(format!("client_ca: {e}")))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(format!("client_ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut tls = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    tls.max_early_data_size = 0;
    // Resumption by stateless tickets only: rustls' default stateful cache holds 256 sessions,
    // which a fleet of thousands evicts long before an agent comes back, while every
    // handshake still paid for storing two.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = session_tickets;
    if session_tickets > 0 {
        tls.ticketer = Arc::new(CountingTicketer {
            inner: rustls::crypto::ring::Ticketer::new()
                .map_err(|e| TlsError::Config(format!("session tickets: {e}")))?,
            resumed: metrics::counter!(m::TLS_TICKETS, "result" => "resumed"),
            refused: metrics::counter!(m::TLS_TICKETS, "result" => "refused"),
        });
    }
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout()).ok());
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(2));
    let window = (limits.read_buffer_bytes as u64).clamp(64 * 1024, 16 << 20);
    transport.stream_receive_window(quinn::VarInt::from_u64(window).unwrap_or(quinn::VarInt::MAX));
    transport.receive_window(quinn::VarInt::from_u64(window * 2).unwrap_or(quinn::VarInt::MAX));
    // What the relay may have in flight on one connection: live subscribers receive every
    // frame, and at hundreds of MB/s a small window stalls the writer between ACKs.
    transport.send_window(8 << 20);
    transport.mtu_discovery_config(Some(contrail_protocol::client::config::mtu_discovery(
        limits.max_udp_payload_bytes,
    )));
    transport.ack_frequency_config(contrail_protocol::client::config::ack_frequency(
        limits.ack_eliciting_threshold,
        limits.quic_max_ack_delay(),
    ));
    server.transport_config(Arc::new(transport));
    server.max_incoming(limits.max_pending_handshakes.max(1));
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_certificate_is_ed25519_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = TlsConfig {
            dev_cert_dir: dir.path().join("dev"),
            ..TlsConfig::default()
        };
        let first = load_or_generate(&cfg).expect("generated");
        let key = rcgen::KeyPair::try_from(&first.key).expect("a key rcgen reads");
        assert!(
            key.is_compatible(&rcgen::PKCS_ED25519),
            "Ed25519 key, got {:?}",
            key.algorithm()
        );
        let again = load_or_generate(&cfg).expect("reused");
        assert_eq!(
            again.chain, first.chain,
            "the same certificate the second time"
        );
        assert_eq!(again.dev_cert_path, first.dev_cert_path);
    }
}
