//! The store's data on disk: fjall keyspaces, their key layout, the format marker, and the
//! reads every reader process shares. Keyspaces and keys are private to this module: readers
//! call [`Engine`]'s reads (through [`Storage::engine`]), and the Store's committer writes
//! through a typed [`WriteBatch`]. See `docs/DURABILITY.md` for the layout and the crash
//! analysis.

mod batch;
pub(crate) mod cluster;
pub(crate) mod codec;
pub(crate) mod commit_guard;
#[cfg(feature = "fault-injection")]
pub(crate) mod fault;
mod indexes;
mod page;
pub(crate) mod table_check;

pub(crate) use batch::WriteBatch;

use std::fs;
use std::io::Write;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};
use uuid::Uuid;

use crate::config::StorageSettings;
use crate::error::StartError;
use codec::{Chunk, CorruptRecord, SnapshotRecord, decode_event_header, read_event};
use commit_guard::CommitMarker;
use exesdb_types::StoreError;
use exesdb_types::{Direction, EventRef, IndexedStream, ReadAllRequest, RecordedEvent, StreamInfo};
pub use page::EventPage;

/// The on-disk format this build writes and reads. Bump it with every incompatible change and
/// record the change in the format log of `docs/DURABILITY.md`.
pub(crate) const FORMAT_VERSION: u32 = 4;
/// Format 1 lacks the secondary indexes, which the upgrade builds from the log.
const FORMAT_WITHOUT_INDEXES: u32 = 1;
/// Format 2 stores each event as a lone log value; this build reads those as chunks of one,
/// so its upgrade only marks the directory.
const FORMAT_WITHOUT_CHUNKS: u32 = 2;
/// Format 3 has no cluster state; this build reads it unchanged, so its upgrade only marks the
/// directory (and so a build of format 3, which knows nothing of Raft, refuses it from then on).
const FORMAT_WITHOUT_RAFT: u32 = 3;
const FORMAT_FILE: &str = "FORMAT";
const FORMAT_PREFIX: &str = "exesdb-format ";
const ENGINE_DIR: &str = "fjall";

/// Separates the parts of composite keys. Stream ids, snapshot source and stream uuids never
/// contain control characters, so the separator cannot occur inside a part.
const SEPARATOR: u8 = 0;

/// The key of the external bus's forwarding position in `checkpoints`: it starts with `0x00`,
/// which no subscription name holds (names have no control characters), so it is no
/// subscription's checkpoint.
const BUS_POSITION_KEY: &[u8] = b"\0external-bus";

/// The one key of the `commits` keyspace.
const COMMIT_MARKER_KEY: &[u8] = b"last";

/// A failure of the storage layer while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The engine failed (I/O, full disk, poisoned after an earlier failure).
    #[error("storage engine error: {0}")]
    Engine(#[from] fjall::Error),
    /// A stored record failed its checksum or structure checks.
    #[error("corrupt record in {keyspace}: {detail}")]
    Corrupt {
        keyspace: &'static str,
        detail: String,
    },
    /// The engine is closed while it is reopened after a failed write.
    #[error("storage is being reopened after a failed write; retry shortly")]
    Closed,
    /// A snapshot file could not be written or read.
    #[error("snapshot file error: {0}")]
    Snapshot(String),
    /// Reopening the engine after a failed write did not succeed.
    #[error("the storage engine failed a write and could not be reopened: {0}")]
    Reopen(String),
    /// A stream index entry points at a record of another event: the index or the log is
    /// damaged, and the record is not served as that event.
    #[error(
        "stream index entry {stream_id}@{event_number} points at position {position}, which \
         holds event {found_event_number} of stream {found_stream_id}"
    )]
    IndexMismatch {
        stream_id: String,
        event_number: u64,
        position: u64,
        found_stream_id: String,
        found_event_number: u64,
    },
}

impl From<StorageError> for StoreError {
    fn from(error: StorageError) -> Self {
        StoreError::Unavailable(error.to_string())
    }
}

fn corrupt(keyspace: &'static str) -> impl Fn(CorruptRecord) -> StorageError {
    move |error| StorageError::Corrupt {
        keyspace,
        detail: error.0,
    }
}

/// A stored snapshot with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSnapshot {
    pub source_uuid: String,
    pub stream_uuid: String,
    pub version: u64,
    pub record: SnapshotRecord,
}

/// The storage of one store: its directory and the open engine. The engine can be closed and
/// opened again in place ([`Storage::reopen`]) after a write failure, which leaves fjall
/// refusing every later write; while that happens, reads answer `unavailable`.
pub(crate) struct Storage {
    path: PathBuf,
    settings: StorageSettings,
    engine: RwLock<Option<Arc<Engine>>>,
    #[cfg(feature = "fault-injection")]
    faults: Arc<fault::FaultSeam>,
}

/// Where a scan of the log or of a stream's index looks: positions from `from` up to `until`
/// (exclusive), at most `count_max` of them, stopping once the accepted events hold
/// `bytes_max` bytes (at least one event).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scan {
    pub from: u64,
    pub until: u64,
    pub count_max: u64,
    pub bytes_max: Option<u64>,
}

/// What a scan reads: the whole log, or an index that holds just the events wanted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a> {
    /// Every event, in position order.
    Log,
    /// One stream's index, from event `first_number` on (a hint: entries before the scan's
    /// `from` are skipped).
    Stream {
        stream_id: &'a str,
        first_number: u64,
    },
    /// An index by event type or category.
    Index(IndexedStream<'a>),
}

/// The events a scan accepted, and their bytes.
struct Accepted {
    events: Vec<RecordedEvent>,
    bytes: u64,
    bytes_max: Option<u64>,
}

impl Accepted {
    fn new(bytes_max: Option<u64>) -> Self {
        Accepted {
            events: Vec::new(),
            bytes: 0,
            bytes_max,
        }
    }

    /// Adds an event; true once the events hold `bytes_max`.
    fn push(&mut self, event: RecordedEvent) -> bool {
        self.bytes += event.size_bytes();
        self.events.push(event);
        self.bytes_max.is_some_and(|max| self.bytes >= max)
    }
}

/// The open fjall database and its keyspaces.
pub(crate) struct Engine {
    db: Database,
    /// position (u64 BE) → event record.
    log: Keyspace,
    /// stream id, 0, event number (u64 BE) → position (u64 BE).
    stream_index: Keyspace,
    /// stream id → version (u64 BE); a stream exists iff it has a head.
    stream_heads: Keyspace,
    /// stream id, 0, event id (16 bytes) → event number (u64 BE); for idempotent retries.
    event_ids: Keyspace,
    /// source uuid, 0, stream uuid, 0, version (u64 BE) → snapshot record.
    snapshots: Keyspace,
    /// subscription name → definition (JSON in a checked blob).
    subscriptions: Keyspace,
    /// subscription name → checkpoint: every event before this position is done (u64 BE).
    checkpoints: Keyspace,
    /// subscription name, 0, position (u64 BE) → nothing: the subscription's parked events.
    parked: Keyspace,
    /// `COMMIT_MARKER_KEY` → the last batch's commit marker (see [`commit_guard`]); in cluster
    /// mode also `RAFT_APPLIED_KEY` → the applied state, written with the data it describes.
    commits: Keyspace,
    /// Cluster mode: Raft log index (u64 BE) → checksummed entry (see [`cluster`]).
    raft_log: Keyspace,
    /// Cluster mode: the vote, the committed and the last purged log ids, checksummed.
    raft_meta: Keyspace,
    /// index kind, name length (u16 BE), name, first position (u64 BE) → the positions of one
    /// batch's events in that index: the indexes by event type and category (see [`indexes`]).
    indexes: Keyspace,
    #[cfg(feature = "fault-injection")]
    faults: fault::EngineFaults,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.path).finish()
    }
}

impl Storage {
    /// Opens (or creates) the store directory, refusing a directory of another format.
    pub(crate) fn open(dir: &Path, settings: &StorageSettings) -> Result<Storage, StartError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StartError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let format = check_or_write_format(dir)?;
        let storage = Storage {
            path: dir.to_path_buf(),
            settings: settings.clone(),
            engine: RwLock::new(None),
            #[cfg(feature = "fault-injection")]
            faults: Arc::default(),
        };
        let engine = storage.open_engine()?;
        if let FoundFormat::Upgradable(from) = format {
            upgrade(dir, &engine, from)?;
        }
        *storage.slot() = Some(Arc::new(engine));
        Ok(storage)
    }

    /// Opens the engine in the store's directory (whose format is checked).
    fn open_engine(&self) -> Result<Engine, StartError> {
        let engine = Engine::open(&self.path, &self.settings)?;
        // A reopened engine sees the same armed fault as the one it replaces.
        #[cfg(feature = "fault-injection")]
        let engine = Engine {
            faults: fault::EngineFaults::new(self.faults.clone()),
            ..engine
        };
        Ok(engine)
    }

    fn slot(&self) -> std::sync::RwLockWriteGuard<'_, Option<Arc<Engine>>> {
        self.engine.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms a storage fault (test builds only): see [`fault`].
    #[cfg(feature = "fault-injection")]
    pub(crate) fn inject_fault(&self, fault: fault::StorageFault) {
        self.faults.arm(fault);
    }

    /// The open engine, or `unavailable` while it is being reopened. Every read goes through
    /// it; a caller holds the `Arc` only for the read at hand, so a reopen is not kept waiting.
    pub(crate) fn engine(&self) -> Result<Arc<Engine>, StorageError> {
        self.engine
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or(StorageError::Closed)
    }

    /// Closes the engine and opens it again from disk: the way back to a writable store after
    /// a failed write (fjall refuses every write after one fails). The old engine must be
    /// dropped first (fjall locks its directory), so this waits up to `wait` for readers that
    /// still hold it; they are short, and new ones are turned away meanwhile. After opening,
    /// the journal is synced, so what recovery read is on disk before anything builds on it.
    pub(crate) fn reopen(&self, wait: std::time::Duration) -> Result<(), StorageError> {
        let slot = || self.slot();
        if let Some(mut old) = slot().take() {
            let deadline = std::time::Instant::now() + wait;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(engine) => {
                        drop(engine);
                        break;
                    }
                    Err(shared) if std::time::Instant::now() < deadline => {
                        old = shared;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(shared) => {
                        *slot() = Some(shared);
                        return Err(StorageError::Reopen(
                            "readers still hold the failed engine".into(),
                        ));
                    }
                }
            }
        }
        let engine = self
            .open_engine()
            .map_err(|error| StorageError::Reopen(error.to_string()))?;
        engine.db.persist(PersistMode::SyncAll)?;
        *slot() = Some(Arc::new(engine));
        Ok(())
    }

    /// The store's directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes an unprivileged writer can still use on the store's file system.
    pub(crate) fn free_bytes(&self) -> std::io::Result<u64> {
        let stats = rustix::fs::statvfs(&self.path)?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }
}

impl Engine {
    /// Opens the engine in a store directory whose format is checked, refusing data that
    /// lost acknowledged commits (see [`commit_guard`]).
    fn open(dir: &Path, settings: &StorageSettings) -> Result<Engine, StartError> {
        let engine_dir = dir.join(ENGINE_DIR);
        // The engine's refusal, naming the damaged table file when one can be found.
        let storage_error = |error: fjall::Error| match table_check::find_damaged_table(&engine_dir)
        {
            Ok(Some((path, damage))) => table_check::table_damaged(path, &damage),
            Ok(None) | Err(_) => StartError::Storage {
                path: engine_dir.clone(),
                message: error.to_string(),
            },
        };
        // Before fjall reads (and may truncate) its journals.
        let floor = commit_guard::raise_floor(dir, &engine_dir)?;
        let builder = Database::builder(&engine_dir)
            .max_journaling_size(settings.journal_bytes_max)
            .cache_size(settings.cache_bytes_max);
        // Damaged bytes can trip an assertion inside the engine's recovery (seen in debug
        // builds with a flipped journal length); that is a refusal to start, not a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.open()))
            .map_err(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                commit_guard::engine_failed_reading(&engine_dir, message)
            })?;
        let db = opened.map_err(|error| match error {
            fjall::Error::JournalRecovery(_) => {
                commit_guard::journal_damaged(&engine_dir, &error.to_string())
            }
            error => storage_error(error),
        })?;
        let memtable_bytes_max = settings.memtable_bytes_max;
        let keyspace = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable_bytes_max)
            })
        };
        let engine = Engine {
            log: keyspace("log").map_err(storage_error)?,
            stream_index: keyspace("stream_index").map_err(storage_error)?,
            stream_heads: keyspace("stream_heads").map_err(storage_error)?,
            event_ids: keyspace("event_ids").map_err(storage_error)?,
            snapshots: keyspace("snapshots").map_err(storage_error)?,
            subscriptions: keyspace("subscriptions").map_err(storage_error)?,
            checkpoints: keyspace("checkpoints").map_err(storage_error)?,
            parked: keyspace("parked").map_err(storage_error)?,
            commits: keyspace("commits").map_err(storage_error)?,
            indexes: keyspace("indexes").map_err(storage_error)?,
            raft_log: keyspace("raft_log").map_err(storage_error)?,
            raft_meta: keyspace("raft_meta").map_err(storage_error)?,
            db,
            #[cfg(feature = "fault-injection")]
            faults: fault::EngineFaults::default(),
        };
        // A damaged block can be the first thing read: name its table file then, as for any
        // other damage found at start.
        let recovered =
            engine.last_commit().map_err(|error| {
                match table_check::find_damaged_table(&engine_dir) {
                    Ok(Some((path, damage))) => table_check::table_damaged(path, &damage),
                    Ok(None) | Err(_) => StartError::Corrupt(error.to_string()),
                }
            })?;
        commit_guard::check_recovered(floor.as_ref(), recovered.map_or(0, |m| m.sequence))?;
        if settings.verify_tables_on_start
            && let Some((path, damage)) = table_check::find_damaged_table(&engine_dir)?
        {
            return Err(table_check::table_damaged(path, &damage));
        }
        Ok(engine)
    }

    /// A consistent view: every batch committed before this call, and nothing of one in
    /// progress. (Plain keyspace reads see a batch's items as they are inserted.)
    fn view(&self) -> Snapshot {
        self.db.snapshot()
    }

    /// The marker of the last committed batch (none before the first, or in data written
    /// before markers existed).
    pub(crate) fn last_commit(&self) -> Result<Option<CommitMarker>, StorageError> {
        match self.view().get(&self.commits, COMMIT_MARKER_KEY)? {
            None => Ok(None),
            Some(bytes) => {
                CommitMarker::decode(&bytes)
                    .map(Some)
                    .ok_or_else(|| StorageError::Corrupt {
                        keyspace: "commits",
                        detail: "the commit marker fails its checksum".into(),
                    })
            }
        }
    }

    /// The position the next event gets: one past the last in the log.
    pub(crate) fn next_position(&self) -> Result<u64, StorageError> {
        match self.view().last_key_value(&self.log) {
            None => Ok(0),
            Some(guard) => {
                let (key, value) = guard.into_inner()?;
                let chunk = Chunk::open(&value).map_err(corrupt("log"))?;
                decode_u64(&key, "log")?
                    .checked_add(chunk.len() as u64)
                    .ok_or_else(|| StorageError::Corrupt {
                        keyspace: "log",
                        detail: "the last chunk runs past the last position".into(),
                    })
            }
        }
    }

    /// A view for several point reads that must agree with each other (the committer takes
    /// one per batch).
    pub(crate) fn point_view(self: &Arc<Self>) -> PointView {
        PointView {
            snapshot: self.view(),
            engine: self.clone(),
        }
    }

    /// The event at a position.
    pub(crate) fn event_at(&self, position: u64) -> Result<Option<RecordedEvent>, StorageError> {
        event_at(&self.view(), &self.log, position)
    }

    /// Up to `count` events of a stream starting at `from` (inclusive); `None` starts at the
    /// first event (forward) or the last (backward). `Ok(None)` when the stream has no events.
    /// An index stream (`$et-`, `$ce-`) is read from a position instead ([`Self::read_index`]).
    /// With `bytes_max`, stops once the events hold that many bytes (at least one event).
    pub(crate) fn read_stream(
        &self,
        stream_id: &str,
        from: Option<u64>,
        count: u64,
        direction: Direction,
        bytes_max: Option<u64>,
    ) -> Result<Option<Vec<RecordedEvent>>, StorageError> {
        if let Some(index) = IndexedStream::parse(stream_id) {
            return self.read_index(index, from, count, direction, bytes_max);
        }
        let view = self.view();
        if view
            .get(&self.stream_heads, stream_id.as_bytes())?
            .is_none()
        {
            return Ok(None);
        }
        let first = stream_index_key(stream_id, 0);
        let last = stream_index_key(stream_id, u64::MAX);
        let entries: Box<dyn Iterator<Item = fjall::Guard>> = match (direction, from) {
            (Direction::Forward, Some(from)) => {
                Box::new(view.range(&self.stream_index, stream_index_key(stream_id, from)..=last))
            }
            (Direction::Forward, None) => Box::new(view.range(&self.stream_index, first..=last)),
            (Direction::Backward, Some(from)) => Box::new(
                view.range(
                    &self.stream_index,
                    first..=stream_index_key(stream_id, from),
                )
                .rev(),
            ),
            (Direction::Backward, None) => {
                Box::new(view.range(&self.stream_index, first..=last).rev())
            }
        };
        let mut log = LogReader::new(&view, &self.log);
        let mut events = Vec::new();
        let mut bytes = 0u64;
        for guard in entries.take(usize::try_from(count).unwrap_or(usize::MAX)) {
            if bytes_max.is_some_and(|max| bytes >= max) {
                break;
            }
            let (key, value) = guard.into_inner()?;
            let position = decode_u64(&value, "stream_index")?;
            let event = Self::indexed_event(&mut log, stream_id, &key, position)?;
            bytes += event.size_bytes();
            events.push(event);
        }
        Ok(Some(events))
    }

    /// Up to `count` events of `$all` that pass the request's filters: through the indexes
    /// when it asks for event types or a category's prefix, else from the log.
    pub(crate) fn read_all(&self, request: &ReadAllRequest) -> Result<EventPage, StorageError> {
        if let Some(read) = self.read_all_indexed(request) {
            return read;
        }
        let view = self.view();
        let filtered = request.stream_prefix.is_some() || !request.event_types.is_empty();
        let mut page = EventPage::with_capacity(request.count);
        let mut bytes = 0u64;
        walk_log(
            &view,
            &self.log,
            request.from_position,
            request.direction,
            |record| {
                if page.len() as u64 >= request.count
                    || request.bytes_max.is_some_and(|max| bytes >= max)
                {
                    return Ok(ControlFlow::Break(()));
                }
                if filtered {
                    let (stream_id, _, event_type) =
                        decode_event_header(record.bytes).map_err(corrupt("log"))?;
                    let stream_ok = request
                        .stream_prefix
                        .as_ref()
                        .is_none_or(|prefix| stream_id.starts_with(prefix.as_str()));
                    let type_ok = request.event_types.is_empty()
                        || request
                            .event_types
                            .iter()
                            .any(|wanted| wanted == event_type);
                    if !(stream_ok && type_ok) {
                        return Ok(ControlFlow::Continue(()));
                    }
                }
                let event = record.event()?;
                bytes += event.size_bytes();
                page.push(record.value, &event);
                Ok(ControlFlow::Continue(()))
            },
        )?;
        Ok(page.finish())
    }

    /// Scans the log over `scan` (`count_max` bounds the records looked at) and returns the
    /// events `matches` accepts with the position the next scan starts at.
    fn scan_log(
        &self,
        scan: Scan,
        matches: impl Fn(&RecordedEvent) -> bool,
    ) -> Result<(Vec<RecordedEvent>, u64), StorageError> {
        let view = self.view();
        let mut accepted = Accepted::new(scan.bytes_max);
        let mut next = scan.from;
        if scan.from >= scan.until {
            return Ok((accepted.events, next));
        }
        let mut looked_at = 0u64;
        walk_log(
            &view,
            &self.log,
            Some(scan.from),
            Direction::Forward,
            |record| {
                if record.position >= scan.until || looked_at >= scan.count_max {
                    return Ok(ControlFlow::Break(()));
                }
                looked_at += 1;
                let event = record.event()?.to_event();
                next = record.position + 1;
                Ok(if matches(&event) && accepted.push(event) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        )?;
        Ok((accepted.events, next))
    }

    /// The events `matches` accepts over `scan`, read from `source`, with the position the
    /// next scan starts at. `count_max` bounds the records looked at in the log, and the
    /// events accepted from an index.
    pub(crate) fn scan(
        &self,
        source: Source<'_>,
        scan: Scan,
        matches: impl Fn(&RecordedEvent) -> bool,
    ) -> Result<(Vec<RecordedEvent>, u64), StorageError> {
        match source {
            Source::Log => self.scan_log(scan, matches),
            Source::Stream {
                stream_id,
                first_number,
            } => self.scan_stream(stream_id, first_number, scan, matches),
            Source::Index(index) => self.scan_index(index, scan, matches),
        }
    }

    /// The events of one stream over `scan` (`count_max` bounds the events accepted), read
    /// through the stream's index: a subscription to one stream catches up in the stream's
    /// size, not the log's. The index is read from event `first_number` on (a hint: entries
    /// before `scan.from` are skipped). Returns the events `matches` accepts with the position
    /// the next scan starts at.
    fn scan_stream(
        &self,
        stream_id: &str,
        first_number: u64,
        scan: Scan,
        matches: impl Fn(&RecordedEvent) -> bool,
    ) -> Result<(Vec<RecordedEvent>, u64), StorageError> {
        let view = self.view();
        let mut accepted = Accepted::new(scan.bytes_max);
        if scan.from >= scan.until {
            return Ok((accepted.events, scan.from));
        }
        let first = stream_index_key(stream_id, first_number);
        let last = stream_index_key(stream_id, u64::MAX);
        let mut log = LogReader::new(&view, &self.log);
        for guard in view.range(&self.stream_index, first..=last) {
            let (key, value) = guard.into_inner()?;
            let position = decode_u64(&value, "stream_index")?;
            if position < scan.from {
                continue;
            }
            if position >= scan.until {
                break;
            }
            let event = Self::indexed_event(&mut log, stream_id, &key, position)?;
            if matches(&event)
                && (accepted.push(event) || accepted.events.len() as u64 >= scan.count_max)
            {
                return Ok((accepted.events, position + 1));
            }
        }
        // The stream has nothing more before `until`.
        Ok((accepted.events, scan.until))
    }

    /// The event a stream index entry (its key, and the `position` it holds) points at,
    /// checked to be that stream's event of that number.
    fn indexed_event(
        log: &mut LogReader<'_>,
        stream_id: &str,
        key: &[u8],
        position: u64,
    ) -> Result<RecordedEvent, StorageError> {
        let number_bytes = key.get(stream_id.len() + 1..).unwrap_or_default();
        let event_number = decode_u64(number_bytes, "stream_index")?;
        let event = log.event(position)?.ok_or_else(|| StorageError::Corrupt {
            keyspace: "stream_index",
            detail: format!("{stream_id} points at missing position {position}"),
        })?;
        check_indexed(stream_id, event_number, &event)?;
        Ok(event)
    }

    /// Every stored subscription definition: (name, definition bytes).
    pub(crate) fn subscription_definitions(&self) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let view = self.view();
        let mut definitions = Vec::new();
        for guard in view.iter(&self.subscriptions) {
            let (key, value) = guard.into_inner()?;
            let name = String::from_utf8(key.to_vec()).map_err(|_| StorageError::Corrupt {
                keyspace: "subscriptions",
                detail: "name is not UTF-8".into(),
            })?;
            let bytes = codec::open_blob(&value).map_err(corrupt("subscriptions"))?;
            definitions.push((name, bytes.to_vec()));
        }
        Ok(definitions)
    }

    /// A subscription's stored checkpoint.
    pub(crate) fn checkpoint(&self, name: &str) -> Result<Option<u64>, StorageError> {
        get_u64(
            &self.view(),
            &self.checkpoints,
            name.as_bytes(),
            "checkpoints",
        )
    }

    /// The position up to which PubSub handed every event to the external bus, if stored.
    pub(crate) fn bus_position(&self) -> Result<Option<u64>, StorageError> {
        get_u64(
            &self.view(),
            &self.checkpoints,
            BUS_POSITION_KEY,
            "checkpoints",
        )
    }

    /// The positions of a subscription's parked events, in order.
    pub(crate) fn parked_positions(&self, name: &str) -> Result<Vec<u64>, StorageError> {
        let view = self.view();
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(SEPARATOR);
        let mut positions = Vec::new();
        for guard in view.prefix(&self.parked, &prefix) {
            let key = guard.key()?;
            positions.push(decode_u64(&key[prefix.len()..], "parked")?);
        }
        Ok(positions)
    }

    /// Streams in id order, starting after `after`.
    pub(crate) fn list_streams(
        &self,
        after: Option<&str>,
        count: u64,
    ) -> Result<Vec<StreamInfo>, StorageError> {
        let lower = match after {
            Some(after) => Bound::Excluded(after.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let view = self.view();
        let mut streams = Vec::new();
        for guard in view
            .range::<Vec<u8>, _>(&self.stream_heads, (lower, Bound::Unbounded))
            .take(usize::try_from(count).unwrap_or(usize::MAX))
        {
            let (key, value) = guard.into_inner()?;
            let stream_id = String::from_utf8(key.to_vec()).map_err(|_| StorageError::Corrupt {
                keyspace: "stream_heads",
                detail: "stream id is not UTF-8".into(),
            })?;
            streams.push(StreamInfo {
                stream_id,
                version: decode_u64(&value, "stream_heads")?,
            });
        }
        Ok(streams)
    }

    /// The snapshot at exactly `version`, or the latest at or below it.
    pub(crate) fn read_snapshot(
        &self,
        source_uuid: &str,
        stream_uuid: &str,
        version: u64,
        exact: bool,
    ) -> Result<Option<StoredSnapshot>, StorageError> {
        let view = self.view();
        let found = if exact {
            let key = snapshot_key(source_uuid, stream_uuid, version);
            view.get(&self.snapshots, &key)?.map(|value| (key, value))
        } else {
            let lower = snapshot_key(source_uuid, stream_uuid, 0);
            let upper = snapshot_key(source_uuid, stream_uuid, version);
            match view.range(&self.snapshots, lower..=upper).next_back() {
                None => None,
                Some(guard) => {
                    let (key, value) = guard.into_inner()?;
                    Some((key.to_vec(), value))
                }
            }
        };
        found
            .map(|(key, value)| decode_snapshot(&key, &value))
            .transpose()
    }

    /// Snapshots whose source (and, if given, stream) match, in key order.
    pub(crate) fn list_snapshots(
        &self,
        source_uuid: Option<&str>,
        stream_uuid: Option<&str>,
        count: u64,
    ) -> Result<Vec<StoredSnapshot>, StorageError> {
        let mut prefix = Vec::new();
        if let Some(source) = source_uuid {
            prefix.extend_from_slice(source.as_bytes());
            prefix.push(SEPARATOR);
            if let Some(stream) = stream_uuid {
                prefix.extend_from_slice(stream.as_bytes());
                prefix.push(SEPARATOR);
            }
        }
        let view = self.view();
        let mut snapshots = Vec::new();
        for guard in view.prefix(&self.snapshots, &prefix) {
            if snapshots.len() as u64 >= count {
                break;
            }
            let (key, value) = guard.into_inner()?;
            let snapshot = decode_snapshot(&key, &value)?;
            if source_uuid.is_none() && stream_uuid.is_some_and(|s| s != snapshot.stream_uuid) {
                continue;
            }
            snapshots.push(snapshot);
        }
        Ok(snapshots)
    }
}

/// Point reads against one consistent snapshot.
pub(crate) struct PointView {
    engine: Arc<Engine>,
    snapshot: Snapshot,
}

impl PointView {
    /// The version of a stream, or `None` when it has no events.
    pub(crate) fn stream_version(&self, stream_id: &str) -> Result<Option<u64>, StorageError> {
        get_u64(
            &self.snapshot,
            &self.engine.stream_heads,
            stream_id.as_bytes(),
            "stream_heads",
        )
    }

    /// The position of event `event_number` of a stream.
    pub(crate) fn position_of(
        &self,
        stream_id: &str,
        event_number: u64,
    ) -> Result<Option<u64>, StorageError> {
        let key = stream_index_key(stream_id, event_number);
        get_u64(
            &self.snapshot,
            &self.engine.stream_index,
            &key,
            "stream_index",
        )
    }

    /// The event number at which `event_id` was recorded in a stream, if it was.
    pub(crate) fn event_number_of_id(
        &self,
        stream_id: &str,
        event_id: Uuid,
    ) -> Result<Option<u64>, StorageError> {
        let key = event_id_key(stream_id, event_id);
        get_u64(&self.snapshot, &self.engine.event_ids, &key, "event_ids")
    }
}

/// A `u64` value read through `view`, or `None` when the key is absent.
fn get_u64(
    view: &Snapshot,
    keyspace: &Keyspace,
    key: &[u8],
    name: &'static str,
) -> Result<Option<u64>, StorageError> {
    view.get(keyspace, key)?
        .map(|value| decode_u64(&value, name))
        .transpose()
}

fn event_at(
    view: &Snapshot,
    log: &Keyspace,
    position: u64,
) -> Result<Option<RecordedEvent>, StorageError> {
    LogReader::new(view, log).event(position)
}

/// The log value whose records start at or before `position`: its first position and bytes.
fn chunk_at(
    view: &Snapshot,
    log: &Keyspace,
    position: u64,
) -> Result<Option<(u64, fjall::Slice)>, StorageError> {
    match view.range(log, ..=position.to_be_bytes()).next_back() {
        None => Ok(None),
        Some(guard) => {
            let (key, value) = guard.into_inner()?;
            Ok(Some((decode_u64(&key, "log")?, value)))
        }
    }
}

/// Point reads of the log through one view. It keeps the last chunk it read, because the
/// events an index leads to one after another are often neighbours in one chunk (the events
/// of one append always are).
pub(crate) struct LogReader<'v> {
    view: &'v Snapshot,
    log: &'v Keyspace,
    /// The last chunk read: its first position, its record count and its bytes.
    chunk: Option<(u64, u64, fjall::Slice)>,
}

impl<'v> LogReader<'v> {
    fn new(view: &'v Snapshot, log: &'v Keyspace) -> Self {
        LogReader {
            view,
            log,
            chunk: None,
        }
    }

    /// The event at `position`, or `None` when the log has none there.
    fn event(&mut self, position: u64) -> Result<Option<RecordedEvent>, StorageError> {
        Ok(self.event_ref(position)?.map(|(_, event)| event.to_event()))
    }

    /// The event at `position` borrowed from its log value, with the value.
    fn event_ref(
        &mut self,
        position: u64,
    ) -> Result<Option<(&fjall::Slice, EventRef<'_>)>, StorageError> {
        let cached = self
            .chunk
            .as_ref()
            .is_some_and(|(first, count, _)| position >= *first && position - first < *count);
        if !cached {
            self.chunk = match chunk_at(self.view, self.log, position)? {
                None => None,
                Some((first, bytes)) => {
                    let count = Chunk::open(&bytes).map_err(corrupt("log"))?.len() as u64;
                    Some((first, count, bytes))
                }
            };
        }
        let Some((first, _, bytes)) = &self.chunk else {
            return Ok(None);
        };
        // Its header was checked when it was read; the bytes have not changed since.
        let chunk = Chunk::reopen(bytes).map_err(corrupt("log"))?;
        let Some(index) = position
            .checked_sub(*first)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return Ok(None);
        };
        match chunk.record(index).map_err(corrupt("log"))? {
            None => Ok(None),
            Some(record) => {
                let event = read_event(position, record).map_err(corrupt("log"))?;
                Ok(Some((bytes, event)))
            }
        }
    }
}

/// One record met by [`walk_log`]: its position, its bytes, and the log value holding them.
struct LogRecord<'a> {
    position: u64,
    bytes: &'a [u8],
    value: &'a fjall::Slice,
}

impl<'a> LogRecord<'a> {
    /// The record, checked, as its event.
    fn event(&self) -> Result<EventRef<'a>, StorageError> {
        read_event(self.position, self.bytes).map_err(corrupt("log"))
    }
}

/// Walks the log's records one by one from `from` (inclusive; `None` is the start, or the
/// end backward) in `direction`, handing `visit` each record until it breaks.
fn walk_log(
    view: &Snapshot,
    log: &Keyspace,
    from: Option<u64>,
    direction: Direction,
    mut visit: impl FnMut(LogRecord<'_>) -> Result<ControlFlow<()>, StorageError>,
) -> Result<(), StorageError> {
    let values: Box<dyn Iterator<Item = fjall::Guard>> = match (direction, from) {
        (Direction::Forward, Some(from)) => {
            // Start at the chunk that holds `from`, wherever inside it `from` is.
            let start = match chunk_at(view, log, from)? {
                Some((first, _)) => first,
                None => from,
            };
            Box::new(view.range(log, start.to_be_bytes()..))
        }
        (Direction::Forward, None) => Box::new(view.iter(log)),
        (Direction::Backward, Some(from)) => Box::new(view.range(log, ..=from.to_be_bytes()).rev()),
        (Direction::Backward, None) => Box::new(view.iter(log).rev()),
    };
    for guard in values {
        let (key, value) = guard.into_inner()?;
        let first = decode_u64(&key, "log")?;
        let chunk = Chunk::open(&value).map_err(corrupt("log"))?;
        let count = chunk.len();
        for step in 0..count {
            let index = match direction {
                Direction::Forward => step,
                Direction::Backward => count - 1 - step,
            };
            let position = first.saturating_add(index as u64);
            let outside = match (direction, from) {
                (Direction::Forward, Some(from)) => position < from,
                (Direction::Backward, Some(from)) => position > from,
                (_, None) => false,
            };
            if outside {
                continue;
            }
            if let Some(bytes) = chunk.record(index).map_err(corrupt("log"))?
                && visit(LogRecord {
                    position,
                    bytes,
                    value: &value,
                })?
                .is_break()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The record an index entry led to must be the event the entry names: the record's checksum
/// proves the record whole, not that the index points at the right one.
fn check_indexed(
    stream_id: &str,
    event_number: u64,
    event: &RecordedEvent,
) -> Result<(), StorageError> {
    if event.stream_id == stream_id && event.event_number == event_number {
        return Ok(());
    }
    Err(StorageError::IndexMismatch {
        stream_id: stream_id.to_string(),
        event_number,
        position: event.position,
        found_stream_id: event.stream_id.clone(),
        found_event_number: event.event_number,
    })
}

fn decode_snapshot(key: &[u8], value: &[u8]) -> Result<StoredSnapshot, StorageError> {
    let bad_key = || StorageError::Corrupt {
        keyspace: "snapshots",
        detail: "malformed key".into(),
    };
    if key.len() < 10 {
        return Err(bad_key());
    }
    let (names, version) = key.split_at(key.len() - 8);
    let names = names.strip_suffix(&[SEPARATOR]).ok_or_else(bad_key)?;
    let split = names
        .iter()
        .position(|b| *b == SEPARATOR)
        .ok_or_else(bad_key)?;
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| bad_key());
    Ok(StoredSnapshot {
        source_uuid: text(&names[..split])?,
        stream_uuid: text(&names[split + 1..])?,
        version: decode_u64(version, "snapshots")?,
        record: SnapshotRecord::decode(value).map_err(corrupt("snapshots"))?,
    })
}

fn decode_u64(bytes: &[u8], keyspace: &'static str) -> Result<u64, StorageError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        keyspace,
        detail: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

fn stream_index_key(stream_id: &str, event_number: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream_id.len() + 9);
    key.extend_from_slice(stream_id.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(&event_number.to_be_bytes());
    key
}

fn event_id_key(stream_id: &str, event_id: Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream_id.len() + 17);
    key.extend_from_slice(stream_id.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(event_id.as_bytes());
    key
}

fn parked_key(name: &str, position: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 9);
    key.extend_from_slice(name.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

fn snapshot_key(source_uuid: &str, stream_uuid: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(source_uuid.len() + stream_uuid.len() + 10);
    key.extend_from_slice(source_uuid.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(stream_uuid.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// What a directory's format marker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FoundFormat {
    /// This build's format (or a new directory, now marked with it).
    Current,
    /// An earlier format that [`upgrade`] brings up to this one.
    Upgradable(u32),
}

/// Reads the directory's format marker, or writes it (durably) into a new, empty directory.
fn check_or_write_format(dir: &Path) -> Result<FoundFormat, StartError> {
    let format_path = dir.join(FORMAT_FILE);
    let io = |source| StartError::Io {
        path: format_path.clone(),
        source,
    };
    match fs::read_to_string(&format_path) {
        Ok(text) => {
            let found = text.trim().to_string();
            let version = found
                .strip_prefix(FORMAT_PREFIX)
                .and_then(|v| v.parse::<u32>().ok());
            match version {
                Some(FORMAT_VERSION) => Ok(FoundFormat::Current),
                Some(
                    old @ (FORMAT_WITHOUT_INDEXES | FORMAT_WITHOUT_CHUNKS | FORMAT_WITHOUT_RAFT),
                ) => Ok(FoundFormat::Upgradable(old)),
                _ => Err(StartError::UnsupportedFormat {
                    path: dir.to_path_buf(),
                    found,
                    supported: FORMAT_VERSION,
                }),
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            // A crash while writing the marker leaves only its temporary file: still empty.
            let temporary = dir.join(format!("{FORMAT_FILE}.tmp"));
            let mut entries = fs::read_dir(dir)
                .map_err(io)?
                .filter(|entry| entry.as_ref().map_or(true, |e| e.path() != temporary));
            if entries.next().is_some() {
                return Err(StartError::NotADataDirectory {
                    path: dir.to_path_buf(),
                });
            }
            write_format(dir)?;
            Ok(FoundFormat::Current)
        }
        Err(error) => Err(io(error)),
    }
}

/// Writes this build's format marker, in place of any: to a temporary name, synced, renamed
/// and the directory synced, so a crash leaves the old marker (or none, in a new and empty
/// directory) or the complete new one.
fn write_format(dir: &Path) -> Result<(), StartError> {
    let format_path = dir.join(FORMAT_FILE);
    let temporary = dir.join(format!("{FORMAT_FILE}.tmp"));
    let io = |source| StartError::Io {
        path: format_path.clone(),
        source,
    };
    let mut file = fs::File::create(&temporary).map_err(io)?;
    writeln!(file, "{FORMAT_PREFIX}{FORMAT_VERSION}").map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temporary, &format_path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// Brings a directory of an earlier format up to this one, then marks it. From format 1 it
/// builds the indexes from the log (durably) first. A crash before the mark leaves the old
/// format, and the next start does it again.
fn upgrade(dir: &Path, engine: &Engine, from: u32) -> Result<(), StartError> {
    tracing::info!(
        path = %dir.display(),
        from,
        to = FORMAT_VERSION,
        "upgrading the data directory"
    );
    let started = std::time::Instant::now();
    if from == FORMAT_WITHOUT_INDEXES {
        let indexed = engine
            .backfill_indexes()
            .map_err(|error| StartError::Storage {
                path: dir.join(ENGINE_DIR),
                message: format!("building the secondary indexes failed: {error}"),
            })?;
        tracing::info!(
            events = indexed,
            "built the indexes by event type and category"
        );
    }
    write_format(dir)?;
    tracing::info!(
        path = %dir.display(),
        seconds = started.elapsed().as_secs_f64(),
        "data directory upgraded"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::EventRecord;

    fn record(stream_id: &str, event_number: u64) -> EventRecord<'_> {
        EventRecord {
            stream_id,
            event_number,
            event_id: Uuid::from_u128(u128::from(event_number) + 1),
            created_micros: 0,
            event_type: "E",
            data_content_type: "",
            metadata_content_type: "",
            data: b"{}",
            metadata: b"",
        }
    }

    fn marker(sequence: u64, next_position: u64) -> CommitMarker {
        CommitMarker {
            sequence,
            next_position,
        }
    }

    #[test]
    fn a_stream_read_refuses_a_record_its_index_entry_does_not_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path(), &StorageSettings::default()).expect("opens");
        let engine = storage.engine().expect("open engine");
        let mut batch = engine.write_batch();
        batch.append_event(0, &record("a", 0), false);
        batch.set_stream_head("a", 0);
        batch.append_event(1, &record("b", 0), false);
        batch.set_stream_head("b", 0);
        batch.commit(marker(1, 2)).expect("commits");
        let read = |stream_id| engine.read_stream(stream_id, None, 10, Direction::Forward, None);
        let events = read("a").expect("reads").expect("stream exists");
        assert_eq!(events.len(), 1);

        // Event 1 of "a" indexed at the position of event 0 of "b": the record is whole (its
        // checksum holds) but it is not the event the index names.
        let mut batch = engine.write_batch();
        batch.index_entry_for_test("a", 1, 1);
        batch.set_stream_head("a", 1);
        batch.commit(marker(2, 2)).expect("commits");
        let error = read("a").expect_err("the mismatch is an error");
        match &error {
            StorageError::IndexMismatch {
                stream_id,
                event_number,
                position,
                found_stream_id,
                found_event_number,
            } => {
                assert_eq!((stream_id.as_str(), *event_number, *position), ("a", 1, 1));
                assert_eq!((found_stream_id.as_str(), *found_event_number), ("b", 0));
            }
            other => panic!("expected an index mismatch, got {other:?}"),
        }
        assert!(error.to_string().contains("a@1"), "{error}");
        // Backward reads check too, and "b" itself is unaffected.
        assert!(
            engine
                .read_stream("a", None, 10, Direction::Backward, None)
                .is_err()
        );
        assert_eq!(read("b").expect("reads").expect("exists").len(), 1);
    }

    /// A log as format 2 left it (lone records at 0..3), then chunks written by this build:
    /// a batch of 150 small events (three chunks by count), and a batch whose 40 KiB events
    /// close a chunk by size. Streams "s0".."s2" take the events in turn.
    fn mixed_log(engine: &Arc<Engine>) -> Vec<(String, u64)> {
        let mut written = Vec::new();
        let mut numbers = [0u64; 3];
        let mut next = |written: &mut Vec<(String, u64)>| {
            let stream = written.len() % 3;
            let number = numbers[stream];
            numbers[stream] += 1;
            written.push((format!("s{stream}"), number));
            written.len() as u64 - 1
        };
        let big = vec![7u8; 40 * 1024];
        let mut batch = engine.write_batch();
        for _ in 0..3 {
            let position = next(&mut written);
            let (stream, number) = &written[position as usize];
            batch.lone_record_for_test(position, &record(stream, *number));
        }
        batch.commit(marker(1, 3)).expect("commits");
        let mut batch = engine.write_batch();
        for _ in 0..150 {
            let position = next(&mut written);
            let (stream, number) = &written[position as usize];
            batch.append_event(position, &record(stream, *number), false);
        }
        batch.commit(marker(2, 153)).expect("commits");
        let mut batch = engine.write_batch();
        for _ in 0..3 {
            let position = next(&mut written);
            let (stream, number) = &written[position as usize];
            let mut event = record(stream, *number);
            event.data = &big;
            batch.append_event(position, &event, false);
        }
        for (stream, number) in numbers.iter().enumerate() {
            batch.set_stream_head(&format!("s{stream}"), number - 1);
        }
        batch.commit(marker(3, 156)).expect("commits");
        written
    }

    #[test]
    fn the_log_reads_alike_through_lone_records_and_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = Storage::open(dir.path(), &StorageSettings::default()).expect("opens");
        let engine = storage.engine().expect("engine");
        let written = mixed_log(&engine);
        let total = written.len() as u64;
        assert_eq!(engine.next_position().expect("reads"), total);
        let read_all = |from, direction, count| {
            engine
                .read_all(&ReadAllRequest {
                    from_position: from,
                    count,
                    direction,
                    ..ReadAllRequest::default()
                })
                .expect("reads")
                .iter()
                .map(|event| {
                    (
                        event.position,
                        event.stream_id.to_string(),
                        event.event_number,
                    )
                })
                .collect::<Vec<_>>()
        };
        let expected = |positions: Vec<u64>| {
            positions
                .into_iter()
                .map(|p| {
                    let (stream, number) = &written[p as usize];
                    (p, stream.clone(), *number)
                })
                .collect::<Vec<_>>()
        };
        // From every position, both ways, across every chunk boundary.
        for from in 0..total {
            assert_eq!(
                read_all(Some(from), Direction::Forward, 70),
                expected((from..total.min(from + 70)).collect()),
                "forward from {from}"
            );
            assert_eq!(
                read_all(Some(from), Direction::Backward, 70),
                expected((from.saturating_sub(69)..=from).rev().collect()),
                "backward from {from}"
            );
            let event = engine.event_at(from).expect("reads").expect("exists");
            assert_eq!(
                (event.stream_id.as_str(), event.event_number),
                (written[from as usize].0.as_str(), written[from as usize].1)
            );
        }
        assert!(engine.event_at(total).expect("reads").is_none());
        assert_eq!(
            read_all(None, Direction::Backward, 2),
            expected(vec![155, 154])
        );
        assert_eq!(
            read_all(Some(total), Direction::Forward, 5),
            expected(vec![])
        );
        // Each stream's events, through its index, both ways.
        for stream in ["s0", "s1", "s2"] {
            let numbers: Vec<u64> = engine
                .read_stream(stream, None, 1_000, Direction::Forward, None)
                .expect("reads")
                .expect("exists")
                .iter()
                .map(|event| event.event_number)
                .collect();
            assert_eq!(numbers, (0..52).collect::<Vec<_>>(), "{stream}");
            let backward = engine
                .read_stream(stream, Some(30), 5, Direction::Backward, None)
                .expect("reads")
                .expect("exists");
            let numbers: Vec<u64> = backward.iter().map(|event| event.event_number).collect();
            assert_eq!(numbers, vec![30, 29, 28, 27, 26], "{stream}");
        }
        // A scan stops at its bound inside a chunk and says where to go on.
        let (events, next) = engine
            .scan(
                Source::Log,
                Scan {
                    from: 2,
                    until: 100,
                    count_max: 10,
                    bytes_max: None,
                },
                |event| event.stream_id == "s1",
            )
            .expect("scans");
        let positions: Vec<u64> = events.iter().map(|event| event.position).collect();
        assert_eq!((positions, next), (vec![4, 7, 10], 12));
    }

    #[test]
    fn a_damaged_chunk_header_is_an_error_not_events() {
        let mut writer = codec::ChunkWriter::default();
        for number in 0..5 {
            writer.push(&record("a", number));
        }
        let bytes = writer.finish();
        let header = 5 + 4 + 5 * 4;
        let chunk = codec::Chunk::open(&bytes).expect("opens");
        assert_eq!(chunk.len(), 5);
        for index in 0..5 {
            let event = codec::decode_event(
                index as u64,
                chunk.record(index).expect("frames").expect("is there"),
            )
            .expect("decodes");
            assert_eq!(event.event_number, index as u64);
        }
        assert!(chunk.record(5).expect("frames").is_none());
        for at in 0..header {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(
                    codec::Chunk::open(&damaged).is_err(),
                    "bit {bit} of byte {at}"
                );
            }
        }
        assert!(
            codec::Chunk::open(&bytes[..bytes.len() - 1]).is_err(),
            "cut short"
        );
        assert!(
            codec::Chunk::open(&bytes[..header - 2]).is_err(),
            "header cut short"
        );
    }

    #[test]
    fn a_directory_of_format_2_is_marked_and_reads_as_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = {
            let storage = Storage::open(dir.path(), &StorageSettings::default()).expect("opens");
            let engine = storage.engine().expect("engine");
            mixed_log(&engine)
        };
        fs::write(dir.path().join(FORMAT_FILE), "exesdb-format 2\n").expect("write");
        let storage = Storage::open(dir.path(), &StorageSettings::default()).expect("upgrades");
        let marker = fs::read_to_string(dir.path().join(FORMAT_FILE)).expect("marker");
        assert_eq!(marker.trim(), format!("exesdb-format {FORMAT_VERSION}"));
        let engine = storage.engine().expect("engine");
        let events = engine
            .read_all(&ReadAllRequest {
                count: 1_000,
                ..ReadAllRequest::default()
            })
            .expect("reads");
        assert_eq!(events.len(), written.len());
        assert!(
            events
                .iter()
                .enumerate()
                .all(|(i, e)| e.position == i as u64)
        );
    }

    #[test]
    fn a_new_directory_gets_a_format_marker_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("s");
        drop(Storage::open(&store, &StorageSettings::default()).expect("creates"));
        let marker = fs::read_to_string(store.join(FORMAT_FILE)).expect("marker");
        assert_eq!(marker.trim(), format!("exesdb-format {FORMAT_VERSION}"));
        drop(Storage::open(&store, &StorageSettings::default()).expect("reopens"));
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FORMAT_FILE), "exesdb-format 99\n").expect("write");
        let error =
            Storage::open(dir.path(), &StorageSettings::default()).expect_err("must refuse");
        assert!(
            matches!(error, StartError::UnsupportedFormat { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("exesdb-format 99"));
    }

    #[test]
    fn a_leftover_temporary_marker_does_not_block_creation() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("FORMAT.tmp"), "exesdb-form").expect("write");
        drop(Storage::open(dir.path(), &StorageSettings::default()).expect("creates"));
        assert!(dir.path().join(FORMAT_FILE).exists());
    }

    #[test]
    fn a_foreign_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("something"), "x").expect("write");
        let error =
            Storage::open(dir.path(), &StorageSettings::default()).expect_err("must refuse");
        assert!(
            matches!(error, StartError::NotADataDirectory { .. }),
            "{error}"
        );
    }
}
