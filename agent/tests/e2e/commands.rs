//! Commands through contrail-agent, end to end: submitted over HTTP to a real relay (memory
//! command store), delivered on the agent's QUIC session, run by contrail-agent's handlers
//! (`run_command`, `mavlink_command_long` against a simulated vehicle over UDP, `update_agent`
//! against a local HTTP server), results and output read back through the relay's API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use contrail_agent::RunningAgent;
use contrail_testsupport::{poll_until_async, SimVehicle};
use serde_json::{json, Value};

use crate::common::*;

const OPERATOR: &str = "operator-token-1";

fn relay_commands_toml() -> String {
    format!(
        "[commands]\nsweep_interval_ms = 100\n\
         [[commands.tokens]]\nname = \"ops\"\nrole = \"operator\"\ntoken = \"{OPERATOR}\"\n"
    )
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(rig: &Rig) -> Api {
        Api {
            base: format!("http://{}", rig.relay.http_addr().expect("relay http")),
            http: reqwest::Client::new(),
        }
    }

    /// Submits; returns the command id.
    async fn submit(&self, drone: &str, kind: &str, payload: Value) -> String {
        let resp = self
            .http
            .post(format!("{}/v1/drones/{drone}/commands", self.base))
            .bearer_auth(OPERATOR)
            .json(&json!({"type": kind, "payload": payload, "timeout_ms": 60_000}))
            .send()
            .await
            .expect("submit");
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.expect("json");
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().expect("id").to_owned()
    }

    async fn get(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/v1/commands/{id}", self.base))
            .bearer_auth(OPERATOR)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }

    /// Waits until the command is final (and its output, which travels on its own stream, has
    /// no gap); returns its view.
    async fn done(&self, id: &str) -> Value {
        poll_until_async(Duration::from_secs(20), "command final", || async {
            let v = self.get(id).await;
            let fin = matches!(
                v["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled" | "expired")
            );
            (fin && v["output"]["gap"] != true).then_some(v)
        })
        .await
    }

    /// Submits and waits.
    async fn run(&self, drone: &str, kind: &str, payload: Value) -> Value {
        let id = self.submit(drone, kind, payload).await;
        self.done(&id).await
    }
}

fn message(v: &Value) -> String {
    v["exit"]["message"].as_str().unwrap_or_default().to_owned()
}

/// Starts contrail-agent with `[commands]` (`commands` appended), one `udpout:` source at
/// `vehicle`, and waits until the relay has its session.
async fn agent(rig: &Rig, id: &str, vehicle: SocketAddr, commands: &str) -> RunningAgent {
    let spool = rig.dir.path().join(format!("spool-{id}"));
    let url = format!("udpout:{vehicle}");
    let toml = rig.agent_toml(id, &[url.as_str()], &spool, commands);
    let a = rig.agent(&toml).await;
    wait_registered(rig, id).await;
    a
}

/// Waits until the relay has agent `id`'s session.
async fn wait_registered(rig: &Rig, id: &str) {
    let relay_http = rig.relay.http_addr().expect("relay http");
    poll_until_async(Duration::from_secs(15), "agent registered", || async {
        let Ok(r) = reqwest::get(format!("http://{relay_http}/v1/drones/{id}")).await else {
            return false;
        };
        r.status().is_success()
    })
    .await;
}

/// Pids of the live processes whose command line (argv joined by spaces) contains `needle`.
fn pids_of(needle: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // Zombies (state Z) are gone for our purpose.
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            (text.contains(needle) && !zombie).then_some(pid)
        })
        .collect()
}

/// Whether a process whose command line contains `needle` is alive.
fn process_alive(needle: &str) -> bool {
    !pids_of(needle).is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_command_runs_allowlisted_programs_and_refuses_the_rest_with_the_reason() {
    let rig = Rig::start_with(&relay_commands_toml()).await;
    let vehicle = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let a = agent(
        &rig,
        "drone-run",
        vehicle.local_addr().expect("addr"),
        "[commands]\nenabled = true\n[commands.run]\nmax_output_bytes = 1000\n\
         [[commands.run.allow]]\nprogram = \"echo\"\nmax_args = 3\narg_pattern = \"[a-z ]*\"\n\
         [[commands.run.allow]]\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 30.0123 & sleep 30.0124; echo never\"]\n\
         [[commands.run.allow]]\nprogram = \"seq\"\n\
         [[commands.run.allow]]\nprogram = \"sleep\"\nargs = [\"30.0456\"]\n",
    )
    .await;
    let api = Api::new(&rig);

    // Allowlisted: stdout stored and read back.
    let v = api
        .run(
            "drone-run",
            "run_command",
            json!({"argv": ["echo", "hello"]}),
        )
        .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["exit"]["code"], 0);
    assert_eq!(v["output"]["stdout"], "hello\n");

    // Not allowlisted, argument rules, unknown type: refused (stored as failed) with the reason.
    for (kind, payload, why) in [
        (
            "run_command",
            json!({"argv": ["rm", "-rf", "/tmp/x"]}),
            "\"rm\" is not allowlisted",
        ),
        (
            "run_command",
            json!({"argv": ["echo", "Hello;", "x"]}),
            "does not match the pattern",
        ),
        (
            "run_command",
            json!({"argv": ["echo", "a", "b", "c", "d"]}),
            "at most 3",
        ),
        (
            "run_command",
            json!({"argv": ["sh", "-c", "id"]}),
            "is not allowed for \"sh\"",
        ),
        ("run_command", json!({"cmd": "echo"}), "payload"),
        ("format_disk", json!({}), "unknown command type"),
    ] {
        let v = api.run("drone-run", kind, payload.clone()).await;
        assert_eq!(v["status"], "failed", "{payload}: {v}");
        assert!(message(&v).contains(why), "{payload}: {v}");
        assert!(
            v["output"]["bytes"].as_u64().unwrap_or(0) == 0,
            "nothing ran: {v}"
        );
    }

    // Timeout: the whole process group is killed (the shell and both sleeps).
    let v = api
        .run(
            "drone-run",
            "run_command",
            json!({"argv": ["sh", "-c", "sleep 30.0123 & sleep 30.0124; echo never"], "timeout_ms": 200}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(message(&v).contains("timed out after 200 ms"), "{v}");
    poll_until_async(Duration::from_secs(5), "the sleeps are gone", async || {
        !process_alive("sleep 30.0123") && !process_alive("sleep 30.0124")
    })
    .await;

    // Output limit: exactly max_output_bytes stored, the process killed, the result says so.
    let v = api
        .run(
            "drone-run",
            "run_command",
            json!({"argv": ["seq", "1", "10000000"]}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(message(&v).contains("output limit of 1000 bytes"), "{v}");
    assert_eq!(v["output"]["bytes"], 1000, "{v}");
    assert!(v["output"]["stdout"]
        .as_str()
        .unwrap_or_default()
        .starts_with("1\n2\n3\n"));
    poll_until_async(Duration::from_secs(5), "seq is gone", async || {
        !process_alive("seq 1 10000000")
    })
    .await;

    // Cancelled through the API while it runs: the process is killed, the result says cancelled.
    let id = api
        .submit(
            "drone-run",
            "run_command",
            json!({"argv": ["sleep", "30.0456"], "timeout_ms": 60_000}),
        )
        .await;
    poll_until_async(Duration::from_secs(10), "sleep runs", async || {
        process_alive("sleep 30.0456")
    })
    .await;
    let resp = api
        .http
        .post(format!("{}/v1/commands/{id}/cancel", api.base))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .expect("cancel");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(api.done(&id).await["status"], "cancelled");
    poll_until_async(Duration::from_secs(5), "sleep is gone", async || {
        !process_alive("sleep 30.0456")
    })
    .await;
    let stats = a.stats().clone();
    poll_until_async(
        Duration::from_secs(5),
        "the agent counted the cancel",
        async || stats.commands_of("run_command", "cancelled") == 1,
    )
    .await;

    // Counted by type and outcome in the agent's /metrics.
    let stats = a.stats().clone();
    assert_eq!(stats.commands_of("run_command", "succeeded"), 1);
    assert_eq!(stats.commands_of("run_command", "refused"), 5);
    assert_eq!(stats.commands_of("other", "refused"), 1);
    assert_eq!(stats.commands_of("run_command", "failed"), 2);
    let http = a.http_addr().expect("agent http");
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(
            "contrail_agent_commands_total{type=\"run_command\",outcome=\"succeeded\"} 1"
        ),
        "{text}"
    );
    // Every name the agent exports is listed in CONTRACTS.md.
    let contracts =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../CONTRACTS.md"))
            .expect("CONTRACTS.md");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        assert!(contracts.contains(name), "{name} is not in CONTRACTS.md");
    }
    a.stop().await;
}

/// The simulated vehicle's end: answers the agent's packets (COMMAND_LONG → COMMAND_ACK) and,
/// on the agent's first heartbeat, sends a second of its own telemetry so the agent learns
/// that system 1 is on this link.
async fn serve_vehicle(
    socket: Arc<tokio::net::UdpSocket>,
    vehicle: Arc<parking_lot::Mutex<SimVehicle>>,
) {
    let mut buf = vec![0u8; 2048];
    let mut introduced = false;
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let replies = {
            let mut v = vehicle.lock();
            let mut out = v.receive(&buf[..n]);
            if !introduced {
                introduced = true;
                out.extend(v.advance(1_000));
            }
            out
        };
        for p in replies {
            let _ = socket.send_to(&p.raw, from).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_long_reaches_the_vehicle_and_its_ack_is_the_result() {
    use mavlink::dialects::ardupilotmega::{MavCmd, MavResult};
    let rig = Rig::start_with(&relay_commands_toml()).await;
    let socket = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let mut sim = SimVehicle::new(1);
    sim.command_acks
        .insert(20, Some(MavResult::MAV_RESULT_DENIED)); // RTL
    sim.command_acks.insert(21, None); // LAND: never answered
    let sim = Arc::new(parking_lot::Mutex::new(sim));
    let server = tokio::spawn(serve_vehicle(socket.clone(), sim.clone()));
    let a = agent(
        &rig,
        "drone-mav",
        socket.local_addr().expect("addr"),
        "[commands]\nenabled = true\n[commands.mavlink]\nack_timeout_ms = 300\n",
    )
    .await;
    poll_until_async(
        Duration::from_secs(10),
        "the agent heard the vehicle",
        async || a.stats().received_of("HEARTBEAT") > 0,
    )
    .await;
    let api = Api::new(&rig);

    let v = api
        .run(
            "drone-mav",
            "mavlink_command_long",
            json!({"target_system": 1, "target_component": 1, "command": 400,
                   "params": [1, 21196, 0, 0, 0, 0, 0]}),
        )
        .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(message(&v), "MAV_RESULT_ACCEPTED (0)");
    {
        let got = &sim.lock().commands_received;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].command, MavCmd::MAV_CMD_COMPONENT_ARM_DISARM);
        assert_eq!((got[0].param1, got[0].param2), (1.0, 21196.0));
        assert_eq!((got[0].target_system, got[0].target_component), (1, 1));
    }

    let v = api
        .run(
            "drone-mav",
            "mavlink_command_long",
            json!({"target_system": 1, "command": 20}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["exit"]["code"], 2);
    assert_eq!(message(&v), "MAV_RESULT_DENIED (2)");

    let v = api
        .run(
            "drone-mav",
            "mavlink_command_long",
            json!({"target_system": 1, "command": 21}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(message(&v), "no COMMAND_ACK within 300 ms");
    assert_eq!(
        sim.lock().commands_received.len(),
        3,
        "the LAND reached the vehicle"
    );

    // A system no link has heard, and a malformed payload.
    let v = api
        .run(
            "drone-mav",
            "mavlink_command_long",
            json!({"target_system": 9, "command": 400}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        message(&v).contains("no MAVLink link has heard system 9"),
        "{v}"
    );
    let v = api
        .run(
            "drone-mav",
            "mavlink_command_long",
            json!({"target_system": 1, "command": "arm"}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(message(&v).starts_with("payload"), "{v}");

    assert_eq!(
        a.stats().commands_of("mavlink_command_long", "succeeded"),
        1
    );
    assert_eq!(a.stats().commands_of("mavlink_command_long", "failed"), 3);
    a.stop().await;
    server.abort();
}

/// Answers one HTTP/1.1 request on `s`: `GET /agent` gets `body` (with a `Content-Length` of
/// `claimed` bytes, so a test can lie), anything else 404.
async fn serve_one<S>(mut s: S, body: &[u8], claimed: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = vec![0u8; 4096];
    let mut n = 0;
    while !req[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < req.len() {
        match s.read(&mut req[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let head = String::from_utf8_lossy(&req[..n]).to_string();
    if head.starts_with("GET /agent ") {
        let h =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {claimed}\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(h.as_bytes()).await;
        let _ = s.write_all(body).await;
    } else {
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .await;
    }
    let _ = s.shutdown().await;
}

/// A one-file HTTP/1.1 server (HTTPS with `tls`), one connection at a time. Returns its address.
async fn file_server(
    body: Vec<u8>,
    claimed: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            match &tls {
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(s).await {
                        serve_one(s, &body, claimed).await;
                    }
                }
                None => serve_one(s, &body, claimed).await,
            }
        }
    });
    (addr, task)
}

/// A TLS acceptor with a fresh self-signed certificate for `localhost` and 127.0.0.1, and the
/// certificate's PEM.
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    let provider = std::sync::Arc::new(contrail_protocol::client::config::crypto_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)
        .expect("server config");
    (
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
        cert.pem(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_agent_stages_a_verified_binary_and_apply_installs_it_at_start() {
    use sha2::Digest;
    let rig = Rig::start_with(&relay_commands_toml()).await;
    let vehicle = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let state = rig.dir.path().join("state");
    let commands = format!(
        "[commands]\nenabled = true\nstate_dir = {:?}\n[commands.update]\nenabled = true\nmax_bytes = 100000\n\
         restart_after_staging = true\n",
        state.display().to_string()
    );
    let a = agent(
        &rig,
        "drone-upd",
        vehicle.local_addr().expect("addr"),
        &commands,
    )
    .await;
    // Running as the binary does: it stops by itself once an update is staged.
    let running = tokio::spawn(a.run_until(std::future::pending::<()>()));
    let api = Api::new(&rig);
    let binary: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = hex::encode(sha2::Sha256::digest(&binary));
    let (addr, server) = file_server(binary.clone(), binary.len(), None).await;
    let url = format!("http://{addr}/agent");
    let staged = state.join("update/contrail-agent.new");
    let manifest = state.join("update/contrail-agent.new.json");

    // A wrong checksum: refused, nothing staged.
    let v = api
        .run(
            "drone-upd",
            "update_agent",
            json!({"url": url, "sha256": "00".repeat(32), "size": binary.len()}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(message(&v).contains("sha256 mismatch"), "{v}");
    assert!(!staged.exists() && !manifest.exists());
    assert!(!state.join("update/contrail-agent.new.part").exists());

    // Over the size limit: refused before any download. A size that is not the file's: refused.
    let v = api
        .run(
            "drone-upd",
            "update_agent",
            json!({"url": url, "sha256": sha, "size": 200_000}),
        )
        .await;
    assert!(message(&v).contains("max_bytes"), "{v}");
    let v = api
        .run(
            "drone-upd",
            "update_agent",
            json!({"url": url, "sha256": sha, "size": 1000}),
        )
        .await;
    assert!(message(&v).contains("announces 50000 bytes"), "{v}");
    assert!(!staged.exists());

    // The right one: staged with its manifest; with restart_after_staging the agent then stops
    // by itself (its supervisor restarts it, which installs the update).
    let good = api
        .submit(
            "drone-upd",
            "update_agent",
            json!({"url": url, "sha256": sha, "size": binary.len()}),
        )
        .await;
    poll_until_async(Duration::from_secs(20), "the agent stopped", async || {
        running.is_finished()
    })
    .await;
    running.await.expect("join").expect("a clean stop");
    assert_eq!(std::fs::read(&staged).expect("staged"), binary);
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest).expect("manifest"))
        .expect("manifest json");
    assert_eq!(m["sha256"], sha.as_str());
    assert_eq!(m["size"], binary.len());
    assert_eq!(m["command_id"], good.as_str());

    // "At the next start": the binary's --apply-update installs it over the target.
    let target = rig.dir.path().join("bin/contrail-agent");
    std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
    std::fs::write(&target, b"the old agent").expect("old");
    let config = rig.dir.path().join("upd.toml");
    let toml = rig.agent_toml(
        "drone-upd",
        &["udpin:127.0.0.1:0"],
        &rig.dir.path().join("spool-drone-upd"),
        &commands,
    );
    std::fs::write(&config, toml).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_contrail-agent"))
        .env_clear()
        .arg("--config")
        .arg(&config)
        .arg("--apply-update")
        .arg(&target)
        .output()
        .expect("run contrail-agent --apply-update");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(std::fs::read(&target).expect("target"), binary);
    assert!(!staged.exists() && !manifest.exists(), "staging emptied");
    assert_eq!(
        std::fs::read(state.join("update/contrail-agent.prev")).expect("prev"),
        b"the old agent"
    );

    // The restarted agent (same state directory) reports the result, from its ledger if it did
    // not reach the relay before the stop; the update is not downloaded or staged again.
    let a = agent(
        &rig,
        "drone-upd",
        vehicle.local_addr().expect("addr"),
        &commands,
    )
    .await;
    let v = api.done(&good).await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert!(message(&v).contains("installed at the next start"), "{v}");
    assert!(!staged.exists(), "not staged again");
    a.stop().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_agent_over_https_trusts_the_configured_ca_and_nothing_else() {
    use sha2::Digest;
    let rig = Rig::start_with(&relay_commands_toml()).await;
    let vehicle = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (trusted, pem) = tls_acceptor();
    let (untrusted, _) = tls_acceptor();
    let ca = rig.dir.path().join("updates-ca.pem");
    std::fs::write(&ca, pem).expect("ca");
    let state = rig.dir.path().join("state-tls");
    let commands = format!(
        "[commands]\nenabled = true\nstate_dir = {:?}\n[commands.update]\nenabled = true\nca_file = {:?}\n",
        state.display().to_string(),
        ca.display().to_string()
    );
    let a = agent(
        &rig,
        "drone-tls",
        vehicle.local_addr().expect("addr"),
        &commands,
    )
    .await;
    let api = Api::new(&rig);
    let binary: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    let sha = hex::encode(sha2::Sha256::digest(&binary));
    let (good, s1) = file_server(binary.clone(), binary.len(), Some(trusted)).await;
    let (bad, s2) = file_server(binary.clone(), binary.len(), Some(untrusted)).await;

    let v = api
        .run(
            "drone-tls",
            "update_agent",
            json!({"url": format!("https://localhost:{}/agent", good.port()), "sha256": sha, "size": binary.len()}),
        )
        .await;
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(
        std::fs::read(state.join("update/contrail-agent.new")).expect("staged"),
        binary
    );

    let v = api
        .run(
            "drone-tls",
            "update_agent",
            json!({"url": format!("https://127.0.0.1:{}/agent", bad.port()), "sha256": sha, "size": binary.len()}),
        )
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(message(&v).contains("TLS handshake"), "{v}");
    a.stop().await;
    s1.abort();
    s2.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_beyond_max_running_are_refused_while_the_others_run() {
    let rig = Rig::start_with(&relay_commands_toml()).await;
    let vehicle = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let a = agent(
        &rig,
        "drone-busy",
        vehicle.local_addr().expect("addr"),
        "[commands]\nenabled = true\nmax_running = 1\n\
         [[commands.run.allow]]\nprogram = \"sleep\"\nargs = [\"30.0789\"]\n\
         [[commands.run.allow]]\nprogram = \"echo\"\n",
    )
    .await;
    let api = Api::new(&rig);
    let long = api
        .submit(
            "drone-busy",
            "run_command",
            json!({"argv": ["sleep", "30.0789"], "timeout_ms": 60_000}),
        )
        .await;
    poll_until_async(Duration::from_secs(10), "sleep runs", async || {
        process_alive("sleep 30.0789")
    })
    .await;
    let v = api
        .run("drone-busy", "run_command", json!({"argv": ["echo", "x"]}))
        .await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        message(&v).contains("busy: commands.max_running (1)"),
        "{v}"
    );
    // Stopping the agent aborts the running command: its process group is killed.
    a.stop().await;
    poll_until_async(Duration::from_secs(5), "sleep is gone", async || {
        !process_alive("sleep 30.0789")
    })
    .await;
    let v = api.get(&long).await;
    assert_ne!(v["status"], "succeeded", "{v}");
}

/// The write path on the other source kinds: the agent answers a `udpin:` vehicle at the address
/// it sent from, and writes on a `tcpout:` connection. Each vehicle acks ARM (accepted) and
/// denies RTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_long_goes_back_over_udpin_and_tcp_sources() {
    use mavlink::dialects::ardupilotmega::MavResult;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rig = Rig::start_with(&relay_commands_toml()).await;
    let api = Api::new(&rig);
    let new_sim = |sys: u8| {
        let mut sim = SimVehicle::new(sys);
        sim.command_acks
            .insert(20, Some(MavResult::MAV_RESULT_DENIED));
        Arc::new(parking_lot::Mutex::new(sim))
    };

    // udpin: the vehicle (system 2) speaks first; the agent answers where it came from.
    let spool = rig.dir.path().join("spool-udpin");
    let toml = rig.agent_toml(
        "drone-udpin",
        &["udpin:127.0.0.1:0"],
        &spool,
        "[commands]\nenabled = true\n",
    );
    let a = rig.agent(&toml).await;
    let agent_addr = a.source_addrs()[0].expect("udpin address");
    let sim_udp = new_sim(2);
    let sock = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let udp_task = {
        let (sock, sim) = (sock.clone(), sim_udp.clone());
        tokio::spawn(async move {
            let intro = sim.lock().advance(1_000);
            for p in intro {
                let _ = sock.send_to(&p.raw, agent_addr).await;
            }
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let replies = sim.lock().receive(&buf[..n]);
                for p in replies {
                    let _ = sock.send_to(&p.raw, from).await;
                }
            }
        })
    };

    // tcpout: the vehicle (system 3) listens; the agent connects.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tcp_url = format!("tcpout:{}", listener.local_addr().expect("addr"));
    let sim_tcp = new_sim(3);
    let tcp_task = {
        let sim = sim_tcp.clone();
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let intro: Vec<u8> = sim
                .lock()
                .advance(1_000)
                .into_iter()
                .flat_map(|p| p.raw)
                .collect();
            let _ = s.write_all(&intro).await;
            let mut buf = vec![0u8; 4096];
            // Packets may arrive split or joined on a stream: keep what is not whole yet.
            let mut pending: Vec<u8> = Vec::new();
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buf[..n]);
                let replies = sim.lock().receive_stream(&mut pending);
                for p in replies {
                    let _ = s.write_all(&p.raw).await;
                }
            }
        })
    };
    let spool = rig.dir.path().join("spool-tcp");
    let toml = rig.agent_toml(
        "drone-tcp",
        &[tcp_url.as_str()],
        &spool,
        "[commands]\nenabled = true\n",
    );
    let b = rig.agent(&toml).await;
    wait_registered(&rig, "drone-udpin").await;
    wait_registered(&rig, "drone-tcp").await;

    for (agent, drone, sys, sim) in [
        (&a, "drone-udpin", 2u8, &sim_udp),
        (&b, "drone-tcp", 3u8, &sim_tcp),
    ] {
        poll_until_async(
            Duration::from_secs(10),
            "the agent heard the vehicle",
            async || agent.stats().received_of("HEARTBEAT") > 0,
        )
        .await;
        let v = api
            .run(
                drone,
                "mavlink_command_long",
                json!({"target_system": sys, "command": 400, "params": [1]}),
            )
            .await;
        assert_eq!(v["status"], "succeeded", "{drone}: {v}");
        let v = api
            .run(
                drone,
                "mavlink_command_long",
                json!({"target_system": sys, "command": 20}),
            )
            .await;
        assert_eq!(message(&v), "MAV_RESULT_DENIED (2)", "{drone}: {v}");
        assert_eq!(sim.lock().commands_received.len(), 2, "{drone}");
    }
    a.stop().await;
    b.stop().await;
    udp_task.abort();
    tcp_task.abort();
}

/// The agent process killed (SIGKILL) while a command runs: after the restart the result says
/// so, and the command does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_running_when_the_agent_is_killed_is_reported_failed_and_not_run_again() {
    use contrail_testsupport::ProcessGuard;
    let rig = Rig::start_with(&relay_commands_toml()).await;
    let spool = rig.dir.path().join("spool-killed");
    let toml = rig.agent_toml(
        "drone-killed",
        &["udpin:127.0.0.1:0"],
        &spool,
        "[commands]\nenabled = true\n\
         [[commands.run.allow]]\nprogram = \"sleep\"\nargs = [\"30.0999\"]\n",
    );
    let config = rig.dir.path().join("killed.toml");
    std::fs::write(&config, toml).expect("config");
    let spawn = |name: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_contrail-agent"));
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        ProcessGuard::spawn(name, &mut cmd).expect("spawn contrail-agent")
    };
    let mut first = spawn("agent-before-kill");
    wait_registered(&rig, "drone-killed").await;
    let api = Api::new(&rig);
    let id = api
        .submit(
            "drone-killed",
            "run_command",
            json!({"argv": ["sleep", "30.0999"], "timeout_ms": 60_000}),
        )
        .await;
    poll_until_async(Duration::from_secs(10), "sleep runs", async || {
        process_alive("sleep 30.0999")
    })
    .await;
    first.kill_hard();
    // The command's process group outlives a SIGKILLed agent (under systemd the unit's cgroup
    // is killed with it): the test plays that part.
    for pid in pids_of("sleep 30.0999") {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    poll_until_async(Duration::from_secs(5), "sleep is gone", async || {
        !process_alive("sleep 30.0999")
    })
    .await;

    let _second = spawn("agent-after-kill");
    let v = api.done(&id).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        message(&v).contains("agent restarted while the command was running; not run again"),
        "{v}"
    );
    assert!(!process_alive("sleep 30.0999"), "not run again");
}
