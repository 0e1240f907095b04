//! The gRPC wire contract of ExESDB in Rust: the prost types and service stubs generated from
//! `proto/exesdb/v1` at build time, and [`convert`], the one place where each wire type turns
//! into its shared type of `exesdb-types` and back. The server and the client both convert
//! here; the engine never sees a wire type.

pub mod convert;

/// Package `exesdb.v1`, as generated.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("exesdb.v1");
}

/// Package `exesdb.peer.v1`, the peer port between the nodes of a cluster, as generated.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod peer {
    tonic::include_proto!("exesdb.peer.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/exesdb_descriptor.bin"));
