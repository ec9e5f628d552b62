//! How agents and subscribers verify the relay's certificate.
//!
//! Everything goes to webpki (signature chain to a trust root, validity period, usage, name)
//! except one case decided without a signature check: the relay presents, as its whole chain,
//! a certificate that is itself in the trust roots and that webpki accepted as a server
//! certificate on its own when the configuration was built (the development certificate, or
//! any pinned self-signed certificate). For that certificate webpki's answer can change only
//! with the time and the server name, so the verifier checks those (validity period, name)
//! and the bytes (identical to the trusted copy), and skips re-verifying the certificate's
//! signature over itself, which proves nothing the byte comparison does not. The handshake
//! signature is verified as always: it proves the relay holds the certificate's key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

use super::{ClientConfigError, ClientError};

/// A trusted certificate accepted when presented alone, byte for byte, within its validity.
#[derive(Debug)]
struct Pinned {
    der: CertificateDer<'static>,
    /// Validity period, Unix seconds (inclusive, as webpki checks it).
    not_before: u64,
    not_after: u64,
}

/// The relay certificate verifier (see the module documentation).
#[derive(Debug)]
pub(crate) struct RelayCertVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Vec<Pinned>,
}

impl RelayCertVerifier {
    /// A verifier trusting `roots`, with `provider`'s signature algorithms.
    pub(crate) fn new(
        roots: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, ClientError> {
        let mut store = RootCertStore::empty();
        for cert in &roots {
            store
                .add(cert.clone())
                .map_err(ClientConfigError::TrustRoot)?;
        }
        let algs = provider.signature_verification_algorithms;
        let store = Arc::new(store);
        let webpki = WebPkiServerVerifier::builder_with_provider(store.clone(), provider)
            .build()
            .map_err(ClientConfigError::Verifier)?;
        let now = UnixTime::now();
        let pinned = roots
            .into_iter()
            .filter(|cert| {
                // What webpki would say of this certificate presented alone, now, bar the name.
                ParsedCertificate::try_from(cert).is_ok_and(|parsed| {
                    rustls::client::verify_server_cert_signed_by_trust_anchor(
                        &parsed,
                        &store,
                        &[],
                        now,
                        algs.all,
                    )
                    .is_ok()
                })
            })
            .filter_map(|der| {
                use x509_cert::der::Decode;
                let cert = x509_cert::Certificate::from_der(der.as_ref()).ok()?;
                let validity = cert.tbs_certificate.validity;
                Some(Pinned {
                    not_before: validity.not_before.to_unix_duration().as_secs(),
                    not_after: validity.not_after.to_unix_duration().as_secs(),
                    der,
                })
            })
            .collect();
        Ok(Self { webpki, pinned })
    }

    /// How many trust roots are accepted by byte comparison (tests, diagnostics).
    #[cfg(test)]
    pub(crate) fn pinned_count(&self) -> usize {
        self.pinned.len()
    }
}

impl ServerCertVerifier for RelayCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let pinned = intermediates
            .is_empty()
            .then(|| {
                self.pinned
                    .iter()
                    .find(|p| p.der.as_ref() == end_entity.as_ref())
            })
            .flatten();
        let Some(pinned) = pinned else {
            return self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        };
        let t = now.as_secs();
        if t < pinned.not_before {
            return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
        }
        if t > pinned.not_after {
            return Err(Error::InvalidCertificate(CertificateError::Expired));
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rustls::pki_types::PrivateKeyDer;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(super::super::config::crypto_provider())
    }

    /// A self-signed Ed25519 certificate for `names` (like the relay's development one).
    fn self_signed(names: &[&str]) -> (CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.der().clone(), key)
    }

    fn name(n: &str) -> ServerName<'static> {
        ServerName::try_from(n.to_string()).unwrap()
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
    }

    #[test]
    fn a_pinned_certificate_is_checked_for_name_and_validity() {
        let (cert, _key) = self_signed(&["localhost"]);
        let v = RelayCertVerifier::new(vec![cert.clone()], provider()).unwrap();
        assert_eq!(
            v.pinned_count(),
            1,
            "a self-signed server certificate is pinned"
        );
        let now = UnixTime::now();
        assert!(v
            .verify_server_cert(&cert, &[], &name("localhost"), &[], now)
            .is_ok());
        let wrong_name = v.verify_server_cert(&cert, &[], &name("relay.example"), &[], now);
        assert!(
            matches!(
                wrong_name,
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{wrong_name:?}"
        );
        // rcgen's default validity is 1975-01-01 to 4096-01-01.
        let expired = v.verify_server_cert(&cert, &[], &name("localhost"), &[], at(u64::MAX / 2));
        assert!(
            matches!(
                expired,
                Err(Error::InvalidCertificate(CertificateError::Expired))
            ),
            "{expired:?}"
        );
        let early = v.verify_server_cert(&cert, &[], &name("localhost"), &[], at(1_000));
        assert!(
            matches!(
                early,
                Err(Error::InvalidCertificate(CertificateError::NotValidYet))
            ),
            "{early:?}"
        );
    }

    #[test]
    fn another_certificate_with_the_same_name_is_refused() {
        let (trusted, _) = self_signed(&["localhost"]);
        let (other, _) = self_signed(&["localhost"]);
        let v = RelayCertVerifier::new(vec![trusted.clone()], provider()).unwrap();
        let r = v.verify_server_cert(&other, &[], &name("localhost"), &[], UnixTime::now());
        assert!(
            matches!(r, Err(Error::InvalidCertificate(_))),
            "an untrusted certificate must fail webpki: {r:?}"
        );
        // The trusted one with an (unneeded) intermediate goes to webpki too, which still
        // accepts it: the byte comparison is only a shortcut.
        assert!(v
            .verify_server_cert(&trusted, &[other], &name("localhost"), &[], UnixTime::now())
            .is_ok());
    }

    #[test]
    fn a_ca_is_not_pinned_and_its_leaves_go_through_webpki() {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let v = RelayCertVerifier::new(vec![ca.der().clone()], provider()).unwrap();
        assert_eq!(v.pinned_count(), 0, "a CA is no server certificate");
        let now = UnixTime::now();
        assert!(v
            .verify_server_cert(leaf.der(), &[], &name("localhost"), &[], now)
            .is_ok());
        assert!(
            v.verify_server_cert(ca.der(), &[], &name("localhost"), &[], now)
                .is_err(),
            "the CA presented as a server certificate stays refused"
        );
    }

    /// A certificate resolver that presents `cert` with whatever key it is given.
    #[derive(Debug)]
    struct Present(Arc<rustls::sign::CertifiedKey>);

    impl rustls::server::ResolvesServerCert for Present {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// Handshakes over QUIC on loopback with a server presenting `cert` signed by `key`, the
    /// client trusting `cert`. The client's verdict (its error, when it refused the server).
    async fn handshake(
        cert: CertificateDer<'static>,
        key: &rcgen::KeyPair,
    ) -> Result<(), quinn::ConnectionError> {
        let provider = provider();
        let signer = provider
            .key_provider
            .load_private_key(PrivateKeyDer::try_from(key.serialize_der()).unwrap())
            .unwrap();
        let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![cert.clone()], signer));
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Present(certified)));
        server_tls.alpn_protocols = vec![crate::ALPN_AGENT.to_vec()];
        let server_config = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap(),
        ));
        let server =
            quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            if let Some(incoming) = server.accept().await {
                let _ = incoming.await;
            }
        });
        let tls = super::super::config::rustls_client_config(
            &super::super::config::Trust::CaDer(vec![cert]),
            None,
            crate::ALPN_AGENT,
        )
        .unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        )));
        let connected = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.connect(addr, "localhost").unwrap(),
        )
        .await
        .expect("the handshake finishes either way");
        accept.abort();
        connected.map(drop)
    }

    #[tokio::test]
    async fn the_handshake_signature_is_still_verified_for_a_pinned_certificate() {
        let (cert, key) = self_signed(&["localhost"]);
        let own = handshake(cert.clone(), &key).await;
        assert!(own.is_ok(), "its own key: accepted ({own:?})");
        let impostor = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let refused = handshake(cert, &impostor).await;
        // rustls: "the cryptographic handshake failed: error 51: invalid peer certificate: BadSignature".
        let e = refused.expect_err("the pinned certificate without its key: refused");
        assert!(
            e.to_string().contains("BadSignature"),
            "refused for its signature: {e}"
        );
    }
}
