//! The wire types and service stubs of `proto/exesdb/v1`, generated at build time. Wire types
//! stay at the edge: the server's gateway and the client crate convert them, nothing else
//! sees them.

#![allow(clippy::all, missing_docs)]

/// Package `exesdb.v1`.
pub mod v1 {
    tonic::include_proto!("exesdb.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/exesdb_descriptor.bin"));
