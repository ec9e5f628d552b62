//! Reads the Redis routing hint `drone:{id}` → `{"relay_id", "session_id"}` that every relay
//! publishes, to tell which relay holds a drone right now.

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::Mutex;

use crate::error::RoutingError;
use crate::routing::{store::connection_info, RoutingConfig};

/// What Redis says about a drone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Held by this relay id.
    Held(String),
    /// No key: not connected anywhere (or its key expired).
    Absent,
    /// Redis could not be asked.
    Unavailable,
}

/// A lazily (re)connected Redis reader.
pub struct RouteHint {
    config: RoutingConfig,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl RouteHint {
    /// Reads through the routing publisher's Redis settings.
    pub fn new(config: RoutingConfig) -> Self {
        RouteHint {
            config,
            conn: Mutex::new(None),
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, RoutingError> {
        let client = Client::open(connection_info(&self.config)?)?;
        let conf = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.io_timeout))
            .set_response_timeout(Some(self.config.io_timeout));
        tokio::time::timeout(
            self.config.io_timeout,
            client.get_multiplexed_async_connection_with_config(&conf),
        )
        .await
        .map_err(|_| RoutingError::Timeout)?
        .map_err(RoutingError::from)
    }

    /// Which relay holds `drone`, per Redis.
    pub async fn lookup(&self, drone: &str) -> Hint {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            match self.connect().await {
                Ok(c) => *guard = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "routing hint: redis unavailable");
                    return Hint::Unavailable;
                }
            }
        }
        let Some(conn) = guard.as_mut() else {
            return Hint::Unavailable;
        };
        let key = format!("drone:{drone}");
        let res: Result<Option<String>, _> = tokio::time::timeout(
            self.config.io_timeout,
            redis::cmd("GET").arg(&key).query_async(conn),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )))
        });
        match res {
            Ok(Some(v)) => serde_json::from_str::<serde_json::Value>(&v)
                .ok()
                .and_then(|j| j.get("relay_id")?.as_str().map(str::to_owned))
                .map_or(Hint::Absent, Hint::Held),
            Ok(None) => Hint::Absent,
            Err(_) => {
                *guard = None;
                Hint::Unavailable
            }
        }
    }
}
