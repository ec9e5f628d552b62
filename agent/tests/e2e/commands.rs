//! Commands through contrail-agent, end to end: submitted over HTTP to a real relay (memory
//! command store), delivered on the agent's QUIC session, run by contrail-agent's `run_command`
//! handler, results and output read back through the relay's API. MAVLink commands:
//! `commands_mavlink.rs`; updates: `commands_update.rs`.

use std::time::Duration;

use contrail_testsupport::poll_until_async;
use serde_json::json;

use contrail_agent::stats::CommandLimit;

use crate::commands_support::*;
use crate::common::*;

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
    assert_eq!(stats.limit_hits(CommandLimit::Timeout), 1);
    assert_eq!(stats.limit_hits(CommandLimit::OutputBytes), 1);
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
        message(&v).contains("busy: commands.max_running (1)")
            && a.stats().limit_hits(CommandLimit::MaxRunning) == 1,
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
