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
    tonic_prost_build::configure()
        // Payload bytes as `bytes::Bytes`: decoding slices them out of the
        // receive buffer instead of copying, and a worker hands Python's
        // bytes object to the encoder without a copy of its own.
        .bytes(".snakepit.v1.Payload.data")
        .compile_fds(descriptors)?;
    Ok(())
}
