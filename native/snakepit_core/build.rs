//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so building
//! needs no `protoc` on the machine.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        root.join("snakepit/v1/worker.proto"),
        root.join("snakepit/v1/bridge.proto"),
    ];
    println!("cargo:rerun-if-changed={}", root.display());
    let descriptors = protox::compile(&files, [&root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
