//! Two generated inputs:
//! - every `migrations/NNNN_name.sql` file, in name order, embedded as `MIGRATIONS` (see
//!   `src/db/mod.rs`): adding a migration is adding a file;
//! - the gRPC RelayControl service (seed 003) from `protocol/proto/relay_control.proto`, with
//!   protox (pure Rust: no protoc) and tonic-prost-build.

use std::fmt::Write as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    migrations()?;
    println!("cargo:rerun-if-changed=../protocol/proto/relay_control.proto");
    let fds = protox::compile(["relay_control.proto"], ["../protocol/proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}

fn migrations() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::Path::new("migrations");
    println!("cargo:rerun-if-changed=migrations");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".sql"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = String::from(
        "/// Embedded migrations: (version, name, SQL).\npub const MIGRATIONS: &[(i32, &str, &str)] = &[\n",
    );
    for f in files {
        let stem = f.trim_end_matches(".sql");
        let (num, name) = stem.split_once('_').unwrap_or((stem, ""));
        let version: i32 = num
            .parse()
            .map_err(|_| format!("migration file {f} must be named NNNN_name.sql"))?;
        let path = std::fs::canonicalize(dir.join(&f))?;
        let _ = writeln!(
            out,
            "    ({version}, {name:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    out.push_str("];\n");
    let dest = std::path::Path::new(&std::env::var("OUT_DIR")?).join("migrations.rs");
    std::fs::write(dest, out)?;
    Ok(())
}
