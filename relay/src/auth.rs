//! Agent authentication: static tokens (stored as SHA-256 hashes, compared in constant time),
//! HMAC-signed JWTs (`sub` must equal the agent id; `exp`/`nbf` checked with a configurable
//! skew), and optional mutual TLS (the client certificate must be valid for the agent id).
//!
//! Every failure is the same `UNAUTHENTICATED` to the peer: no hint which part was wrong. The
//! reason is logged at debug level and counted in `contrail_auth_failures_total{reason}`.

use std::collections::HashMap;
use std::path::Path;

use contrail_control::metric_names as m;
use contrail_protocol::{AgentId, ErrorCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Which agent authentication is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No authentication (allowed by default only with the development certificate).
    #[default]
    None,
    /// Static per-agent tokens from `tokens_file`.
    Token,
    /// HMAC-signed JWTs.
    Jwt,
}

/// `[auth]` settings.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Mode; when unset it is `none` with the development certificate and a configuration
    /// error with a real certificate.
    pub mode: Option<AuthMode>,
    /// Token mode: file of `agent_id sha256-hex-of-token` lines (`#` comments allowed);
    /// `*` as agent id accepts that token for any agent.
    pub tokens_file: Option<std::path::PathBuf>,
    /// JWT mode: the HMAC secret (HS256/HS384/HS512).
    pub jwt_secret: Option<String>,
    /// JWT mode: allowed clock skew for `exp`/`nbf`, seconds.
    pub jwt_leeway_secs: u64,
    /// Mutual TLS: PEM CA bundle client certificates must chain to. The certificate must be
    /// valid for a DNS name equal to the agent id.
    pub client_ca: Option<std::path::PathBuf>,
}

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Reading the tokens file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A line of the tokens file is malformed.
    #[error("{path}:{line}: expected `agent_id sha256hex`")]
    BadLine {
        /// Path.
        path: std::path::PathBuf,
        /// Line number.
        line: usize,
    },
    /// The mode needs a setting that is missing.
    #[error("auth: {0}")]
    Missing(&'static str),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

/// Checks agents at Register.
pub struct Authenticator {
    mode: AuthMode,
    tokens: HashMap<String, Vec<[u8; 32]>>,
    jwt: Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)>,
    mtls: bool,
}

/// SHA-256 of a token, hex (what goes into the tokens file).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn parse_tokens(path: &Path) -> Result<HashMap<String, Vec<[u8; 32]>>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut map: HashMap<String, Vec<[u8; 32]>> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || AuthError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
        };
        let mut parts = line.split_whitespace();
        let (Some(agent), Some(hash), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hash, &mut digest).map_err(|_| bad())?;
        map.entry(agent.to_string()).or_default().push(digest);
    }
    Ok(map)
}

impl Authenticator {
    /// Builds the authenticator for `cfg` (the mode already resolved).
    pub fn new(cfg: &AuthConfig, mode: AuthMode) -> Result<Self, AuthError> {
        let tokens = match mode {
            AuthMode::Token => parse_tokens(
                cfg.tokens_file
                    .as_deref()
                    .ok_or(AuthError::Missing("mode = token needs tokens_file"))?,
            )?,
            _ => HashMap::new(),
        };
        let jwt = match mode {
            AuthMode::Jwt => {
                let secret = cfg
                    .jwt_secret
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .ok_or(AuthError::Missing("mode = jwt needs jwt_secret"))?;
                let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
                v.algorithms = vec![
                    jsonwebtoken::Algorithm::HS256,
                    jsonwebtoken::Algorithm::HS384,
                    jsonwebtoken::Algorithm::HS512,
                ];
                v.leeway = cfg.jwt_leeway_secs;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_required_spec_claims(&["exp", "sub"]);
                Some((jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()), v))
            }
            _ => None,
        };
        Ok(Authenticator {
            mode,
            tokens,
            jwt,
            mtls: cfg.client_ca.is_some(),
        })
    }

    /// The mode in force.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Checks one registration. `peer_chain` is the client certificate chain (mTLS), if any.
    pub fn check(
        &self,
        agent: &AgentId,
        token: &str,
        peer_chain: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    ) -> Result<(), ErrorCode> {
        let fail = |reason: &'static str| {
            tracing::debug!(agent = %agent, reason, "authentication failed");
            metrics::counter!(m::AUTH_FAILURES, "reason" => reason).increment(1);
            Err(ErrorCode::Unauthenticated)
        };
        if self.mtls {
            let Some(leaf) = peer_chain.and_then(|c| c.first()) else {
                return fail("no_client_certificate");
            };
            // The chain was verified by rustls against `client_ca`; here the identity must
            // match the agent id.
            let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
                return fail("bad_client_certificate");
            };
            let Ok(name) = rustls_pki_types::ServerName::try_from(agent.as_str()) else {
                return fail("agent_id_not_a_dns_name");
            };
            if cert.verify_is_valid_for_subject_name(&name).is_err() {
                return fail("certificate_identity_mismatch");
            }
        }
        match self.mode {
            AuthMode::None => Ok(()),
            AuthMode::Token => {
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let mut ok = subtle::Choice::from(0u8);
                for key in [agent.as_str(), "*"] {
                    if let Some(hashes) = self.tokens.get(key) {
                        for h in hashes {
                            ok |= h.ct_eq(&digest);
                        }
                    }
                }
                if bool::from(ok) {
                    Ok(())
                } else {
                    fail("bad_token")
                }
            }
            AuthMode::Jwt => {
                let Some((key, validation)) = &self.jwt else {
                    return fail("jwt_not_configured");
                };
                match jsonwebtoken::decode::<Claims>(token, key, validation) {
                    Ok(data) if data.claims.sub == agent.as_str() => Ok(()),
                    Ok(_) => fail("jwt_sub_mismatch"),
                    Err(_) => fail("jwt_invalid"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct TestClaims {
        sub: String,
        exp: u64,
        nbf: u64,
    }

    fn now() -> u64 {
        crate::clock::unix_ns() / 1_000_000_000
    }

    fn jwt(secret: &str, sub: &str, exp: u64, nbf: u64) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &TestClaims {
                sub: sub.into(),
                exp,
                nbf,
            },
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode jwt")
    }

    fn id(s: &str) -> AgentId {
        AgentId::new(s).expect("id")
    }

    #[test]
    fn tokens_are_checked_per_agent_and_wildcard() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            format!(
                "# fleet tokens\ndrone-1 {}\n* {}\n",
                hash_token("s3cret"),
                hash_token("fleet-wide")
            ),
        )
        .expect("write");
        let cfg = AuthConfig {
            tokens_file: Some(path),
            ..Default::default()
        };
        let a = Authenticator::new(&cfg, AuthMode::Token).expect("auth");
        assert_eq!(a.check(&id("drone-1"), "s3cret", None), Ok(()));
        assert_eq!(a.check(&id("drone-2"), "fleet-wide", None), Ok(()));
        assert_eq!(
            a.check(&id("drone-2"), "s3cret", None),
            Err(ErrorCode::Unauthenticated)
        );
        assert_eq!(
            a.check(&id("drone-1"), "", None),
            Err(ErrorCode::Unauthenticated)
        );
    }

    #[test]
    fn jwt_checks_signature_sub_exp_and_nbf_with_leeway() {
        let cfg = AuthConfig {
            jwt_secret: Some("k3y".into()),
            jwt_leeway_secs: 5,
            ..Default::default()
        };
        let a = Authenticator::new(&cfg, AuthMode::Jwt).expect("auth");
        let n = now();
        let agent = id("drone-7");
        assert_eq!(
            a.check(&agent, &jwt("k3y", "drone-7", n + 60, n - 1), None),
            Ok(())
        );
        let bad = Err(ErrorCode::Unauthenticated);
        assert_eq!(
            a.check(&agent, &jwt("other", "drone-7", n + 60, n), None),
            bad
        );
        assert_eq!(
            a.check(&agent, &jwt("k3y", "drone-8", n + 60, n), None),
            bad
        );
        assert_eq!(
            a.check(&agent, &jwt("k3y", "drone-7", n - 60, n - 120), None),
            bad
        );
        assert_eq!(
            a.check(&agent, &jwt("k3y", "drone-7", n + 600, n + 300), None),
            bad
        );
        // Within the skew: expired 2 s ago, leeway 5 s.
        assert_eq!(
            a.check(&agent, &jwt("k3y", "drone-7", n - 2, n - 60), None),
            Ok(())
        );
        assert_eq!(a.check(&agent, "not.a.jwt", None), bad);
    }

    #[test]
    fn missing_settings_are_configuration_errors() {
        assert!(Authenticator::new(&AuthConfig::default(), AuthMode::Token).is_err());
        assert!(Authenticator::new(&AuthConfig::default(), AuthMode::Jwt).is_err());
    }
}
