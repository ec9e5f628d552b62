//! Generates the gRPC RelayControl service (seed 003) from `protocol/proto/relay_control.proto`
//! with protox (pure Rust: no protoc) and tonic-prost-build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../protocol/proto/relay_control.proto");
    let fds = protox::compile(["relay_control.proto"], ["../protocol/proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
