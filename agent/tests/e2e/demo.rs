//! The README's command downlink path, run as a newcomer would: `scripts/demo-commands.sh`
//! (a temporary PostgreSQL, relays A and B, contrail-agent and the simulated vehicle on relay B,
//! `echo hello` submitted and read back through relay A) prints `hello`.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn the_demo_script_sends_echo_hello_to_a_drone_on_relay_b_through_relay_a() {
    let bin = Path::new(env!("CARGO_BIN_EXE_contrail-agent"))
        .parent()
        .expect("target dir");
    // `cargo test --workspace` builds the relay's binary (its own tests need it); the examples
    // of this crate are built with its tests (`--all-targets`), as `examples/sim_vehicle-<hash>`.
    assert!(
        bin.join("contrail-relay").exists(),
        "{} is missing: cargo build -p contrail-relay (or run the workspace tests)",
        bin.join("contrail-relay").display()
    );
    let vehicle = sim_vehicle(bin);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo-commands.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("CONTRAIL_BIN_DIR", bin)
        .env("CONTRAIL_SIM_VEHICLE", &vehicle)
        .env_remove("CONTRAIL_DEMO_KEEP")
        .output()
        .expect("run the demo script");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n", "{stderr}");
    assert!(stderr.contains("delivered by relay-b"), "{stderr}");
}

/// The simulated vehicle: `examples/sim_vehicle` when `cargo build --example` made it, else the
/// newest `examples/sim_vehicle-<hash>` that `cargo test --all-targets` built (it does not copy
/// examples to their plain name).
fn sim_vehicle(bin: &Path) -> PathBuf {
    let examples = bin.join("examples");
    let plain = examples.join("sim_vehicle");
    if plain.exists() {
        return plain;
    }
    let newest = std::fs::read_dir(&examples)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("sim_vehicle-") && !name.contains('.')
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    match newest {
        Some((_, path)) => path,
        None => panic!(
            "no simulated vehicle in {}: cargo test -p contrail-agent --all-targets (or cargo build -p contrail-agent --example sim_vehicle)",
            examples.display()
        ),
    }
}
