//! Generated Rust code for Tally's Protobuf contracts (package `tally.v1`)
//! and the descriptor set that servers embed for gRPC reflection.

/// Messages and services of package `tally.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("tally.v1");
}

/// Encoded `FileDescriptorSet` of every `tally.v1` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tally_descriptor");
