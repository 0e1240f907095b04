//! Raft's RPCs between nodes, as bytes through a [`PeerTransport`] that the server provides
//! over the peer port (the engine opens no socket). Every call carries a deadline from
//! openraft's `RPCOption`: a call with none once froze openraft's core (openraft #1810).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Notify, Semaphore};

use super::state_machine::SnapshotFile;
use super::{PeerNode, SnapshotMeta, TypeConfig, Vote, decode, encode};

/// What a peer call asks of the store's Raft group on the other node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCallKind {
    /// Raft's AppendEntries (also the leader's heartbeat).
    AppendEntries,
    /// Raft's RequestVote.
    Vote,
    /// A pre-vote: would the peer vote for this candidate? Nothing is stored.
    PreVote,
    /// A piece of a snapshot; the last piece installs it.
    SnapshotChunk,
    /// The leader hands its leadership to the peer.
    TransferLeader,
    /// Who are you? (discovery: the node's id, addresses, cluster and leader)
    Hello,
    /// A follower hands a client's write to the leader, which proposes it.
    Propose,
    /// A follower asks the leader for a read index: its commit index, confirmed by a quorum.
    ReadIndex,
    /// A change of the membership (add, remove) or a leader transfer, asked of the leader.
    ChangeMembership,
}

impl PeerCallKind {
    /// The kind's number on the wire.
    pub fn code(self) -> u32 {
        match self {
            PeerCallKind::AppendEntries => 1,
            PeerCallKind::Vote => 2,
            PeerCallKind::PreVote => 3,
            PeerCallKind::SnapshotChunk => 4,
            PeerCallKind::TransferLeader => 5,
            PeerCallKind::Hello => 6,
            PeerCallKind::Propose => 7,
            PeerCallKind::ReadIndex => 8,
            PeerCallKind::ChangeMembership => 9,
        }
    }

    /// The kind with that number, if any.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => PeerCallKind::AppendEntries,
            2 => PeerCallKind::Vote,
            3 => PeerCallKind::PreVote,
            4 => PeerCallKind::SnapshotChunk,
            5 => PeerCallKind::TransferLeader,
            6 => PeerCallKind::Hello,
            7 => PeerCallKind::Propose,
            8 => PeerCallKind::ReadIndex,
            9 => PeerCallKind::ChangeMembership,
            _ => return None,
        })
    }
}

/// One call to a peer: which store's group, what kind, and the encoded request.
#[derive(Debug, Clone)]
pub struct PeerCall {
    /// The store whose Raft group is called.
    pub store_id: String,
    /// What is asked.
    pub kind: PeerCallKind,
    /// The request, encoded by the caller's group; the peer's group decodes it.
    pub body: Vec<u8>,
    /// The cluster the caller's store belongs to, once it belongs to one: a node refuses calls
    /// from another cluster, so that it never takes another cluster's log.
    pub cluster_id: Option<String>,
    /// The node the call is meant for, when the caller knows it. A node at that address with
    /// another id refuses it: that is a node whose data was lost and that started again with a
    /// new id, and taking the call would let its empty log stand in for the old voter's.
    pub target_node: Option<u64>,
}

/// Why a peer call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerCallError {
    /// The peer could not be reached (no connection, refused, reset).
    #[error("peer {0} is unreachable")]
    Unreachable(String),
    /// The call's deadline passed.
    #[error("the call to peer {0} timed out")]
    Timeout(String),
    /// The peer answered with a refusal (a wrong cluster secret, an unknown store).
    #[error("peer refused the call: {0}")]
    Refused(String),
}

/// A call in flight.
pub type PeerCallFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, PeerCallError>> + Send>>;

/// Encoded messages of a peer stream, in order: a leader's AppendEntries requests, or the
/// follower's answers to them.
pub type PeerMessages = Pin<Box<dyn Stream<Item = Vec<u8>> + Send>>;

/// The answers of an opened peer stream, one for each message sent, in the same order; the
/// stream ends, after an error or not, when the peer or the connection does.
pub type PeerAnswers = Pin<Box<dyn Stream<Item = Result<Vec<u8>, PeerCallError>> + Send>>;

/// A peer stream being opened.
pub type PeerStreamFuture =
    Pin<Box<dyn Future<Output = Result<PeerAnswers, PeerCallError>> + Send>>;

/// How a node's Raft groups reach other nodes. The server implements it over the peer port;
/// tests implement it in memory.
pub trait PeerTransport: Send + Sync + 'static {
    /// Sends `call` to the node whose peer address is `peer_addr` and returns its answer;
    /// fails with [`PeerCallError::Timeout`] once `deadline` has passed.
    fn call(&self, peer_addr: &str, call: PeerCall, deadline: Duration) -> PeerCallFuture;

    /// Opens an ordered stream to the node at `peer_addr`: `call` says which store's group,
    /// what kind ([`PeerCallKind::AppendEntries`]) and for which node (its body is unused), and
    /// `messages` are delivered in order, each answered in the same order. The leader sends
    /// its next entries while the follower still syncs the last ones: replication is pipelined,
    /// not one round trip per batch.
    fn stream(&self, peer_addr: &str, call: PeerCall, messages: PeerMessages) -> PeerStreamFuture;
}

/// What the receiving group answers: the response, or its refusal in words.
pub(super) type Answer<T> = Result<T, String>;

/// A piece of a snapshot on its way to a follower. The file is sent in order; `done` marks
/// the last piece, which carries the snapshot's metadata and the leader's vote.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SnapshotChunk {
    /// Names one transfer; a new one replaces an unfinished one.
    pub transfer: u64,
    pub offset: u64,
    pub data: Vec<u8>,
    /// On the last piece.
    pub done: Option<(Vote, SnapshotMeta)>,
}

/// The bytes of one snapshot piece.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Makes one [`PeerClient`] per peer for a store's group.
pub(super) struct Network {
    pub store_id: String,
    pub transport: Arc<dyn PeerTransport>,
    pub cluster_id: SharedClusterId,
    /// The least time a streamed AppendEntries answer is waited for (see `stream_append`).
    pub answer_patience_min: Duration,
}

/// The store's cluster id, shared by the store and its group: set once the store belongs to a
/// cluster, and sent with every call.
pub(crate) type SharedClusterId = Arc<std::sync::RwLock<Option<String>>>;

pub(crate) fn read_cluster_id(shared: &SharedClusterId) -> Option<String> {
    shared
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> PeerClient {
        PeerClient {
            target,
            peer_addr: node.peer_addr.clone(),
            store_id: self.store_id.clone(),
            transport: self.transport.clone(),
            cluster_id: self.cluster_id.clone(),
            answer_patience_min: self.answer_patience_min,
        }
    }
}

/// Calls one peer's group.
pub(super) struct PeerClient {
    target: u64,
    peer_addr: String,
    store_id: String,
    transport: Arc<dyn PeerTransport>,
    cluster_id: SharedClusterId,
    answer_patience_min: Duration,
}

fn unreachable(error: &(impl std::error::Error + 'static)) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(error))
}

/// A transport failure as openraft sees it: a timeout is a network error (try again soon), the
/// rest mean the peer cannot be reached.
fn transport_error(error: PeerCallError) -> RPCError<TypeConfig> {
    match error {
        error @ PeerCallError::Timeout(_) => RPCError::Network(NetworkError::new(&error)),
        error => unreachable(&error),
    }
}

/// AppendEntries requests sent to one follower and not yet answered, at most: the follower
/// works through them in order, so more would only wait there.
const APPENDS_IN_FLIGHT_MAX: usize = 32;

impl PeerClient {
    async fn call<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        kind: PeerCallKind,
        request: &Req,
        deadline: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let body = encode(request).map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        let call = PeerCall {
            body,
            ..self.header(kind)
        };
        let answered = tokio::time::timeout(
            deadline,
            self.transport.call(&self.peer_addr, call, deadline),
        )
        .await
        .unwrap_or_else(|_| Err(PeerCallError::Timeout(self.peer_addr.clone())));
        decode_answer(&answered.map_err(transport_error)?, self.target)
    }

    fn header(&self, kind: PeerCallKind) -> PeerCall {
        PeerCall {
            store_id: self.store_id.clone(),
            kind,
            body: Vec::new(),
            cluster_id: read_cluster_id(&self.cluster_id),
            target_node: Some(self.target),
        }
    }
}

fn decode_answer<Resp: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    target: u64,
) -> Result<Resp, RPCError<TypeConfig>> {
    let answer: Answer<Resp> = decode(bytes, "peer answer")
        .map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
    answer.map_err(|refusal| {
        unreachable(&io::Error::other(format!(
            "node {target} refused: {refusal}"
        )))
    })
}

/// The requests of one pipelined AppendEntries stream that were sent and answered, the places
/// left in its window, and how each side learns of the other.
struct InFlight {
    sent: AtomicU64,
    answered: AtomicU64,
    sent_signal: Notify,
    /// Closed when openraft drops the answers: the request side must then stop taking requests
    /// from openraft, whose next session takes them over.
    window: Semaphore,
    closed_signal: Notify,
}

impl InFlight {
    /// The next request from openraft, or `None` once the stream is closed or openraft has
    /// no more for it.
    async fn next_request<S>(&self, input: &mut S) -> Option<AppendEntriesRequest<TypeConfig>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
    {
        let closed = self.closed_signal.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        if self.window.is_closed() {
            return None;
        }
        tokio::select! {
            biased;
            request = input.next() => request,
            () = closed => None,
        }
    }
}

/// The answer side of a pipelined stream: the follower's answers in order, each releasing its
/// request's place in the window.
struct AppendAnswers {
    answers: PeerAnswers,
    in_flight: Arc<InFlight>,
    patience: Duration,
    peer_addr: String,
    target: u64,
}

impl Drop for AppendAnswers {
    fn drop(&mut self) {
        self.in_flight.window.close();
        self.in_flight.closed_signal.notify_waiters();
    }
}

impl AppendAnswers {
    /// The next answer. With a request unanswered, the follower must answer within
    /// `patience` (openraft's per-request soft TTL, at least an election timeout) or the stream
    /// fails, so that a paused or
    /// cut-off follower is noticed; with none, the stream is idle and waits for a request.
    async fn next(
        &mut self,
    ) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        let answer = loop {
            let waiting = self.in_flight.sent.load(Ordering::Acquire)
                > self.in_flight.answered.load(Ordering::Acquire);
            if waiting {
                match tokio::time::timeout(self.patience, self.answers.next()).await {
                    Ok(answer) => break answer?,
                    Err(_) => break Err(PeerCallError::Timeout(self.peer_addr.clone())),
                }
            }
            tokio::select! {
                biased;
                answer = self.answers.next() => break answer?,
                () = self.in_flight.sent_signal.notified() => {}
            }
        };
        self.in_flight.answered.fetch_add(1, Ordering::AcqRel);
        self.in_flight.window.add_permits(1);
        Some(
            answer
                .map_err(transport_error)
                .and_then(|bytes| decode_answer(&bytes, self.target)),
        )
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(PeerCallKind::AppendEntries, &rpc, option.soft_ttl())
            .await
    }

    /// Pipelined: up to [`APPENDS_IN_FLIGHT_MAX`] requests travel on one ordered peer stream
    /// before the first is answered. openraft's default waits for each answer before it sends
    /// the next request, which leaves the follower idle for a round trip per batch.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>>
            + openraft::OptionalSend
            + Unpin
            + 'static,
    {
        Box::pin(async move {
            // The first request before the connection. openraft's backoff after a failed
            // session is a pause before it yields the next request; opening the connection
            // first would retry a peer that refuses connections in a tight loop (the turmoil
            // simulation found 64,000 attempts in one simulated instant).
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures_util::stream::empty()) as BoxStream<'s, _>);
            };
            let input = futures_util::stream::iter([first]).chain(input);
            // openraft's TTL for a stream is the heartbeat interval: a follower whose round trip
            // or fsync takes longer (a 200 ms link, a stalled disk) would have every stream
            // time out and never catch up (test `a_node_behind_a_link_with_200_ms_of_delay_
            // causes_no_election`). An answer gets at least an election timeout: a follower
            // silent that long is taken for lost, as it would take a silent leader.
            let patience = option.soft_ttl().max(self.answer_patience_min);
            let in_flight = Arc::new(InFlight {
                sent: AtomicU64::new(0),
                answered: AtomicU64::new(0),
                sent_signal: Notify::new(),
                window: Semaphore::new(APPENDS_IN_FLIGHT_MAX),
                closed_signal: Notify::new(),
            });
            let sending = (input, in_flight.clone());
            let messages = futures_util::stream::unfold(
                sending,
                |(mut input, in_flight)| async move {
                    // A place in the window first: a request taken from openraft is sent.
                    in_flight.window.acquire().await.ok()?.forget();
                    let request = in_flight.next_request(&mut input).await?;
                    let body = match encode(&request) {
                        Ok(body) => body,
                        Err(error) => {
                            tracing::error!(%error, "cannot encode an AppendEntries request; the stream ends");
                            return None;
                        }
                    };
                    in_flight.sent.fetch_add(1, Ordering::AcqRel);
                    in_flight.sent_signal.notify_one();
                    Some((body, (input, in_flight)))
                },
            );
            let opened = tokio::time::timeout(
                patience,
                self.transport.stream(
                    &self.peer_addr,
                    self.header(PeerCallKind::AppendEntries),
                    Box::pin(messages),
                ),
            )
            .await
            .unwrap_or_else(|_| Err(PeerCallError::Timeout(self.peer_addr.clone())));
            let answers = AppendAnswers {
                answers: opened.map_err(transport_error)?,
                in_flight,
                patience,
                peer_addr: self.peer_addr.clone(),
                target: self.target,
            };
            // The stream ends after its first error: openraft opens a new one.
            let responses = futures_util::stream::unfold(Some(answers), |answers| async move {
                let mut answers = answers?;
                let answer = answers.next().await?;
                let more = answer.is_ok();
                Some((answer, more.then_some(answers)))
            });
            Ok(Box::pin(responses) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(PeerCallKind::Vote, &rpc, option.soft_ttl()).await
    }

    /// Asks the peer: openraft's default grants every pre-vote, which would make pre-vote
    /// useless against a node that was cut off and comes back with a high term.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(PeerCallKind::PreVote, &rpc, option.soft_ttl())
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let transfer = rand_transfer_id(&snapshot.meta);
        let file = snapshot
            .snapshot
            .file
            .try_clone()
            .map_err(|error| StreamingError::Unreachable(Unreachable::new(&error)))?;
        let mut file = Some(file);
        let meta = snapshot.meta;
        let send = async {
            let mut offset = 0u64;
            let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            loop {
                // File reads block: they run off the runtime's threads.
                let Some(mut reading) = file.take() else {
                    return Err(StreamingError::Unreachable(Unreachable::new(
                        &io::Error::other("the snapshot file was lost while sending it"),
                    )));
                };
                let (read_back, read_buffer, filled) = tokio::task::spawn_blocking(move || {
                    // The handle is shared with whoever read the header: read at the offset.
                    let filled = reading
                        .seek(SeekFrom::Start(offset))
                        .and_then(|_| fill(&mut reading, &mut buffer));
                    (reading, buffer, filled)
                })
                .await
                .map_err(|error| StreamingError::Unreachable(Unreachable::new(&error)))?;
                file = Some(read_back);
                buffer = read_buffer;
                let filled = filled
                    .map_err(|error| StreamingError::Unreachable(Unreachable::new(&error)))?;
                let last = filled < buffer.len();
                let chunk = SnapshotChunk {
                    transfer,
                    offset,
                    data: buffer[..filled].to_vec(),
                    done: last.then(|| (vote, meta.clone())),
                };
                let answer: Option<SnapshotResponse<TypeConfig>> = self
                    .call(PeerCallKind::SnapshotChunk, &chunk, option.soft_ttl())
                    .await
                    .map_err(StreamingError::from)?;
                offset += filled as u64;
                metrics::counter!("exesdb_raft_snapshot_sent_bytes_total", "store" => self.store_id.clone())
                    .increment(filled as u64);
                if let Some(response) = answer {
                    return Ok(response);
                }
                if last {
                    return Err(StreamingError::Unreachable(Unreachable::new(
                        &io::Error::other(
                            "the peer did not install the snapshot after its last piece",
                        ),
                    )));
                }
            }
        };
        tokio::select! {
            biased;
            sent = send => sent,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(PeerCallKind::TransferLeader, &request, option.soft_ttl())
            .await
    }
}

/// Reads until `buffer` is full or the file ends; returns how much was read.
fn fill(file: &mut std::fs::File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let read = file.read(&mut buffer[filled..])?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

/// A transfer id: the snapshot's last log index mixed with the clock, so that two transfers
/// of the same snapshot are told apart.
fn rand_transfer_id(meta: &SnapshotMeta) -> u64 {
    let index = meta.last_log_id.map_or(0, |log_id| log_id.index);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    index.rotate_left(32) ^ nanos
}
