//! Torn and corrupt storage files (issue 5, item 2).
//!
//! - A torn tail (the newest journal cut at a random byte): the store starts, and holds exactly
//!   the events of the batches committed before the cut: a gapless prefix of `$all`, every
//!   append whole, every event identical to what was acknowledged.
//! - Damage in the middle of a journal (a flipped byte well before its end): the store refuses
//!   to start and names the damaged file, on every later start too. fjall alone would truncate
//!   the journal at the damaged entry and drop every later, acknowledged, batch without a word.
//! - Damage inside a table file: never a silently shorter or altered history; a full read
//!   either returns every acknowledged event intact or fails, naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use exesdb::{ExpectedVersion, NewEvent, ReadAllRequest, StartError, System};
use uuid::Uuid;

/// A deterministic generator (splitmix64), so a failing cycle can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("EXESDB_DAMAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

fn config(dir: &Path) -> exesdb::SystemConfig {
    let mut config = crate::common::config(dir);
    config.limits.read_events_max = 1_000_000;
    config
}

/// Cycles per journal test: 12 in CI, more with `EXESDB_DAMAGE_CYCLES`.
fn cycles() -> u64 {
    std::env::var("EXESDB_DAMAGE_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

/// An acknowledged append: its stream, first position, and event ids.
#[derive(Clone)]
struct Ack {
    stream: String,
    first_position: u64,
    ids: Vec<Uuid>,
}

/// Appends from `tasks` concurrent writers, `appends` each, 1 to 3 events per append.
async fn load(system: &Arc<System>, tasks: u64, appends: u64, seed: u64) -> Vec<Ack> {
    let mut handles = Vec::new();
    for task in 0..tasks {
        let system = system.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ task);
            let mut acks = Vec::new();
            for _ in 0..appends {
                let stream = format!("s{}", rng.below(7));
                let count = 1 + rng.below(3) as usize;
                let (ids, events) = crate::common::tagged_append(count, rng.below(200) as usize);
                let result = system
                    .api()
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .expect("append");
                acks.push(Ack {
                    stream,
                    first_position: result.first_position,
                    ids,
                });
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for handle in handles {
        acks.extend(handle.await.expect("writer task"));
    }
    acks
}

async fn stop(system: Arc<System>) {
    match Arc::try_unwrap(system) {
        Ok(system) => system.stop().await,
        Err(_) => panic!("the system is still shared"),
    }
}

/// The fjall journal files of the test store, oldest first.
fn journals(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("default").join("fjall"))
        .expect("engine directory")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let id = path
                .file_name()?
                .to_str()?
                .strip_suffix(".jnl")?
                .parse()
                .ok()?;
            Some((id, path))
        })
        .collect();
    files.sort();
    files.into_iter().map(|(_, path)| path).collect()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// How far a journal holds data: fjall preallocates journal files, the rest is zeros.
fn journal_data_length(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("read journal");
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |last| last as u64 + 1)
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("read file");
    bytes[offset as usize] ^= 0x5A;
    std::fs::write(path, bytes).expect("write file");
}

async fn read_everything(
    system: &System,
) -> Result<Vec<exesdb::RecordedEvent>, exesdb::StoreError> {
    system
        .api()
        .read_all(ReadAllRequest {
            count: 1_000_000,
            ..Default::default()
        })
        .await
}

/// What survived must be the state after some commit: `$all` gapless from 0, every append
/// whole and identical to its acknowledgement. Returns how many acknowledged appends survived.
fn assert_committed_prefix(all: &[exesdb::RecordedEvent], acks: &[Ack]) -> usize {
    let by_position: BTreeMap<u64, &Ack> = acks.iter().map(|a| (a.first_position, a)).collect();
    let mut position = 0u64;
    let mut survived = 0;
    while position < all.len() as u64 {
        let ack = by_position
            .get(&position)
            .unwrap_or_else(|| panic!("position {position} does not start an acknowledged append"));
        for (index, id) in ack.ids.iter().enumerate() {
            let event = all
                .get(position as usize + index)
                .unwrap_or_else(|| panic!("append at {position} is torn"));
            assert_eq!(event.position, position + index as u64, "gap in $all");
            assert_eq!(event.event_id, *id, "event at {} differs", event.position);
            assert_eq!(event.stream_id, ack.stream);
        }
        position += ack.ids.len() as u64;
        survived += 1;
    }
    survived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_tail_recovers_to_the_last_complete_commit() {
    let seed = seed();
    println!("seed {seed} (EXESDB_DAMAGE_SEED replays it)");
    let mut rng = Rng(seed);
    let cycles = cycles();
    for cycle in 0..cycles {
        let dir = tempfile::tempdir().expect("tempdir");
        let system = Arc::new(System::start(config(dir.path())).await.expect("starts"));
        let acks = load(&system, 4, 40, rng.next()).await;
        stop(system).await;
        let newest = journals(dir.path()).pop().expect("a journal");
        let length = journal_data_length(&newest);
        let cut = rng.below(length + 1);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&newest)
            .and_then(|file| file.set_len(cut))
            .expect("cut the journal");
        let system = System::start(config(dir.path()))
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cycle {cycle}: a torn tail (cut at {cut} of {length}) must recover: {error}"
                )
            });
        let all = read_everything(&system).await.expect("reads");
        let survived = assert_committed_prefix(&all, &acks);
        assert!(survived <= acks.len());
        // Still writable, and the next append lands right after what survived.
        let appended = system
            .api()
            .append(
                "after",
                ExpectedVersion::Any,
                vec![NewEvent::new("E", b"x".to_vec())],
            )
            .await
            .expect("appends after recovery");
        assert_eq!(appended.first_position, all.len() as u64);
        system.stop().await;
        println!(
            "cycle {cycle}: cut at {cut} of {length}; {survived} of {} appends kept",
            acks.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_the_middle_of_a_journal_is_refused_naming_the_file() {
    let seed = seed();
    println!("seed {seed} (EXESDB_DAMAGE_SEED replays it)");
    let mut rng = Rng(seed);
    let cycles = cycles();
    let mut refused_by_guard = 0;
    let mut refusals = 0;
    for cycle in 0..cycles {
        let dir = tempfile::tempdir().expect("tempdir");
        let system = Arc::new(System::start(config(dir.path())).await.expect("starts"));
        // One writer: every append is its own batch, so the journal has many of them.
        let acks = load(&system, 1, 120, rng.next()).await;
        stop(system).await;
        let newest = journals(dir.path()).pop().expect("a journal");
        let length = journal_data_length(&newest);
        // Well before the end: later, acknowledged batches follow the damage.
        let offset = rng.below(length * 3 / 4);
        flip_byte(&newest, offset);
        for attempt in 0..2 {
            match System::start(config(dir.path())).await {
                Err(error) => {
                    let message = error.to_string();
                    let names_journal =
                        message.contains(&newest.display().to_string()) || message.contains(".jnl");
                    assert!(
                        names_journal,
                        "cycle {cycle} attempt {attempt}: the refusal must name the journal: {message}"
                    );
                    assert!(matches!(error, StartError::CorruptFile { .. }), "{error}");
                    refusals += 1;
                    if message.contains("recovered only up to commit") {
                        refused_by_guard += 1;
                    }
                }
                Ok(system) => {
                    // Only acceptable if nothing acknowledged is missing or altered.
                    let all = read_everything(&system).await.expect("reads");
                    let survived = assert_committed_prefix(&all, &acks);
                    assert_eq!(
                        survived,
                        acks.len(),
                        "cycle {cycle}: flip at {offset} of {length} silently dropped acknowledged appends"
                    );
                    system.stop().await;
                }
            }
        }
    }
    println!(
        "{refused_by_guard} of {} refusals came from the commit guard, where fjall alone would \
         have dropped the later batches (the rest from fjall's own checksums)",
        refusals
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_inside_a_table_file_never_shortens_history_silently() {
    let seed = seed();
    println!("seed {seed} (EXESDB_DAMAGE_SEED replays it)");
    let mut rng = Rng(seed);
    let mut named = 0;
    let cycles = (cycles() / 3).max(4);
    for cycle in 0..cycles {
        // Odd cycles read every table at start (`verify_tables_on_start`).
        let verify = cycle % 2 == 1;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path());
        config.storage.memtable_bytes_max = 1024 * 1024;
        config.storage.verify_tables_on_start = verify;
        let system = Arc::new(System::start(config.clone()).await.expect("starts"));
        let acks = load(&system, 4, 1_500, rng.next()).await;
        stop(system).await;
        let engine_dir = dir.path().join("default").join("fjall");
        assert_eq!(
            exesdb::fuzzing::find_damaged_table(&engine_dir).expect("reads tables"),
            None,
            "healthy table files pass the check"
        );
        let tables: Vec<PathBuf> = files_under(&engine_dir)
            .into_iter()
            .filter(|path| path.components().any(|c| c.as_os_str() == "tables"))
            .filter(|path| std::fs::metadata(path).map_or(0, |m| m.len()) > 4096)
            .collect();
        assert!(!tables.is_empty(), "the load must have flushed table files");
        let table = &tables[rng.below(tables.len() as u64) as usize];
        let length = std::fs::metadata(table).expect("table").len();
        let offset = rng.below(length);
        flip_byte(table, offset);
        match System::start(config).await {
            Err(error) => {
                println!("cycle {cycle} (verify {verify}): start refused: {error}");
                if let StartError::CorruptFile { path, .. } = &error {
                    assert_eq!(path, table, "the refusal names the damaged table");
                    named += 1;
                } else {
                    assert!(error.to_string().contains("fjall"), "{error}");
                }
            }
            Ok(system) => {
                match read_everything(&system).await {
                    Ok(all) => {
                        let survived = assert_committed_prefix(&all, &acks);
                        assert_eq!(
                            survived,
                            acks.len(),
                            "cycle {cycle}: a flip at {offset} of {} shortened history",
                            table.display()
                        );
                        println!(
                            "cycle {cycle} (verify {verify}): flip at {offset} touched no event data"
                        );
                    }
                    Err(error) => {
                        assert!(
                            !verify,
                            "verification at start missed damage that a read found"
                        );
                        println!("cycle {cycle} (verify {verify}): the read failed: {error}");
                    }
                }
                system.stop().await;
            }
        }
    }
    println!("{named} of {cycles} cycles were refused at start naming the damaged table file");
}
