//! Cluster mode's replication: one Raft group per store, on openraft, pinned to
//! `=0.10.0-alpha.37`. This module is the only one that names openraft; its 0.10 alphas change
//! their API between releases, so an upgrade touches these files alone.
//!
//! The entry is the Store's own deterministic [`Command`], `apply` is the Store's own state
//! machine ([`crate::system::core::store::state_machine`]), and the response is its
//! [`Outcome`]. What this module adds is where Raft keeps its state: the log, the vote and the
//! committed log id in the store's fjall database ([`LogStore`]), the applied state in the same
//! atomic batch as the data it describes, and whole-store snapshot files
//! ([`ReplicatedStateMachine`]). The bytes on disk are written by `storage::cluster`.
//!

mod group;
#[cfg(test)]
mod group_tests;
mod log_store;
mod network;
mod runtime;
#[cfg(test)]
mod simulation;
mod state_machine;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::system::core::store::state_machine::{Command, Outcome};
use exesdb_types::StoreError;

pub(crate) use group::{GroupStorage, MembershipChange, RaftGroup, RaftSettings};
pub(crate) use network::SharedClusterId;
pub use network::{
    PeerAnswers, PeerCall, PeerCallError, PeerCallFuture, PeerCallKind, PeerMessages,
    PeerStreamFuture, PeerTransport,
};

/// A node's addresses, as the membership records them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerNode {
    /// Where its peers reach it (`--peer-advertise`).
    pub peer_addr: String,
    /// Where clients reach it (`--listen`).
    pub client_addr: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {} client {}", self.peer_addr, self.client_addr)
    }
}

/// A command as Raft replicates it. Shared, because openraft clones entries (the log keeps
/// the newest in memory, and hands them to replication and to `apply`); encoded as the bare
/// command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Replicated(pub Arc<Command>);

impl fmt::Display for Replicated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_ref() {
            Command::Append(append) => write!(
                f,
                "append {} event(s) to {}",
                append.events.len(),
                append.stream_id
            ),
            Command::RecordSnapshot(_) => f.write_str("record a snapshot"),
            Command::DeleteSnapshot { .. } => f.write_str("delete a snapshot"),
            Command::SaveSubscription { name, .. } => write!(f, "save subscription {name}"),
            Command::RemoveSubscription { name } => write!(f, "remove subscription {name}"),
            Command::Checkpoint { name, position } => write!(f, "checkpoint {name} at {position}"),
            Command::BusForwarded { position } => write!(f, "bus forwarded to {position}"),
            Command::Park { name, position, .. } => write!(f, "park {name} at {position}"),
            Command::Batch(commands) => write!(f, "{} commands", commands.len()),
        }
    }
}

/// What applying an entry answered: a command's outcome (a refusal such as a wrong expected
/// version is an outcome too: every node reaches the same one), or nothing for Raft's own
/// entries (blank and membership).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ApplyReply {
    Command(Result<Outcome, StoreError>),
    Internal,
}

openraft::declare_raft_types!(
    /// The types of the store's Raft group.
    pub(crate) TypeConfig:
        D = Replicated,
        R = ApplyReply,
        NodeId = u64,
        Node = PeerNode,
        AsyncRuntime = runtime::RaftRuntime,
);

type LogId = openraft::alias::LogIdOf<TypeConfig>;
type Entry = openraft::alias::EntryOf<TypeConfig>;
type Vote = openraft::alias::VoteOf<TypeConfig>;
type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// The first byte of every encoded value this module stores: the layout of what follows.
/// Bump it, and keep reading the old one, if an encoded type changes shape (the golden test in
/// `tests.rs` fails first).
const ENCODING_VERSION: u8 = 1;

pub(crate) fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut bytes = vec![ENCODING_VERSION];
    postcard::to_io(value, &mut bytes).map_err(io::Error::other)?;
    Ok(bytes)
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> io::Result<T> {
    let invalid = |detail: String| io::Error::new(io::ErrorKind::InvalidData, detail);
    match bytes.split_first() {
        Some((&ENCODING_VERSION, body)) => postcard::from_bytes(body)
            .map_err(|error| invalid(format!("cannot decode the stored {what}: {error}"))),
        Some((version, _)) => Err(invalid(format!(
            "the stored {what} has encoding {version}; this build reads {ENCODING_VERSION}"
        ))),
        None => Err(invalid(format!("the stored {what} is empty"))),
    }
}

/// The answer to a peer call that this node cannot serve.
pub(crate) fn refusal(why: &str) -> Vec<u8> {
    encode(&Err::<(), String>(why.to_string())).unwrap_or_default()
}

fn storage_io(error: crate::storage::StorageError) -> io::Error {
    io::Error::other(error)
}
