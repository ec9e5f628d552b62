//! From packets to frames: filters by name, per-message rate limits, the vehicle's clock,
//! flight ids per arming cycle and identity, then the agent library's spool.
//!
//! One frame per MAVLink message: `kind` = message id, payload = the raw packet,
//! `content_type` = `application/x-mavlink`, `device_time` = the vehicle's time in
//! microseconds (Unix time once the vehicle sent `SYSTEM_TIME` with a Unix clock, else time
//! since its boot; 0 until it sent a time), `flight_id` = a new id at every arming (HEARTBEAT's
//! armed flag) until disarming, empty while disarmed, unless a fixed one is configured.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contrail_protocol::client::{Agent, ClientError, OutFrame};
use contrail_protocol::proto::DroneIdentity;
use mavlink::dialects::ardupilotmega::{MavAutopilot, MavMessage, MavModeFlag};
use mavlink::Message;
use tokio::sync::mpsc;

use crate::framer::Packet;
use crate::stats::{DropCause, Stats};

/// The content type of MAVLink frames.
pub const CONTENT_TYPE: &str = "application/x-mavlink";

/// Vehicles (system ids) tracked at once; more are served without clock or flight id.
const MAX_VEHICLES: usize = 16;
/// Rate-limit slots (message, system, component) tracked at once.
const MAX_RATE_SLOTS: usize = 4_096;

/// Settings of the pipeline.
#[derive(Debug, Clone, Default)]
pub struct PipelineConfig {
    /// This agent's id (flight ids start with it).
    pub agent_id: String,
    /// A fixed flight id.
    pub flight_id: Option<String>,
    /// Only these ids (empty: all).
    pub include: Vec<u32>,
    /// Never these ids.
    pub exclude: Vec<u32>,
    /// Minimum interval per message id.
    pub rate_limits: BTreeMap<u32, Duration>,
}

/// What the pipeline knows of one vehicle.
#[derive(Debug, Default)]
struct Vehicle {
    armed: bool,
    flight_id: String,
    /// Unix µs minus boot µs, from SYSTEM_TIME.
    unix_offset_us: Option<u64>,
    /// Latest time since boot the vehicle reported, ms.
    boot_ms: Option<u32>,
    identity: DroneIdentity,
}

impl Vehicle {
    fn device_time(&self) -> u64 {
        match (self.boot_ms, self.unix_offset_us) {
            (Some(ms), Some(off)) => off + u64::from(ms) * 1000,
            (Some(ms), None) => u64::from(ms) * 1000,
            (None, _) => 0,
        }
    }
}

/// The pipeline's state (one task owns it).
pub struct Pipeline {
    config: PipelineConfig,
    vehicles: HashMap<u8, Vehicle>,
    next_allowed: HashMap<(u32, u8, u8), Instant>,
    stats: Arc<Stats>,
    /// The identity last handed to the agent library.
    identity_sent: Option<DroneIdentity>,
    /// Names of the messages accepted or not since the last [`Pipeline::take_names`].
    names: Vec<&'static str>,
}

/// A packet accepted as a frame.
#[derive(Debug)]
pub struct Accepted {
    /// The packet.
    pub packet: Packet,
    /// Vehicle time.
    pub device_time: u64,
    /// Flight id.
    pub flight_id: String,
}

fn time_boot_ms(msg: &MavMessage) -> Option<u32> {
    use MavMessage as M;
    Some(match msg {
        M::ATTITUDE(d) => d.time_boot_ms,
        M::ATTITUDE_QUATERNION(d) => d.time_boot_ms,
        M::GLOBAL_POSITION_INT(d) => d.time_boot_ms,
        M::LOCAL_POSITION_NED(d) => d.time_boot_ms,
        M::SYSTEM_TIME(d) => d.time_boot_ms,
        M::RC_CHANNELS(d) => d.time_boot_ms,
        M::SCALED_IMU(d) => d.time_boot_ms,
        M::SCALED_IMU2(d) => d.time_boot_ms,
        M::SCALED_PRESSURE(d) => d.time_boot_ms,
        M::NAMED_VALUE_FLOAT(d) => d.time_boot_ms,
        M::POSITION_TARGET_GLOBAL_INT(d) => d.time_boot_ms,
        M::ATTITUDE_TARGET(d) => d.time_boot_ms,
        _ => return None,
    })
}

/// `major.minor.patch` of a MAVLink software version word (the type byte is dropped).
fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v >> 24, (v >> 16) & 0xFF, (v >> 8) & 0xFF)
}

fn now_unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

impl Pipeline {
    /// A pipeline counting into `stats`.
    pub fn new(config: PipelineConfig, stats: Arc<Stats>) -> Self {
        Pipeline {
            config,
            vehicles: HashMap::new(),
            next_allowed: HashMap::new(),
            stats,
            identity_sent: None,
            names: Vec::new(),
        }
    }

    /// Looks at one packet: updates the vehicle's state, then filters and rate-limits it.
    pub fn accept(&mut self, packet: Packet, now: Instant) -> Option<Accepted> {
        let msg = packet.parse();
        if let Some(m) = &msg {
            self.names.push(m.message_name());
        }
        let sys = packet.system_id;
        if !self.vehicles.contains_key(&sys) && self.vehicles.len() < MAX_VEHICLES {
            self.vehicles.insert(sys, Vehicle::default());
        }
        if let (Some(v), Some(m)) = (self.vehicles.get_mut(&sys), msg.as_ref()) {
            Self::observe(v, sys, m, &self.config);
        }
        let id = packet.msg_id;
        if (!self.config.include.is_empty() && !self.config.include.contains(&id))
            || self.config.exclude.contains(&id)
        {
            self.stats.count_drop(DropCause::Filtered, 1);
            return None;
        }
        if let Some(every) = self.config.rate_limits.get(&id) {
            let key = (id, sys, packet.component_id);
            if self.next_allowed.len() >= MAX_RATE_SLOTS && !self.next_allowed.contains_key(&key) {
                self.next_allowed.clear();
            }
            let next = self.next_allowed.entry(key).or_insert(now);
            if now < *next {
                self.stats.count_drop(DropCause::RateLimited, 1);
                return None;
            }
            // Keeps the average rate without letting a pause buy a burst.
            *next = (*next + *every).max(now);
        }
        let (device_time, flight_id) = match self.vehicles.get(&sys) {
            Some(v) => (v.device_time(), v.flight_id.clone()),
            None => (0, String::new()),
        };
        Some(Accepted {
            packet,
            device_time,
            flight_id: self.config.flight_id.clone().unwrap_or(flight_id),
        })
    }

    fn observe(v: &mut Vehicle, sys: u8, m: &MavMessage, config: &PipelineConfig) {
        if let Some(ms) = time_boot_ms(m) {
            v.boot_ms = Some(ms);
        }
        match m {
            MavMessage::SYSTEM_TIME(t) if t.time_unix_usec > 0 => {
                v.unix_offset_us = t
                    .time_unix_usec
                    .checked_sub(u64::from(t.time_boot_ms) * 1000);
            }
            MavMessage::HEARTBEAT(hb) if hb.autopilot != MavAutopilot::MAV_AUTOPILOT_INVALID => {
                let armed = hb
                    .base_mode
                    .contains(MavModeFlag::MAV_MODE_FLAG_SAFETY_ARMED);
                if armed && !v.armed {
                    v.flight_id = format!("{}-{sys}-{}", config.agent_id, now_unix_ms());
                    tracing::info!(system = sys, flight_id = %v.flight_id, "vehicle armed: new flight");
                } else if !armed && v.armed {
                    tracing::info!(system = sys, flight_id = %v.flight_id, "vehicle disarmed");
                    v.flight_id.clear();
                }
                v.armed = armed;
                v.identity.vehicle_type = format!("{:?}", hb.mavtype);
                v.identity.autopilot = format!("{:?}", hb.autopilot);
                v.identity.mavlink_system_id = u32::from(sys);
            }
            MavMessage::AUTOPILOT_VERSION(av) => {
                v.identity.firmware_version = version_string(av.flight_sw_version);
                // uid2 is a MAVLink 2 extension field the dialect build here leaves out.
                v.identity.hardware_uid = if av.uid != 0 {
                    format!("{:016x}", av.uid)
                } else {
                    String::new()
                };
                v.identity.mavlink_system_id = u32::from(sys);
            }
            _ => {}
        }
    }

    /// Names of the messages seen since the last call.
    pub fn take_names(&mut self) -> std::vec::Drain<'_, &'static str> {
        self.names.drain(..)
    }

    /// The identity to announce, if it changed since last asked (the first vehicle that sent
    /// a HEARTBEAT from an autopilot).
    pub fn identity_update(&mut self) -> Option<DroneIdentity> {
        let v = self
            .vehicles
            .values()
            .filter(|v| !v.identity.vehicle_type.is_empty())
            .min_by_key(|v| v.identity.mavlink_system_id)?;
        if self.identity_sent.as_ref() == Some(&v.identity) {
            return None;
        }
        self.identity_sent = Some(v.identity.clone());
        Some(v.identity.clone())
    }
}

/// Reads queued packets and sends them as frames until the queue closes or the agent stops
/// for good. Returns the agent's terminal error, if that is why it ended.
pub async fn run(
    mut rx: mpsc::Receiver<Packet>,
    mut pipeline: Pipeline,
    agent: Arc<Agent>,
    stats: Arc<Stats>,
) -> Result<(), ClientError> {
    let mut packets = Vec::with_capacity(256);
    let mut batch: Vec<Accepted> = Vec::with_capacity(256);
    loop {
        packets.clear();
        if rx.recv_many(&mut packets, 256).await == 0 {
            return Ok(());
        }
        let now = Instant::now();
        batch.clear();
        for p in packets.drain(..) {
            if let Some(a) = pipeline.accept(p, now) {
                batch.push(a);
            }
        }
        stats.received(pipeline.take_names());
        if let Some(identity) = pipeline.identity_update() {
            tracing::info!(?identity, "vehicle identity");
            agent.set_identity(identity);
        }
        let mut done = 0;
        while done < batch.len() {
            let rest = &batch[done..];
            // Frames are built from their seq: the library may ask for the same seq again
            // (after making room in a full spool).
            let mut first: Option<u64> = None;
            let res = agent
                .send_many(rest.len(), |seq| {
                    let first = *first.get_or_insert(seq);
                    let i = (seq.saturating_sub(first) as usize).min(rest.len() - 1);
                    let a = &rest[i];
                    OutFrame {
                        kind: a.packet.msg_id,
                        flight_id: &a.flight_id,
                        payload: &a.packet.raw,
                        content_type: CONTENT_TYPE,
                        device_time: a.device_time,
                    }
                })
                .await;
            match res {
                Ok((_, n)) => {
                    stats
                        .frames
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    done += n;
                }
                Err(ClientError::Spool(e)) => {
                    tracing::error!(error = %e, "spool failed; messages dropped");
                    stats.count_drop(DropCause::SpoolError, (batch.len() - done) as u64);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framer::Framer;
    use contrail_testsupport::SimVehicle;

    fn packets(ms: u64) -> Vec<Packet> {
        let mut f = Framer::new();
        for p in SimVehicle::new(3).advance(ms) {
            f.push(&p.raw);
        }
        std::iter::from_fn(|| f.next_packet()).collect()
    }

    #[test]
    fn identity_comes_from_heartbeat_and_autopilot_version_once_per_change() {
        let mut pl = Pipeline::new(
            PipelineConfig {
                agent_id: "d".into(),
                ..Default::default()
            },
            Arc::new(Stats::default()),
        );
        let now = Instant::now();
        for p in packets(100) {
            pl.accept(p, now);
        }
        let id = pl.identity_update().expect("an identity");
        assert_eq!(id.vehicle_type, "MAV_TYPE_QUADROTOR");
        assert_eq!(id.autopilot, "MAV_AUTOPILOT_ARDUPILOTMEGA");
        assert_eq!(id.firmware_version, "4.5.7");
        assert_eq!(id.mavlink_system_id, 3);
        assert_eq!(id.hardware_uid, "00421337deadbeef");
        assert_eq!(pl.identity_update(), None, "unchanged: nothing new to send");
    }

    #[test]
    fn a_fixed_flight_id_wins_over_arming_cycles() {
        let mut pl = Pipeline::new(
            PipelineConfig {
                agent_id: "d".into(),
                flight_id: Some("survey-7".into()),
                ..Default::default()
            },
            Arc::new(Stats::default()),
        );
        let now = Instant::now();
        let all: Vec<_> = packets(5_000)
            .into_iter()
            .filter_map(|p| pl.accept(p, now))
            .collect();
        assert!(all.iter().all(|a| a.flight_id == "survey-7"));
    }

    #[test]
    fn versions_read_major_minor_patch() {
        assert_eq!(
            version_string((1 << 24) | (14 << 16) | (3 << 8) | 0xFF),
            "1.14.3"
        );
    }
}
