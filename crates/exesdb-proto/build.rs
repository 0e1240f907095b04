//! Compiles the .proto files with protox (pure Rust: no protoc on the machine).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("exesdb/v1/eventstore.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    // The peer port's service stays out of the clients' descriptor (no reflection of it).
    let peer = root.join("exesdb/v1/peer.proto");
    println!("cargo:rerun-if-changed={}", peer.display());
    tonic_prost_build::configure().compile_fds(protox::compile([&peer], [&root])?)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("exesdb_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
