//! `[mavlink]`: the lab/SITL UDP endpoint.

use std::net::SocketAddr;

use serde::Deserialize;

use crate::sink::setting::{invalid, InvalidSetting};

/// MAVLink settings of the relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MavlinkConfig {
    /// UDP address where vehicles (or SITL: `sim_vehicle.py --out=udp:RELAY:14550`) send
    /// MAVLink straight to the relay; off when unset. Best effort: no auth, no acks, no spool.
    pub udp_listen: Option<SocketAddr>,
    /// Distinct system ids served at once; packets of further systems are dropped (counted).
    pub max_systems: usize,
    /// A system that sent nothing for this long ends its session.
    pub idle_timeout_ms: u64,
    /// Agent id of a system's session: this prefix and the system id (`mavlink-sys-1`).
    pub agent_prefix: String,
}

impl Default for MavlinkConfig {
    fn default() -> Self {
        MavlinkConfig {
            udp_listen: None,
            max_systems: 64,
            idle_timeout_ms: 30_000,
            agent_prefix: "mavlink-sys-".into(),
        }
    }
}

impl MavlinkConfig {
    /// Checks the values (pure); the error names the key inside `[mavlink]`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.max_systems == 0 || self.max_systems > 255 {
            return Err(invalid("max_systems", "must be 1..=255"));
        }
        if self.idle_timeout_ms < 100 {
            return Err(invalid("idle_timeout_ms", "must be at least 100"));
        }
        if contrail_protocol::AgentId::new(format!("{}255", self.agent_prefix)).is_err() {
            return Err(invalid(
                "agent_prefix",
                "with a system id appended it must be a valid agent id",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn off_by_default_and_checked() {
        let c = crate::Config::from_toml("").expect("parses");
        assert!(c.mavlink.udp_listen.is_none());
        c.validate().expect("valid");
        let c = crate::Config::from_toml(
            "[mavlink]\nudp_listen = \"127.0.0.1:14550\"\nmax_systems = 4\nidle_timeout_ms = 1000",
        )
        .expect("parses");
        c.validate().expect("valid");
        for bad in [
            "[mavlink]\nmax_systems = 0",
            "[mavlink]\nidle_timeout_ms = 1",
            "[mavlink]\nagent_prefix = \"bad id/\"",
        ] {
            let e = crate::Config::from_toml(bad)
                .expect("parses")
                .validate()
                .expect_err(bad);
            assert!(e.to_string().contains("mavlink."), "{e}");
        }
        assert!(crate::Config::from_toml("[mavlink]\nudp_lisen = \"x\"").is_err());
    }
}
