//! Compiles `tally/v1/*.proto` with protox (no system `protoc`) into Rust code
//! and a descriptor set that the server embeds for gRPC reflection.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let protos = [
        "tally/v1/common.proto",
        "tally/v1/ingest.proto",
        "tally/v1/session.proto",
        "tally/v1/query.proto",
        "tally/v1/admin.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let file_descriptors = protox::compile(protos, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("tally_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&file_descriptors))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(file_descriptors)?;
    Ok(())
}
