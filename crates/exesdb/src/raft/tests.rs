//! The Raft storage against openraft's conformance suite, and what that suite leaves out:
//! applying real commands, snapshot contents, a restart between the log's sync and the
//! apply, and truncating then appending again.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;

use futures_util::stream;
use openraft::storage::{
    IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::testing::{blank_ent, log_id, membership_ent};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb};
use tempfile::TempDir;
use tokio::sync::watch;
use uuid::Uuid;

use super::log_store::LogStore;
use super::state_machine::{ReplicatedStateMachine, SnapshotFile, apply_entries_for_test};
use super::*;
use crate::config::{CommitSettings, Limits, StorageSettings};
use crate::storage::Storage;
use crate::system::core::store::state_machine::{AppendCommand, PreparedEvent};
use exesdb_types::{ExpectedVersion, ReadAllRequest};

type OpenraftStorageError = openraft::StorageError<TypeConfig>;

/// A store directory opened the way a node opens it.
struct Node {
    dir: TempDir,
    storage: Arc<Storage>,
    committed: watch::Receiver<u64>,
}

fn open_storage(dir: &std::path::Path) -> io::Result<Arc<Storage>> {
    Storage::open(dir, &StorageSettings::default())
        .map(Arc::new)
        .map_err(io::Error::other)
}

impl Node {
    fn new() -> io::Result<Node> {
        let dir = tempfile::tempdir()?;
        let storage = open_storage(dir.path())?;
        let (_, committed) = watch::channel(0);
        Ok(Node {
            dir,
            storage,
            committed,
        })
    }

    fn stores(&mut self) -> io::Result<(LogStore, ReplicatedStateMachine)> {
        let (sender, receiver) = watch::channel(0);
        self.committed = receiver;
        let machine = ReplicatedStateMachine::open(
            self.storage.clone(),
            self.dir.path().join("raft-snapshots"),
            Limits::default(),
            CommitSettings::default().stream_head_cache_entries_max,
            sender,
        )?;
        Ok((LogStore::new(self.storage.clone(), "test")?, machine))
    }

    /// Closes the storage and opens it again from the directory, as a restart does.
    fn restart(&mut self) -> io::Result<()> {
        let (_, committed) = watch::channel(0);
        self.committed = committed;
        let placeholder = open_storage(tempfile::tempdir()?.path())?;
        drop(std::mem::replace(&mut self.storage, placeholder));
        self.storage = open_storage(self.dir.path())?;
        Ok(())
    }

    fn all_events(&self) -> io::Result<Vec<exesdb_types::RecordedEvent>> {
        all_events_of(&self.storage)
    }
}

/// Every event of the store, read straight from its storage.
pub(super) fn all_events_of(storage: &Storage) -> io::Result<Vec<exesdb_types::RecordedEvent>> {
    let engine = storage.engine().map_err(io::Error::other)?;
    let page = engine
        .read_all(&ReadAllRequest {
            count: u64::MAX,
            ..ReadAllRequest::default()
        })
        .map_err(io::Error::other)?;
    Ok(page.to_events())
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, ReplicatedStateMachine, Node> for Builder {
    async fn build(
        &self,
    ) -> Result<(Node, LogStore, ReplicatedStateMachine), OpenraftStorageError> {
        let failed = |error| {
            OpenraftStorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, error)
        };
        let mut node = Node::new().map_err(failed)?;
        let (log, machine) = node.stores().map_err(failed)?;
        Ok((node, log, machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_passes_openraft_conformance_suite() -> Result<(), OpenraftStorageError> {
    Suite::test_all(Builder).await
}

/// An append of `events` new events (ids never used before).
fn append(stream_id: &str, expected: ExpectedVersion, events: usize) -> Command {
    let ids = (0..events).map(|_| Uuid::now_v7()).collect();
    append_with_ids(stream_id, expected, ids)
}

fn append_with_ids(stream_id: &str, expected: ExpectedVersion, ids: Vec<Uuid>) -> Command {
    Command::Append(AppendCommand {
        stream_id: stream_id.to_string(),
        expected,
        events: ids
            .into_iter()
            .enumerate()
            .map(|(n, event_id)| PreparedEvent {
                event_id,
                client_event_id: true,
                event_type: "Happened".into(),
                data: format!("{{\"n\":{n}}}").into_bytes(),
                metadata: Vec::new(),
                data_content_type: "application/json".into(),
                metadata_content_type: "application/octet-stream".into(),
            })
            .collect(),
        created_micros: 1_700_000_000_000_000,
    })
}

fn normal(term: u64, index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id::<TypeConfig>(term, 1, index),
        payload: EntryPayload::Normal(Replicated(Arc::new(command))),
    }
}

/// The outcome of an append that placed events `first_event_number..=last_event_number` at
/// `first_position..=last_position`.
fn appended(
    first_position: u64,
    last_position: u64,
    first_event_number: u64,
    last_event_number: u64,
) -> Result<Outcome, StoreError> {
    Ok(Outcome::Appended(exesdb_types::AppendResult {
        first_event_number,
        last_event_number,
        first_position,
        last_position,
    }))
}

async fn append_to_log(log: &mut LogStore, entries: Vec<Entry>) -> io::Result<()> {
    let (sender, receiver) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(sender)).await?;
    receiver.await.map_err(io::Error::other)?
}

async fn apply(machine: &mut ReplicatedStateMachine, entries: Vec<Entry>) -> io::Result<()> {
    machine
        .apply(stream::iter(
            entries.into_iter().map(|entry| Ok((entry, None))),
        ))
        .await
}

#[tokio::test]
async fn applying_commands_answers_each_with_the_outcome_the_single_node_gives() -> io::Result<()> {
    let mut node = Node::new()?;
    let (_, machine) = node.stores()?;
    let first = append("order-1", ExpectedVersion::NoStream, 2);
    let replies = apply_entries_for_test(
        &machine,
        vec![
            membership_ent::<TypeConfig>(1, 1, 1, vec![BTreeSet::from([1, 2, 3])]),
            normal(1, 2, first.clone()),
            // A retry of the same ids at the same place is answered from what is stored.
            normal(1, 3, first),
            normal(1, 4, append("order-1", ExpectedVersion::NoStream, 1)),
            normal(1, 5, append("order-2", ExpectedVersion::Any, 1)),
        ],
    )
    .await?;
    let appended = |first_position, last_position, first_event_number, last_event_number| {
        ApplyReply::Command(appended(
            first_position,
            last_position,
            first_event_number,
            last_event_number,
        ))
    };
    assert_eq!(replies[0], ApplyReply::Internal);
    assert_eq!(replies[1], appended(0, 1, 0, 1));
    assert_eq!(replies[2], appended(0, 1, 0, 1));
    assert!(
        matches!(
            &replies[3],
            ApplyReply::Command(Err(StoreError::WrongExpectedVersion { current: 1, .. }))
        ),
        "{:?}",
        replies[3]
    );
    assert_eq!(replies[4], appended(2, 2, 0, 0));
    let events = node.all_events()?;
    let placed: Vec<(String, u64, u64)> = events
        .iter()
        .map(|event| (event.stream_id.clone(), event.event_number, event.position))
        .collect();
    assert_eq!(
        placed,
        vec![
            ("order-1".to_string(), 0, 0),
            ("order-1".to_string(), 1, 1),
            ("order-2".to_string(), 0, 2)
        ]
    );
    assert_eq!(*node.committed.borrow(), 3);
    let (mut log, mut machine) = node.stores()?;
    let (applied, membership) = machine.applied_state().await?;
    assert_eq!(applied, Some(log_id::<TypeConfig>(1, 1, 5)));
    assert_eq!(membership.log_id(), &Some(log_id::<TypeConfig>(1, 1, 1)));
    assert!(log.try_get_log_entries(0..10).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_batch_entry_answers_each_command_as_separate_entries_would() -> io::Result<()> {
    let mut node = Node::new()?;
    let (_, machine) = node.stores()?;
    let first = append("order-1", ExpectedVersion::NoStream, 2);
    let replies = apply_entries_for_test(
        &machine,
        vec![normal(
            1,
            1,
            Command::Batch(vec![
                first.clone(),
                // Later commands of a batch see what earlier ones wrote.
                first,
                append("order-1", ExpectedVersion::NoStream, 1),
                append("order-2", ExpectedVersion::Any, 1),
            ]),
        )],
    )
    .await?;
    let [ApplyReply::Command(Ok(Outcome::Batch(outcomes)))] = replies.as_slice() else {
        panic!("one batch outcome: {replies:?}");
    };
    assert_eq!(outcomes.len(), 4);
    assert_eq!(outcomes[0], appended(0, 1, 0, 1));
    assert_eq!(
        outcomes[1],
        appended(0, 1, 0, 1),
        "a retry inside the batch"
    );
    assert!(
        matches!(
            &outcomes[2],
            Err(StoreError::WrongExpectedVersion { current: 1, .. })
        ),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(outcomes[3], appended(2, 2, 0, 0));
    assert_eq!(node.all_events()?.len(), 3);
    assert_eq!(*node.committed.borrow(), 3);

    // A batch inside a batch is refused whole, on every node alike.
    let replies = apply_entries_for_test(
        &machine,
        vec![normal(
            1,
            2,
            Command::Batch(vec![Command::Batch(vec![append(
                "order-3",
                ExpectedVersion::Any,
                1,
            )])]),
        )],
    )
    .await?;
    assert!(
        matches!(
            replies.as_slice(),
            [ApplyReply::Command(Err(StoreError::InvalidArgument(_)))]
        ),
        "{replies:?}"
    );
    assert_eq!(node.all_events()?.len(), 3);
    Ok(())
}

#[tokio::test]
async fn an_installed_snapshot_holds_exactly_the_leaders_data() -> io::Result<()> {
    let mut leader = Node::new()?;
    let (_, mut leader_machine) = leader.stores()?;
    let mut entries = vec![membership_ent::<TypeConfig>(
        1,
        1,
        1,
        vec![BTreeSet::from([1, 2])],
    )];
    for stream in 0..40u64 {
        entries.push(normal(
            1,
            stream + 2,
            append(&format!("order-{stream}"), ExpectedVersion::NoStream, 3),
        ));
    }
    apply(&mut leader_machine, entries).await?;
    let snapshot = leader_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await?;
    assert_eq!(
        snapshot.meta.last_log_id,
        Some(log_id::<TypeConfig>(1, 1, 41))
    );

    // The follower already holds other data: the install replaces it.
    let mut follower = Node::new()?;
    let (_, mut follower_machine) = follower.stores()?;
    apply(
        &mut follower_machine,
        vec![normal(1, 1, append("stale-1", ExpectedVersion::Any, 5))],
    )
    .await?;
    follower_machine
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await?;
    assert_eq!(follower.all_events()?, leader.all_events()?);
    assert_eq!(follower.all_events()?.len(), 120);
    assert_eq!(*follower.committed.borrow(), 120);
    assert_eq!(
        follower_machine.applied_state().await?,
        leader_machine.applied_state().await?
    );
    let engine = follower.storage.engine().map_err(io::Error::other)?;
    let view = engine.point_view();
    assert_eq!(
        view.stream_version("order-39").map_err(io::Error::other)?,
        Some(2)
    );
    assert_eq!(
        view.stream_version("stale-1").map_err(io::Error::other)?,
        None
    );
    drop((view, engine));

    // It survives a restart, and the store goes on from it.
    drop(follower_machine);
    follower.restart()?;
    let (_, mut follower_machine) = follower.stores()?;
    assert_eq!(follower.all_events()?, leader.all_events()?);
    apply(
        &mut follower_machine,
        vec![normal(
            2,
            42,
            append("order-0", ExpectedVersion::Exact(2), 1),
        )],
    )
    .await?;
    let last = follower
        .all_events()?
        .pop()
        .map(|event| (event.event_number, event.position));
    assert_eq!(last, Some((3, 120)));
    let current = follower_machine.get_current_snapshot().await?;
    assert_eq!(
        current.map(|snapshot| snapshot.meta.last_log_id),
        Some(Some(log_id::<TypeConfig>(1, 1, 41)))
    );
    Ok(())
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_the_data_stays() -> io::Result<()> {
    let mut leader = Node::new()?;
    let (_, mut leader_machine) = leader.stores()?;
    apply(
        &mut leader_machine,
        vec![normal(1, 1, append("order-1", ExpectedVersion::Any, 3))],
    )
    .await?;
    let snapshot = leader_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await?;
    let mut bytes = std::fs::read(&snapshot.snapshot.path)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let mut follower = Node::new()?;
    let (_, mut follower_machine) = follower.stores()?;
    apply(
        &mut follower_machine,
        vec![normal(1, 1, append("kept-1", ExpectedVersion::Any, 2))],
    )
    .await?;
    let damaged = follower_machine.receiving_path("damaged");
    std::fs::write(&damaged, &bytes)?;
    let file = std::fs::File::open(&damaged)?;
    let refused = follower_machine
        .install_snapshot(
            &snapshot.meta,
            SnapshotFile {
                file,
                path: damaged,
            },
        )
        .await;
    assert!(refused.is_err());
    let kept: Vec<String> = follower
        .all_events()?
        .into_iter()
        .map(|event| event.stream_id)
        .collect();
    assert_eq!(kept, vec!["kept-1".to_string(), "kept-1".to_string()]);
    Ok(())
}

#[tokio::test]
async fn entries_synced_but_not_applied_before_a_restart_are_applied_once_after_it()
-> io::Result<()> {
    let mut node = Node::new()?;
    let (mut log, mut machine) = node.stores()?;
    let first = vec![
        blank_ent::<TypeConfig>(1, 1, 1),
        normal(1, 2, append("order-1", ExpectedVersion::NoStream, 2)),
    ];
    append_to_log(&mut log, first.clone()).await?;
    apply(&mut machine, first).await?;
    let unapplied = vec![
        normal(1, 3, append("order-1", ExpectedVersion::Exact(1), 1)),
        normal(1, 4, append("order-2", ExpectedVersion::NoStream, 1)),
    ];
    append_to_log(&mut log, unapplied.clone()).await?;
    drop((log, machine));

    node.restart()?;
    let (mut log, mut machine) = node.stores()?;
    let (applied, _) = machine.applied_state().await?;
    assert_eq!(applied, Some(log_id::<TypeConfig>(1, 1, 2)));
    let state = log.get_log_state().await?;
    assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(1, 1, 4)));
    // What openraft does at start: apply the log after the applied log id.
    let pending = log.try_get_log_entries(3..).await?;
    assert_eq!(pending, unapplied);
    apply(&mut machine, pending).await?;
    let placed: Vec<(String, u64)> = node
        .all_events()?
        .into_iter()
        .map(|event| (event.stream_id, event.event_number))
        .collect();
    assert_eq!(
        placed,
        vec![
            ("order-1".to_string(), 0),
            ("order-1".to_string(), 1),
            ("order-1".to_string(), 2),
            ("order-2".to_string(), 0)
        ]
    );
    assert_eq!(*node.committed.borrow(), 4);
    Ok(())
}

#[tokio::test]
async fn a_truncated_log_takes_new_entries_in_place_of_the_old() -> io::Result<()> {
    truncate_and_append_again(None).await
}

/// The same, with the log keeping only about two synced entries in memory: reads then join
/// what they find on the disk with what is held.
#[tokio::test]
async fn a_log_that_keeps_few_entries_in_memory_reads_the_rest_from_the_disk() -> io::Result<()> {
    let entry = normal(1, 1, append("old-1", ExpectedVersion::Any, 1));
    truncate_and_append_again(Some(2 * encode(&entry)?.len())).await
}

async fn truncate_and_append_again(recent_bytes_max: Option<usize>) -> io::Result<()> {
    let mut node = Node::new()?;
    let (log, _) = node.stores()?;
    let mut log = match recent_bytes_max {
        Some(bytes) => {
            drop(log);
            LogStore::keeping(node.storage.clone(), "test", bytes)?
        }
        None => log,
    };
    let old: Vec<Entry> = (1..=10)
        .map(|index| {
            normal(
                1,
                index,
                append(&format!("old-{index}"), ExpectedVersion::Any, 1),
            )
        })
        .collect();
    append_to_log(&mut log, old.clone()).await?;
    log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 5)))
        .await?;
    assert_eq!(
        log.get_log_state().await?.last_log_id,
        Some(log_id::<TypeConfig>(1, 1, 5))
    );
    let new: Vec<Entry> = (6..=8)
        .map(|index| Entry {
            log_id: log_id::<TypeConfig>(2, 2, index),
            payload: EntryPayload::Normal(Replicated(Arc::new(append(
                &format!("new-{index}"),
                ExpectedVersion::Any,
                1,
            )))),
        })
        .collect();
    append_to_log(&mut log, new.clone()).await?;
    let read = log.try_get_log_entries(1..=10).await?;
    let expected: Vec<Entry> = old[..5].iter().cloned().chain(new).collect();
    assert_eq!(read, expected);
    drop(log);
    node.restart()?;
    let (mut log, _) = node.stores()?;
    assert_eq!(
        log.get_log_state().await?.last_log_id,
        Some(log_id::<TypeConfig>(2, 2, 8))
    );
    assert_eq!(log.try_get_log_entries(1..=10).await?, expected);
    log.purge(log_id::<TypeConfig>(1, 1, 3)).await?;
    let state = log.get_log_state().await?;
    assert_eq!(
        state.last_purged_log_id,
        Some(log_id::<TypeConfig>(1, 1, 3))
    );
    assert_eq!(
        log.try_get_log_entries(0..=10).await?,
        expected[3..].to_vec()
    );
    assert_eq!(
        log.try_get_log_entries(4..=10).await?,
        expected[3..].to_vec()
    );
    Ok(())
}

/// The stored encoding of an entry is part of the on-disk format: this pins it, so that a
/// change to a command's shape is noticed (and the encoding version bumped) before it ships.
#[test]
fn the_stored_entry_encoding_is_pinned() -> io::Result<()> {
    let id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    let entry = normal(
        3,
        7,
        append_with_ids("order-1", ExpectedVersion::Exact(4), vec![id]),
    );
    let bytes = encode(&entry)?;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    assert_eq!(hex, PINNED_ENTRY_HEX, "the stored entry encoding changed");
    let decoded: Entry = decode(&bytes, "entry")?;
    assert_eq!(decoded, entry);
    Ok(())
}

const PINNED_ENTRY_HEX: &str = "010301070100076f726465722d310304011001900000000070008000000000000001010848617070656e6564077b226e223a307d00106170706c69636174696f6e2f6a736f6e186170706c69636174696f6e2f6f637465742d73747265616d8080f28183898506";

#[tokio::test]
async fn an_install_cut_short_is_cleared_at_the_next_start() -> io::Result<()> {
    let mut node = Node::new()?;
    let (_, mut machine) = node.stores()?;
    apply(
        &mut machine,
        vec![normal(1, 1, append("order-1", ExpectedVersion::Any, 3))],
    )
    .await?;
    // What a crash in the middle of an install leaves: the marker, and part of the data.
    let engine = node.storage.engine().map_err(io::Error::other)?;
    engine
        .set_raft_meta("installing", b"", true)
        .map_err(io::Error::other)?;
    drop((engine, machine));
    node.restart()?;
    let (_, mut machine) = node.stores()?;
    assert_eq!(node.all_events()?, Vec::new());
    assert_eq!(machine.applied_state().await?.0, None);
    assert_eq!(*node.committed.borrow(), 0);
    // And it starts again from there.
    apply(
        &mut machine,
        vec![normal(
            1,
            1,
            append("order-1", ExpectedVersion::NoStream, 1),
        )],
    )
    .await?;
    assert_eq!(node.all_events()?.len(), 1);
    Ok(())
}
