//! `ExESDB.Store` [GS]: owns the committer, the one place where commands are applied.
//!
//! The committer is a dedicated thread (fsync blocks; it must not stall the async runtime). It
//! takes every command queued since its last batch, applies them in order to the state machine,
//! writes them as one storage batch with one fsync (group commit), and only then replies to
//! each and announces "committed up to position P". If the Store process dies, for any reason,
//! the committer finishes what is queued and exits; the restarted Store's committer waits for
//! that (the lease) and derives its state from storage again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot, watch};

use super::state_machine::{Command, Outcome, StateMachine};
use crate::raft::{GroupStorage, RaftGroup, RaftSettings};
use crate::storage::StorageError;
use crate::system::context::{CommitMsg, CommitRequest, StoreContext};
use crate::system::hops::Hop;
use exesdb_types::{RecordedEvent, StoreError};

/// The Store process.
#[derive(Clone)]
pub(crate) struct Store;

/// Messages of the Store process.
pub(crate) enum StoreMsg {
    /// The committer thread ended.
    CommitterExited,
}

/// The Store's state: a guard that tells the committer to stop when the Store goes away,
/// however it goes (a graceful stop, a failure, or a kill, which drops the state). In cluster
/// mode the Raft group takes the committer's place.
pub(crate) struct StoreState {
    committer: Option<CommitterGuard>,
    replicated: Option<Replicated>,
    stopping: bool,
}

/// Cluster mode: the store's Raft group, and the tasks that feed it commands and follow its
/// leadership. Dropping it (a kill) ends the tasks; a graceful stop also shuts the group down.
struct Replicated {
    context: Arc<StoreContext>,
    group: RaftGroup,
    proposer: tokio::task::AbortHandle,
    leadership: tokio::task::AbortHandle,
}

impl Drop for Replicated {
    fn drop(&mut self) {
        self.context.set_committer(None);
        self.proposer.abort();
        self.leadership.abort();
        self.context.set_raft_group(None);
        self.context.set_leader(false);
        // A kill drops the state without `post_stop`: the group is shut down in the
        // background, and the restarted Store waits for that before it starts another one
        // over the same log (two Raft instances on one log would each vote and append).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let group = self.group.clone();
            let stopping = runtime.spawn(async move { group.shutdown().await });
            *self
                .context
                .raft_stopping
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stopping);
        }
    }
}

struct CommitterGuard {
    context: Arc<StoreContext>,
    queue: mpsc::Sender<CommitMsg>,
    stop: Arc<AtomicBool>,
    exited: watch::Receiver<bool>,
}

impl Drop for CommitterGuard {
    fn drop(&mut self) {
        self.context.set_committer(None);
        self.stop.store(true, Ordering::Release);
        // If the queue is full the committer is busy and sees the flag after this batch.
        let _ = self.queue.try_send(CommitMsg::Stop);
    }
}

impl Actor for Store {
    type Msg = StoreMsg;
    type State = StoreState;
    type Arguments = Arc<StoreContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<StoreMsg>,
        context: Arc<StoreContext>,
    ) -> Result<StoreState, ActorProcessingErr> {
        if let Some(cluster) = context.config.cluster.clone() {
            let replicated = start_replicated(context, &cluster).await?;
            return Ok(StoreState {
                committer: None,
                replicated: Some(replicated),
                stopping: false,
            });
        }
        let settings = &context.config.commit;
        let (queue, receiver) = mpsc::channel(settings.commit_queue_commands_max);
        let stop = Arc::new(AtomicBool::new(false));
        let (exited_sender, exited) = watch::channel(false);
        let (ready_sender, ready) = oneshot::channel();
        let thread_context = context.clone();
        let thread_stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("exesdb-committer-{}", context.store_id()))
            .spawn(move || {
                let _exited = ExitSignal(exited_sender);
                run_committer(thread_context, receiver, thread_stop, ready_sender);
            })
            .map_err(|error| format!("cannot start the committer thread: {error}"))?;
        let guard = CommitterGuard {
            context: context.clone(),
            queue: queue.clone(),
            stop,
            exited: exited.clone(),
        };
        match ready.await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Err(message.into()),
            Err(_) => return Err("the committer thread died while starting".into()),
        }
        context.set_committer(Some(queue));
        let mut watch_exit = exited;
        tokio::spawn(async move {
            let _ = watch_exit.wait_for(|exited| *exited).await;
            let _ = myself.send_message(StoreMsg::CommitterExited);
        });
        Ok(StoreState {
            committer: Some(guard),
            replicated: None,
            stopping: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<StoreMsg>,
        message: StoreMsg,
        state: &mut StoreState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            StoreMsg::CommitterExited if !state.stopping => {
                Err("the committer thread exited unexpectedly".into())
            }
            StoreMsg::CommitterExited => Ok(()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<StoreMsg>,
        state: &mut StoreState,
    ) -> Result<(), ActorProcessingErr> {
        state.stopping = true;
        if let Some(replicated) = state.replicated.take() {
            replicated.context.set_committer(None);
            replicated.proposer.abort();
            replicated.group.shutdown().await;
            return Ok(());
        }
        let Some(guard) = &state.committer else {
            return Ok(());
        };
        guard.context.set_committer(None);
        guard.stop.store(true, Ordering::Release);
        let _ = guard.queue.send(CommitMsg::Stop).await;
        let mut exited = guard.exited.clone();
        let timeout = Duration::from_millis(guard.context.config.shutdown_timeout_ms);
        if tokio::time::timeout(timeout, exited.wait_for(|exited| *exited))
            .await
            .is_err()
        {
            tracing::error!("the committer did not finish within the shutdown timeout");
        }
        Ok(())
    }
}

/// Starts the store's Raft group, and the proposer that takes the commit queue's commands to
/// it: each is proposed (on a follower, forwarded to the leader) and answered with its outcome
/// once applied. The queue is bounded as in single mode, and the admission semaphore bounds
/// the proposals in flight.
async fn start_replicated(
    context: Arc<StoreContext>,
    cluster: &crate::config::ClusterConfig,
) -> Result<Replicated, ActorProcessingErr> {
    let previous = context
        .raft_stopping
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(previous) = previous {
        let _ = previous.await;
    }
    let settings = RaftSettings {
        cluster_name: cluster.cluster_name.clone(),
        election_timeout_min_ms: cluster.election_timeout_min_ms,
        election_timeout_max_ms: cluster.election_timeout_max_ms,
        heartbeat_interval_ms: cluster.heartbeat_interval_ms,
        write_timeout_ms: cluster.write_timeout_ms,
        snapshot_every_entries: cluster.snapshot_every_entries,
    };
    let storage = GroupStorage {
        storage: context.storage.clone(),
        snapshot_dir: context.config.store_dir().join("raft-snapshots"),
        limits: context.config.limits.clone(),
        head_cache_entries_max: context.config.commit.stream_head_cache_entries_max,
        committed: context.committed.clone(),
        cluster_id: context.shared_cluster_id(),
    };
    let group = RaftGroup::start(
        cluster.node_id,
        context.store_id(),
        settings,
        storage,
        cluster.transport.clone(),
    )
    .await
    .map_err(|error| format!("cannot start the store's Raft group: {error}"))?;
    context.set_raft_group(Some(group.clone()));
    let (queue, receiver) = mpsc::channel(context.config.commit.commit_queue_commands_max);
    let proposer = tokio::spawn(propose_commands(receiver, group.clone()));
    // LeaderTracker's flag follows Raft: this node leads when Raft says it does.
    let node_id = cluster.node_id;
    let leading = context.clone();
    let following = group.clone();
    let leadership = tokio::spawn(async move {
        let mut last_leader = None;
        following
            .follow_leader(|leader| {
                leading.set_leader(leader == Some(node_id));
                if leader.is_some() && leader != last_leader {
                    metrics::counter!(
                        "exesdb_raft_leader_changes_total",
                        "store" => leading.store_id().to_string()
                    )
                    .increment(1);
                    last_leader = leader;
                }
            })
            .await;
    });
    context.set_committer(Some(queue));
    Ok(Replicated {
        context,
        group,
        proposer: proposer.abort_handle(),
        leadership: leadership.abort_handle(),
    })
}

/// Proposals waiting for their commit at once, at most. While that many wait, the commands
/// that arrive queue, and the next proposal takes them all as one Raft entry: under load an
/// entry carries many commands and costs one log write, one replication and one apply.
const PROPOSALS_IN_FLIGHT_MAX: usize = 16;
/// The most commands, and about the most payload bytes, one entry carries (a single bigger
/// command still goes alone).
const PROPOSAL_COMMANDS_MAX: usize = 512;
const PROPOSAL_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Cluster mode's committer: takes the store's commands off its queue and proposes them to
/// the Raft group, one command alone or those queued as one `Command::Batch`, and answers
/// each command's sender with its own outcome. Ends at `CommitMsg::Stop` or when the queue
/// closes; proposals already made go on in their own tasks and are answered.
async fn propose_commands(mut queue: mpsc::Receiver<CommitMsg>, group: RaftGroup) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
    // A command taken off the queue that did not fit the last proposal.
    let mut held: Option<CommitRequest> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match held.take() {
            Some(request) => request,
            None => match queue.recv().await {
                Some(CommitMsg::Command(request)) => request,
                Some(CommitMsg::Stop) | None => return,
            },
        };
        let mut bytes = first.command.payload_bytes();
        let mut requests = vec![first];
        let mut stop = false;
        while requests.len() < PROPOSAL_COMMANDS_MAX {
            match queue.try_recv() {
                Ok(CommitMsg::Command(request)) => {
                    let more = request.command.payload_bytes();
                    if bytes + more > PROPOSAL_BYTES_MAX {
                        held = Some(request);
                        break;
                    }
                    bytes += more;
                    requests.push(request);
                }
                Ok(CommitMsg::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let group = group.clone();
        tokio::spawn(async move {
            let _permit = permit;
            propose_and_answer(&group, requests).await;
        });
        if stop {
            return;
        }
    }
}

/// Proposes the requests' commands (alone, or as one batch) and answers each request.
async fn propose_and_answer(group: &RaftGroup, mut requests: Vec<CommitRequest>) {
    if requests.len() == 1
        && let Some(request) = requests.pop()
    {
        let _ = request.reply.send(group.propose(request.command).await);
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<_>) = requests
        .into_iter()
        .map(|request| (request.command, request.reply))
        .unzip();
    let count = commands.len();
    let outcomes = match group.propose(Command::Batch(commands)).await {
        Ok(Outcome::Batch(outcomes)) if outcomes.len() == count => outcomes,
        Ok(other) => vec![
            Err(StoreError::unavailable(format!(
                "a batch of {count} commands was answered {other:?}"
            )));
            count
        ],
        Err(error) => vec![Err(error); count],
    };
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome);
    }
}

/// Marks the committer's end when dropped, including by a panic unwinding the thread.
struct ExitSignal(watch::Sender<bool>);

impl Drop for ExitSignal {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

fn run_committer(
    context: Arc<StoreContext>,
    mut receiver: mpsc::Receiver<CommitMsg>,
    stop: Arc<AtomicBool>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let lease = context.committer_lease.clone();
    let _lease = lease
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let settings = context.config.commit.clone();
    let mut machine = match StateMachine::recover(
        &context.storage,
        context.config.limits.clone(),
        settings.stream_head_cache_entries_max,
    ) {
        Ok(machine) => machine,
        Err(error) => {
            let _ = ready.send(Err(format!("cannot recover the store's state: {error}")));
            return;
        }
    };
    context.committed.send_replace(machine.next_position());
    if ready.send(Ok(())).is_err() {
        return;
    }
    let mut batch = Vec::with_capacity(settings.commit_batch_commands_max);
    let mut closing = false;
    // Set when a write failed: fjall then refuses every write until it is opened again.
    let mut engine_failed = false;
    while let Some(first) = receiver.blocking_recv() {
        let started = Instant::now();
        let mut saw_stop = collect(first, &mut batch);
        while batch.len() < settings.commit_batch_commands_max {
            match receiver.try_recv() {
                Ok(message) => saw_stop |= collect(message, &mut batch),
                Err(_) => break,
            }
        }
        if !closing && (saw_stop || stop.load(Ordering::Acquire)) {
            // No new commands; what is already queued is still committed and answered.
            receiver.close();
            closing = true;
        }
        if !batch.is_empty() {
            let appends = count_queue_hops(&context, &batch, started);
            let timing = BatchTiming { started, appends };
            engine_failed = commit_batch(&context, &mut machine, &mut batch, timing, engine_failed);
        }
    }
}

/// Adds each append's wait in the queue; returns how many appends the batch holds.
fn count_queue_hops(context: &StoreContext, batch: &[CommitRequest], started: Instant) -> u64 {
    let mut appends = 0;
    for request in batch {
        if matches!(request.command, Command::Append(_)) {
            context
                .hops
                .add(Hop::CommitQueue, request.submitted, started);
            appends += 1;
        }
    }
    appends
}

/// When a batch started and how many appends it holds, for the `Commit` hop.
#[derive(Clone, Copy)]
struct BatchTiming {
    started: Instant,
    appends: u64,
}

fn collect(message: CommitMsg, batch: &mut Vec<CommitRequest>) -> bool {
    match message {
        CommitMsg::Command(request) => {
            batch.push(request);
            false
        }
        CommitMsg::Stop => true,
    }
}

/// Applies, writes and answers one batch. Returns whether the engine has failed (and must be
/// reopened before the next batch).
fn commit_batch(
    context: &StoreContext,
    machine: &mut StateMachine,
    batch: &mut Vec<CommitRequest>,
    timing: BatchTiming,
    engine_failed: bool,
) -> bool {
    let refuse_all = |batch: &mut Vec<CommitRequest>, refusal: StoreError| {
        for request in batch.drain(..) {
            let _ = request.reply.send(Err(refusal.clone()));
        }
    };
    // A full disk is refused before anything else: reopening would not help, and the failed
    // engine keeps serving reads until there is room again.
    if let Some(refusal) = storage_full(context, engine_failed) {
        refuse_all(batch, refusal);
        return engine_failed;
    }
    if engine_failed && let Err(error) = reopen_storage(context, machine) {
        tracing::error!(%error, "cannot reopen the storage after a failed write");
        refuse_all(batch, StoreError::from(error));
        return true;
    }
    let first_position = machine.next_position();
    let applying = Instant::now();
    let mut transaction = match machine.begin(&context.storage) {
        Ok(transaction) => transaction,
        Err(error) => {
            refuse_all(batch, StoreError::from(error));
            return true;
        }
    };
    let outcomes: Vec<Result<Outcome, StoreError>> = batch
        .iter()
        .map(|request| transaction.apply(&request.command))
        .collect();
    let writing = Instant::now();
    let committed = transaction.commit();
    let written = Instant::now();
    if written.saturating_duration_since(writing) >= SLOW_WRITE {
        note_slow_write(context, writing, written, batch.len());
    }
    let counters = &context.counters;
    counters
        .apply_nanos
        .fetch_add(elapsed_nanos(applying, writing), Ordering::Relaxed);
    counters
        .write_nanos
        .fetch_add(elapsed_nanos(writing, written), Ordering::Relaxed);
    match committed {
        Ok((next_position, wrote)) => {
            if wrote {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                metrics::histogram!(
                    "exesdb_commit_batch_events",
                    "store" => context.store_id().to_string()
                )
                .record((next_position - first_position) as f64);
            }
            counters
                .commands
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            counters
                .events
                .fetch_add(next_position - first_position, Ordering::Relaxed);
            if context.tail.enabled() {
                context.tail.push(
                    first_position,
                    take_appended_events(batch, &outcomes, first_position),
                );
            }
            context.committed.send_if_modified(|committed| {
                let changed = *committed != next_position;
                *committed = next_position;
                changed
            });
            let waited = Instant::now().saturating_duration_since(timing.started);
            let waited = u64::try_from(waited.as_nanos()).unwrap_or(0);
            context
                .hops
                .add_nanos(Hop::Commit, waited.saturating_mul(timing.appends));
            for (request, outcome) in batch.drain(..).zip(outcomes) {
                let _ = request.reply.send(outcome);
            }
            false
        }
        Err(error) => {
            tracing::error!(%error, "commit failed; the storage will be reopened before the next write");
            let failure = StoreError::unavailable(format!(
                "the storage write failed ({error}); whether it was stored is known once the \
                 store has reopened its storage: read before retrying without event ids"
            ));
            for (request, outcome) in batch.drain(..).zip(outcomes) {
                let answer = match outcome {
                    Ok(_) => Err(failure.clone()),
                    Err(refusal) => Err(refusal),
                };
                let _ = request.reply.send(answer);
            }
            true
        }
    }
}

/// The events a committed batch wrote, in position order, moved out of its commands (whose
/// answers need only the outcomes). An append answered from an earlier identical one wrote
/// nothing: its positions are behind the batch's next.
fn take_appended_events(
    batch: &mut [CommitRequest],
    outcomes: &[Result<Outcome, StoreError>],
    first_position: u64,
) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    let mut next = first_position;
    for (request, outcome) in batch.iter_mut().zip(outcomes) {
        let (Command::Append(append), Ok(Outcome::Appended(result))) =
            (&mut request.command, outcome)
        else {
            continue;
        };
        if result.first_position != next {
            continue;
        }
        for (offset, event) in append.events.iter_mut().enumerate() {
            let offset = offset as u64;
            events.push(RecordedEvent {
                stream_id: append.stream_id.clone(),
                event_number: result.first_event_number + offset,
                position: result.first_position + offset,
                event_id: event.event_id,
                event_type: std::mem::take(&mut event.event_type),
                data: std::mem::take(&mut event.data),
                metadata: std::mem::take(&mut event.metadata),
                data_content_type: std::mem::take(&mut event.data_content_type),
                metadata_content_type: std::mem::take(&mut event.metadata_content_type),
                created_micros: append.created_micros,
            });
        }
        next = result.last_position + 1;
    }
    events
}

/// A batch write (journal, fsync, memtables) this slow is logged: it is what an append's tail
/// latency is made of, and the engine's own log says what it was doing at that moment.
const SLOW_WRITE: Duration = Duration::from_millis(20);

fn note_slow_write(context: &StoreContext, writing: Instant, written: Instant, commands: usize) {
    let millis = written.saturating_duration_since(writing).as_secs_f64() * 1e3;
    tracing::warn!(
        write_ms = format!("{millis:.1}"),
        commands,
        "slow batch write"
    );
    metrics::counter!("exesdb_commit_slow_writes_total", "store" => context.store_id().to_string())
        .increment(1);
}

/// Reopens the engine after a failed write and derives the state machine from what it
/// recovered. A batch whose write failed part way is either recovered whole (its journal entry
/// was complete) or not at all; either way the committed mark follows what is now stored.
fn reopen_storage(context: &StoreContext, machine: &mut StateMachine) -> Result<(), StorageError> {
    tracing::warn!("reopening the storage after a failed write");
    let wait = Duration::from_millis(context.config.storage.reopen_wait_ms);
    context.storage.reopen(wait)?;
    *machine = StateMachine::recover(
        &context.storage,
        context.config.limits.clone(),
        context.config.commit.stream_head_cache_entries_max,
    )?;
    let next_position = machine.next_position();
    context.committed.send_if_modified(|committed| {
        let advanced = *committed < next_position;
        *committed = (*committed).max(next_position);
        advanced
    });
    tracing::info!(next_position, "storage reopened; writes resume");
    Ok(())
}

/// Free space a reopen after a failed write needs at least, whatever the reserve: opening
/// writes a few small files, and failing there would close the engine that still serves reads.
const REOPEN_FREE_BYTES_MIN: u64 = 4 * 1024 * 1024;

/// A refusal when the disk has less free space than the configured reserve (or, after a
/// failed write, than a reopen needs). Checked before each batch (one `statvfs`), so a full
/// disk turns writes away before the engine sees them.
fn storage_full(context: &StoreContext, engine_failed: bool) -> Option<StoreError> {
    let mut reserve = context.config.storage.disk_free_bytes_min;
    if engine_failed {
        reserve = reserve.max(REOPEN_FREE_BYTES_MIN);
    }
    if reserve == 0 {
        return None;
    }
    match context.storage.free_bytes() {
        Ok(free) if free < reserve => {
            metrics::counter!("exesdb_storage_full_refusals_total", "store" => context.store_id().to_string())
                .increment(1);
            Some(StoreError::unavailable(format!(
                "storage full: {free} bytes free on {}, writes need {reserve} \
                 (disk_free_bytes_min); \
                 writes resume once space is freed",
                context.storage.path().display()
            )))
        }
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(%error, "cannot read the free disk space; writing anyway");
            None
        }
    }
}

fn elapsed_nanos(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_nanos()).unwrap_or(u64::MAX)
}
