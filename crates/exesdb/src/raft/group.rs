//! One store's Raft group on this node: starts openraft over the store's storage, proposes
//! commands and answers with their outcomes, and serves the peer calls of other nodes.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::AppendEntriesRequest;
use openraft::storage::RaftStateMachine;
use openraft::{ChangeMembers, Config, Raft, ReadPolicy, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::log_store::LogStore;
use super::network::{
    Answer, Network, PeerCallKind, PeerMessages, PeerTransport, SharedClusterId, SnapshotChunk,
    read_cluster_id,
};
use super::state_machine::{ReplicatedStateMachine, SnapshotFile};
use super::{ApplyReply, PeerNode, TypeConfig, decode, encode};
use crate::config::Limits;
use crate::storage::Storage;
use crate::storage::cluster::read_snapshot_header;
use crate::system::core::store::state_machine::{Command, Outcome};
use exesdb_types::StoreError;

type StoreRaft = Raft<TypeConfig, ReplicatedStateMachine>;

/// How a group elects and how long a write may wait.
#[derive(Debug, Clone)]
pub(crate) struct RaftSettings {
    pub cluster_name: String,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// A proposal not applied within this is answered `unavailable`, outcome unknown.
    pub write_timeout_ms: u64,
    /// A snapshot is built after this many log entries since the last; the log keeps this
    /// many entries behind a snapshot too, so a follower that was briefly away catches up
    /// from the log.
    pub snapshot_every_entries: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            cluster_name: "exesdb".into(),
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            heartbeat_interval_ms: 250,
            write_timeout_ms: 10_000,
            snapshot_every_entries: 100_000,
        }
    }
}

impl RaftSettings {
    /// openraft's configuration for a group with these settings.
    pub(super) fn raft_config(&self) -> io::Result<Config> {
        Config {
            cluster_name: self.cluster_name.clone(),
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            heartbeat_interval: self.heartbeat_interval_ms,
            enable_pre_vote: Some(true),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.snapshot_every_entries,
            ..Config::default()
        }
        .validate()
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))
    }
}

/// A change asked of a store's leader: of the membership, or of who leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum MembershipChange {
    /// Add a node: first as a learner, which catches up, then as a voter.
    Add { node_id: u64, node: PeerNode },
    /// Remove a node, voter or learner.
    Remove { node_id: u64 },
    /// Hand the leadership to this voter.
    TransferLeader { to: u64 },
}

/// How long a new learner may take to catch up before it is made a voter; past it the add
/// answers `unavailable`, and running it again goes on from where the learner is.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// A snapshot being received from the leader.
struct Receiving {
    transfer: u64,
    next_offset: u64,
    file: std::fs::File,
    path: std::path::PathBuf,
}

/// A store's Raft group on this node (a handle: clones share it).
#[derive(Clone)]
pub(crate) struct RaftGroup {
    raft: StoreRaft,
    machine: ReplicatedStateMachine,
    settings: RaftSettings,
    receiving: Arc<Mutex<Option<Receiving>>>,
    node_id: u64,
    store_id: String,
    transport: Arc<dyn PeerTransport>,
    cluster_id: SharedClusterId,
}

/// What a store's group is started over.
pub(crate) struct GroupStorage {
    pub storage: Arc<Storage>,
    pub snapshot_dir: std::path::PathBuf,
    pub limits: Limits,
    pub head_cache_entries_max: usize,
    /// The "committed up to" mark the store's subscribers wait on.
    pub committed: watch::Sender<u64>,
    /// The store's cluster id, sent with every call.
    pub cluster_id: SharedClusterId,
}

impl RaftGroup {
    /// Starts the group of `store_id` as node `node_id`.
    pub(crate) async fn start(
        node_id: u64,
        store_id: &str,
        settings: RaftSettings,
        storage: GroupStorage,
        transport: Arc<dyn PeerTransport>,
    ) -> io::Result<RaftGroup> {
        let config = settings.raft_config()?;
        let machine = ReplicatedStateMachine::open(
            storage.storage.clone(),
            storage.snapshot_dir,
            storage.limits,
            storage.head_cache_entries_max,
            storage.committed,
        )?;
        let cluster_id = storage.cluster_id.clone();
        let network = Network {
            store_id: store_id.to_string(),
            transport: transport.clone(),
            cluster_id: cluster_id.clone(),
            answer_patience_min: Duration::from_millis(settings.election_timeout_min_ms),
        };
        let raft = Raft::new(
            node_id,
            Arc::new(config),
            network,
            LogStore::new(storage.storage, store_id)?,
            machine.clone(),
        )
        .await
        .map_err(io::Error::other)?;
        Ok(RaftGroup {
            raft,
            machine,
            settings,
            receiving: Arc::new(Mutex::new(None)),
            node_id,
            store_id: store_id.to_string(),
            transport,
            cluster_id,
        })
    }

    /// Forms the group with these members. Done once, by one node, on a cluster that has
    /// never been formed (StoreCoordinator decides who and when).
    pub(crate) async fn initialize(&self, members: BTreeMap<u64, PeerNode>) -> io::Result<()> {
        self.raft
            .initialize(members)
            .await
            .map_err(|error| io::Error::other(error.to_string()))?;
        // The new cluster elects now rather than after a first election timeout; the others
        // vote as in any election, so this changes when, not who may lead.
        self.raft
            .trigger()
            .elect(true)
            .await
            .map_err(|error| io::Error::other(error.to_string()))
    }

    /// Proposes a command; answers once it is committed by a majority and applied on the
    /// leader. On a follower the command goes to the leader over the peer port, once.
    pub(crate) async fn propose(&self, command: Command) -> Result<Outcome, StoreError> {
        // Where to send it is decided from the leader this node knows, so that the command is
        // never copied: if the leadership moves in between, the write is refused unproposed
        // (`unavailable`, safe to retry) rather than proposed twice.
        let metrics = self.raft.metrics().borrow_watched().clone();
        let elsewhere = metrics
            .current_leader
            .filter(|leader| *leader != self.node_id)
            .and_then(|leader| {
                let node = metrics.membership_config.membership().get_node(&leader)?;
                Some((leader, node.clone()))
            });
        match elsewhere {
            Some((leader_id, leader)) => self.forward(leader_id, &leader, command).await,
            None => self.propose_on_leader(command).await,
        }
    }

    /// Proposes on this node only: a follower answers `unavailable`, naming the leader.
    pub(crate) async fn propose_on_leader(&self, command: Command) -> Result<Outcome, StoreError> {
        match self.propose_here(command).await {
            Err(Proposal::Elsewhere(leader_id, leader)) => Err(StoreError::unavailable(format!(
                "not the leader: the leader is node {leader_id}, clients reach it at {}",
                leader.client_addr
            ))),
            Err(Proposal::Refused(error)) => Err(error),
            Ok(outcome) => outcome,
        }
    }

    async fn propose_here(
        &self,
        command: Command,
    ) -> Result<Result<Outcome, StoreError>, Proposal> {
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        let written = tokio::time::timeout(
            timeout,
            self.raft.client_write(super::Replicated(Arc::new(command))),
        )
        .await;
        match written {
            Err(_) => Err(Proposal::Refused(outcome_unknown(format!(
                "the write was not committed within {} ms",
                self.settings.write_timeout_ms
            )))),
            Ok(Ok(response)) => Ok(match response.data {
                ApplyReply::Command(outcome) => outcome,
                ApplyReply::Internal => Err(StoreError::unavailable(
                    "the write was answered as an internal entry",
                )),
            }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                match (forward.leader_id, forward.leader_node) {
                    (Some(id), Some(node)) if id != self.node_id => {
                        Err(Proposal::Elsewhere(id, node))
                    }
                    _ => Err(Proposal::Refused(StoreError::unavailable(
                        "not the leader, and no leader is known yet: retry shortly",
                    ))),
                }
            }
            Ok(Err(error)) => Err(Proposal::Refused(outcome_unknown(format!(
                "the Raft group failed ({error})"
            )))),
        }
    }

    /// Waits until this node has applied every write acknowledged before the call: the
    /// leader's read index (its commit index, once a quorum confirms it still leads), asked of
    /// the leader over the peer port on a follower.
    pub(crate) async fn read_barrier(&self) -> Result<(), StoreError> {
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        let index = match self.read_index_here().await {
            Ok(index) => index,
            Err(Proposal::Refused(error)) => return Err(error),
            Err(Proposal::Elsewhere(leader_id, leader)) => {
                let asked: Result<Result<u64, StoreError>, LeaderCallFailure> = self
                    .call_leader(leader_id, &leader, PeerCallKind::ReadIndex, &(), timeout)
                    .await;
                asked.map_err(|failure| {
                    StoreError::unavailable(match failure {
                        LeaderCallFailure::Unreachable(error) => format!(
                            "a linearizable read needs the leader, node {leader_id}, which \
                             cannot be reached ({error}); retry shortly"
                        ),
                        LeaderCallFailure::TimedOut => format!(
                            "the leader, node {leader_id}, did not give a read index within {} ms",
                            self.settings.write_timeout_ms
                        ),
                        LeaderCallFailure::Garbled(error) => error,
                        LeaderCallFailure::Refused(refusal) => {
                            format!("the leader, node {leader_id}, gave no read index ({refusal})")
                        }
                    })
                })??
            }
        };
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "the read index applied")
            .await
            .map(|_| ())
            .map_err(|error| {
                StoreError::unavailable(format!(
                    "this node did not apply up to the read index {index} in time ({error})"
                ))
            })
    }

    /// The read index, when this node leads.
    async fn read_index_here(&self) -> Result<u64, Proposal> {
        let timeout = Duration::from_millis(self.settings.write_timeout_ms);
        let asked =
            tokio::time::timeout(timeout, self.raft.get_read_log_id(ReadPolicy::ReadIndex)).await;
        match asked {
            Err(_) => Err(Proposal::Refused(StoreError::unavailable(
                "no read index within the write timeout: is a quorum up?",
            ))),
            Ok(Ok((read_log_id, _))) => Ok(read_log_id.log_id().index),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward)))) => {
                match (forward.leader_id, forward.leader_node) {
                    (Some(id), Some(node)) if id != self.node_id => {
                        Err(Proposal::Elsewhere(id, node))
                    }
                    _ => Err(Proposal::Refused(StoreError::unavailable(
                        "a linearizable read needs a leader, and none is known yet: retry shortly",
                    ))),
                }
            }
            Ok(Err(error)) => Err(Proposal::Refused(StoreError::unavailable(format!(
                "no read index: {error}"
            )))),
        }
    }

    /// Hands a command to the leader, which proposes it there.
    async fn forward(
        &self,
        leader_id: u64,
        leader: &PeerNode,
        command: Command,
    ) -> Result<Outcome, StoreError> {
        let deadline = Duration::from_millis(self.settings.write_timeout_ms);
        // Once this node follows another leader (or stands for election), the one asked can
        // no longer commit anything new: waiting out the write timeout on it (paused, or cut
        // off) would hold the client for nothing. The outcome is unknown either way; the
        // command may have reached the log before the leadership moved.
        let waiting = self.raft.wait(Some(deadline));
        let deposed = waiting.metrics(
            |metrics| metrics.current_leader != Some(leader_id),
            "the leadership moved",
        );
        let forwarded = self.call_leader::<Result<Outcome, StoreError>>(
            leader_id,
            leader,
            PeerCallKind::Propose,
            &command,
            deadline,
        );
        let answered = tokio::select! {
            biased;
            answered = forwarded => answered.map_err(|failure| match failure {
                LeaderCallFailure::Unreachable(error) => format!(
                    "forwarding the write to the leader, node {leader_id}, failed ({error})"
                ),
                LeaderCallFailure::TimedOut => format!(
                    "the leader, node {leader_id}, did not answer within {} ms",
                    self.settings.write_timeout_ms
                ),
                LeaderCallFailure::Garbled(error) => error,
                LeaderCallFailure::Refused(refusal) => {
                    format!("the leader, node {leader_id}, refused the write ({refusal})")
                }
            }),
            Ok(now) = deposed => Err(match now.current_leader {
                Some(now) => format!(
                    "node {leader_id} lost the leadership to node {now} while the write was with it"
                ),
                None => format!("node {leader_id} lost the leadership while the write was with it"),
            }),
        };
        answered.map_err(outcome_unknown)?
    }

    /// Sends `request` to the leader as a `kind` peer call and decodes its answer, within
    /// `deadline`. A follower asks this of the leader once; the caller words the failures.
    async fn call_leader<T: for<'de> Deserialize<'de>>(
        &self,
        leader_id: u64,
        leader: &PeerNode,
        kind: PeerCallKind,
        request: &impl Serialize,
        deadline: Duration,
    ) -> Result<T, LeaderCallFailure> {
        let body =
            encode(request).map_err(|error| LeaderCallFailure::Garbled(error.to_string()))?;
        let call = super::network::PeerCall {
            store_id: self.store_id.clone(),
            kind,
            body,
            cluster_id: read_cluster_id(&self.cluster_id),
            target_node: Some(leader_id),
        };
        let bytes = match tokio::time::timeout(
            deadline,
            self.transport.call(&leader.peer_addr, call, deadline),
        )
        .await
        {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) => return Err(LeaderCallFailure::Unreachable(error.to_string())),
            Err(_) => return Err(LeaderCallFailure::TimedOut),
        };
        let answer: Answer<T> = decode(&bytes, "the leader's answer")
            .map_err(|error| LeaderCallFailure::Garbled(error.to_string()))?;
        answer.map_err(LeaderCallFailure::Refused)
    }

    /// Makes a membership change or a leader transfer on the leader (asked of it over the
    /// peer port from a follower, once), and answers when it is done, in words.
    pub(crate) async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<String, StoreError> {
        let metrics = self.metrics();
        match metrics.current_leader {
            Some(leader) if leader == self.node_id => self.change_membership_here(change).await,
            Some(leader_id) => {
                let leader = metrics
                    .membership_config
                    .membership()
                    .get_node(&leader_id)
                    .cloned()
                    .ok_or_else(|| {
                        StoreError::unavailable(format!(
                            "the leader, node {leader_id}, is not in this node's membership yet: \
                             retry shortly"
                        ))
                    })?;
                let deadline = CATCH_UP_TIMEOUT + Duration::from_secs(10);
                let changed: Result<Result<String, StoreError>, LeaderCallFailure> = self
                    .call_leader(
                        leader_id,
                        &leader,
                        PeerCallKind::ChangeMembership,
                        &change,
                        deadline,
                    )
                    .await;
                changed.map_err(|failure| {
                    StoreError::unavailable(match failure {
                        LeaderCallFailure::Unreachable(error) => format!(
                            "the leader, node {leader_id}, cannot be reached ({error}); retry"
                        ),
                        LeaderCallFailure::TimedOut => format!(
                            "the leader, node {leader_id}, did not finish the change within {} s",
                            deadline.as_secs()
                        ),
                        LeaderCallFailure::Garbled(error) => error,
                        LeaderCallFailure::Refused(refusal) => {
                            format!("the leader, node {leader_id}, refused ({refusal})")
                        }
                    })
                })?
            }
            None => Err(StoreError::unavailable(
                "no leader is known yet: retry shortly",
            )),
        }
    }

    async fn change_membership_here(&self, change: MembershipChange) -> Result<String, StoreError> {
        let metrics = self.metrics();
        if metrics.current_leader != Some(self.node_id) {
            return Err(StoreError::unavailable(
                "this node stopped leading during the change: retry",
            ));
        }
        let membership = metrics.membership_config.membership().clone();
        let is_voter = |node_id: u64| membership.voter_ids().any(|voter| voter == node_id);
        let failed = |what: &str, error: String| {
            StoreError::unavailable(format!("{what} failed: {error}; retry"))
        };
        match change {
            MembershipChange::Add { node_id, node } => {
                if is_voter(node_id) {
                    return Ok(format!("node {node_id} is already a voter"));
                }
                let same_address = membership
                    .nodes()
                    .find(|(other, known)| **other != node_id && known.peer_addr == node.peer_addr);
                if let Some((other, _)) = same_address {
                    return Err(StoreError::invalid(format!(
                        "node {other} is still a member at {}: a node that lost its data comes \
                         back with a new id; remove node {other} first",
                        node.peer_addr
                    )));
                }
                self.raft
                    .add_learner(node_id, node.clone(), false)
                    .await
                    .map_err(|error| failed("adding the learner", error.to_string()))?;
                let target = metrics.last_log_index;
                self.raft
                    .wait(Some(CATCH_UP_TIMEOUT))
                    .metrics(
                        |now| matched_index(now, node_id) >= target,
                        "the learner caught up",
                    )
                    .await
                    .map_err(|error| {
                        StoreError::unavailable(format!(
                            "node {node_id} was added as a learner but did not catch up within \
                             {CATCH_UP_TIMEOUT:?} ({error}); run the add again to make it a voter"
                        ))
                    })?;
                self.raft
                    .change_membership(
                        ChangeMembers::AddVoterIds([node_id].into_iter().collect()),
                        false,
                    )
                    .await
                    .map_err(|error| failed("making the learner a voter", error.to_string()))?;
                Ok(format!("node {node_id} ({node}) is a voter"))
            }
            MembershipChange::Remove { node_id } => {
                if membership.get_node(&node_id).is_none() {
                    return Ok(format!("node {node_id} is not a member"));
                }
                let change = if is_voter(node_id) {
                    if membership.voter_ids().count() == 1 {
                        return Err(StoreError::invalid(format!(
                            "node {node_id} is the only voter: a cluster cannot remove its last \
                             voter"
                        )));
                    }
                    ChangeMembers::RemoveVoters([node_id].into_iter().collect())
                } else {
                    ChangeMembers::RemoveNodes([node_id].into_iter().collect())
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(|error| failed("removing the node", error.to_string()))?;
                Ok(format!("node {node_id} is no longer a member"))
            }
            MembershipChange::TransferLeader { to } => {
                if to == self.node_id {
                    return Ok(format!("node {to} already leads"));
                }
                if !is_voter(to) {
                    return Err(StoreError::invalid(format!(
                        "node {to} is not a voter of this store's group"
                    )));
                }
                if self.transfer_leadership(to).await {
                    Ok(format!("node {to} leads"))
                } else {
                    Err(StoreError::unavailable(format!(
                        "node {to} did not take the leadership in time: is it caught up and \
                         reachable?"
                    )))
                }
            }
        }
    }

    /// Hands the leadership to `to` and waits, up to two election timeouts, until it has it.
    async fn transfer_leadership(&self, to: u64) -> bool {
        // The target ignores a transfer while its log is behind the leader's: let it catch up
        // first (briefly; a follower that cannot is not a good successor anyway).
        let last = self.metrics().last_log_index;
        let _ = self
            .raft
            .wait(Some(Duration::from_millis(
                self.settings.election_timeout_min_ms,
            )))
            .metrics(
                |now| matched_index(now, to) >= last,
                "the successor caught up",
            )
            .await;
        if self.raft.trigger().transfer_leader(to).await.is_err() {
            return false;
        }
        let bound = Duration::from_millis(self.settings.election_timeout_max_ms * 2);
        self.raft
            .wait(Some(bound))
            .metrics(
                |metrics| metrics.current_leader == Some(to),
                "the leadership handed over",
            )
            .await
            .is_ok()
    }

    /// Spreads the leaderships of a node's stores: store number `rank` (of the stores every
    /// node hosts, in order) prefers the voter at `rank` in id order. The leader hands over to
    /// its store's preferred voter when that one is up and has the whole log, so that leaders
    /// spread at start and move back after a failure heals.
    pub(crate) async fn lead_where_preferred(&self, rank: usize, is_up: impl Fn(u64) -> bool) {
        let metrics = self.metrics();
        if metrics.current_leader != Some(self.node_id) {
            return;
        }
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        let Some(preferred) = voters.get(rank % voters.len().max(1)).copied() else {
            return;
        };
        if preferred == self.node_id || !is_up(preferred) {
            return;
        }
        if matched_index(&metrics, preferred) < metrics.last_log_index {
            return;
        }
        if self.transfer_leadership(preferred).await {
            tracing::info!(
                store = self.store_id,
                to = preferred,
                "moved the store's leadership to its preferred node"
            );
        }
    }

    /// On a graceful stop of the leader: hands the leadership to the voter that is furthest
    /// along, so that clients do not wait an election timeout. Bounded; on failure the node
    /// stops anyway and the others elect as after a crash.
    pub(crate) async fn hand_over_leadership(&self) {
        let metrics = self.metrics();
        if metrics.current_leader != Some(self.node_id) {
            return;
        }
        let voters: Vec<u64> = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|voter| *voter != self.node_id)
            .collect();
        let furthest = voters
            .iter()
            .copied()
            .max_by_key(|voter| matched_index(&metrics, *voter));
        let Some(to) = furthest else {
            return;
        };
        if self.transfer_leadership(to).await {
            tracing::info!(
                store = self.store_id,
                to,
                "handed the store's leadership over before stopping"
            );
        } else {
            tracing::warn!(
                store = self.store_id,
                to,
                "the leadership was not handed over in time; stopping anyway"
            );
        }
    }

    /// This node's view of the group.
    pub(crate) fn metrics(&self) -> openraft::RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    #[cfg(test)]
    /// Waits until the group's metrics satisfy `condition`, up to `timeout`.
    pub(crate) async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl Fn(&openraft::RaftMetrics<TypeConfig>) -> bool + Send,
    ) -> io::Result<openraft::RaftMetrics<TypeConfig>> {
        self.raft
            .wait(Some(timeout))
            .metrics(condition, what)
            .await
            .map_err(|error| io::Error::new(io::ErrorKind::TimedOut, error.to_string()))
    }

    #[cfg(test)]
    /// Adds a node as a learner, and waits until it has caught up.
    pub(crate) async fn add_learner(&self, node_id: u64, node: PeerNode) -> Result<(), StoreError> {
        self.raft
            .add_learner(node_id, node, true)
            .await
            .map(|_| ())
            .map_err(|error| StoreError::unavailable(format!("cannot add node {node_id}: {error}")))
    }

    #[cfg(test)]
    /// Builds a snapshot now and drops the log it covers (tests, and operators' compaction).
    pub(crate) async fn snapshot_and_purge(&self) -> io::Result<()> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(io::Error::other)?;
        let metrics = self
            .wait_for(Duration::from_secs(30), "a snapshot", |metrics| {
                metrics.snapshot.is_some() && metrics.snapshot == metrics.last_applied
            })
            .await?;
        if let Some(snapshot) = metrics.snapshot {
            self.raft
                .trigger()
                .purge_log(snapshot.index)
                .await
                .map_err(io::Error::other)?;
            // The purge waits for replication that still reads the log.
            self.wait_for(Duration::from_secs(30), "the log purged", |metrics| {
                metrics
                    .purged
                    .is_some_and(|purged| purged.index >= snapshot.index)
            })
            .await?;
        }
        Ok(())
    }

    /// Bytes on disk: the Raft log, the state machine's data, and the snapshot file (blocking:
    /// it reads file sizes).
    pub(crate) fn disk_bytes(&self) -> io::Result<(u64, u64, u64)> {
        let engine = self.machine.storage().engine().map_err(io::Error::other)?;
        let (log, data) = engine.disk_bytes().map_err(io::Error::other)?;
        Ok((log, data, self.machine.snapshot_bytes()))
    }

    /// The last log index this node knows is committed.
    pub(crate) fn committed_index(&self) -> Option<u64> {
        self.raft
            .metrics()
            .borrow_watched()
            .local_committed
            .map(|log_id| log_id.index)
    }

    /// Whether the group was ever formed (initialized here or joined).
    pub(crate) async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Calls `each` with the leader this node knows of, now and after every change, until
    /// the group stops.
    pub(crate) async fn follow_leader(&self, mut each: impl FnMut(Option<u64>) + Send) {
        let mut metrics = self.raft.metrics();
        let mut last = None;
        loop {
            let leader = metrics.borrow_watched().current_leader;
            if last != Some(leader) {
                each(leader);
                last = Some(leader);
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops the group (what a node's stop or crash does to it).
    pub(crate) async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "the Raft group did not stop cleanly");
        }
    }

    /// Serves a leader's pipelined AppendEntries stream: each request goes to openraft in
    /// order as it arrives, and each answer, sent once its entries are synced, comes back in
    /// the same order.
    pub(crate) fn append_stream(&self, messages: PeerMessages) -> PeerMessages {
        answer_append_stream(&self.raft, messages)
    }

    /// Serves one call from a peer; the answer is encoded for the wire.
    pub(crate) async fn handle(&self, kind: PeerCallKind, body: &[u8]) -> Vec<u8> {
        match kind {
            PeerCallKind::AppendEntries
            | PeerCallKind::Vote
            | PeerCallKind::PreVote
            | PeerCallKind::TransferLeader => answer_raft_call(&self.raft, kind, body).await,
            PeerCallKind::Propose => match decode::<Command>(body, "forwarded write") {
                // Forwarded once: a node that is not the leader either says so.
                Ok(command) => encode_answer(&Answer::Ok(self.propose_on_leader(command).await)),
                Err(error) => refuse::<()>(error),
            },
            // Asked of this node as the leader: a follower asking again would loop.
            PeerCallKind::ReadIndex => {
                encode_answer(&Answer::Ok(match self.read_index_here().await {
                    Ok(index) => Ok(index),
                    Err(Proposal::Refused(error)) => Err(error),
                    Err(Proposal::Elsewhere(leader_id, leader)) => {
                        Err(StoreError::unavailable(format!(
                            "not the leader: the leader is node {leader_id}, clients reach it at {}",
                            leader.client_addr
                        )))
                    }
                }))
            }
            // Asked of this node as the leader, like a forwarded write.
            PeerCallKind::ChangeMembership => {
                match decode::<MembershipChange>(body, "membership change") {
                    Ok(change) => {
                        encode_answer(&Answer::Ok(self.change_membership_here(change).await))
                    }
                    Err(error) => refuse::<()>(error),
                }
            }
            PeerCallKind::Hello => refuse::<()>(io::Error::other(
                "a hello is answered by the node, not by a store's group",
            )),
            PeerCallKind::SnapshotChunk => match decode::<SnapshotChunk>(body, "snapshot piece") {
                Ok(chunk) => match self.receive_chunk(chunk).await {
                    Ok(response) => encode_answer(&Answer::Ok(response)),
                    Err(error) => refuse::<()>(error),
                },
                Err(error) => refuse::<()>(error),
            },
        }
    }

    /// Writes a snapshot piece; the last one installs the snapshot and answers.
    async fn receive_chunk(
        &self,
        chunk: SnapshotChunk,
    ) -> io::Result<Option<openraft::raft::SnapshotResponse<TypeConfig>>> {
        let receiving = self.receiving.clone();
        let path = self.machine.receiving_path(&chunk.transfer.to_string());
        let done = chunk.done;
        let last = done.is_some();
        let (transfer, offset, data) = (chunk.transfer, chunk.offset, chunk.data);
        let store_id = self.store_id.clone();
        let finished = tokio::task::spawn_blocking(move || -> io::Result<Option<SnapshotFile>> {
            let mut slot = receiving
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if offset == 0 {
                if let Some(old) = slot.take() {
                    let _ = std::fs::remove_file(&old.path);
                }
                let file = std::fs::File::create(&path)?;
                *slot = Some(Receiving {
                    transfer,
                    next_offset: 0,
                    file,
                    path: path.clone(),
                });
            }
            let current = match slot.as_mut() {
                Some(current) if current.transfer == transfer && current.next_offset == offset => {
                    current
                }
                _ => {
                    return Err(io::Error::other(
                        "a snapshot piece out of order; the leader starts the transfer again",
                    ));
                }
            };
            current.file.write_all(&data)?;
            current.next_offset += data.len() as u64;
            metrics::counter!("exesdb_raft_snapshot_received_bytes_total", "store" => store_id.clone())
                .increment(data.len() as u64);
            if !last {
                return Ok(None);
            }
            let Some(received) = slot.take() else {
                return Ok(None);
            };
            received.file.sync_all()?;
            drop(received.file);
            let mut file = std::fs::File::open(&received.path)?;
            // A damaged transfer is refused here, where the leader can send it again; an
            // install that fails stops the group.
            if let Err(error) = read_snapshot_header(&mut file, &received.path) {
                let _ = std::fs::remove_file(&received.path);
                return Err(io::Error::other(error));
            }
            Ok(Some(SnapshotFile {
                file,
                path: received.path,
            }))
        })
        .await
        .map_err(io::Error::other)??;
        let (Some(file), Some((vote, meta))) = (finished, done) else {
            return Ok(None);
        };
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotFile> {
            meta,
            snapshot: file,
        };
        let response = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(io::Error::other)?;
        Ok(Some(response))
    }
}

/// The last log index the leader knows `node_id` has (`None` on a follower, or before the
/// first answer).
fn matched_index(metrics: &openraft::RaftMetrics<TypeConfig>, node_id: u64) -> Option<u64> {
    metrics
        .replication
        .as_ref()
        .and_then(|replication| replication.get(&node_id).copied().flatten())
        .map(|log_id| log_id.index)
}

/// Where a proposal went, when this node could not decide it.
enum Proposal {
    /// Another node leads: its id and addresses.
    Elsewhere(u64, PeerNode),
    Refused(StoreError),
}

/// Why a call to the leader brought no answer of the application's.
enum LeaderCallFailure {
    /// The leader could not be reached, or the call broke.
    Unreachable(String),
    /// No answer within the deadline.
    TimedOut,
    /// A message that does not encode or decode.
    Garbled(String),
    /// The leader refused the call (wrong cluster, wrong node, not the leader any more).
    Refused(String),
}

fn outcome_unknown(why: String) -> StoreError {
    StoreError::unavailable(format!(
        "{why}; the write's outcome is unknown: retry it with the same event ids, which makes \
         the retry safe"
    ))
}

/// Answers the peer calls openraft itself serves (replication, votes, handovers), whatever
/// the state machine behind `raft`; the others are refused (the group answers those).
pub(super) async fn answer_raft_call<SM: RaftStateMachine<TypeConfig>>(
    raft: &Raft<TypeConfig, SM>,
    kind: PeerCallKind,
    body: &[u8],
) -> Vec<u8> {
    match kind {
        PeerCallKind::AppendEntries => match decode(body, "AppendEntries") {
            Ok(request) => answer(raft.append_entries(request).await),
            Err(error) => refuse::<()>(error),
        },
        PeerCallKind::Vote => match decode(body, "vote request") {
            Ok(request) => answer(raft.vote(request).await),
            Err(error) => refuse::<()>(error),
        },
        PeerCallKind::PreVote => match decode(body, "pre-vote request") {
            Ok(request) => answer(raft.pre_vote(request).await),
            Err(error) => refuse::<()>(error),
        },
        PeerCallKind::TransferLeader => match decode(body, "transfer request") {
            Ok(request) => answer(raft.handle_transfer_leader(request).await),
            Err(error) => refuse::<()>(error),
        },
        other => refuse::<()>(io::Error::other(format!(
            "a {other:?} call is not openraft's to answer"
        ))),
    }
}

/// Answers a leader's pipelined AppendEntries stream: each request decoded and handed to
/// openraft in order, each answer encoded in the same order. A request that cannot be decoded
/// ends the stream; the leader opens another.
pub(super) fn answer_append_stream<SM: RaftStateMachine<TypeConfig>>(
    raft: &Raft<TypeConfig, SM>,
    messages: PeerMessages,
) -> PeerMessages {
    let requests = messages
        .map(|body| decode::<AppendEntriesRequest<TypeConfig>>(&body, "AppendEntries"))
        .take_while(|decoded| {
            if let Err(error) = decoded {
                tracing::warn!(%error, "ending a leader's AppendEntries stream");
            }
            std::future::ready(decoded.is_ok())
        })
        .filter_map(|decoded| std::future::ready(decoded.ok()));
    let answers = raft
        .stream_append(requests)
        .map(|answered| encode_answer(&answered.map_err(|fatal| fatal.to_string())));
    Box::pin(answers)
}

fn encode_answer<T: Serialize>(answer: &Answer<T>) -> Vec<u8> {
    match encode(answer) {
        Ok(bytes) => bytes,
        // Encoding our own values fails only on a bug; answer with a refusal the caller can
        // decode rather than nothing.
        Err(error) => encode(&Answer::<()>::Err(format!(
            "cannot encode the answer: {error}"
        )))
        .unwrap_or_default(),
    }
}

fn answer<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Vec<u8> {
    encode_answer(&result.map_err(|error| error.to_string()))
}

fn refuse<T: Serialize>(error: io::Error) -> Vec<u8> {
    encode_answer::<T>(&Err(error.to_string()))
}
