//! `update_agent`: a new `contrail-agent` binary downloaded, checked and staged for the next
//! start; [`apply`] installs it (`contrail-agent --apply-update`, a systemd `ExecStartPre=+`).
//!
//! Payload: `{"url": "https://updates.example/contrail-agent-1.2", "sha256": "<64 hex>",
//! "size": 7340032}`. Refused before any download: a size of 0 or above
//! `commands.update.max_bytes`, a URL that is not `http://` or `https://` or does not start with
//! one of `allowed_url_prefixes`, a malformed sha256. The download (HTTP/1.1; `https` trusts
//! `commands.update.ca_file`, by default the relay's CA, TLS 1.3) is bounded: a
//! `Content-Length` other than `size`, or a body longer than `size`, stops it; the whole
//! transfer has `timeout_ms`. It is written to `<state_dir>/update/contrail-agent.new.part`,
//! hashed as it arrives, and only when the size and the SHA-256 match is it made executable,
//! synced, and renamed to `contrail-agent.new` beside a manifest `contrail-agent.new.json`
//! (`{sha256, size, url, command_id, staged_unix_ms}`, written to a temporary file and renamed
//! after the binary). A mismatch is `REFUSED` ("sha256 mismatch ...; not staged") and leaves
//! nothing staged. Redirects are not followed.
//!
//! [`apply`] reads the manifest, checks the staged binary's size and SHA-256 again, copies it
//! beside the target, syncs it and renames it over the target (atomic on one filesystem), keeps
//! the old binary as `<state_dir>/update/contrail-agent.prev`, and removes the staged files. A
//! staged binary that no longer matches its manifest is removed, not installed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use contrail_protocol::client::commands::{CommandHandle, Outcome};
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::config::UpdatePolicy;
use crate::stats::{CommandLimit, Stats};

/// The staged binary's file name.
pub const STAGED: &str = "contrail-agent.new";
/// The manifest's file name.
pub const MANIFEST: &str = "contrail-agent.new.json";

/// The payload of an `update_agent`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpdatePayload {
    /// Where to download from (`http://` or `https://`).
    pub url: String,
    /// Expected SHA-256, 64 hex digits.
    pub sha256: String,
    /// Expected size in bytes.
    pub size: u64,
}

/// What is staged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// SHA-256 of the staged binary (lowercase hex).
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// Where it came from.
    pub url: String,
    /// The command that staged it.
    pub command_id: String,
    /// When, Unix ms.
    pub staged_unix_ms: u64,
}

/// Why an update could not be staged or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// Refused by policy or a bad payload (nothing downloaded).
    #[error("{0}")]
    Refused(String),
    /// The download did not produce the announced binary (nothing staged).
    #[error("{0}")]
    Mismatch(String),
    /// The download failed (network, HTTP status, timeout).
    #[error("download: {0}")]
    Download(String),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpdateError {
    let what = what.into();
    move |source| UpdateError::Io { what, source }
}

/// The staging directory under `state_dir`.
pub fn update_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("update")
}

/// Checks a payload against the policy.
pub fn check(p: &UpdatePayload, policy: &UpdatePolicy) -> Result<(), UpdateError> {
    if p.size == 0 || p.size > policy.max_bytes {
        return Err(UpdateError::Refused(format!(
            "size {} is outside 1..={} (commands.update.max_bytes)",
            p.size, policy.max_bytes
        )));
    }
    if p.sha256.len() != 64 || hex::decode(&p.sha256).is_err() {
        return Err(UpdateError::Refused(
            "sha256: 64 hex digits expected".into(),
        ));
    }
    if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
        return Err(UpdateError::Refused(
            "url: http:// or https:// expected".into(),
        ));
    }
    if !policy.allowed_url_prefixes.is_empty()
        && !policy
            .allowed_url_prefixes
            .iter()
            .any(|pre| p.url.starts_with(pre.as_str()))
    {
        return Err(UpdateError::Refused(format!(
            "url {:?} is not under commands.update.allowed_url_prefixes",
            p.url
        )));
    }
    Ok(())
}

/// Downloads, verifies and stages `p`; returns the manifest written.
pub async fn stage(
    p: &UpdatePayload,
    policy: &UpdatePolicy,
    state_dir: &Path,
    command_id: &str,
) -> Result<Manifest, UpdateError> {
    check(p, policy)?;
    let dir = update_dir(state_dir);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(io(format!("creating {}", dir.display())))?;
    let part = dir.join(format!("{STAGED}.part"));
    let res = tokio::time::timeout(policy.timeout, download(p, policy, &part)).await;
    let digest = match res {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
        Err(_) => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(UpdateError::Download(format!(
                "not finished within {} ms",
                policy.timeout.as_millis()
            )));
        }
    };
    let want = p.sha256.to_ascii_lowercase();
    if digest != want {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(UpdateError::Mismatch(format!(
            "sha256 mismatch: the download has {digest}, the command says {want}; not staged"
        )));
    }
    let manifest = Manifest {
        sha256: digest,
        size: p.size,
        url: p.url.clone(),
        command_id: command_id.to_owned(),
        staged_unix_ms: super::now_ms(),
    };
    let m = manifest.clone();
    tokio::task::spawn_blocking(move || commit(&dir, &part, &m))
        .await
        .map_err(|e| UpdateError::Download(format!("staging task: {e}")))??;
    Ok(manifest)
}

/// Makes the verified `.part` the staged binary, then writes the manifest (each synced).
fn commit(dir: &Path, part: &Path, m: &Manifest) -> Result<(), UpdateError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(part, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod of the download"))?;
    std::fs::rename(part, dir.join(STAGED)).map_err(io("renaming the download"))?;
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    let text =
        serde_json::to_vec_pretty(m).map_err(|e| io("manifest")(std::io::Error::other(e)))?;
    {
        let mut f = std::fs::File::create(&tmp).map_err(io("writing the manifest"))?;
        f.write_all(&text).map_err(io("writing the manifest"))?;
        f.sync_all().map_err(io("syncing the manifest"))?;
    }
    std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(io("renaming the manifest"))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Downloads to `part`, bounded by `p.size`; returns the SHA-256 (hex) of what arrived.
async fn download(
    p: &UpdatePayload,
    policy: &UpdatePolicy,
    part: &Path,
) -> Result<String, UpdateError> {
    let dl = |e: &dyn std::fmt::Display| UpdateError::Download(e.to_string());
    let uri: http::Uri = p.url.parse().map_err(|e| dl(&e))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri
        .host()
        .ok_or_else(|| UpdateError::Refused("url: no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.clone());
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |pq| pq.as_str().to_owned());
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| dl(&format!("connecting to {host}:{port}: {e}")))?;
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::USER_AGENT,
            concat!("contrail-agent/", env!("CARGO_PKG_VERSION")),
        )
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| dl(&e))?;
    if https {
        let tls = contrail_protocol::client::config::rustls_client_config(
            &contrail_protocol::client::Trust::CaFile(policy.ca_file.clone()),
            None,
            b"http/1.1",
        )
        .map_err(|e| dl(&format!("TLS configuration: {e}")))?;
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| dl(&format!("server name {host:?}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| dl(&format!("TLS handshake with {host}: {e}")))?;
        fetch(hyper_util::rt::TokioIo::new(stream), req, p.size, part).await
    } else {
        fetch(hyper_util::rt::TokioIo::new(tcp), req, p.size, part).await
    }
}

async fn fetch<IO>(
    io_: IO,
    req: http::Request<http_body_util::Empty<Bytes>>,
    size: u64,
    part: &Path,
) -> Result<String, UpdateError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let dl = |e: &dyn std::fmt::Display| UpdateError::Download(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io_)
        .await
        .map_err(|e| dl(&e))?;
    let body = async {
        let resp = sender.send_request(req).await.map_err(|e| dl(&e))?;
        if resp.status() != http::StatusCode::OK {
            return Err(dl(&format!("HTTP status {}", resp.status())));
        }
        if let Some(len) = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len != size {
                return Err(UpdateError::Mismatch(format!(
                    "the server announces {len} bytes, the command says {size}; not staged"
                )));
            }
        }
        let mut file = tokio::fs::File::create(part)
            .await
            .map_err(io(format!("creating {}", part.display())))?;
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| dl(&e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            got += data.len() as u64;
            if got > size {
                return Err(UpdateError::Mismatch(format!(
                    "the download is longer than the {size} bytes the command says; stopped, not staged"
                )));
            }
            hasher.update(&data);
            file.write_all(&data)
                .await
                .map_err(io("writing the download"))?;
        }
        if got != size {
            return Err(UpdateError::Mismatch(format!(
                "the download has {got} bytes, the command says {size}; not staged"
            )));
        }
        file.sync_all().await.map_err(io("syncing the download"))?;
        Ok(hex::encode(hasher.finalize()))
    };
    // The connection is driven beside the request, in this task (nothing left behind).
    tokio::pin!(conn);
    tokio::pin!(body);
    tokio::select! {
        r = &mut body => r,
        r = &mut conn => match r {
            Err(e) => Err(dl(&e)),
            // The connection finished: the body completes with what it has.
            Ok(()) => body.await,
        },
    }
}

/// Runs one `update_agent`.
pub async fn run(
    payload: &[u8],
    policy: &UpdatePolicy,
    state_dir: &Path,
    stats: &Stats,
    handle: &mut CommandHandle,
) -> Outcome {
    let p: UpdatePayload = match serde_json::from_slice(payload) {
        Ok(p) => p,
        Err(e) => {
            return Outcome::refused(format!(
                "payload: {e} (expected {{\"url\", \"sha256\", \"size\"}})"
            ))
        }
    };
    if let Err(e) = check(&p, policy) {
        if p.size > policy.max_bytes {
            stats.limit_hit(CommandLimit::Update);
        }
        return Outcome::refused(e.to_string());
    }
    let _ = handle
        .progress(format!("downloading {} bytes from {}", p.size, p.url))
        .await;
    let id = handle.id().to_owned();
    match stage(&p, policy, state_dir, &id).await {
        Ok(m) => {
            let mut o = Outcome::succeeded(0);
            o.message = format!(
                "staged {} ({} bytes, sha256 {}); installed at the next start",
                update_dir(state_dir).join(STAGED).display(),
                m.size,
                m.sha256
            );
            o
        }
        Err(e @ (UpdateError::Refused(_) | UpdateError::Mismatch(_))) => {
            Outcome::refused(e.to_string())
        }
        Err(e) => {
            if matches!(&e, UpdateError::Download(m) if m.starts_with("not finished within")) {
                stats.limit_hit(CommandLimit::Update);
            }
            Outcome::failed(-1, e.to_string())
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing was staged.
    Nothing,
    /// The staged binary now is the target.
    Installed(Manifest),
}

fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((hex::encode(h.finalize()), n))
}

/// Installs the staged update over `target`, after checking it again against its manifest.
pub fn apply(state_dir: &Path, target: &Path) -> Result<Applied, UpdateError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = update_dir(state_dir);
    let staged = dir.join(STAGED);
    let manifest_path = dir.join(MANIFEST);
    let text = match std::fs::read(&manifest_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A binary without a manifest is a staging cut short: not trusted.
            let _ = std::fs::remove_file(&staged);
            return Ok(Applied::Nothing);
        }
        Err(e) => return Err(io("reading the manifest")(e)),
    };
    let discard = || {
        let _ = std::fs::remove_file(&staged);
        let _ = std::fs::remove_file(&manifest_path);
    };
    let m: Manifest = match serde_json::from_slice(&text) {
        Ok(m) => m,
        Err(e) => {
            discard();
            return Err(UpdateError::Mismatch(format!(
                "the manifest does not parse ({e}); staged update removed"
            )));
        }
    };
    let (sha, size) = match sha256_file(&staged) {
        Ok(x) => x,
        Err(e) => {
            discard();
            return Err(io("reading the staged binary")(e));
        }
    };
    if sha != m.sha256 || size != m.size {
        discard();
        return Err(UpdateError::Mismatch(format!(
            "the staged binary ({size} bytes, sha256 {sha}) does not match its manifest ({} bytes, {}); removed",
            m.size, m.sha256
        )));
    }
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "contrail-agent".into());
    let tmp = parent.join(format!(".{name}.update"));
    std::fs::copy(&staged, &tmp).map_err(io(format!("copying to {}", tmp.display())))?;
    {
        let f = std::fs::File::open(&tmp).map_err(io("opening the copy"))?;
        f.sync_all().map_err(io("syncing the copy"))?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod of the copy"))?;
    if target.exists() {
        let _ = std::fs::copy(target, dir.join("contrail-agent.prev"));
    }
    std::fs::rename(&tmp, target).map_err(io(format!("renaming over {}", target.display())))?;
    if let Ok(d) = std::fs::File::open(parent) {
        let _ = d.sync_all();
    }
    discard();
    Ok(Applied::Installed(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: u64) -> UpdatePolicy {
        UpdatePolicy {
            max_bytes: max,
            timeout: std::time::Duration::from_secs(5),
            ca_file: PathBuf::from("/nonexistent.pem"),
            allowed_url_prefixes: vec!["http://127.0.0.1".into(), "https://updates.".into()],
            restart_after_staging: false,
        }
    }

    fn payload(url: &str, size: u64) -> UpdatePayload {
        UpdatePayload {
            url: url.into(),
            sha256: "ab".repeat(32),
            size,
        }
    }

    #[test]
    fn payloads_outside_the_policy_are_refused_before_any_download() {
        let p = policy(1000);
        assert!(check(&payload("http://127.0.0.1:1/x", 10), &p).is_ok());
        for (pl, why) in [
            (payload("http://127.0.0.1:1/x", 1001), "outside"),
            (payload("http://127.0.0.1:1/x", 0), "outside"),
            (payload("ftp://127.0.0.1/x", 10), "http"),
            (payload("http://evil.example/x", 10), "allowed_url_prefixes"),
        ] {
            let e = check(&pl, &p).expect_err("refused").to_string();
            assert!(e.contains(why), "{e}");
        }
        let mut bad = payload("http://127.0.0.1:1/x", 10);
        bad.sha256 = "xyz".into();
        assert!(check(&bad, &p).is_err());
    }

    #[test]
    fn apply_installs_a_staged_binary_over_the_target_and_refuses_a_tampered_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let target = dir.path().join("bin/contrail-agent");
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::write(&target, b"old binary").expect("old");
        assert_eq!(apply(&state, &target).expect("nothing"), Applied::Nothing);

        let stage_bytes = |bytes: &[u8], claimed: &[u8]| {
            let d = update_dir(&state);
            std::fs::create_dir_all(&d).expect("mkdir");
            let part = d.join("x.part");
            std::fs::write(&part, bytes).expect("write");
            let m = Manifest {
                sha256: hex::encode(Sha256::digest(claimed)),
                size: claimed.len() as u64,
                url: "http://127.0.0.1/x".into(),
                command_id: "c1".into(),
                staged_unix_ms: 1,
            };
            commit(&d, &part, &m).expect("commit");
        };
        stage_bytes(b"new binary", b"new binary");
        match apply(&state, &target).expect("applied") {
            Applied::Installed(m) => assert_eq!(m.size, 10),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&target).expect("target"), b"new binary");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&target)
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111, "executable");
        }
        assert_eq!(
            std::fs::read(update_dir(&state).join("contrail-agent.prev")).expect("prev"),
            b"old binary"
        );
        assert!(
            !update_dir(&state).join(STAGED).exists(),
            "staged files removed"
        );
        assert_eq!(apply(&state, &target).expect("again"), Applied::Nothing);

        // Tampered after staging: not installed, removed.
        stage_bytes(b"evil binary", b"new binary");
        let e = apply(&state, &target).expect_err("tampered");
        assert!(matches!(e, UpdateError::Mismatch(_)), "{e}");
        assert_eq!(std::fs::read(&target).expect("target"), b"new binary");
        assert!(!update_dir(&state).join(STAGED).exists());
    }
}
