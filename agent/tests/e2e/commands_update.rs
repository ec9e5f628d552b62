//! `update_agent` through contrail-agent: downloads from a local HTTP(S) server, checksum and
//! size refusals, staging, `--apply-update`, and `restart_after_staging`.

use std::net::SocketAddr;
use std::time::Duration;

use contrail_testsupport::poll_until_async;
use serde_json::{json, Value};

use crate::commands_support::*;
use crate::common::*;

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
