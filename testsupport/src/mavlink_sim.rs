//! A simulated vehicle for agent tests: the message mix of a real autopilot (HEARTBEAT 1 Hz,
//! SYS_STATUS 1 Hz, SYSTEM_TIME 1 Hz, ATTITUDE 50 Hz, GLOBAL_POSITION_INT 10 Hz, GPS_RAW_INT
//! 5 Hz, VFR_HUD 10 Hz, AUTOPILOT_VERSION every 5 s), arming and disarming on a schedule, on a
//! virtual clock (tests pace the packets themselves), built with the `mavlink` crate. Some
//! packets go out as MAVLink 1 and some as signed MAVLink 2 (a signature trailer of fixed
//! bytes: receivers pass it through), as a mixed fleet does.
//!
//! It also answers commands: [`SimVehicle::receive`] takes bytes sent to the vehicle, and
//! answers each `COMMAND_LONG` addressed to it with a `COMMAND_ACK` whose result
//! [`SimVehicle::command_acks`] (per command number) or [`SimVehicle::default_ack`] chooses
//! (`None`: no answer at all).
//!
//! Also: [`corrupt_crc`] and [`garbage`] for framing tests, and [`Pty`], a pseudo-terminal
//! pair standing in for a serial port.

use mavlink::dialects::ardupilotmega as apm;
use mavlink::MavHeader;

/// MAVLink's X.25 checksum (an independent copy of the receiver's).
pub fn x25(data: &[u8], extra: u8) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data.iter().chain(std::iter::once(&extra)) {
        let mut t = b ^ (crc & 0xFF) as u8;
        t ^= t << 4;
        crc = (crc >> 8) ^ (u16::from(t) << 8) ^ (u16::from(t) << 3) ^ (u16::from(t) >> 4);
    }
    crc
}

/// One packet the vehicle sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPacket {
    /// The bytes on the wire.
    pub raw: Vec<u8>,
    /// Message id.
    pub msg_id: u32,
    /// Message name.
    pub name: &'static str,
    /// Virtual time it was sent, ms since boot.
    pub t_ms: u64,
    /// Whether the vehicle was armed then.
    pub armed: bool,
}

/// A simulated vehicle.
#[derive(Debug, Clone)]
pub struct SimVehicle {
    /// MAVLink system id.
    pub system_id: u8,
    /// Every `v1_every`-th packet (of ids < 256) is MAVLink 1; 0 never.
    pub v1_every: u64,
    /// Every `signed_every`-th MAVLink 2 packet carries a signature; 0 never.
    pub signed_every: u64,
    /// Armed during the second half of every cycle of this many ms; 0 never armed.
    pub arm_cycle_ms: u64,
    /// The vehicle's Unix time at boot, µs.
    pub boot_unix_us: u64,
    /// The `COMMAND_ACK` result per `MAV_CMD` number (`None`: never answered).
    pub command_acks: std::collections::BTreeMap<u16, Option<apm::MavResult>>,
    /// The result for commands not in `command_acks` (`None`: never answered).
    pub default_ack: Option<apm::MavResult>,
    /// Every `COMMAND_LONG` addressed to this vehicle, in order.
    pub commands_received: Vec<apm::COMMAND_LONG_DATA>,
    t_ms: u64,
    seq: u8,
    count: u64,
}

impl SimVehicle {
    /// Vehicle `system_id`: a quadrotor on ArduPilot firmware 4.5.7, arming every 4 s for 2 s,
    /// every 7th packet MAVLink 1 and every 5th MAVLink 2 packet signed.
    pub fn new(system_id: u8) -> Self {
        SimVehicle {
            system_id,
            v1_every: 7,
            signed_every: 5,
            arm_cycle_ms: 4_000,
            boot_unix_us: 1_764_000_000_000_000,
            command_acks: std::collections::BTreeMap::new(),
            default_ack: Some(apm::MavResult::MAV_RESULT_ACCEPTED),
            commands_received: Vec::new(),
            t_ms: 0,
            seq: 0,
            count: 0,
        }
    }

    /// Whether the vehicle is armed at `t_ms`.
    pub fn armed_at(&self, t_ms: u64) -> bool {
        self.arm_cycle_ms > 0 && t_ms % self.arm_cycle_ms >= self.arm_cycle_ms / 2
    }

    /// The messages due at `t` (ms), in a fixed order.
    fn due(&self, t: u64) -> Vec<apm::MavMessage> {
        let mut out = Vec::new();
        let armed = self.armed_at(t);
        let boot = t as u32;
        if t.is_multiple_of(1000) {
            let mut base = apm::MavModeFlag::MAV_MODE_FLAG_CUSTOM_MODE_ENABLED;
            if armed {
                base |= apm::MavModeFlag::MAV_MODE_FLAG_SAFETY_ARMED;
            }
            out.push(apm::MavMessage::HEARTBEAT(apm::HEARTBEAT_DATA {
                custom_mode: 4,
                mavtype: apm::MavType::MAV_TYPE_QUADROTOR,
                autopilot: apm::MavAutopilot::MAV_AUTOPILOT_ARDUPILOTMEGA,
                base_mode: base,
                system_status: if armed {
                    apm::MavState::MAV_STATE_ACTIVE
                } else {
                    apm::MavState::MAV_STATE_STANDBY
                },
                mavlink_version: 3,
            }));
            out.push(apm::MavMessage::SYS_STATUS(apm::SYS_STATUS_DATA {
                voltage_battery: 15_800 - (t / 1000) as u16,
                current_battery: if armed { 1_250 } else { 40 },
                battery_remaining: 90,
                load: 350,
                ..Default::default()
            }));
            out.push(apm::MavMessage::SYSTEM_TIME(apm::SYSTEM_TIME_DATA {
                time_unix_usec: self.boot_unix_us + t * 1000,
                time_boot_ms: boot,
            }));
        }
        if t.is_multiple_of(5000) {
            out.push(apm::MavMessage::AUTOPILOT_VERSION(
                apm::AUTOPILOT_VERSION_DATA {
                    flight_sw_version: (4 << 24) | (5 << 16) | (7 << 8) | 0xFF,
                    uid: 0x0042_1337_dead_beef,
                    vendor_id: 0x1209,
                    product_id: 0x5740,
                    ..Default::default()
                },
            ));
        }
        if t.is_multiple_of(20) {
            let a = t as f32 / 1000.0;
            out.push(apm::MavMessage::ATTITUDE(apm::ATTITUDE_DATA {
                time_boot_ms: boot,
                roll: (a * 0.7).sin() * 0.2,
                pitch: (a * 0.5).cos() * 0.1,
                yaw: a % std::f32::consts::TAU,
                rollspeed: 0.01,
                pitchspeed: -0.02,
                yawspeed: 0.03,
            }));
        }
        if t.is_multiple_of(100) {
            out.push(apm::MavMessage::GLOBAL_POSITION_INT(
                apm::GLOBAL_POSITION_INT_DATA {
                    time_boot_ms: boot,
                    lat: 473_977_420 + t as i32,
                    lon: 85_455_940 - t as i32,
                    alt: 488_000,
                    relative_alt: if armed { 25_000 } else { 0 },
                    vx: 120,
                    vy: -40,
                    vz: 0,
                    hdg: 9_000,
                },
            ));
            out.push(apm::MavMessage::VFR_HUD(apm::VFR_HUD_DATA {
                airspeed: 5.5,
                groundspeed: 5.1,
                alt: 25.0,
                climb: 0.1,
                heading: 90,
                throttle: if armed { 55 } else { 0 },
            }));
        }
        if t.is_multiple_of(200) {
            out.push(apm::MavMessage::GPS_RAW_INT(apm::GPS_RAW_INT_DATA {
                time_usec: t * 1000,
                fix_type: apm::GpsFixType::GPS_FIX_TYPE_3D_FIX,
                lat: 473_977_420,
                lon: 85_455_940,
                alt: 488_000,
                eph: 90,
                epv: 120,
                vel: 510,
                cog: 9_000,
                satellites_visible: 14,
            }));
        }
        out
    }

    /// Encodes one message as the next packet.
    fn encode(&mut self, msg: &apm::MavMessage) -> Vec<u8> {
        use mavlink::Message;
        let header = MavHeader {
            system_id: u32::from(self.system_id),
            component_id: 1,
            sequence: self.seq,
        };
        self.seq = self.seq.wrapping_add(1);
        self.count += 1;
        let mut out = Vec::new();
        if self.v1_every > 0 && self.count.is_multiple_of(self.v1_every) && msg.message_id() < 256 {
            let _ = mavlink::write_v1_msg(&mut out, header, msg);
            return out;
        }
        let _ = mavlink::write_v2_msg(&mut out, header, msg);
        if self.signed_every > 0 && self.count.is_multiple_of(self.signed_every) {
            // Signed: incompat flag 0x01, the checksum over the new header, then link id,
            // 48-bit timestamp and a 48-bit signature (fixed bytes: nobody here checks it).
            out[2] |= 0x01;
            let body_end = out.len() - 2;
            let crc = x25(
                &out[1..body_end],
                apm::MavMessage::extra_crc(msg.message_id()),
            );
            out[body_end..].copy_from_slice(&crc.to_le_bytes());
            out.push(1);
            out.extend_from_slice(&(self.t_ms * 100).to_le_bytes()[..6]);
            out.extend_from_slice(&[0xA5, 0x5A, 0xC3, 0x3C, 0x99, 0x66]);
        }
        out
    }

    /// The packets of the next `ms` milliseconds, in order.
    pub fn advance(&mut self, ms: u64) -> Vec<SimPacket> {
        use mavlink::Message;
        let mut out = Vec::new();
        for _ in 0..ms {
            let t = self.t_ms;
            let armed = self.armed_at(t);
            for msg in self.due(t) {
                let raw = self.encode(&msg);
                out.push(SimPacket {
                    raw,
                    msg_id: msg.message_id(),
                    name: msg.message_name(),
                    t_ms: t,
                    armed,
                });
            }
            self.t_ms += 1;
        }
        out
    }

    /// Virtual time, ms since boot.
    pub fn now_ms(&self) -> u64 {
        self.t_ms
    }

    /// Takes bytes sent to the vehicle (whole MAVLink 1 or 2 packets, as in a datagram) and
    /// returns its answers: a `COMMAND_ACK` for each `COMMAND_LONG` addressed to this system
    /// (or to system 0) that [`command_acks`](Self::command_acks) / [`default_ack`](Self::default_ack)
    /// say to answer. Packets that do not check are ignored.
    pub fn receive(&mut self, bytes: &[u8]) -> Vec<SimPacket> {
        self.receive_some(bytes).0
    }

    /// Like [`receive`](Self::receive) for a byte stream: takes the whole packets from the front
    /// of `pending` and leaves an incomplete last one there for the next read.
    pub fn receive_stream(&mut self, pending: &mut Vec<u8>) -> Vec<SimPacket> {
        let (out, used) = self.receive_some(pending);
        pending.drain(..used);
        out
    }

    /// The answers, and how many bytes were used (up to an incomplete packet at the end).
    fn receive_some(&mut self, all: &[u8]) -> (Vec<SimPacket>, usize) {
        use mavlink::Message;
        let mut out = Vec::new();
        let mut bytes = all;
        while let Some(start) = bytes.iter().position(|b| *b == 0xFD || *b == 0xFE) {
            bytes = &bytes[start..];
            let v2 = bytes[0] == 0xFD;
            let header = if v2 { 10 } else { 6 };
            if bytes.len() < header + 2 {
                break;
            }
            let len = usize::from(bytes[1]);
            let signed = v2 && bytes[2] & 1 == 1;
            let total = header + len + 2 + if signed { 13 } else { 0 };
            if bytes.len() < total {
                break;
            }
            let id = if v2 {
                u32::from(bytes[7]) | u32::from(bytes[8]) << 8 | u32::from(bytes[9]) << 16
            } else {
                u32::from(bytes[5])
            };
            let body_end = header + len;
            let sum = u16::from_le_bytes([bytes[body_end], bytes[body_end + 1]]);
            let version = if v2 {
                mavlink::MavlinkVersion::V2
            } else {
                mavlink::MavlinkVersion::V1
            };
            let msg = (x25(&bytes[1..body_end], apm::MavMessage::extra_crc(id)) == sum)
                .then(|| apm::MavMessage::parse(version, id, &bytes[header..body_end]).ok())
                .flatten();
            bytes = &bytes[total..];
            let Some(apm::MavMessage::COMMAND_LONG(c)) = msg else {
                continue;
            };
            if c.target_system != self.system_id && c.target_system != 0 {
                continue;
            }
            let number = c.command as u16;
            let result = match self.command_acks.get(&number) {
                Some(r) => *r,
                None => self.default_ack,
            };
            self.commands_received.push(c.clone());
            let Some(result) = result else { continue };
            let ack = apm::MavMessage::COMMAND_ACK(apm::COMMAND_ACK_DATA {
                command: c.command,
                result,
            });
            let raw = self.encode(&ack);
            out.push(SimPacket {
                raw,
                msg_id: ack.message_id(),
                name: ack.message_name(),
                t_ms: self.t_ms,
                armed: self.armed_at(self.t_ms),
            });
        }
        if !bytes.is_empty() && bytes[0] != 0xFD && bytes[0] != 0xFE {
            bytes = &[];
        }
        (out, all.len() - bytes.len())
    }
}

/// A copy of `packet` with its checksum broken.
pub fn corrupt_crc(packet: &[u8]) -> Vec<u8> {
    let mut p = packet.to_vec();
    let i = if p[0] == 0xFD && p[2] & 1 == 1 {
        p.len() - 13 - 1
    } else {
        p.len() - 1
    };
    p[i] ^= 0x5A;
    p
}

/// `n` bytes of seeded junk with start bytes (0xFD, 0xFE) sprinkled in, never forming a whole
/// packet that checks.
pub fn garbage(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 17 == 3 {
                0xFD
            } else if i % 23 == 5 {
                0xFE
            } else {
                x as u8
            }
        })
        .collect()
}

/// A pseudo-terminal pair: the agent opens [`Pty::path`] as its serial port; the test writes
/// to [`Pty::master`]. The slave side is held open (in raw mode) so writes never fail before
/// the agent opens it.
#[derive(Debug)]
pub struct Pty {
    /// The master side: what the test writes.
    pub master: std::fs::File,
    /// The slave's path (`/dev/pts/N`).
    pub path: std::path::PathBuf,
    _slave: std::fs::File,
}

impl Pty {
    /// Opens a pair.
    pub fn open() -> std::io::Result<Pty> {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname(&master, Vec::new())?;
        let path = std::path::PathBuf::from(name.to_string_lossy().into_owned());
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        let mut t = rustix::termios::tcgetattr(&slave)?;
        t.make_raw();
        rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &t)?;
        Ok(Pty {
            master: std::fs::File::from(master),
            path,
            _slave: slave,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_long_is_answered_with_the_configured_ack() {
        use mavlink::Message;
        let mut v = SimVehicle::new(3);
        v.command_acks
            .insert(20, Some(apm::MavResult::MAV_RESULT_DENIED));
        v.command_acks.insert(21, None);
        let send = |cmd: apm::MavCmd, target: u8| {
            let msg = apm::MavMessage::COMMAND_LONG(apm::COMMAND_LONG_DATA {
                command: cmd,
                target_system: target,
                param1: 1.0,
                ..Default::default()
            });
            let mut out = Vec::new();
            let header = MavHeader {
                system_id: 254,
                component_id: 191,
                sequence: 0,
            };
            let _ = mavlink::write_v2_msg(&mut out, header, &msg);
            out
        };
        let ack = |pkts: &[SimPacket]| -> Option<apm::COMMAND_ACK_DATA> {
            let p = pkts.first()?;
            let (v, off) = if p.raw[0] == 0xFD {
                (mavlink::MavlinkVersion::V2, 10)
            } else {
                (mavlink::MavlinkVersion::V1, 6)
            };
            let len = usize::from(p.raw[1]);
            match apm::MavMessage::parse(v, p.msg_id, &p.raw[off..off + len]) {
                Ok(apm::MavMessage::COMMAND_ACK(a)) => Some(a),
                _ => None,
            }
        };
        let a =
            ack(&v.receive(&send(apm::MavCmd::MAV_CMD_COMPONENT_ARM_DISARM, 3))).expect("an ack");
        assert_eq!(a.result, apm::MavResult::MAV_RESULT_ACCEPTED);
        assert_eq!(a.command, apm::MavCmd::MAV_CMD_COMPONENT_ARM_DISARM);
        let a =
            ack(&v.receive(&send(apm::MavCmd::MAV_CMD_NAV_RETURN_TO_LAUNCH, 3))).expect("an ack");
        assert_eq!(a.result, apm::MavResult::MAV_RESULT_DENIED);
        assert!(v
            .receive(&send(apm::MavCmd::MAV_CMD_NAV_LAND, 3))
            .is_empty());
        assert!(v
            .receive(&send(apm::MavCmd::MAV_CMD_COMPONENT_ARM_DISARM, 9))
            .is_empty());
        assert_eq!(
            v.commands_received.len(),
            3,
            "the one for system 9 is not ours"
        );
        assert_eq!(
            apm::MavMessage::COMMAND_ACK(Default::default()).message_id(),
            77
        );
    }

    #[test]
    fn the_mix_has_the_rates_and_arming_transitions() {
        let mut v = SimVehicle::new(1);
        let pkts = v.advance(10_000);
        let count = |name: &str| pkts.iter().filter(|p| p.name == name).count();
        assert_eq!(count("HEARTBEAT"), 10);
        assert_eq!(count("ATTITUDE"), 500);
        assert_eq!(count("GLOBAL_POSITION_INT"), 100);
        assert_eq!(count("GPS_RAW_INT"), 50);
        assert_eq!(count("AUTOPILOT_VERSION"), 2);
        let armed: Vec<bool> = pkts
            .iter()
            .filter(|p| p.name == "HEARTBEAT")
            .map(|p| p.armed)
            .collect();
        assert!(armed.windows(2).any(|w| !w[0] && w[1]), "{armed:?}");
        assert!(pkts.iter().any(|p| p.raw[0] == 0xFE), "some MAVLink 1");
        assert!(
            pkts.iter().any(|p| p.raw[0] == 0xFD && p.raw[2] & 1 == 1),
            "some signed"
        );
    }
}
