//! What cluster mode keeps on disk besides the store's data: the Raft log, the vote and the
//! committed index (keyspaces `raft_log` and `raft_meta`), the applied state written with the
//! data it describes, and whole-store snapshot files.
//!
//! Everything here deals in bytes: what the bytes mean (log ids, votes, memberships) is the
//! Raft module's business (`crate::raft`), so that no openraft type reaches storage.
//!
//! Durability: every write of the log and the vote is synced (`SyncData`) before it returns;
//! openraft's callbacks fire only after that. A state machine batch carries the applied state
//! in the same atomic batch as its data ([`super::WriteBatch::set_raft_applied`]).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use fjall::{Keyspace, PersistMode, Readable};

use super::commit_guard::CommitMarker;
use super::{COMMIT_MARKER_KEY, Engine, StorageError, decode_u64};

/// The key of the applied state (last applied log id and membership) in `commits`.
pub(super) const RAFT_APPLIED_KEY: &[u8] = b"raft-applied";
/// Set while a snapshot is being installed: data keyspaces are then partial.
const INSTALLING_KEY: &str = "installing";

/// Deletions of log entries go in batches of this many keys, so that truncating or purging a
/// long log never builds one huge batch.
const DELETE_BATCH_KEYS: usize = 4096;
/// An install writes the snapshot's records in batches of at most this many, or this many
/// bytes, so that memory stays bounded whatever the store's size.
const INSTALL_BATCH_RECORDS: usize = 4096;
const INSTALL_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// A snapshot file starts with this.
const SNAPSHOT_MAGIC: &[u8; 16] = b"exesdb-snapshot1";
const FRAME_RECORD: u8 = 1;
const FRAME_END: u8 = 2;

/// A value in `raft_log` or `raft_meta`: CRC-32 (BE) of the bytes, then the bytes.
pub(super) fn seal(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    out.extend_from_slice(&crc32fast::hash(bytes).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

fn unseal(value: &[u8], keyspace: &'static str) -> Result<Vec<u8>, StorageError> {
    let damaged = |detail: &str| StorageError::Corrupt {
        keyspace,
        detail: detail.to_string(),
    };
    let (crc, bytes) = value
        .split_first_chunk::<4>()
        .ok_or_else(|| damaged("value shorter than its checksum"))?;
    if crc32fast::hash(bytes) != u32::from_be_bytes(*crc) {
        return Err(damaged("value fails its checksum"));
    }
    Ok(bytes.to_vec())
}

/// The data keyspaces a snapshot holds, each with its id in the file. `commits` is not among
/// them: an installed snapshot gets a commit marker and an applied state of its own.
fn data_keyspaces(engine: &Engine) -> [(u8, &Keyspace); 9] {
    [
        (1, &engine.log),
        (2, &engine.stream_index),
        (3, &engine.stream_heads),
        (4, &engine.event_ids),
        (5, &engine.snapshots),
        (6, &engine.subscriptions),
        (7, &engine.checkpoints),
        (8, &engine.parked),
        (9, &engine.indexes),
    ]
}

impl Engine {
    /// Bytes on disk of the Raft log with its metadata, and of the rest: the data the state
    /// machine applied, with the journal the two share.
    pub(crate) fn disk_bytes(&self) -> Result<(u64, u64), StorageError> {
        let raft = self.raft_log.disk_space() + self.raft_meta.disk_space();
        let total = self.db.disk_space()?;
        Ok((raft, total.saturating_sub(raft)))
    }

    /// Appends Raft log entries (index, encoded entry), synced before this returns.
    pub(crate) fn raft_append(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        for (index, bytes) in entries {
            batch.insert(&self.raft_log, index.to_be_bytes(), seal(bytes));
        }
        batch.commit()?;
        Ok(())
    }

    /// The entries with indexes in `from..until`, in order. The log may start after `from`
    /// (entries before it were purged); a gap after its first entry ends the read.
    pub(crate) fn raft_entries(
        &self,
        from: u64,
        until: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let mut entries = Vec::new();
        if from >= until {
            return Ok(entries);
        }
        let view = self.view();
        for guard in view.range(&self.raft_log, from.to_be_bytes()..until.to_be_bytes()) {
            let (key, value) = guard.into_inner()?;
            let index = decode_u64(&key, "raft_log")?;
            if let Some((last, _)) = entries.last()
                && index != last + 1
            {
                break;
            }
            entries.push((index, unseal(&value, "raft_log")?));
        }
        Ok(entries)
    }

    /// The last entry of the log.
    pub(crate) fn raft_last_entry(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        match self.view().last_key_value(&self.raft_log) {
            None => Ok(None),
            Some(guard) => {
                let (key, value) = guard.into_inner()?;
                Ok(Some((
                    decode_u64(&key, "raft_log")?,
                    unseal(&value, "raft_log")?,
                )))
            }
        }
    }

    /// Deletes every entry at `from` and after, synced.
    pub(crate) fn raft_truncate_from(&self, from: u64) -> Result<(), StorageError> {
        self.raft_delete(from.to_be_bytes()..=u64::MAX.to_be_bytes(), None)
    }

    /// Records `purged` (the encoded last purged log id) under `purged_key`, then deletes every
    /// entry up to `through`. The record is written first: entries up to it are ignored once
    /// it is stored, so a crash part way leaves nothing wrong behind.
    pub(crate) fn raft_purge_through(
        &self,
        through: u64,
        purged_key: &str,
        purged: &[u8],
    ) -> Result<(), StorageError> {
        self.raft_delete(
            0u64.to_be_bytes()..=through.to_be_bytes(),
            Some((purged_key, purged)),
        )
    }

    fn raft_delete(
        &self,
        range: std::ops::RangeInclusive<[u8; 8]>,
        first_write: Option<(&str, &[u8])>,
    ) -> Result<(), StorageError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        if let Some((key, value)) = first_write {
            batch.insert(&self.raft_meta, key.as_bytes(), seal(value));
        }
        for guard in self.view().range(&self.raft_log, range) {
            batch.remove(&self.raft_log, guard.key()?);
            if batch.len() >= DELETE_BATCH_KEYS {
                let full = std::mem::replace(
                    &mut batch,
                    self.db.batch().durability(Some(PersistMode::SyncData)),
                );
                full.commit()?;
            }
        }
        if !batch.is_empty() {
            batch.commit()?;
        }
        Ok(())
    }

    /// A value of `raft_meta` (the vote, the committed log id, the last purged log id).
    pub(crate) fn raft_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.view()
            .get(&self.raft_meta, key.as_bytes())?
            .map(|value| unseal(&value, "raft_meta"))
            .transpose()
    }

    /// Stores a value of `raft_meta`, synced when `durable`.
    pub(crate) fn set_raft_meta(
        &self,
        key: &str,
        value: &[u8],
        durable: bool,
    ) -> Result<(), StorageError> {
        let mode = durable.then_some(PersistMode::SyncData);
        let mut batch = self.db.batch().durability(mode);
        batch.insert(&self.raft_meta, key.as_bytes(), seal(value));
        batch.commit()?;
        Ok(())
    }

    /// The applied state written by the last state machine batch (or snapshot install).
    pub(crate) fn raft_applied(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.view()
            .get(&self.commits, RAFT_APPLIED_KEY)?
            .map(|value| unseal(&value, "commits"))
            .transpose()
    }

    /// Whether a snapshot install was cut short (by a crash): the data keyspaces are then
    /// partial and must be cleared before the state machine serves anything.
    pub(crate) fn raft_install_interrupted(&self) -> Result<bool, StorageError> {
        Ok(self
            .view()
            .get(&self.raft_meta, INSTALLING_KEY.as_bytes())?
            .is_some())
    }

    /// Writes the whole store, as of one point in time, to `path`: a header made by `header`
    /// from that moment's applied state, then every data keyspace, then a trailer with the
    /// record count and a CRC-32 of all that precedes it. Written to a temporary file, synced,
    /// then renamed over `path` and the directory synced. Memory stays bounded: records stream
    /// from the view to the file. Returns the file's size.
    pub(crate) fn write_store_snapshot(
        &self,
        path: &Path,
        header: impl FnOnce(Option<Vec<u8>>) -> Result<Vec<u8>, String>,
    ) -> Result<u64, StorageError> {
        // Applies are not synced one by one: sync them before the view, so that no snapshot
        // (after which the log may be purged) covers state this node could lose in a crash.
        self.db.persist(PersistMode::SyncData)?;
        let view = self.view();
        let applied = view
            .get(&self.commits, RAFT_APPLIED_KEY)?
            .map(|value| unseal(&value, "commits"))
            .transpose()?;
        let header = header(applied).map_err(StorageError::Snapshot)?;
        let tmp = path.with_extension("tmp");
        let file = File::create(&tmp).map_err(snapshot_io(&tmp))?;
        let mut out = ChecksummedWriter::new(BufWriter::new(file));
        let io = snapshot_io(&tmp);
        out.write_all(SNAPSHOT_MAGIC).map_err(&io)?;
        write_bytes(&mut out, &header).map_err(&io)?;
        let mut records = 0u64;
        for (id, keyspace) in data_keyspaces(self) {
            for guard in view.iter(keyspace) {
                let (key, value) = guard.into_inner()?;
                out.write_all(&[FRAME_RECORD, id]).map_err(&io)?;
                write_bytes(&mut out, &key).map_err(&io)?;
                write_bytes(&mut out, &value).map_err(&io)?;
                records += 1;
            }
        }
        out.write_all(&[FRAME_END]).map_err(&io)?;
        out.write_all(&records.to_be_bytes()).map_err(&io)?;
        let crc = out.crc.clone().finalize();
        let mut file = out.inner;
        file.write_all(&crc.to_be_bytes()).map_err(&io)?;
        let file = file.into_inner().map_err(|error| io(error.into_error()))?;
        file.sync_all().map_err(&io)?;
        let size = file.metadata().map_err(&io)?.len();
        drop(file);
        fs::rename(&tmp, path).map_err(snapshot_io(path))?;
        sync_parent(path)?;
        Ok(size)
    }

    /// Replaces the store's data with the snapshot in `file` (checked whole first; `path` names
    /// it in errors), and sets
    /// the applied state to `applied`. A marker in `raft_meta` brackets the work: if a crash
    /// interrupts it, [`Self::raft_install_interrupted`] says so at the next start. Returns the
    /// position after the snapshot's last event.
    pub(crate) fn install_store_snapshot(
        &self,
        file: &mut File,
        path: &Path,
        applied: &[u8],
    ) -> Result<u64, StorageError> {
        verify_snapshot_file(file, path)?;
        self.set_raft_meta(INSTALLING_KEY, b"", true)?;
        let io = snapshot_io(path);
        file.seek(SeekFrom::Start(0)).map_err(&io)?;
        let mut input = BufReader::new(file);
        let mut magic = [0u8; 16];
        input.read_exact(&mut magic).map_err(&io)?;
        let _header = read_bytes(&mut input).map_err(&io)?;
        let keyspaces = data_keyspaces(self);
        self.remove_data(&keyspaces)?;
        // Written in bounded batches, not synced one by one: the marker says the data is
        // partial until the last batch, which is synced, removes it.
        let mut batch = self.db.batch();
        let mut batch_bytes = 0usize;
        while let Some((id, key, value)) = read_frame(&mut input).map_err(&io)? {
            let keyspace = keyspaces
                .iter()
                .find(|(known, _)| *known == id)
                .map(|(_, keyspace)| *keyspace)
                .ok_or_else(|| StorageError::Corrupt {
                    keyspace: "snapshot",
                    detail: format!("unknown keyspace id {id}"),
                })?;
            batch_bytes += key.len() + value.len();
            batch.insert(keyspace, key, value);
            if batch.len() >= INSTALL_BATCH_RECORDS || batch_bytes >= INSTALL_BATCH_BYTES {
                std::mem::replace(&mut batch, self.db.batch()).commit()?;
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            batch.commit()?;
        }
        let next_position = self.next_position()?;
        let sequence = self.last_commit()?.map_or(0, |marker| marker.sequence) + 1;
        let marker = CommitMarker {
            sequence,
            next_position,
        };
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&self.commits, RAFT_APPLIED_KEY, seal(applied));
        batch.remove(&self.raft_meta, INSTALLING_KEY.as_bytes());
        batch.insert(&self.commits, COMMIT_MARKER_KEY, marker.encode().as_slice());
        batch.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(next_position)
    }

    /// Removes every key of the data keyspaces, in bounded batches. (fjall's `clear` is not
    /// used: replaying it at recovery also dropped what was written after it.)
    fn remove_data(&self, keyspaces: &[(u8, &Keyspace)]) -> Result<(), StorageError> {
        for (_, keyspace) in keyspaces {
            loop {
                let mut batch = self.db.batch();
                for guard in self.view().iter(*keyspace).take(DELETE_BATCH_KEYS) {
                    batch.remove(keyspace, guard.key()?);
                }
                if batch.is_empty() {
                    break;
                }
                batch.commit()?;
            }
        }
        Ok(())
    }

    /// Clears what an interrupted install left, so the state machine starts empty (openraft
    /// then brings it back from the log or a snapshot).
    pub(crate) fn clear_interrupted_install(&self) -> Result<(), StorageError> {
        self.remove_data(&data_keyspaces(self))?;
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        batch.remove(&self.commits, RAFT_APPLIED_KEY);
        batch.remove(&self.raft_meta, INSTALLING_KEY.as_bytes());
        batch.commit()?;
        Ok(())
    }
}

/// The header of a snapshot file (what `write_store_snapshot` was given), after checking the
/// whole file (`path` names it in errors).
pub(crate) fn read_snapshot_header(file: &mut File, path: &Path) -> Result<Vec<u8>, StorageError> {
    verify_snapshot_file(file, path)?;
    let io = snapshot_io(path);
    file.seek(SeekFrom::Start(0)).map_err(&io)?;
    let mut input = BufReader::new(file);
    let mut magic = [0u8; 16];
    input.read_exact(&mut magic).map_err(&io)?;
    read_bytes(&mut input).map_err(&io)
}

/// Checks a snapshot file's magic and its trailing CRC over everything before it.
fn verify_snapshot_file(file: &mut File, path: &Path) -> Result<(), StorageError> {
    let io = snapshot_io(path);
    let damaged = |detail: &str| StorageError::Corrupt {
        keyspace: "snapshot",
        detail: format!("{}: {detail}", path.display()),
    };
    file.seek(SeekFrom::Start(0)).map_err(&io)?;
    let size = file.metadata().map_err(&io)?.len();
    if size < (SNAPSHOT_MAGIC.len() + 4 + 1 + 8 + 4) as u64 {
        return Err(damaged("shorter than an empty snapshot"));
    }
    let mut magic = [0u8; 16];
    file.read_exact(&mut magic).map_err(&io)?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(damaged("not a snapshot file"));
    }
    file.seek(SeekFrom::Start(0)).map_err(&io)?;
    let mut body = BufReader::new(file).take(size - 4);
    let mut crc = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = body.read(&mut buffer).map_err(&io)?;
        if read == 0 {
            break;
        }
        crc.update(&buffer[..read]);
    }
    let mut stored = [0u8; 4];
    body.into_inner().read_exact(&mut stored).map_err(&io)?;
    if crc.finalize() != u32::from_be_bytes(stored) {
        return Err(damaged("fails its checksum"));
    }
    Ok(())
}

fn snapshot_io(path: &Path) -> impl Fn(io::Error) -> StorageError + use<> {
    let path = path.to_path_buf();
    move |error| StorageError::Snapshot(format!("{}: {error}", path.display()))
}

fn sync_parent(path: &Path) -> Result<(), StorageError> {
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(snapshot_io(parent))?;
    }
    Ok(())
}

fn write_bytes(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "value over 4 GiB"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)
}

/// A record of a snapshot file: keyspace id, key, value.
type Frame = (u8, Vec<u8>, Vec<u8>);

/// The next record of a snapshot file (keyspace id, key, value), or `None` at its end.
fn read_frame(input: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut kind = [0u8; 1];
    input.read_exact(&mut kind)?;
    match kind[0] {
        FRAME_END => Ok(None),
        FRAME_RECORD => {
            let mut id = [0u8; 1];
            input.read_exact(&mut id)?;
            let key = read_bytes(input)?;
            let value = read_bytes(input)?;
            Ok(Some((id[0], key, value)))
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown snapshot frame {other}"),
        )),
    }
}

fn read_bytes(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let mut bytes = vec![0u8; u32::from_be_bytes(len) as usize];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Passes writes through, keeping a CRC-32 of everything written.
struct ChecksummedWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> ChecksummedWriter<W> {
    fn new(inner: W) -> Self {
        ChecksummedWriter {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Write for ChecksummedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.crc.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
