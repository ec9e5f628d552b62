//! A drone's identity as the relay keeps it: `Register.identity` (and `Register.agent_version`)
//! at registration, replaced by `ControlMessage.identity` updates. Every string is cut to
//! `limits.max_identity_field_bytes`, so a peer cannot grow the status it leaves behind.

use contrail_control::fleet::cap_field;
use contrail_control::{DroneIdentity, SessionStats};
use contrail_protocol::proto;

/// The identity to keep for `identity` sent by an agent of `agent_version`; strings capped at
/// `max` bytes (each cut counted as `contrail_limit_hits_total{limit="identity_field_bytes"}`).
pub fn from_wire(
    identity: &proto::DroneIdentity,
    agent_version: &str,
    max: usize,
) -> DroneIdentity {
    let mut cut = 0u64;
    let mut cap = |s: &str| {
        let (v, was_cut) = cap_field(s, max);
        cut += u64::from(was_cut);
        v
    };
    let out = DroneIdentity {
        vehicle_type: cap(&identity.vehicle_type),
        autopilot: cap(&identity.autopilot),
        firmware_version: cap(&identity.firmware_version),
        mavlink_system_id: identity.mavlink_system_id,
        hardware_uid: cap(&identity.hardware_uid),
        serial_number: cap(&identity.serial_number),
        agent_version: cap(agent_version),
    };
    if cut > 0 {
        metrics::counter!("contrail_limit_hits_total", "limit" => "identity_field_bytes")
            .increment(cut);
    }
    out
}

/// Applies an identity update to a live session (the agent version from `Register` is kept).
pub fn update(stats: &SessionStats, identity: &proto::DroneIdentity, max: usize) {
    let agent_version = stats
        .identity
        .lock()
        .as_ref()
        .map(|i| i.agent_version.clone())
        .unwrap_or_default();
    stats.set_identity(from_wire(identity, &agent_version, max));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_copied_and_capped_and_updates_keep_the_agent_version() {
        let wire = proto::DroneIdentity {
            vehicle_type: "MAV_TYPE_QUADROTOR".into(),
            autopilot: "MAV_AUTOPILOT_ARDUPILOTMEGA".into(),
            firmware_version: "4.5.1".into(),
            mavlink_system_id: 3,
            hardware_uid: "x".repeat(500),
            serial_number: "SN1".into(),
        };
        let id = from_wire(&wire, "agent 1.0", 16);
        assert_eq!(id.vehicle_type, "MAV_TYPE_QUADROT");
        assert_eq!(id.hardware_uid.len(), 16);
        assert_eq!(
            (id.mavlink_system_id, id.serial_number.as_str()),
            (3, "SN1")
        );
        let stats = SessionStats::default();
        stats.set_identity(id);
        update(
            &stats,
            &proto::DroneIdentity {
                firmware_version: "4.6.0".into(),
                ..Default::default()
            },
            16,
        );
        let now = stats.identity.lock().clone().expect("identity");
        assert_eq!(now.firmware_version, "4.6.0");
        assert_eq!(now.agent_version, "agent 1.0");
        assert_eq!(now.vehicle_type, "", "an update replaces the identity");
    }
}
