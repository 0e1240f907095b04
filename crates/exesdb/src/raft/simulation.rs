//! A deterministic simulation of the Raft layer under turmoil: three nodes, each running
//! openraft with this crate's configuration (`RaftSettings::raft_config`), its network layer
//! (`Network`, the pipelined AppendEntries stream included) and its peer-call dispatch
//! (`answer_raft_call`, `answer_append_stream`), over turmoil's simulated TCP, with in-memory
//! storage behind openraft's storage traits. Writers append through any node and record a
//! history; turmoil partitions links, crashes and restarts nodes and loses messages, drawn from
//! one seeded generator; at the end every link is repaired and the history is checked
//! (`exesdb_test_support::history`) against each node's applied events.
//!
//! Each run covers `EXESDB_SIM_SEEDS` seeds (8 by default), printing each; `EXESDB_SIM_SEED`
//! replays one, and a failure names its seed. Everything the run does follows the seed:
//! turmoil's network, the fault schedule, the writers' choices and openraft's own draws
//! (`runtime::seed_this_thread`). Tokio draws too (for `select!` without `biased`, in its
//! dependencies), and turmoil seeds tokio only in a build with `--cfg tokio_unstable`, so an
//! exact replay is `RUSTFLAGS="--cfg tokio_unstable" cargo test -p exesdb --lib raft::simulation`;
//! in that build the test `a_seed_replays_the_same_run` holds a replay (a new process) to it,
//! and `.ci/run` runs it. In the default build a replay follows the same faults with other
//! timings.
//!
//! The storage keeps what it was given across a crash (a synced disk), and the simulation
//! takes no snapshots: the log is never purged, so a node that was away catches up from it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder,
    RaftStateMachine,
};
use openraft::{EntryPayload, OptionalSend, Raft};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::{TcpListener, TcpStream};

use super::group::{RaftSettings, answer_append_stream, answer_raft_call};
use super::network::{
    Network, PeerAnswers, PeerCall, PeerCallError, PeerCallFuture, PeerCallKind, PeerMessages,
    PeerStreamFuture, PeerTransport,
};
use super::state_machine::SnapshotFile;
use super::{
    ApplyReply, Entry, LogId, PeerNode, Replicated, SnapshotMeta, StoredMembership, TypeConfig,
    Vote, decode, encode,
};
use crate::system::core::store::state_machine::{AppendCommand, Command, Outcome, PreparedEvent};
use exesdb_test_support::history::{self, Appended, Expected, History, Operation, Outcome as Seen};
use exesdb_types::{AppendResult, ExpectedVersion, StoreError};

const NODES: usize = 3;
const PEER_PORT: u16 = 7000;
const CLIENT_PORT: u16 = 7001;
const WRITERS: usize = 3;
const STORE: &str = "default";
/// How long the faults go on, in simulated time; then every link is repaired.
const FAULTY: Duration = Duration::from_secs(20);
/// How long the healed cluster has to agree, in simulated time.
const SETTLE: Duration = Duration::from_secs(20);
/// A client's patience with one append.
const CLIENT_DEADLINE: Duration = Duration::from_secs(3);
/// How long a connection may stay silent before its receiving end drops it. Turmoil's TCP has
/// no keep-alive: a connection whose close a partition swallowed stays open on the other side,
/// and sockets that pile up slow every new connection (turmoil scans them for a free port).
const IDLE: Duration = Duration::from_secs(5);
/// A frame bigger than this is a bug, not a message.
const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

fn host(index: usize) -> String {
    format!("node-{index}")
}

fn settings() -> RaftSettings {
    RaftSettings {
        election_timeout_min_ms: 500,
        election_timeout_max_ms: 1_000,
        heartbeat_interval_ms: 100,
        write_timeout_ms: 2_000,
        // Never reached: the simulation takes no snapshots.
        snapshot_every_entries: u64::MAX / 2,
        ..RaftSettings::default()
    }
}

type BoxError = Box<dyn std::error::Error>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// In-memory storage behind openraft's traits.

#[derive(Default)]
struct LogContents {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
}

/// The Raft log in memory: every append is "synced" when it returns.
#[derive(Clone, Default)]
struct MemLog {
    state: Arc<Mutex<LogContents>>,
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let state = lock(&self.state);
        Ok(state
            .entries
            .range((range.start_bound().cloned(), range.end_bound().cloned()))
            .map(|(_, entry)| entry.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(lock(&self.state).vote)
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let state = lock(&self.state);
        let last = state.entries.values().next_back().map(|entry| entry.log_id);
        Ok(LogState {
            last_log_id: last.or(state.purged),
            last_purged_log_id: state.purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        lock(&self.state).vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        lock(&self.state).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(lock(&self.state).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut state = lock(&self.state);
            for entry in entries {
                state.entries.insert(entry.log_id.index, entry);
            }
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map_or(0, |log_id| log_id.index + 1);
        lock(&self.state).entries.split_off(&from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.purged = Some(log_id);
        state.entries = state.entries.split_off(&(log_id.index + 1));
        Ok(())
    }
}

/// One applied event, as the checker takes it.
#[derive(Clone, Debug)]
struct AppliedEvent {
    stream: String,
    version: u64,
    position: u64,
    id: u128,
}

#[derive(Default)]
struct MachineState {
    applied: Option<LogId>,
    membership: StoredMembership,
    events: Vec<AppliedEvent>,
    versions: HashMap<String, u64>,
}

/// The state machine in memory: appends, their expected version checked, positions and stream
/// versions counted as the store counts them.
#[derive(Clone, Default)]
struct MemMachine {
    state: Arc<Mutex<MachineState>>,
}

impl MachineState {
    fn apply(&mut self, command: &Command) -> Result<Outcome, StoreError> {
        let Command::Append(append) = command else {
            return Err(StoreError::invalid(
                "the simulated machine takes appends only",
            ));
        };
        if append.events.is_empty() {
            return Err(StoreError::invalid(
                "the simulated machine takes non-empty appends",
            ));
        }
        let current = self.versions.get(&append.stream_id).copied();
        let expected_holds = match append.expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current.is_none(),
            ExpectedVersion::StreamExists => current.is_some(),
            ExpectedVersion::Exact(version) => current == Some(version),
        };
        if !expected_holds {
            return Err(StoreError::WrongExpectedVersion {
                expected: append.expected.to_string(),
                current: current.map_or(-1, |version| version as i64),
            });
        }
        let first_position = self.events.len() as u64;
        let first_version = current.map_or(0, |last| last + 1);
        for (n, event) in append.events.iter().enumerate() {
            self.events.push(AppliedEvent {
                stream: append.stream_id.clone(),
                version: first_version + n as u64,
                position: first_position + n as u64,
                id: event.event_id.as_u128(),
            });
        }
        let count = append.events.len() as u64;
        self.versions
            .insert(append.stream_id.clone(), first_version + count - 1);
        Ok(Outcome::Appended(AppendResult {
            first_event_number: first_version,
            last_event_number: first_version + count - 1,
            first_position,
            last_position: first_position + count - 1,
        }))
    }
}

impl RaftStateMachine<TypeConfig> for MemMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = NoSnapshots;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let state = lock(&self.state);
        Ok((state.applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let items: Vec<EntryResponder<TypeConfig>> = entries
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<io::Result<_>>()?;
        for (entry, responder) in items {
            let reply = {
                let mut state = lock(&self.state);
                state.applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Normal(Replicated(command)) => {
                        ApplyReply::Command(state.apply(&command))
                    }
                    EntryPayload::Blank => ApplyReply::Internal,
                    EntryPayload::Membership(membership) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), membership);
                        ApplyReply::Internal
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        NoSnapshots
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta,
        _snapshot: SnapshotFile,
    ) -> io::Result<()> {
        Err(io::Error::other("the simulation takes no snapshots"))
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>>> {
        Ok(None)
    }
}

/// The simulation's log is never purged (`snapshot_every_entries` is out of reach), so no
/// snapshot is ever asked for.
struct NoSnapshots;

impl RaftSnapshotBuilder<TypeConfig> for NoSnapshots {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(
        &mut self,
    ) -> io::Result<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>> {
        Err(io::Error::other("the simulation takes no snapshots"))
    }
}

// ---------------------------------------------------------------------------------------------
// The peer transport over turmoil's TCP: one connection per call or stream, frames of a u32
// length and the bytes.

async fn write_frame(stream: &mut (impl AsyncWriteExt + Unpin), bytes: &[u8]) -> io::Result<()> {
    let length = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    stream.write_all(&length.to_be_bytes()).await?;
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// [`read_frame`], or the end of the connection after [`IDLE`] without one.
async fn read_frame_or_idle(
    stream: &mut (impl AsyncReadExt + Unpin),
) -> io::Result<Option<Vec<u8>>> {
    tokio::time::timeout(IDLE, read_frame(stream))
        .await
        .unwrap_or(Ok(None))
}

async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 4];
    match stream.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too long"));
    }
    let mut bytes = vec![0u8; length];
    stream.read_exact(&mut bytes).await?;
    Ok(Some(bytes))
}

/// What opens a peer connection: the call's kind, and whether a stream follows.
#[derive(Serialize, Deserialize)]
struct PeerHeader {
    kind: u32,
    stream: bool,
}

struct SimTransport;

fn unreachable(peer: &str, error: impl std::fmt::Display) -> PeerCallError {
    PeerCallError::Unreachable(format!("{peer} ({error})"))
}

impl PeerTransport for SimTransport {
    fn call(&self, peer_addr: &str, call: PeerCall, deadline: Duration) -> PeerCallFuture {
        let peer = peer_addr.to_string();
        Box::pin(async move {
            let exchange = async {
                let mut stream = TcpStream::connect(peer.as_str()).await?;
                let header = encode(&PeerHeader {
                    kind: call.kind.code(),
                    stream: false,
                })?;
                write_frame(&mut stream, &header).await?;
                write_frame(&mut stream, &call.body).await?;
                read_frame(&mut stream)
                    .await?
                    .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"))
            };
            match tokio::time::timeout(deadline, exchange).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(error)) => Err(unreachable(&peer, error)),
                Err(_) => Err(PeerCallError::Timeout(peer)),
            }
        })
    }

    fn stream(
        &self,
        peer_addr: &str,
        call: PeerCall,
        mut messages: PeerMessages,
    ) -> PeerStreamFuture {
        let peer = peer_addr.to_string();
        Box::pin(async move {
            let stream = TcpStream::connect(peer.as_str())
                .await
                .map_err(|error| unreachable(&peer, error))?;
            let (reading, mut writing) = stream.into_split();
            let header = encode(&PeerHeader {
                kind: call.kind.code(),
                stream: true,
            })
            .map_err(|error| unreachable(&peer, error))?;
            write_frame(&mut writing, &header)
                .await
                .map_err(|error| unreachable(&peer, error))?;
            tokio::spawn(async move {
                while let Some(message) = messages.next().await {
                    if write_frame(&mut writing, &message).await.is_err() {
                        break;
                    }
                }
            });
            let answers =
                futures_util::stream::unfold((reading, peer), |(mut reading, peer)| async move {
                    match read_frame_or_idle(&mut reading).await {
                        Ok(Some(answer)) => Some((Ok(answer), (reading, peer))),
                        Ok(None) => None,
                        Err(error) => Some((Err(unreachable(&peer, error)), (reading, peer))),
                    }
                });
            Ok(Box::pin(answers) as PeerAnswers)
        })
    }
}

/// Serves the peer port: each connection one call, or one AppendEntries stream.
async fn serve_peers(raft: Raft<TypeConfig, MemMachine>) -> io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", PEER_PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let raft = raft.clone();
        tokio::spawn(async move {
            let _ = serve_peer_connection(raft, stream).await;
        });
    }
}

async fn serve_peer_connection(
    raft: Raft<TypeConfig, MemMachine>,
    stream: TcpStream,
) -> io::Result<()> {
    let (mut reading, mut writing) = stream.into_split();
    let Some(header) = read_frame_or_idle(&mut reading).await? else {
        return Ok(());
    };
    let header: PeerHeader = decode(&header, "peer header")?;
    let kind = PeerCallKind::from_code(header.kind)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown call kind"))?;
    if header.stream {
        let requests = futures_util::stream::unfold(reading, |mut reading| async move {
            match read_frame_or_idle(&mut reading).await {
                Ok(Some(message)) => Some((message, reading)),
                _ => None,
            }
        });
        let mut answers = answer_append_stream(&raft, Box::pin(requests));
        while let Some(answer) = answers.next().await {
            write_frame(&mut writing, &answer).await?;
        }
        return Ok(());
    }
    let Some(body) = read_frame_or_idle(&mut reading).await? else {
        return Ok(());
    };
    let answer = answer_raft_call(&raft, kind, &body).await;
    write_frame(&mut writing, &answer).await
}

// ---------------------------------------------------------------------------------------------
// Clients: an append goes to one node's client port, which proposes it if it leads.

#[derive(Serialize, Deserialize)]
enum ClientAnswer {
    Appended(AppendResult),
    /// Not proposed: this node does not lead; the leader it knows of, if any.
    NotLeader(Option<u64>),
    /// Applied, and refused by the state machine: nothing was written.
    Refused(String),
    /// Proposed, or perhaps not: the outcome is unknown.
    Failed(String),
}

async fn serve_clients(raft: Raft<TypeConfig, MemMachine>) -> io::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", CLIENT_PORT)).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let raft = raft.clone();
        tokio::spawn(async move {
            let Ok(Some(request)) = read_frame_or_idle(&mut stream).await else {
                return;
            };
            let answer = match decode::<Command>(&request, "append") {
                Ok(command) => propose(&raft, command).await,
                Err(error) => ClientAnswer::Failed(error.to_string()),
            };
            if let Ok(bytes) = encode(&answer) {
                let _ = write_frame(&mut stream, &bytes).await;
            }
        });
    }
}

async fn propose(raft: &Raft<TypeConfig, MemMachine>, command: Command) -> ClientAnswer {
    use openraft::error::{ClientWriteError, RaftError};
    match raft.client_write(Replicated(Arc::new(command))).await {
        Ok(response) => match response.data {
            ApplyReply::Command(Ok(Outcome::Appended(result))) => ClientAnswer::Appended(result),
            ApplyReply::Command(Ok(other)) => ClientAnswer::Failed(format!("{other:?}")),
            ApplyReply::Command(Err(refusal)) => ClientAnswer::Refused(refusal.to_string()),
            ApplyReply::Internal => ClientAnswer::Failed("an internal entry".into()),
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            ClientAnswer::NotLeader(forward.leader_id)
        }
        Err(error) => ClientAnswer::Failed(error.to_string()),
    }
}

/// One writer: appends of one event to its own stream, each through a node of its choosing
/// (`choose` draws one at random),
/// until `until` (simulated time); records each in `history`. Each append expects the version
/// the last acknowledgement gave (no stream at first); after an unknown outcome it cannot know
/// the version, and its next append expects any.
async fn write(
    writer: usize,
    history: Arc<History>,
    mut choose: impl FnMut() -> usize,
    until: Duration,
) -> Result<(), BoxError> {
    let stream_id = format!("writer-{writer}");
    let mut expected = Expected::NoStream;
    let mut sticky: Option<usize> = None;
    let mut n = 0u64;
    while turmoil::elapsed() < until {
        // A client keeps to the node that took its last write, or the leader it was told of;
        // every fourth append goes to a node drawn at random, so followers are asked too.
        let node = match sticky.take() {
            Some(node) if n % 4 != 3 => node,
            _ => choose(),
        };
        let id = uuid::Uuid::from_u128(((writer as u128) << 64) | u128::from(n));
        n += 1;
        let command = Command::Append(AppendCommand {
            stream_id: stream_id.clone(),
            expected: match expected {
                Expected::Any => ExpectedVersion::Any,
                Expected::NoStream => ExpectedVersion::NoStream,
                Expected::Exact(version) => ExpectedVersion::Exact(version),
            },
            events: vec![PreparedEvent {
                event_id: id,
                client_event_id: true,
                event_type: "Written".into(),
                data: b"{}".to_vec(),
                metadata: Vec::new(),
                data_content_type: "application/json".into(),
                metadata_content_type: "application/octet-stream".into(),
            }],
            created_micros: 0,
        });
        let recorded_expected = expected;
        let start = history.now();
        let exchange = async {
            let mut stream = TcpStream::connect((host(node).as_str(), CLIENT_PORT)).await?;
            write_frame(&mut stream, &encode(&command)?).await?;
            let answer = read_frame(&mut stream)
                .await?
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"))?;
            decode::<ClientAnswer>(&answer, "client answer")
        };
        let outcome = match tokio::time::timeout(CLIENT_DEADLINE, exchange).await {
            Ok(Ok(ClientAnswer::Appended(result))) => Seen::Ok(Appended {
                first_version: result.first_event_number,
                first_position: result.first_position,
            }),
            // Refused before it was proposed: nothing was written.
            Ok(Ok(ClientAnswer::NotLeader(leader))) => {
                sticky = leader.map(|leader| leader as usize);
                Seen::Fail("not the leader".into())
            }
            Ok(Ok(ClientAnswer::Refused(why))) => Seen::Fail(why),
            Ok(Ok(ClientAnswer::Failed(why))) => Seen::Unknown(why),
            Ok(Err(error)) => Seen::Unknown(error.to_string()),
            Err(_) => Seen::Unknown("no answer in time".into()),
        };
        let refused = matches!(outcome, Seen::Fail(_) | Seen::Unknown(_));
        match &outcome {
            Seen::Ok(appended) => {
                expected = Expected::Exact(appended.first_version);
                sticky = Some(node);
            }
            Seen::Unknown(_) => expected = Expected::Any,
            Seen::Fail(_) => {}
        }
        history.record(
            writer,
            node,
            start,
            Operation::Append {
                stream: stream_id.clone(),
                expected: recorded_expected,
                ids: vec![id.as_u128()],
                outcome,
            },
        );
        // A client's pace, and a pause after a refusal as a retrying client would take.
        let pause = if refused { 100 } else { 20 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run.

/// The seeded generator every choice of the simulation comes from (xorshift64*).
#[derive(Clone)]
struct Draw(Arc<Mutex<u64>>);

impl Draw {
    fn new(seed: u64) -> Draw {
        Draw(Arc::new(Mutex::new(seed | 1)))
    }

    fn below(&self, bound: usize) -> usize {
        let mut state = lock(&self.0);
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound as u64) as usize
    }
}

/// Each node's storage, kept across its crashes.
struct NodeStorage {
    log: MemLog,
    machine: MemMachine,
}

fn members() -> BTreeMap<u64, PeerNode> {
    (0..NODES)
        .map(|index| {
            (
                index as u64,
                PeerNode {
                    peer_addr: format!("{}:{PEER_PORT}", host(index)),
                    client_addr: format!("{}:{CLIENT_PORT}", host(index)),
                },
            )
        })
        .collect()
}

async fn run_node(index: usize, storage: &NodeStorage) -> Result<(), BoxError> {
    let config = Arc::new(settings().raft_config()?);
    let network = Network {
        store_id: STORE.to_string(),
        transport: Arc::new(SimTransport),
        cluster_id: Arc::new(std::sync::RwLock::new(None)),
        answer_patience_min: Duration::from_millis(settings().election_timeout_min_ms),
    };
    let raft = Raft::new(
        index as u64,
        config,
        network,
        storage.log.clone(),
        storage.machine.clone(),
    )
    .await?;
    // The first node forms the cluster once; after a restart its log says it is formed.
    if index == 0 && lock(&storage.log.state).vote.is_none() {
        raft.initialize(members()).await?;
    }
    tokio::select! {
        biased;
        served = serve_peers(raft.clone()) => served?,
        served = serve_clients(raft.clone()) => served?,
    }
    Ok(())
}

/// A digest of a history, to tell two runs apart at a glance (SipHash with fixed keys).
fn fingerprint(records: &[history::Record]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    format!("{records:?}").hash(&mut hasher);
    hasher.finish()
}

/// Runs the simulation of `seed`; returns what the checker found in its history.
fn simulate(seed: u64) -> Vec<history::Violation> {
    let draw = Draw::new(seed);
    // openraft's own draws (election timeouts) follow the seed too: turmoil runs every host
    // on this thread.
    super::runtime::seed_this_thread(seed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(FAULTY + SETTLE + Duration::from_secs(20))
        // Ten times coarser than turmoil's default: the timeouts here are 100 ms and more.
        .tick_duration(Duration::from_millis(10))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        // The widest range: a connection whose close a partition swallowed stays open on the
        // other side, and a port reused for a new one would meet it.
        .ephemeral_ports(1024..=65535)
        .build();
    let storages: Vec<Arc<NodeStorage>> = (0..NODES)
        .map(|_| {
            Arc::new(NodeStorage {
                log: MemLog::default(),
                machine: MemMachine::default(),
            })
        })
        .collect();
    for (index, storage) in storages.iter().enumerate() {
        let storage = storage.clone();
        sim.host(host(index).as_str(), move || {
            let storage = storage.clone();
            async move { run_node(index, &storage).await }
        });
    }
    let history = Arc::new(History::on_clock(turmoil::elapsed));
    for writer in 0..WRITERS {
        let (history, draw) = (history.clone(), draw.clone());
        sim.client(format!("writer-{writer}").as_str(), async move {
            write(writer, history, move || draw.below(NODES), FAULTY).await
        });
    }
    // The simulation ends when its clients do: this one lasts until the settling is over.
    sim.client("observer", async {
        tokio::time::sleep(FAULTY + SETTLE).await;
        Ok(())
    });
    // The faults, between simulation steps: partitions and their repair, crashes and restarts,
    // and for a while a lossy link.
    let mut down: Vec<bool> = vec![false; NODES];
    let mut steps = 0u64;
    loop {
        let elapsed = sim.elapsed();
        if elapsed >= FAULTY {
            break;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => panic!("seed {seed}: the simulation failed at {elapsed:?}: {error}"),
        }
        steps += 1;
        if !steps.is_multiple_of(50) {
            continue;
        }
        let (a, b) = (draw.below(NODES), draw.below(NODES));
        match draw.below(6) {
            0 if a != b => sim.partition(host(a).as_str(), host(b).as_str()),
            1 => sim.repair(host(a).as_str(), host(b).as_str()),
            // At most one node down at a time: the majority can go on.
            2 if !down.iter().any(|down| *down) => {
                sim.crash(host(a).as_str());
                down[a] = true;
            }
            3 if down[a] => {
                sim.bounce(host(a).as_str());
                down[a] = false;
            }
            4 if a != b => sim.set_link_fail_rate(host(a).as_str(), host(b).as_str(), 0.2),
            5 if a != b => sim.set_link_fail_rate(host(a).as_str(), host(b).as_str(), 0.0),
            _ => {}
        }
    }
    // Heal: every link whole, every node up, then time for the cluster to agree.
    for (a, down) in down.iter().enumerate() {
        if *down {
            sim.bounce(host(a).as_str());
        }
        for b in 0..NODES {
            if a != b {
                sim.repair(host(a).as_str(), host(b).as_str());
                sim.set_link_fail_rate(host(a).as_str(), host(b).as_str(), 0.0);
            }
        }
    }
    let settled = |storages: &[Arc<NodeStorage>]| {
        let lengths: Vec<usize> = storages
            .iter()
            .map(|storage| lock(&storage.machine.state).events.len())
            .collect();
        lengths.windows(2).all(|pair| pair[0] == pair[1])
            && storages.iter().all(|storage| {
                let log = lock(&storage.log.state);
                let last = log.entries.keys().next_back().copied();
                lock(&storage.machine.state).applied.map(|id| id.index) == last
            })
    };
    let healed_at = sim.elapsed();
    while !settled(&storages) && sim.elapsed() < healed_at + SETTLE {
        match sim.step() {
            Ok(false) => {}
            Ok(true) => break,
            Err(error) => panic!("seed {seed}: the simulation failed while settling: {error}"),
        }
    }
    let nodes: Vec<Vec<history::StoredEvent>> = storages
        .iter()
        .map(|storage| {
            lock(&storage.machine.state)
                .events
                .iter()
                .map(|event| history::StoredEvent {
                    stream: event.stream.clone(),
                    version: event.version,
                    position: event.position,
                    id: event.id,
                })
                .collect()
        })
        .collect();
    let records = history.records();
    let acknowledged = records
        .iter()
        .filter(|record| {
            matches!(
                record.operation,
                Operation::Append {
                    outcome: Seen::Ok(_),
                    ..
                }
            )
        })
        .count();
    println!(
        "seed {seed}: {} appends, {acknowledged} acknowledged, {} events on node 0, history \
         {:016x}",
        records.len(),
        nodes[0].len(),
        fingerprint(&records)
    );
    assert!(
        acknowledged > 0,
        "seed {seed}: no append was acknowledged: the simulation tested nothing"
    );
    history::check(&records, &nodes)
}

/// The seeds of this run: `EXESDB_SIM_SEED` alone, or `EXESDB_SIM_SEEDS` (8 by default) new
/// ones.
fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("EXESDB_SIM_SEED") {
        return vec![seed.parse().expect("EXESDB_SIM_SEED is a number")];
    }
    let count: u64 = std::env::var("EXESDB_SIM_SEEDS")
        .map(|count| count.parse().expect("EXESDB_SIM_SEEDS is a number"))
        .unwrap_or(8);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or(1);
    (0..count)
        .map(|n| base.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(n))
        .collect()
}

#[test]
fn the_raft_layer_under_random_partitions_crashes_and_loss_keeps_every_acknowledged_write() {
    for seed in seeds() {
        let violations = simulate(seed);
        assert!(
            violations.is_empty(),
            "seed {seed} (replay with EXESDB_SIM_SEED={seed}): {violations:#?}"
        );
    }
}

/// Only a build with `--cfg tokio_unstable` replays exactly (see the module's header). A replay
/// is a new process, as a user's is: within one process a second run of a seed drifts by a
/// tick here and there (something in the process differs after the first run; not found).
#[cfg(tokio_unstable)]
#[test]
fn a_seed_replays_the_same_run() {
    let seed = seeds()[0];
    let run = || {
        let output = std::process::Command::new(
            std::env::current_exe().expect("the test binary's path"),
        )
        .args([
            "raft::simulation::the_raft_layer_under_random_partitions_crashes_and_loss_keeps_every_acknowledged_write",
            "--exact",
            "--nocapture",
        ])
        .env("EXESDB_SIM_SEED", seed.to_string())
        .output()
        .expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "seed {seed}: the run failed:\n{stdout}"
        );
        stdout
            .lines()
            .find_map(|line| line.split("history ").nth(1).map(str::to_string))
            .unwrap_or_else(|| panic!("seed {seed}: no history fingerprint in:\n{stdout}"))
    };
    let first = run();
    let again = run();
    assert_eq!(
        first, again,
        "seed {seed}: a replay recorded another history"
    );
}
