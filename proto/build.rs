//! Compiles the `.proto` files with protox (pure Rust), so building strata
//! needs no `protoc` on the machine.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("protos");
    let files = [
        root.join("strata/catalog/v1/catalog.proto"),
        root.join("strata/raft/v1/raft.proto"),
        root.join("strata/storage/v1/storage.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
