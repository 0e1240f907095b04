//! Raft groups of several nodes in one process, over an in-memory transport and real store
//! directories: they elect, replicate the Store's commands, survive the loss of their leader,
//! and bring a node back from the log or from a snapshot. (The tests with real processes and
//! the peer port come with the cluster tree.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tempfile::TempDir;
use tokio::sync::watch;
use uuid::Uuid;

use super::PeerNode;
use super::group::{GroupStorage, RaftGroup, RaftSettings};
use super::network::{
    PeerAnswers, PeerCall, PeerCallError, PeerCallFuture, PeerMessages, PeerStreamFuture,
    PeerTransport,
};
use crate::config::{Limits, StorageSettings};
use crate::storage::Storage;
use crate::system::core::store::state_machine::{AppendCommand, Command, Outcome, PreparedEvent};
use exesdb_types::{ExpectedVersion, RecordedEvent, StoreError};
use futures_util::StreamExt;

const STORE: &str = "default";
const WAIT: Duration = Duration::from_secs(30);

/// Delivers calls to the groups registered under their peer address; a node marked down
/// is unreachable both ways.
#[derive(Default)]
struct LocalTransport {
    groups: RwLock<HashMap<String, RaftGroup>>,
    down: Arc<RwLock<HashSet<String>>>,
}

fn is_down(down: &RwLock<HashSet<String>>, peer_addr: &str) -> bool {
    down.read()
        .map(|down| down.contains(peer_addr))
        .unwrap_or(true)
}

impl PeerTransport for LocalTransport {
    fn call(&self, peer_addr: &str, call: PeerCall, _deadline: Duration) -> PeerCallFuture {
        let down = is_down(&self.down, peer_addr);
        let group = self
            .groups
            .read()
            .ok()
            .and_then(|groups| groups.get(peer_addr).cloned());
        let peer = peer_addr.to_string();
        Box::pin(async move {
            match group {
                Some(group) if !down && call.store_id == STORE => {
                    Ok(group.handle(call.kind, &call.body).await)
                }
                _ => Err(PeerCallError::Unreachable(peer)),
            }
        })
    }

    /// Delivers messages while the peer is up: marking it down cuts an open stream too.
    fn stream(&self, peer_addr: &str, call: PeerCall, messages: PeerMessages) -> PeerStreamFuture {
        let group = self
            .groups
            .read()
            .ok()
            .and_then(|groups| groups.get(peer_addr).cloned());
        let (down, peer) = (self.down.clone(), peer_addr.to_string());
        Box::pin(async move {
            match group {
                Some(group) if !is_down(&down, &peer) && call.store_id == STORE => {
                    let (down_in, peer_in) = (down.clone(), peer.clone());
                    let delivered = messages
                        .take_while(move |_| std::future::ready(!is_down(&down_in, &peer_in)));
                    let answers = group
                        .append_stream(Box::pin(delivered))
                        .take_while(move |_| std::future::ready(!is_down(&down, &peer)))
                        .map(Ok);
                    Ok(Box::pin(answers) as PeerAnswers)
                }
                _ => Err(PeerCallError::Unreachable(peer)),
            }
        })
    }
}

struct TestNode {
    id: u64,
    dir: TempDir,
    storage: Arc<Storage>,
    group: RaftGroup,
    /// The node's "committed up to position P" mark, which its subscribers follow.
    committed: watch::Receiver<u64>,
}

fn addr(id: u64) -> String {
    format!("node-{id}")
}

fn settings() -> RaftSettings {
    RaftSettings {
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        heartbeat_interval_ms: 100,
        ..RaftSettings::default()
    }
}

async fn start_node(
    id: u64,
    dir: TempDir,
    transport: &Arc<LocalTransport>,
) -> io::Result<TestNode> {
    let storage =
        Arc::new(Storage::open(dir.path(), &StorageSettings::default()).map_err(io::Error::other)?);
    let (committed, committed_mark) = watch::channel(0);
    let group = RaftGroup::start(
        id,
        STORE,
        settings(),
        GroupStorage {
            storage: storage.clone(),
            snapshot_dir: dir.path().join("raft-snapshots"),
            limits: Limits::default(),
            head_cache_entries_max: 1_000,
            committed,
            cluster_id: Default::default(),
        },
        transport.clone(),
    )
    .await?;
    if let Ok(mut groups) = transport.groups.write() {
        groups.insert(addr(id), group.clone());
    }
    if let Ok(mut down) = transport.down.write() {
        down.remove(&addr(id));
    }
    Ok(TestNode {
        id,
        dir,
        storage,
        group,
        committed: committed_mark,
    })
}

/// Starts a stopped node again from its directory, once everything that held its storage
/// has let go of it (fjall locks the directory while it is open).
async fn restart(node: TestNode, transport: &Arc<LocalTransport>) -> io::Result<TestNode> {
    let TestNode {
        id,
        dir,
        mut storage,
        group,
        ..
    } = node;
    group.shutdown().await;
    drop(group);
    if let Ok(mut groups) = transport.groups.write() {
        groups.remove(&addr(id));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Arc::try_unwrap(storage) {
            Ok(closed) => {
                drop(closed);
                break;
            }
            Err(shared) if tokio::time::Instant::now() < deadline => {
                storage = shared;
                tokio::task::yield_now().await;
            }
            Err(_) => return Err(io::Error::other("the stopped node's storage is still held")),
        }
    }
    start_node(id, dir, transport).await
}

fn member(id: u64) -> PeerNode {
    PeerNode {
        peer_addr: addr(id),
        client_addr: format!("127.0.0.1:{}", 2000 + id),
    }
}

async fn start_cluster(size: u64, transport: &Arc<LocalTransport>) -> io::Result<Vec<TestNode>> {
    let mut nodes = Vec::new();
    for id in 1..=size {
        nodes.push(start_node(id, tempfile::tempdir()?, transport).await?);
    }
    let members: BTreeMap<u64, PeerNode> = (1..=size).map(|id| (id, member(id))).collect();
    nodes[0].group.initialize(members).await?;
    Ok(nodes)
}

/// Waits until one of `nodes` leads, as every one of them sees it; returns its place.
async fn leader_of(nodes: &[TestNode]) -> io::Result<usize> {
    let leader = nodes[0]
        .group
        .wait_for(WAIT, "a leader", |metrics| {
            metrics
                .current_leader
                .is_some_and(|id| nodes.iter().any(|n| n.id == id))
        })
        .await?
        .current_leader;
    for node in nodes {
        node.group
            .wait_for(WAIT, "the same leader everywhere", |metrics| {
                metrics.current_leader == leader
            })
            .await?;
    }
    let place = nodes
        .iter()
        .position(|node| Some(node.id) == leader)
        .ok_or_else(|| io::Error::other("the leader is not among the nodes"))?;
    // A new leader takes writes once an entry of its own term is committed.
    nodes[place]
        .group
        .wait_for(WAIT, "the leader's first commit", |metrics| {
            metrics
                .local_committed
                .is_some_and(|committed| committed.leader_id.term == metrics.current_term)
        })
        .await?;
    Ok(place)
}

fn append(stream_id: &str, expected: ExpectedVersion) -> Command {
    Command::Append(AppendCommand {
        stream_id: stream_id.to_string(),
        expected,
        events: vec![PreparedEvent {
            event_id: Uuid::now_v7(),
            client_event_id: true,
            event_type: "Happened".into(),
            data: b"{}".to_vec(),
            metadata: Vec::new(),
            data_content_type: "application/json".into(),
            metadata_content_type: "application/octet-stream".into(),
        }],
        created_micros: 1_700_000_000_000_000,
    })
}

fn all_events(node: &TestNode) -> io::Result<Vec<RecordedEvent>> {
    super::tests::all_events_of(&node.storage)
}

/// Waits until every node has applied the first `events` events.
async fn settle(nodes: &[TestNode], events: u64) -> io::Result<()> {
    for node in nodes {
        let mut committed = node.committed.clone();
        tokio::time::timeout(WAIT, committed.wait_for(|position| *position >= events))
            .await
            .map_err(|_| {
                io::Error::other(format!("node {} did not apply {events} events", node.id))
            })?
            .map_err(io::Error::other)?;
    }
    Ok(())
}

async fn write(node: &TestNode, count: u64, prefix: &str) -> Result<Vec<Outcome>, StoreError> {
    let mut outcomes = Vec::new();
    for n in 0..count {
        // As a client does: an `unavailable` answer (a leader change on a loaded machine) is
        // retried with the same event ids, which the store recognises if the first try landed.
        let command = append(&format!("{prefix}-{}", n % 7), ExpectedVersion::Any);
        let deadline = tokio::time::Instant::now() + WAIT;
        let outcome = loop {
            match node.group.propose(command.clone()).await {
                Err(StoreError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::task::yield_now().await;
                }
                answered => break answered?,
            }
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

fn positions(outcomes: &[Outcome]) -> Vec<u64> {
    outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Appended(result) => Some(result.first_position),
            _ => None,
        })
        .collect()
}

/// Fails naming the first event where a node's `$all` differs from the expected one.
fn assert_same(theirs: &[RecordedEvent], expected: &[RecordedEvent], node: u64) {
    let first_difference = theirs.iter().zip(expected).position(|(a, b)| a != b);
    assert_eq!(
        (theirs.len(), first_difference),
        (expected.len(), None),
        "node {node}: {:?}",
        first_difference.map(|at| (&theirs[at], &expected[at]))
    );
}

/// openraft's warnings and errors, shown with a failing test's output.
fn log_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
}

fn io_error(error: StoreError) -> io::Error {
    io::Error::other(error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_survive_the_loss_of_their_leader() -> io::Result<()> {
    log_warnings();
    let transport = Arc::new(LocalTransport::default());
    let mut nodes = start_cluster(3, &transport).await?;
    let leader = leader_of(&nodes).await?;
    let first = write(&nodes[leader], 30, "order").await.map_err(io_error)?;
    assert_eq!(positions(&first), (0..30).collect::<Vec<_>>());

    // A follower hands a write to the leader; asked to decide one itself, it names the leader.
    let follower = (leader + 1) % nodes.len();
    let forwarded = nodes[follower]
        .group
        .propose(append("order-x", ExpectedVersion::Any))
        .await
        .map_err(io_error)?;
    assert_eq!(positions(&[forwarded]), vec![30]);
    let refused = nodes[follower]
        .group
        .propose_on_leader(append("order-x", ExpectedVersion::Any))
        .await;
    match refused {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("not the leader"), "{message}")
        }
        other => panic!("a follower answered {other:?}"),
    }

    settle(&nodes, 31).await?;
    let everywhere = all_events(&nodes[leader])?;
    assert_eq!(everywhere.len(), 31);
    for node in &nodes {
        assert_same(&all_events(node)?, &everywhere, node.id);
    }

    // The leader is lost: it stops, and nothing reaches it any more.
    let lost = nodes.remove(leader);
    if let Ok(mut down) = transport.down.write() {
        down.insert(addr(lost.id));
    }
    lost.group.shutdown().await;
    let new_leader = leader_of(&nodes).await?;
    let second = write(&nodes[new_leader], 20, "after")
        .await
        .map_err(io_error)?;
    assert_eq!(positions(&second), (31..51).collect::<Vec<_>>());
    settle(&nodes, 51).await?;
    let survivors = all_events(&nodes[new_leader])?;
    assert_eq!(survivors.len(), 51);
    // Every acknowledged event is kept.
    assert_same(&survivors[..31], &everywhere, 0);
    for node in &nodes {
        assert_same(&all_events(node)?, &survivors, node.id);
    }

    // The lost node comes back from its directory and catches up from the log.
    let back = restart(lost, &transport).await?;
    nodes.push(back);
    let last = nodes.len() - 1;
    settle(&nodes, 51).await?;
    assert_eq!(all_events(&nodes[last])?, survivors);
    for node in &nodes {
        node.group.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_from_a_snapshot_once_the_log_is_purged() -> io::Result<()> {
    log_warnings();
    let transport = Arc::new(LocalTransport::default());
    let mut nodes = start_cluster(3, &transport).await?;
    let leader = leader_of(&nodes).await?;
    write(&nodes[leader], 40, "order").await.map_err(io_error)?;
    nodes[leader].group.snapshot_and_purge().await?;
    let purged = nodes[leader].group.metrics().purged;
    assert!(purged.is_some(), "the leader purged its log");

    // An empty node joins as a learner: the log it would need is gone, so it gets the
    // snapshot, in pieces, over the transport.
    let joining = start_node(4, tempfile::tempdir()?, &transport).await?;
    nodes[leader]
        .group
        .add_learner(4, member(4))
        .await
        .map_err(io_error)?;
    write(&nodes[leader], 5, "later").await.map_err(io_error)?;
    nodes.push(joining);
    settle(&nodes, 45).await?;
    let expected = all_events(&nodes[leader])?;
    assert_eq!(expected.len(), 45);
    assert_eq!(all_events(&nodes[3])?, expected);
    assert!(
        nodes[3].group.metrics().snapshot.is_some(),
        "the learner installed a snapshot"
    );
    for node in &nodes {
        node.group.shutdown().await;
    }
    Ok(())
}
