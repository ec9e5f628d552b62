//! A simulated vehicle for trying `contrail-agent` without an autopilot: sends the test suite's
//! realistic MAVLink mix (HEARTBEAT, SYS_STATUS, ATTITUDE 50 Hz, GLOBAL_POSITION_INT, GPS_RAW_INT,
//! VFR_HUD, ... with arming cycles) over UDP in real time, like `sim_vehicle.py --out=udp:...`.
//! It answers `COMMAND_LONG`s sent back to it (`contrail-agent`'s `mavlink_command_long`) with a
//! `COMMAND_ACK`: `MAV_RESULT_ACCEPTED`, except `MAV_CMD_NAV_RETURN_TO_LAUNCH` (20), which it
//! denies.
//!
//! ```text
//! cargo run -p contrail-agent --example sim_vehicle -- 127.0.0.1:14550 [seconds] [system id]
//! ```

use std::time::{Duration, Instant};

use contrail_testsupport::SimVehicle;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_else(|| "127.0.0.1:14550".into());
    let seconds: u64 = args.next().map_or(Ok(60), |s| s.parse())?;
    let system_id: u8 = args.next().map_or(Ok(1), |s| s.parse())?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(&target)?;
    socket.set_nonblocking(true)?;
    let mut vehicle = SimVehicle::new(system_id);
    vehicle.command_acks.insert(
        20,
        Some(mavlink::dialects::ardupilotmega::MavResult::MAV_RESULT_DENIED),
    );
    let mut buf = vec![0u8; 2048];
    let start = Instant::now();
    let mut sent = 0u64;
    // 20 ms of virtual time per step, paced against the wall clock.
    while vehicle.now_ms() < seconds * 1000 {
        for packet in vehicle.advance(20) {
            send(&socket, &packet.raw)?;
            sent += 1;
        }
        // Packets from the agent (its COMMAND_LONGs): answered with COMMAND_ACKs.
        while let Ok(n) = socket.recv(&mut buf) {
            for ack in vehicle.receive(&buf[..n]) {
                eprintln!(
                    "answered a COMMAND_LONG: {} bytes of COMMAND_ACK",
                    ack.raw.len()
                );
                send(&socket, &ack.raw)?;
            }
        }
        let due = start + Duration::from_millis(vehicle.now_ms());
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    eprintln!("sent {sent} MAVLink packets to {target} in {seconds} s");
    Ok(())
}

/// Sends on the non-blocking socket; a full buffer or nobody listening yet loses the packet, as
/// UDP does.
fn send(socket: &std::net::UdpSocket, bytes: &[u8]) -> std::io::Result<()> {
    match socket.send(bytes) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}
