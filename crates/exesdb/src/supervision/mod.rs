//! OTP-style supervision on ractor: static supervisors with the three strategies and restart
//! intensity, keyed worker pools (PartitionSupervisor → DynamicSupervisor → workers), simple
//! GenServers, and the live tree they report.

pub(crate) mod pool;
pub(crate) mod service;
pub(crate) mod slot;
pub(crate) mod supervisor;
pub(crate) mod tree;

pub(crate) use supervisor::{ChildSpec, SupervisorSettings};
pub(crate) use tree::TreeNode;
