//! Redis IO of the routing publisher: connection set-up, Lua scripts and pipelines.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, Value};

use super::RoutingConfig;
use crate::error::RoutingError;

/// Deletes `KEYS[1]` only if its value is still `ARGV[1]`. Returns 1 if deleted.
pub const CAS_DELETE_LUA: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) else return 0 end";

/// Sets `KEYS[1]` = `ARGV[1]` with TTL `ARGV[2]` seconds unless another session holds it.
/// Returns 1 if written, 0 if the key names someone else.
pub const REFRESH_LUA: &str = "local v = redis.call('GET', KEYS[1]) \
     if v == false or v == ARGV[1] then \
     redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end return 0";

/// One routing write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Unconditional `SET key value EX ttl` (a session registered: the newest one wins).
    Set { key: String, value: String },
    /// Conditional refresh through [`REFRESH_LUA`].
    Refresh { key: String, value: String },
    /// Compare-and-delete through [`CAS_DELETE_LUA`].
    Delete { key: String, value: String },
}

/// Result counts of one pipeline.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    pub commands: usize,
    /// Scripts that returned 1 (refreshed or deleted).
    pub hits: usize,
}

/// A live connection with the scripts loaded.
pub(crate) struct Store {
    conn: MultiplexedConnection,
    cad_sha: String,
    refresh_sha: String,
    ttl_secs: u64,
    io_timeout: Duration,
}

/// Builds connection info from `host:port` or a `redis://` URL plus password and db.
pub(crate) fn connection_info(cfg: &RoutingConfig) -> Result<redis::ConnectionInfo, RoutingError> {
    let addr = cfg.addr.as_deref().ok_or(RoutingError::Disabled)?;
    let info = if addr.contains("://") {
        addr.into_connection_info()?
    } else {
        let (host, port) = match addr.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| RoutingError::BadAddr(addr.to_owned()))?;
                (h.trim_start_matches('[').trim_end_matches(']'), port)
            }
            None => (addr, 6379),
        };
        if host.is_empty() {
            return Err(RoutingError::BadAddr(addr.to_owned()));
        }
        ConnectionAddr::Tcp(host.to_owned(), port).into_connection_info()?
    };
    let mut settings = info.redis_settings().clone();
    if let Some(p) = &cfg.password {
        settings = settings.set_password(p);
    }
    if let Some(db) = cfg.db {
        settings = settings.set_db(db);
    }
    Ok(info.set_redis_settings(settings))
}

/// The client for `cfg`: plain, or TLS for a `rediss://` address (verified against
/// `tls_ca_file` when set, else the system's roots).
pub(crate) fn client(cfg: &RoutingConfig) -> Result<Client, RoutingError> {
    let info = connection_info(cfg)?;
    if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        return Ok(Client::open(info)?);
    }
    // redis builds its rustls config with `ClientConfig::builder()`, which needs a process
    // default provider; an application's own choice installed earlier stays.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match &cfg.tls_ca_file {
        None => Ok(Client::open(info)?),
        Some(path) => {
            let root_cert = std::fs::read(path).map_err(|source| RoutingError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            Ok(Client::build_with_tls(info, certs)?)
        }
    }
}

impl Store {
    /// Connects, loads both scripts and returns the store.
    pub(crate) async fn connect(cfg: &RoutingConfig) -> Result<Store, RoutingError> {
        let client = client(cfg)?;
        let conf = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(cfg.io_timeout))
            .set_response_timeout(Some(cfg.io_timeout));
        let fut = client.get_multiplexed_async_connection_with_config(&conf);
        let mut conn = tokio::time::timeout(cfg.io_timeout, fut)
            .await
            .map_err(|_| RoutingError::Timeout)??;
        let mut load = redis::pipe();
        load.cmd("SCRIPT").arg("LOAD").arg(CAS_DELETE_LUA);
        load.cmd("SCRIPT").arg("LOAD").arg(REFRESH_LUA);
        let (cad_sha, refresh_sha): (String, String) =
            tokio::time::timeout(cfg.io_timeout, load.query_async(&mut conn))
                .await
                .map_err(|_| RoutingError::Timeout)??;
        Ok(Store {
            conn,
            cad_sha,
            refresh_sha,
            ttl_secs: cfg.ttl.as_secs().max(1),
            io_timeout: cfg.io_timeout,
        })
    }

    /// Sends `ops` as one pipeline and waits for every reply.
    pub(crate) async fn apply(&mut self, ops: &[Op]) -> Result<Applied, RoutingError> {
        if ops.is_empty() {
            return Ok(Applied::default());
        }
        let mut pipe = redis::pipe();
        for op in ops {
            match op {
                Op::Set { key, value } => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(value)
                        .arg("EX")
                        .arg(self.ttl_secs);
                }
                Op::Refresh { key, value } => {
                    pipe.cmd("EVALSHA")
                        .arg(&self.refresh_sha)
                        .arg(1)
                        .arg(key)
                        .arg(value)
                        .arg(self.ttl_secs);
                }
                Op::Delete { key, value } => {
                    pipe.cmd("EVALSHA")
                        .arg(&self.cad_sha)
                        .arg(1)
                        .arg(key)
                        .arg(value);
                }
            }
        }
        // Generous per-pipeline bound: a large pipeline legitimately takes longer than one reply.
        let deadline = self.io_timeout.saturating_mul(4);
        let replies: Vec<Value> = tokio::time::timeout(deadline, pipe.query_async(&mut self.conn))
            .await
            .map_err(|_| RoutingError::Timeout)??;
        let hits = replies
            .iter()
            .filter(|v| matches!(v, Value::Int(1)))
            .count();
        Ok(Applied {
            commands: ops.len(),
            hits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(addr: &str) -> RoutingConfig {
        RoutingConfig {
            addr: Some(addr.into()),
            password: Some("pw".into()),
            db: Some(3),
            ..RoutingConfig::default()
        }
    }

    #[test]
    fn parses_host_port_and_url() {
        let i = connection_info(&cfg("10.0.0.1:6380")).expect("host:port");
        assert_eq!(i.addr(), &ConnectionAddr::Tcp("10.0.0.1".into(), 6380));
        assert_eq!(i.redis_settings().db(), 3);
        let i = connection_info(&cfg("redis://h:7000")).expect("url");
        assert_eq!(i.addr(), &ConnectionAddr::Tcp("h".into(), 7000));
        assert!(connection_info(&cfg("h:notaport")).is_err());
        assert!(connection_info(&RoutingConfig::default()).is_err());
    }
}
