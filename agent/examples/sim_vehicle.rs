//! A simulated vehicle for trying `contrail-agent` without an autopilot: sends the test suite's
//! realistic MAVLink mix (HEARTBEAT, SYS_STATUS, ATTITUDE 50 Hz, GLOBAL_POSITION_INT, GPS_RAW_INT,
//! VFR_HUD, ... with arming cycles) over UDP in real time, like `sim_vehicle.py --out=udp:...`.
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
    let mut vehicle = SimVehicle::new(system_id);
    let start = Instant::now();
    let mut sent = 0u64;
    // 20 ms of virtual time per step, paced against the wall clock.
    while vehicle.now_ms() < seconds * 1000 {
        for packet in vehicle.advance(20) {
            socket.send(&packet.raw)?;
            sent += 1;
        }
        let due = start + Duration::from_millis(vehicle.now_ms());
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    eprintln!("sent {sent} MAVLink packets to {target} in {seconds} s");
    Ok(())
}
