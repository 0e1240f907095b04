//! The network side of ExESDB in Rust: a [`Node`] hosts one engine `System` per store, and
//! [`serve`] answers gRPC (`exesdb.v1.EventStore`, `exesdb.v1.SystemService`, reflection) and
//! HTTP (`/health`, `/metrics`) for it on one port, through its own accept loop with named
//! connection limits.
//!
//! Wire types stay here and in `exesdb-proto`: requests become shared types at the gRPC
//! services, and go to the store through its gateway.

mod connections;
mod grpc;
mod node;
mod oversized;
mod peer;
mod server;

pub use connections::NetworkSettings;
pub use node::{MetricsRenderer, Node, NodeHealth, StoreHealth};
pub use peer::{GrpcPeerTransport, PeerService, serve_peers};
pub use server::{ServeError, serve};
