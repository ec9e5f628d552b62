//! `--payload mavlink-mix`: a vehicle's telemetry as an autopilot streams it to a companion
//! computer, as real MAVLink 2 packets (encoded with the `mavlink` crate, `common` dialect).
//!
//! One second of traffic is built once: every message of [`RATES`] at its rate, interleaved by
//! send time (100 messages, mean ≈ 39 bytes). Frames carry `kind` = message id, the packet as
//! payload and content type `application/x-mavlink`, as `contrail-agent` sends them. A run
//! replays the second over and over (frame `seq` picks the slot), so `--rate 100` is the
//! vehicle's own pace and `--rate max` the same mix as fast as credits allow.

use contrail_protocol::client::OutFrame;
use mavlink::dialects::common::{self, MavMessage};
use mavlink::{MavHeader, MavlinkVersion, Message as _};

/// The content type of a frame holding one MAVLink packet.
pub const CONTENT_TYPE: &str = "application/x-mavlink";

/// Messages per second of the mix, by name (sums to 100 Hz).
pub const RATES: &[(&str, u32)] = &[
    ("HEARTBEAT", 1),
    ("SYS_STATUS", 1),
    ("SYSTEM_TIME", 1),
    ("BATTERY_STATUS", 1),
    ("EXTENDED_SYS_STATE", 1),
    ("ATTITUDE", 50),
    ("GLOBAL_POSITION_INT", 10),
    ("LOCAL_POSITION_NED", 10),
    ("VFR_HUD", 10),
    ("GPS_RAW_INT", 5),
    ("RC_CHANNELS", 5),
    ("SERVO_OUTPUT_RAW", 5),
];

/// One second of a vehicle's traffic, encoded.
#[derive(Debug, Clone)]
pub struct MavlinkMix {
    /// (message id, packet) in send order.
    slots: Vec<(u32, Vec<u8>)>,
}

impl MavlinkMix {
    /// The mix of a vehicle with MAVLink system id `system_id`.
    pub fn vehicle(system_id: u8) -> Self {
        // (time within the second in µs, name, nth message of its kind)
        let mut plan: Vec<(u32, &str, u32)> = Vec::new();
        for (i, (name, hz)) in RATES.iter().enumerate() {
            let period = 1_000_000 / hz;
            // Each stream starts at its own phase (golden-ratio steps), as an autopilot's
            // schedulers do, so streams of equal rate do not fire together.
            let phase = (i as f64 * 0.618_034).fract();
            let offset = (f64::from(period) * phase) as u32;
            for k in 0..*hz {
                plan.push((k * period + offset, name, k));
            }
        }
        plan.sort_by_key(|(t, name, _)| (*t, *name));
        let slots = plan
            .iter()
            .enumerate()
            .map(|(i, (t_us, name, k))| {
                let msg = message(name, *t_us, *k);
                let header = MavHeader {
                    system_id: u32::from(system_id),
                    component_id: 1,
                    sequence: i as u8,
                };
                let mut packet = Vec::with_capacity(64);
                // Writing into a Vec cannot fail.
                let _ = mavlink::write_versioned_msg(&mut packet, MavlinkVersion::V2, header, &msg);
                (msg.message_id(), packet)
            })
            .collect();
        MavlinkMix { slots }
    }

    /// The frame for telemetry seq `seq` (seq 1 is the first slot).
    pub fn frame(&self, seq: u64, device_time: u64) -> OutFrame<'_> {
        let (kind, packet) =
            &self.slots[(seq.saturating_sub(1) % self.slots.len() as u64) as usize];
        OutFrame {
            kind: *kind,
            flight_id: "",
            payload: packet,
            content_type: CONTENT_TYPE,
            device_time,
        }
    }

    /// Messages in one second of the mix.
    #[cfg(test)]
    pub fn messages(&self) -> usize {
        self.slots.len()
    }

    /// Mean packet size, bytes.
    pub fn mean_bytes(&self) -> f64 {
        let total: usize = self.slots.iter().map(|(_, p)| p.len()).sum();
        total as f64 / self.slots.len().max(1) as f64
    }

    /// (message id, packet) in send order.
    #[cfg(test)]
    pub fn slots(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.slots.iter().map(|(k, p)| (*k, p.as_slice()))
    }
}

/// A plausible message `name` at `t_us` into the second (the `k`th of its kind).
fn message(name: &str, t_us: u32, k: u32) -> MavMessage {
    let t_ms = t_us / 1000;
    let phase = t_us as f32 / 1e6 * std::f32::consts::TAU;
    match name {
        "HEARTBEAT" => MavMessage::HEARTBEAT(common::HEARTBEAT_DATA {
            custom_mode: 4,
            mavtype: common::MavType::MAV_TYPE_QUADROTOR,
            autopilot: common::MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA,
            base_mode: common::MavModeFlag::MAV_MODE_FLAG_CUSTOM_MODE_ENABLED
                | common::MavModeFlag::MAV_MODE_FLAG_SAFETY_ARMED,
            system_status: common::MavState::MAV_STATE_ACTIVE,
            mavlink_version: 3,
        }),
        "SYS_STATUS" => MavMessage::SYS_STATUS(common::SYS_STATUS_DATA {
            load: 420,
            voltage_battery: 15_800,
            current_battery: 1_250,
            battery_remaining: 87,
            ..Default::default()
        }),
        "SYSTEM_TIME" => MavMessage::SYSTEM_TIME(common::SYSTEM_TIME_DATA {
            time_unix_usec: 1_764_770_000_000_000 + u64::from(t_us),
            time_boot_ms: 600_000 + t_ms,
        }),
        "BATTERY_STATUS" => MavMessage::BATTERY_STATUS(common::BATTERY_STATUS_DATA {
            current_consumed: 1_830,
            energy_consumed: -1,
            temperature: 3_150,
            voltages: [
                3_950,
                3_950,
                3_950,
                3_950,
                u16::MAX,
                u16::MAX,
                u16::MAX,
                u16::MAX,
                u16::MAX,
                u16::MAX,
            ],
            current_battery: 1_250,
            battery_remaining: 87,
            ..Default::default()
        }),
        "EXTENDED_SYS_STATE" => MavMessage::EXTENDED_SYS_STATE(common::EXTENDED_SYS_STATE_DATA {
            vtol_state: common::MavVtolState::MAV_VTOL_STATE_UNDEFINED,
            landed_state: common::MavLandedState::MAV_LANDED_STATE_IN_AIR,
        }),
        "ATTITUDE" => MavMessage::ATTITUDE(common::ATTITUDE_DATA {
            time_boot_ms: 600_000 + t_ms,
            roll: 0.05 * phase.sin(),
            pitch: -0.03 * phase.cos(),
            yaw: 1.2 + 0.01 * k as f32,
            rollspeed: 0.01 * phase.cos(),
            pitchspeed: 0.005 * phase.sin(),
            yawspeed: 0.002,
        }),
        "GLOBAL_POSITION_INT" => {
            MavMessage::GLOBAL_POSITION_INT(common::GLOBAL_POSITION_INT_DATA {
                time_boot_ms: 600_000 + t_ms,
                lat: 473_977_420 + k as i32 * 3,
                lon: 85_455_940 + k as i32 * 2,
                alt: 488_000,
                relative_alt: 30_000,
                vx: 250,
                vy: 120,
                vz: -5,
                hdg: 6_900,
            })
        }
        "LOCAL_POSITION_NED" => MavMessage::LOCAL_POSITION_NED(common::LOCAL_POSITION_NED_DATA {
            time_boot_ms: 600_000 + t_ms,
            x: 12.5 + 0.25 * k as f32,
            y: -3.0 + 0.12 * k as f32,
            z: -30.0,
            vx: 2.5,
            vy: 1.2,
            vz: 0.05,
        }),
        "VFR_HUD" => MavMessage::VFR_HUD(common::VFR_HUD_DATA {
            airspeed: 2.8,
            groundspeed: 2.77,
            alt: 518.0,
            climb: 0.05,
            heading: 69,
            throttle: 48,
        }),
        "GPS_RAW_INT" => MavMessage::GPS_RAW_INT(common::GPS_RAW_INT_DATA {
            time_usec: 600_000_000 + u64::from(t_us),
            lat: 473_977_420 + k as i32 * 6,
            lon: 85_455_940 + k as i32 * 4,
            alt: 488_000,
            eph: 70,
            epv: 110,
            vel: 277,
            cog: 6_900,
            fix_type: common::GpsFixType::GPS_FIX_TYPE_3D_FIX,
            satellites_visible: 17,
        }),
        "RC_CHANNELS" => MavMessage::RC_CHANNELS(common::RC_CHANNELS_DATA {
            time_boot_ms: 600_000 + t_ms,
            chan1_raw: 1_500,
            chan2_raw: 1_500,
            chan3_raw: 1_480,
            chan4_raw: 1_500,
            chan5_raw: 1_900,
            chancount: 8,
            rssi: 230,
            ..Default::default()
        }),
        "SERVO_OUTPUT_RAW" => MavMessage::SERVO_OUTPUT_RAW(common::SERVO_OUTPUT_RAW_DATA {
            time_usec: (600_000 + t_ms) * 1000,
            servo1_raw: 1_610,
            servo2_raw: 1_590,
            servo3_raw: 1_620,
            servo4_raw: 1_580,
            ..Default::default()
        }),
        _ => MavMessage::HEARTBEAT(common::HEARTBEAT_DATA::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_second_holds_every_message_at_its_rate_as_real_packets() {
        let mix = MavlinkMix::vehicle(7);
        assert_eq!(
            mix.messages(),
            RATES.iter().map(|(_, hz)| *hz as usize).sum::<usize>()
        );
        for (name, hz) in RATES {
            let id = MavMessage::message_id_from_name(name).expect("known name");
            let n = mix.slots().filter(|(k, _)| *k == id).count();
            assert_eq!(n, *hz as usize, "{name}");
        }
        // Every payload is one real packet that the mavlink crate reads back, with kind = id.
        for (i, (kind, packet)) in mix.slots().enumerate() {
            let mut r = mavlink::MavlinkReader::new(packet);
            let (h, msg): (MavHeader, MavMessage) = r.read_any_message().expect("packet parses");
            assert_eq!(msg.message_id(), kind);
            assert_eq!((h.system_id, h.sequence), (7, i as u8));
        }
        // Sizes are MAVLink's, not a fixed payload: ATTITUDE is 28 + 12 bytes (v2 framing).
        let attitude = mix.slots().find(|(k, _)| *k == 30).expect("attitude");
        assert_eq!(attitude.1.len(), 40);
        assert!(
            (30.0..60.0).contains(&mix.mean_bytes()),
            "{}",
            mix.mean_bytes()
        );
    }

    #[test]
    fn attitude_is_spread_through_the_second_and_frames_cycle_by_seq() {
        let mix = MavlinkMix::vehicle(1);
        let kinds: Vec<u32> = (1..=100).map(|s| mix.frame(s, 0).kind).collect();
        // The 50 Hz stream is interleaved with the others: never more than three ATTITUDE
        // messages in a row, nor more than three other messages between two of them.
        assert!(
            kinds.windows(4).all(|w| !w.iter().all(|k| *k == 30)),
            "{kinds:?}"
        );
        assert!(kinds.windows(4).all(|w| w.contains(&30)), "{kinds:?}");
        assert_eq!(mix.frame(1, 0).payload, mix.frame(101, 0).payload);
        assert_eq!(mix.frame(5, 0).content_type, CONTENT_TYPE);
    }
}
