//! Guards against fjall's journal recovery silently dropping acknowledged batches.
//!
//! fjall reads its journal at startup and, at the first entry it cannot decode, truncates the
//! file there and carries on. That is right for a torn tail (the last batch, never
//! acknowledged, half written by a crash) but wrong for damage in the middle: every batch after
//! the damaged entry, each one fsync'd and acknowledged, would be cut away without an error.
//!
//! So every batch the committer writes ends with a commit marker: a recognisable value holding
//! the batch's commit sequence number, checked by its own CRC. Before fjall opens the journal,
//! [`scan_journals`] finds the highest marker that is followed by a complete batch trailer (so
//! its whole batch reached the disk) and raises a durable floor to it. After fjall has
//! recovered, the stored sequence must reach that floor; if it does not, data in the middle of
//! a journal was lost and startup is refused with the file named. The floor outlives the
//! refusal, so a second start (after fjall has already truncated the file) refuses too.
//!
//! The trailer check relies on fjall's journal layout (3.1: an end entry is tag 3, an 8-byte
//! checksum, then `FJL\x03`), and on items being written in insertion order, which holds since
//! the marker is inserted last. The torn and corrupt storage tests fail if either changes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::StartError;

/// Marks a commit marker value; 16 bytes that no event record starts with.
const MARKER_MAGIC: &[u8; 16] = b"exesdb:commit:v1";
/// Magic, sequence (u64 BE), next position (u64 BE), CRC32 of the preceding bytes (u32 BE).
pub(crate) const MARKER_LEN: usize = 16 + 8 + 8 + 4;
/// What fjall writes after a batch's last item: the end tag, an 8-byte checksum, a trailer.
const JOURNAL_END_TAG: u8 = 3;
const JOURNAL_END_TRAILER: &[u8; 4] = b"FJL\x03";
const JOURNAL_END_LEN: usize = 1 + 8 + JOURNAL_END_TRAILER.len();
/// The file holding the floor, in the store's directory.
const FLOOR_FILE: &str = "COMMIT_FLOOR";

/// A commit marker: the batch's sequence number and the position after its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommitMarker {
    pub sequence: u64,
    pub next_position: u64,
}

impl CommitMarker {
    pub(crate) fn encode(&self) -> [u8; MARKER_LEN] {
        let mut bytes = [0u8; MARKER_LEN];
        bytes[..16].copy_from_slice(MARKER_MAGIC);
        bytes[16..24].copy_from_slice(&self.sequence.to_be_bytes());
        bytes[24..32].copy_from_slice(&self.next_position.to_be_bytes());
        let crc = crc32fast::hash(&bytes[..32]);
        bytes[32..].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// `None` unless `bytes` starts with a whole marker whose CRC holds.
    pub(crate) fn decode(bytes: &[u8]) -> Option<CommitMarker> {
        let bytes = bytes.get(..MARKER_LEN)?;
        if &bytes[..16] != MARKER_MAGIC {
            return None;
        }
        let crc = u32::from_be_bytes(bytes[32..36].try_into().ok()?);
        if crc32fast::hash(&bytes[..32]) != crc {
            return None;
        }
        Some(CommitMarker {
            sequence: u64::from_be_bytes(bytes[16..24].try_into().ok()?),
            next_position: u64::from_be_bytes(bytes[24..32].try_into().ok()?),
        })
    }
}

/// The highest commit the journals prove was written whole, and the file that proves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommitFloor {
    pub sequence: u64,
    pub file: PathBuf,
}

/// Scans every fjall journal file (`*.jnl`) in `engine_dir` for complete commit markers.
pub(crate) fn scan_journals(engine_dir: &Path) -> Result<Option<CommitFloor>, StartError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StartError::Io { path, source }
    };
    let entries = match fs::read_dir(engine_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io(engine_dir)(error)),
    };
    let mut best: Option<CommitFloor> = None;
    for entry in entries {
        let path = entry.map_err(io(engine_dir))?.path();
        if path.extension().is_none_or(|extension| extension != "jnl") {
            continue;
        }
        if let Some(sequence) = scan_journal(&path).map_err(io(&path))?
            && best.as_ref().is_none_or(|b| sequence > b.sequence)
        {
            best = Some(CommitFloor {
                sequence,
                file: path,
            });
        }
    }
    Ok(best)
}

/// Journals are read in chunks of this size, so the scan's memory does not grow with them
/// (fjall preallocates each journal file to 64 MiB).
const SCAN_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// The highest complete marker in one journal file, read chunk by chunk. Each chunk keeps the
/// last bytes of the one before it, so that a marker and its end entry are seen whole even
/// when a chunk boundary falls inside them.
fn scan_journal(path: &Path) -> std::io::Result<Option<u64>> {
    use std::io::Read;
    let carried = MARKER_LEN + JOURNAL_END_LEN - 1;
    let mut file = fs::File::open(path)?;
    let mut buffer = Vec::new();
    let mut highest = None;
    loop {
        let read = (&mut file)
            .take(SCAN_CHUNK_BYTES)
            .read_to_end(&mut buffer)?;
        highest = highest.max(highest_complete_marker(&buffer));
        if read == 0 {
            return Ok(highest);
        }
        buffer.drain(..buffer.len().saturating_sub(carried));
    }
}

/// The highest sequence among markers in `journal` that are directly followed by a whole
/// batch end entry.
pub(crate) fn highest_complete_marker(journal: &[u8]) -> Option<u64> {
    let mut highest = None;
    for offset in memchr::memmem::find_iter(journal, MARKER_MAGIC) {
        let Some(marker) = CommitMarker::decode(&journal[offset..]) else {
            continue;
        };
        let end = offset + MARKER_LEN;
        let Some(end_entry) = journal.get(end..end + JOURNAL_END_LEN) else {
            continue;
        };
        if end_entry[0] == JOURNAL_END_TAG && &end_entry[9..] == JOURNAL_END_TRAILER {
            highest = highest.max(Some(marker.sequence));
        }
    }
    highest
}

/// The floor recorded by earlier starts, if any.
pub(crate) fn read_floor(store_dir: &Path) -> Result<Option<CommitFloor>, StartError> {
    let path = store_dir.join(FLOOR_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StartError::Io { path, source }),
    };
    let malformed = || StartError::CorruptFile {
        path: path.clone(),
        detail: "the commit floor file is malformed".into(),
    };
    let (sequence, file) = text.trim_end().split_once(' ').ok_or_else(malformed)?;
    Ok(Some(CommitFloor {
        sequence: sequence.parse().map_err(|_| malformed())?,
        file: PathBuf::from(file),
    }))
}

/// Records a new floor durably: a temporary file, synced, renamed, and the directory synced.
pub(crate) fn write_floor(store_dir: &Path, floor: &CommitFloor) -> Result<(), StartError> {
    let path = store_dir.join(FLOOR_FILE);
    let temporary = store_dir.join(format!("{FLOOR_FILE}.tmp"));
    let io = |source| StartError::Io {
        path: path.clone(),
        source,
    };
    let mut file = fs::File::create(&temporary).map_err(io)?;
    writeln!(file, "{} {}", floor.sequence, floor.file.display()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temporary, &path).map_err(io)?;
    fs::File::open(store_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io)
}

/// Raises the recorded floor to what the journals prove, before fjall may truncate them.
pub(crate) fn raise_floor(
    store_dir: &Path,
    engine_dir: &Path,
) -> Result<Option<CommitFloor>, StartError> {
    let recorded = read_floor(store_dir)?;
    let found = scan_journals(engine_dir)?;
    match (recorded, found) {
        (Some(recorded), Some(found)) if found.sequence > recorded.sequence => {
            write_floor(store_dir, &found)?;
            Ok(Some(found))
        }
        (None, Some(found)) => {
            write_floor(store_dir, &found)?;
            Ok(Some(found))
        }
        (recorded, _) => Ok(recorded),
    }
}

/// The refusal for a journal fjall itself found damaged (a batch failing its checksum), naming
/// the journal file when there is one, else listing them.
pub(crate) fn journal_damaged(engine_dir: &Path, engine_error: &str) -> StartError {
    let journals = journal_files(engine_dir);
    let detail = format!(
        "the storage engine found a damaged batch in its journal ({engine_error}). Refusing to \
         start rather than drop acknowledged events; restore the data directory from a backup"
    );
    match journals.as_slice() {
        [journal] => StartError::CorruptFile {
            path: journal.clone(),
            detail,
        },
        _ => StartError::CorruptFile {
            path: engine_dir.to_path_buf(),
            detail: format!(
                "{detail} (journal files: {})",
                journals
                    .iter()
                    .map(|path| path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// The refusal for an engine that panicked while reading the data: which file is damaged is
/// not known, so the refusal names the engine directory and lists the journals.
pub(crate) fn engine_failed_reading(engine_dir: &Path, panic_message: &str) -> StartError {
    let journals: Vec<String> = journal_files(engine_dir)
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    StartError::CorruptFile {
        path: engine_dir.to_path_buf(),
        detail: format!(
            "the storage engine failed while recovering the data ({panic_message}); the data \
             is damaged, most likely in a journal file ({}). Refusing to start; restore the \
             data directory from a backup",
            journals.join(", ")
        ),
    }
}

fn journal_files(engine_dir: &Path) -> Vec<PathBuf> {
    let mut journals: Vec<PathBuf> = fs::read_dir(engine_dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|e| e == "jnl"))
                .collect()
        })
        .unwrap_or_default();
    journals.sort();
    journals
}

/// Refuses a recovery that ended below the floor.
pub(crate) fn check_recovered(
    floor: Option<&CommitFloor>,
    recovered_sequence: u64,
) -> Result<(), StartError> {
    match floor {
        Some(floor) if recovered_sequence < floor.sequence => Err(StartError::CorruptFile {
            path: floor.file.clone(),
            detail: format!(
                "it held commit {} but the storage engine recovered only up to commit \
                 {recovered_sequence}: data in the middle of the journal is damaged and the \
                 commits after it were not recovered. Refusing to start rather than drop \
                 acknowledged events; restore the data directory from a backup (or, to accept \
                 the loss, delete {FLOOR_FILE} from the store directory)",
                floor.sequence
            ),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_with(markers: &[(u64, bool)]) -> Vec<u8> {
        let mut bytes = b"some journal bytes".to_vec();
        for (sequence, complete) in markers {
            bytes.extend_from_slice(
                &CommitMarker {
                    sequence: *sequence,
                    next_position: sequence * 10,
                }
                .encode(),
            );
            if *complete {
                bytes.push(JOURNAL_END_TAG);
                bytes.extend_from_slice(&[7; 8]);
                bytes.extend_from_slice(JOURNAL_END_TRAILER);
            }
            bytes.extend_from_slice(b"next batch start");
        }
        bytes
    }

    #[test]
    fn markers_round_trip_and_reject_damage() {
        let marker = CommitMarker {
            sequence: 42,
            next_position: 1_000,
        };
        let mut bytes = marker.encode();
        assert_eq!(CommitMarker::decode(&bytes), Some(marker));
        bytes[20] ^= 1;
        assert_eq!(CommitMarker::decode(&bytes), None);
        assert_eq!(
            CommitMarker::decode(&marker.encode()[..MARKER_LEN - 1]),
            None
        );
    }

    #[test]
    fn only_markers_followed_by_a_whole_end_entry_count() {
        assert_eq!(highest_complete_marker(&journal_with(&[])), None);
        assert_eq!(
            highest_complete_marker(&journal_with(&[(1, true), (2, true), (3, false)])),
            Some(2)
        );
        let whole = journal_with(&[(5, true)]);
        // Cut inside the end entry: the batch did not reach the disk whole.
        let cut = &whole[..whole.len() - b"next batch start".len() - 1];
        assert_eq!(highest_complete_marker(cut), None);
    }

    #[test]
    fn markers_across_chunk_boundaries_are_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker_batch = journal_with(&[(9, true)]);
        // Place the marker so that every offset around the first boundary is tried.
        for shift in 0..(MARKER_LEN + JOURNAL_END_LEN + 2) {
            let start = SCAN_CHUNK_BYTES as usize - MARKER_LEN - shift + 8;
            let mut bytes = vec![0u8; start];
            bytes.extend_from_slice(&marker_batch);
            bytes.resize(bytes.len() + 100, 0);
            let path = dir.path().join("1.jnl");
            fs::write(&path, &bytes).expect("journal");
            assert_eq!(scan_journal(&path).expect("scan"), Some(9), "shift {shift}");
        }
    }

    #[test]
    fn the_floor_only_rises_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = dir.path().join("fjall");
        fs::create_dir_all(&engine).expect("engine dir");
        fs::write(engine.join("3.jnl"), journal_with(&[(7, true)])).expect("journal");
        let floor = raise_floor(dir.path(), &engine)
            .expect("raise")
            .expect("floor");
        assert_eq!(floor.sequence, 7);
        // The journal is truncated (as fjall would): the recorded floor still holds.
        fs::write(engine.join("3.jnl"), journal_with(&[(2, true)])).expect("journal");
        let floor = raise_floor(dir.path(), &engine)
            .expect("raise")
            .expect("floor");
        assert_eq!(floor.sequence, 7);
        assert!(check_recovered(Some(&floor), 7).is_ok());
        let refusal = check_recovered(Some(&floor), 2).expect_err("below the floor");
        assert!(refusal.to_string().contains("3.jnl"), "{refusal}");
    }
}
