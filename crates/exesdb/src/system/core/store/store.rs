//! `ExESDB.Store` [GS]: owns the committer, the one place where commands are applied.
//!
//! The committer runs on two dedicated threads (fsync blocks; it must not stall the async
//! runtime). The committer thread takes every command queued since its last batch and applies
//! them in order to the state machine; the batch writer thread writes each applied batch as one
//! storage batch with one fsync (group commit), and only then replies to each and announces
//! "committed up to position P". The committer applies batch N+1 while the writer syncs batch
//! N, on top of N's effects; N+1 is handed over only once N is on disk, and refused whole if
//! N's write failed. If the Store process dies, for any reason, the committer finishes what is
//! queued and exits; the restarted Store's committer waits for that (the lease) and derives
//! its state from storage again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot, watch};

use super::state_machine::{BatchEffects, Command, Outcome, SealedBatch, StateMachine};
use crate::storage::StorageError;
use crate::system::context::{CommitMsg, CommitRequest, StoreContext};
use crate::system::hops::Hop;
use exesdb_types::StoreError;

/// The Store process.
#[derive(Clone)]
pub(crate) struct Store;

/// Messages of the Store process.
pub(crate) enum StoreMsg {
    /// The committer thread ended.
    CommitterExited,
}

/// The Store's state: a guard that tells the committer to stop when the Store goes away,
/// however it goes (a graceful stop, a failure, or a kill, which drops the state).
pub(crate) struct StoreState {
    committer: CommitterGuard,
    stopping: bool,
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
            committer: guard,
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
        let guard = &state.committer;
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
    let mut writer = match BatchWriter::start(context.clone()) {
        Ok(writer) => writer,
        Err(error) => {
            let _ = ready.send(Err(format!("cannot start the batch writer thread: {error}")));
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
            match commit_batch(&context, &mut machine, &mut writer, &mut batch, timing, engine_failed) {
                Ok(failed) => engine_failed = failed,
                Err(WriterGone) => {
                    tracing::error!("the batch writer thread is gone; the committer stops");
                    break;
                }
            }
        }
    }
    writer.finish();
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

/// Adds each append's wait in the queue; returns how many appends the batch holds.
fn count_queue_hops(context: &StoreContext, batch: &[CommitRequest], started: Instant) -> u64 {
    let mut appends = 0;
    for request in batch {
        if matches!(request.command, Command::Append(_)) {
            context.hops.add(Hop::CommitQueue, request.submitted, started);
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

/// The batch writer thread ended (a bug: it never ends on its own while the committer runs).
struct WriterGone;

/// Applies one batch and hands it to the batch writer, after the batch before it is written.
/// Returns whether the engine has failed (and must be reopened before the next batch).
///
/// The batch is applied while the one before it is still being written and synced: that
/// overlap is why applying and writing run on two threads. A batch applied on top of one whose
/// write then fails is refused whole (nothing of it was written).
fn commit_batch(
    context: &StoreContext,
    machine: &mut StateMachine,
    writer: &mut BatchWriter,
    batch: &mut Vec<CommitRequest>,
    timing: BatchTiming,
    mut engine_failed: bool,
) -> Result<bool, WriterGone> {
    let refuse_all = |batch: &mut Vec<CommitRequest>, refusal: StoreError| {
        for request in batch.drain(..) {
            let _ = request.reply.send(Err(refusal.clone()));
        }
    };
    engine_failed |= writer.failed_already();
    if engine_failed || batch.iter().any(|r| r.command.reads_beyond_effects()) {
        engine_failed |= writer.wait_written();
    }
    // A full disk is refused before anything else: reopening would not help, and the failed
    // engine keeps serving reads until there is room again.
    if let Some(refusal) = storage_full(context, engine_failed) {
        refuse_all(batch, refusal);
        return Ok(engine_failed);
    }
    if engine_failed && let Err(error) = reopen_storage(context, machine) {
        tracing::error!(%error, "cannot reopen the storage after a failed write");
        refuse_all(batch, StoreError::from(error));
        return Ok(true);
    }
    let first_position = machine.next_position();
    let applying = Instant::now();
    let mut transaction = match machine.begin(&context.storage, writer.unwritten()) {
        Ok(transaction) => transaction,
        Err(error) => {
            refuse_all(batch, StoreError::from(error));
            return Ok(true);
        }
    };
    let outcomes: Vec<Result<Outcome, StoreError>> = batch
        .iter()
        .map(|request| transaction.apply(&request.command))
        .collect();
    let sealed = transaction.seal();
    context
        .counters
        .apply_nanos
        .fetch_add(elapsed_nanos(applying, Instant::now()), Ordering::Relaxed);
    if writer.wait_written() {
        refuse_all(
            batch,
            StoreError::unavailable(
                "the storage write of the batch before this append failed, so nothing of \
                 this append was written; retry once the store has reopened its storage",
            ),
        );
        return Ok(true);
    }
    let replies = batch
        .drain(..)
        .zip(outcomes)
        .map(|(request, outcome)| (request.reply, outcome))
        .collect();
    writer.write(WriteJob {
        sealed,
        first_position,
        replies,
        timing,
    })?;
    Ok(false)
}

type Reply = oneshot::Sender<Result<Outcome, StoreError>>;

/// A reply channel with the answer to send on it.
type Answer = (Reply, Result<Outcome, StoreError>);

/// A sealed batch on its way to the disk, with the answers to give once it is there.
struct WriteJob {
    sealed: SealedBatch,
    first_position: u64,
    replies: Vec<Answer>,
    timing: BatchTiming,
}

/// The committer's second thread: writes each sealed batch with one fsync, then answers its
/// requests and announces the new committed position. At most one batch is in its hands, so
/// batches reach the disk, and are answered, in the order they were applied.
struct BatchWriter {
    jobs: Option<std::sync::mpsc::SyncSender<WriteJob>>,
    /// One answer per job: whether its write failed.
    failures: std::sync::mpsc::Receiver<bool>,
    /// The effects of the batch being written, until it is known to be written.
    in_flight: Option<Arc<BatchEffects>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchWriter {
    fn start(context: Arc<StoreContext>) -> std::io::Result<BatchWriter> {
        let (jobs, job_receiver) = std::sync::mpsc::sync_channel::<WriteJob>(1);
        let (failure_sender, failures) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("exesdb-batch-writer-{}", context.store_id()))
            .spawn(move || {
                for job in job_receiver {
                    let (failed, answers) = write_job(&context, job);
                    // The committer learns the outcome before any client does: a client's next
                    // append, sent on this answer, then finds the failure already known.
                    let committer_gone = failure_sender.send(failed).is_err();
                    for (reply, answer) in answers {
                        let _ = reply.send(answer);
                    }
                    if committer_gone {
                        break;
                    }
                }
            })?;
        Ok(BatchWriter {
            jobs: Some(jobs),
            failures,
            in_flight: None,
            thread: Some(thread),
        })
    }

    /// What the batch being written changed, for the batch applied meanwhile.
    fn unwritten(&self) -> Option<Arc<BatchEffects>> {
        self.in_flight.clone()
    }

    /// Waits until the batch being written (if any) is on disk. Returns whether its write
    /// failed; a writer thread that died counts as a failure.
    fn wait_written(&mut self) -> bool {
        if self.in_flight.take().is_none() {
            return false;
        }
        self.failures.recv().unwrap_or(true)
    }

    /// Whether the batch being written is known to have failed already, without waiting.
    fn failed_already(&mut self) -> bool {
        if self.in_flight.is_none() {
            return false;
        }
        match self.failures.try_recv() {
            Ok(failed) => {
                self.in_flight = None;
                failed
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => false,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                self.in_flight = None;
                true
            }
        }
    }

    /// Hands a batch over; the batch before it must be written ([`BatchWriter::wait_written`]).
    fn write(&mut self, job: WriteJob) -> Result<(), WriterGone> {
        let effects = job.sealed.effects.clone();
        let Some(jobs) = &self.jobs else {
            return Err(refuse_job(job));
        };
        match jobs.send(job) {
            Ok(()) => {
                self.in_flight = Some(effects);
                Ok(())
            }
            Err(std::sync::mpsc::SendError(job)) => Err(refuse_job(job)),
        }
    }

    /// Waits for the last batch, then stops the thread.
    fn finish(mut self) {
        self.wait_written();
        self.jobs = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the batch writer thread panicked");
        }
    }
}

fn refuse_job(job: WriteJob) -> WriterGone {
    for (reply, _) in job.replies {
        let _ = reply.send(Err(StoreError::unavailable(
            "the store's writer stopped before writing this append; nothing of it was written",
        )));
    }
    WriterGone
}

/// Writes one batch. Returns whether the write failed, and the answers to send.
fn write_job(context: &StoreContext, job: WriteJob) -> (bool, Vec<Answer>) {
    let WriteJob {
        sealed,
        first_position,
        replies,
        timing,
    } = job;
    let wrote = sealed.writes();
    let next_position = sealed.next_position;
    let writing = Instant::now();
    let written = sealed.write();
    let counters = &context.counters;
    counters
        .write_nanos
        .fetch_add(elapsed_nanos(writing, Instant::now()), Ordering::Relaxed);
    match written {
        Ok(()) => {
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
                .fetch_add(replies.len() as u64, Ordering::Relaxed);
            counters
                .events
                .fetch_add(next_position - first_position, Ordering::Relaxed);
            context.committed.send_if_modified(|committed| {
                let changed = *committed != next_position;
                *committed = next_position;
                changed
            });
            let replying = Instant::now();
            let waited = replying.saturating_duration_since(timing.started).as_nanos();
            let waited = u64::try_from(waited).unwrap_or(0);
            context
                .hops
                .add_nanos(Hop::Commit, waited.saturating_mul(timing.appends));
            (false, replies)
        }
        Err(error) => {
            tracing::error!(%error, "commit failed; the storage will be reopened before the next write");
            let failure = StoreError::unavailable(format!(
                "the storage write failed ({error}); whether it was stored is known once the \
                 store has reopened its storage: read before retrying without event ids"
            ));
            let answers = replies
                .into_iter()
                .map(|(reply, outcome)| {
                    let answer = match outcome {
                        Ok(_) => Err(failure.clone()),
                        Err(refusal) => Err(refusal),
                    };
                    (reply, answer)
                })
                .collect();
            (true, answers)
        }
    }
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
