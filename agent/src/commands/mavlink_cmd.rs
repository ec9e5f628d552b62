//! `mavlink_command_long`: a `COMMAND_LONG` sent to the vehicle over the link that last heard
//! its system, then the matching `COMMAND_ACK` (same command, from the target system) awaited.
//!
//! Payload: `{"target_system": 1, "target_component": 1, "command": 400, "params": [1,0,0,0,0,0,0],
//! "confirmation": 0}` (`params`: up to 7 numbers, missing ones 0; `target_component` and
//! `confirmation` default 0). The packet is encoded here (MAVLink 2), so any command number
//! goes, including ones the dialect does not name.
//!
//! Result: `MAV_RESULT_ACCEPTED` → succeeded; any other result → failed with the result's number
//! as exit code and `"MAV_RESULT_<NAME> (<n>)"` as message; `IN_PROGRESS` is reported as progress
//! and restarts the wait; no ack within `ack_timeout_ms` → failed
//! `"no COMMAND_ACK within N ms"`.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use contrail_protocol::client::commands::{CommandHandle, Outcome};
use contrail_protocol::proto::CommandStatus;
use mavlink::Message as _;
use serde::Deserialize;

use super::config::MavlinkPolicy;
use crate::framer::{crc, Dialect};
use crate::links::{LinkError, Links};
use crate::stats::{CommandLimit, Stats};

/// MAVLink message id of `COMMAND_LONG`.
pub const COMMAND_LONG: u32 = 76;
/// `MAV_RESULT_IN_PROGRESS`.
const IN_PROGRESS: u8 = 5;

/// The name of a `MAV_RESULT` value.
pub fn result_name(r: u8) -> &'static str {
    match r {
        0 => "MAV_RESULT_ACCEPTED",
        1 => "MAV_RESULT_TEMPORARILY_REJECTED",
        2 => "MAV_RESULT_DENIED",
        3 => "MAV_RESULT_UNSUPPORTED",
        4 => "MAV_RESULT_FAILED",
        5 => "MAV_RESULT_IN_PROGRESS",
        6 => "MAV_RESULT_CANCELLED",
        7 => "MAV_RESULT_COMMAND_LONG_ONLY",
        8 => "MAV_RESULT_COMMAND_INT_ONLY",
        9 => "MAV_RESULT_COMMAND_UNSUPPORTED_MAV_FRAME",
        10 => "MAV_RESULT_NOT_IN_CONTROL",
        _ => "MAV_RESULT_UNKNOWN",
    }
}

/// The payload of a `mavlink_command_long`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandLong {
    /// Vehicle system id (1..=255).
    pub target_system: u8,
    /// Component id (0: all).
    #[serde(default)]
    pub target_component: u8,
    /// `MAV_CMD` number.
    pub command: u16,
    /// param1..param7 (missing ones are 0).
    #[serde(default)]
    pub params: Vec<f32>,
    /// Confirmation counter.
    #[serde(default)]
    pub confirmation: u8,
}

/// Encodes a `COMMAND_LONG` as a MAVLink 2 packet from `(system, component)`.
pub fn encode(c: &CommandLong, seq: u8, system: u8, component: u8) -> Bytes {
    let mut payload = Vec::with_capacity(33);
    for i in 0..7 {
        let p = c.params.get(i).copied().unwrap_or(0.0);
        payload.extend_from_slice(&p.to_le_bytes());
    }
    payload.extend_from_slice(&c.command.to_le_bytes());
    payload.push(c.target_system);
    payload.push(c.target_component);
    payload.push(c.confirmation);
    // MAVLink 2 trims trailing zero bytes (at least one byte stays).
    while payload.len() > 1 && payload.last() == Some(&0) {
        payload.pop();
    }
    let mut out = Vec::with_capacity(12 + payload.len());
    out.extend_from_slice(&[
        0xFD,
        payload.len() as u8,
        0,
        0,
        seq,
        system,
        component,
        COMMAND_LONG as u8,
        0,
        0,
    ]);
    out.extend_from_slice(&payload);
    let sum = crc(&out[1..], Dialect::extra_crc(COMMAND_LONG));
    out.extend_from_slice(&sum.to_le_bytes());
    Bytes::from(out)
}

/// Runs one `mavlink_command_long`.
pub async fn run(
    payload: &[u8],
    policy: &MavlinkPolicy,
    links: &Arc<Links>,
    seq: &AtomicU8,
    stats: &Stats,
    handle: &mut CommandHandle,
) -> Outcome {
    let c: CommandLong = match serde_json::from_slice(payload) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::refused(format!(
                "payload: {e} (expected {{target_system, target_component, command, params: [7 numbers], confirmation}})"
            ))
        }
    };
    if c.target_system == 0 {
        return Outcome::refused("target_system 0 (broadcast) is not supported: name the vehicle");
    }
    if c.params.len() > 7 || c.params.iter().any(|p| p.is_infinite()) {
        return Outcome::refused("params: at most 7 finite numbers");
    }
    if !policy.allow_commands.is_empty() && !policy.allow_commands.contains(&c.command) {
        return Outcome::refused(format!(
            "MAV_CMD {} is not in commands.mavlink.allow_commands",
            c.command
        ));
    }
    let Some(mut wait) = links.wait_ack(c.target_system, c.command) else {
        stats.limit_hit(CommandLimit::AckWaiters);
        return Outcome::refused("too many MAVLink commands waiting for an ack");
    };
    let packet = encode(
        &c,
        seq.fetch_add(1, Relaxed),
        policy.system_id,
        policy.component_id,
    );
    if let Err(e) = links.send(c.target_system, packet) {
        if matches!(e, LinkError::Full(_)) {
            stats.limit_hit(CommandLimit::WriteQueue);
        }
        return Outcome::failed(-1, e.to_string());
    }
    let ms = policy.ack_timeout.as_millis();
    loop {
        let r = tokio::select! {
            r = tokio::time::timeout(policy.ack_timeout, wait.rx.recv()) => r,
            _ = handle.cancelled() => return Outcome::cancelled(),
        };
        match r {
            Ok(Some(IN_PROGRESS)) => {
                let _ = handle.progress(result_name(IN_PROGRESS)).await;
            }
            Ok(Some(result)) => {
                let message = format!("{} ({result})", result_name(result));
                return if result == 0 {
                    Outcome {
                        status: CommandStatus::Succeeded,
                        exit_code: 0,
                        message,
                    }
                } else {
                    Outcome::failed(i32::from(result), message)
                };
            }
            Ok(None) => return Outcome::failed(-1, "the agent is stopping"),
            Err(_) => {
                stats.limit_hit(CommandLimit::AckTimeout);
                return Outcome::failed(-1, format!("no COMMAND_ACK within {ms} ms"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framer::Framer;
    use mavlink::dialects::ardupilotmega::{MavCmd, MavMessage};

    #[test]
    fn the_encoded_command_long_parses_with_the_mavlink_crate() {
        let c = CommandLong {
            target_system: 3,
            target_component: 1,
            command: 400,
            params: vec![1.0, 21196.0],
            confirmation: 0,
        };
        let mut f = Framer::new();
        f.push(&encode(&c, 9, 254, 191));
        let p = f.next_packet().expect("a packet that checks");
        assert_eq!((p.system_id, p.component_id, p.sequence), (254, 191, 9));
        match p.parse() {
            Some(MavMessage::COMMAND_LONG(d)) => {
                assert_eq!(d.command, MavCmd::MAV_CMD_COMPONENT_ARM_DISARM);
                assert_eq!((d.target_system, d.target_component), (3, 1));
                assert_eq!((d.param1, d.param2, d.param3), (1.0, 21196.0, 0.0));
            }
            other => panic!("not a COMMAND_LONG: {other:?}"),
        }
        assert_eq!(
            MavMessage::COMMAND_LONG(Default::default()).message_id(),
            COMMAND_LONG
        );
    }
}
