//! `contrail-loadgen --target mqtt` against a real Mosquitto on a free loopback port, with both
//! MQTT client implementations (`--mqtt-client raw`, the hand-written default, and `rumqttc`),
//! at QoS 0 and 1: the report must account for every message (delivered once each, none lost,
//! QoS 1 all PUBACKed).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use contrail_testsupport::{poll_until, ProcessGuard};

fn mosquitto_bin() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .expect("mosquitto not found (apt-get install -y mosquitto)")
}

/// A Mosquitto listening on 127.0.0.1:<free port>, killed when dropped.
fn start_mosquitto(dir: &Path) -> (ProcessGuard, SocketAddr) {
    for attempt in 0..10 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let conf = dir.join(format!("mosquitto-{attempt}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_inflight_messages 1024\nmax_queued_messages 1000000\n"
            ),
        )
        .expect("write mosquitto.conf");
        let mut guard = ProcessGuard::spawn(
            "mosquitto",
            Command::new(mosquitto_bin())
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )
        .expect("spawn mosquitto");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Up when it accepts a connection; gone when the port was taken meanwhile.
        let up = poll_until(Duration::from_secs(15), "mosquitto to listen", || {
            if TcpStream::connect(addr).is_ok() {
                Some(true)
            } else if !guard.is_running() {
                Some(false)
            } else {
                None
            }
        });
        if up {
            return (guard, addr);
        }
    }
    panic!("mosquitto did not start on any of 10 ports");
}

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("report has no number at {path:?}: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_mqtt_clients_account_for_every_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    for client in ["raw", "rumqttc"] {
        for qos in ["0", "1"] {
            let name = format!("{client} qos{qos}");
            let (mut broker, addr) = start_mosquitto(dir.path());
            let json = dir.path().join(format!("{client}-{qos}.json"));
            let out = tokio::time::timeout(
                Duration::from_secs(120),
                tokio::process::Command::new(env!("CARGO_BIN_EXE_contrail-loadgen"))
                    .args(["--target", "mqtt", "--qos", qos, "--mqtt-client", client])
                    .args(["--relay", &addr.to_string(), "--quiet"])
                    .args(["--agents", "3", "--rate", "max", "--payload", "64"])
                    .args(["--duration", "1s", "--warmup", "0s", "--ramp-up", "0s"])
                    .arg("--json")
                    .arg(&json)
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("loadgen finishes")
            .expect("loadgen runs");
            broker.kill_hard();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{name}: loadgen failed: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("json");
            let target = if client == "raw" {
                format!("mqtt-qos{qos}")
            } else {
                format!("mqtt-qos{qos}-rumqttc")
            };
            assert_eq!(r["target"], serde_json::Value::String(target), "{name}");
            let sent = num(&r, &["totals", "sent"]);
            assert!(sent > 0.0, "{name}: nothing sent: {r}");
            assert_eq!(num(&r, &["sessions_connected"]), 3.0, "{name}: {r}");
            assert_eq!(num(&r, &["totals", "delivered"]), sent, "{name}: {r}");
            assert_eq!(num(&r, &["totals", "lost"]), 0.0, "{name}: {r}");
            assert_eq!(num(&r, &["totals", "duplicates"]), 0.0, "{name}: {r}");
            if qos == "1" {
                assert_eq!(num(&r, &["totals", "acked"]), sent, "{name}: {r}");
            }
            assert!(num(&r, &["e2e_latency", "count"]) > 0.0, "{name}: {r}");
        }
    }
}
