//! OTP-style supervision on ractor: static supervisors with the three strategies and restart
//! intensity, keyed worker pools (PartitionSupervisor → DynamicSupervisor → workers), simple
//! GenServers, and the live tree they report.

pub mod pool;
pub mod service;
pub mod slot;
pub mod supervisor;
pub mod tree;

pub use supervisor::{ChildSpec, SupervisorSettings};
pub use tree::{Kind, Strategy, TreeNode, TreeSnapshot};
