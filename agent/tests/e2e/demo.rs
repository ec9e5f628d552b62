//! The README's command downlink path, run as a newcomer would: `scripts/demo-commands.sh`
//! (a temporary PostgreSQL, relays A and B, contrail-agent and the simulated vehicle on relay B,
//! `echo hello` submitted and read back through relay A) prints `hello`.

use std::path::Path;
use std::process::Command;

#[test]
fn the_demo_script_sends_echo_hello_to_a_drone_on_relay_b_through_relay_a() {
    let bin = Path::new(env!("CARGO_BIN_EXE_contrail-agent"))
        .parent()
        .expect("target dir");
    // `cargo test --workspace` builds the relay's binary (its own tests need it); the examples
    // of this crate are built with its tests.
    assert!(
        bin.join("contrail-relay").exists(),
        "{} is missing: cargo build -p contrail-relay (or run the workspace tests)",
        bin.join("contrail-relay").display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo-commands.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("CONTRAIL_BIN_DIR", bin)
        .env_remove("CONTRAIL_DEMO_KEEP")
        .output()
        .expect("run the demo script");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n", "{stderr}");
    assert!(stderr.contains("delivered by relay-b"), "{stderr}");
}
