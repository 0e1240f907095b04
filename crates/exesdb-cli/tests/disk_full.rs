//! A full disk (issue 5, item 5): on a size-limited tmpfs the test mounts, `exesdb serve` turns
//! appends away with `unavailable` ("storage full") once free space drops below
//! `disk_free_bytes_min`, keeps answering reads, takes writes again once space is freed, and
//! after a restart holds every acknowledged event. Mounting needs root, so these tests are
//! built only with the feature `root-tests` (`cargo test -p exesdb-cli --features root-tests
//! --test disk_full`; `.ci/run` does this, as root), and with it they fail, never pass
//! silently, when not run as root. The same failed-write path without root:
//! `crates/exesdb/tests/it/storage_faults.rs`.

#[path = "it/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::Server;
use exesdb_client::{
    AppendResult, Client, ClientError, Direction, ExpectedVersion, NewEvent, ReadFrom, Selector,
    StartFrom, SubscriptionMessage,
};
use tokio_stream::StreamExt;

const MOUNT_MIB: u64 = 48;
const RESERVE_BYTES: u64 = 8 * 1024 * 1024;
const EVENT_BYTES: usize = 4096;
const EVENTS_PER_APPEND: usize = 50;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Tmpfs {
        assert!(
            running_as_root(),
            "the disk-full tests mount a tmpfs and need root: run them as root (CI does) or \
             build without the feature `root-tests`"
        );
        let parent = tempfile::tempdir().expect("tempdir");
        let path = parent.path().join("disk");
        std::fs::create_dir(&path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs as root failed: {status}"
        );
        Tmpfs {
            path,
            _parent: parent,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn running_as_root() -> bool {
    // /proc/self/status: "Uid: real effective saved fs"
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Fills the file system until `leave` bytes are free (or as close as 1 MiB writes get).
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0xAB; 1024 * 1024];
    while free_bytes(dir) > leave + chunk.len() as u64 {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = file.sync_all();
    filler
}

fn free_bytes(dir: &Path) -> u64 {
    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .expect("df prints the free bytes")
}

/// Events of incompressible bytes (the engine compresses large values).
fn big_append(tag: u64) -> Vec<NewEvent> {
    let mut state = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..EVENTS_PER_APPEND)
        .map(|_| {
            let data = (0..EVENT_BYTES)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect::<Vec<u8>>();
            NewEvent::new("Big", data)
        })
        .collect()
}

/// Appends big batches until the store refuses one; returns what was acknowledged, and the
/// refusal.
async fn append_until_refused(client: &Client, disk: &Path) -> (Vec<AppendResult>, ClientError) {
    let mut acknowledged = Vec::new();
    loop {
        match client
            .append(
                "big",
                ExpectedVersion::Any,
                big_append(acknowledged.len() as u64),
            )
            .await
        {
            Ok(result) => {
                acknowledged.push(result);
                assert!(
                    acknowledged.len() < 100,
                    "the disk never filled up ({} bytes free)",
                    free_bytes(disk)
                );
            }
            Err(error) => return (acknowledged, error),
        }
    }
}

/// Stops the server with SIGTERM and starts it again on the same data; checks that every
/// acknowledged append of stream "big" is in place, that no append is partial and that every
/// event's bytes are whole. Returns the new server, a client, and the number of events.
async fn restart_and_check_big(
    server: Server,
    data_dir: &Path,
    flags: &[&str],
    acknowledged: &[AppendResult],
) -> (Server, Client, usize) {
    let exit = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("join");
    assert_eq!(exit.code(), Some(0));
    let server = Server::start_with(data_dir, flags);
    let client = server.client().await;
    let events: Vec<_> = client
        .read_stream("big", ReadFrom::Start, None, Direction::Forward)
        .map(|event| event.expect("readable"))
        .collect()
        .await;
    assert!(events.len() >= acknowledged.len() * EVENTS_PER_APPEND);
    assert_eq!(events.len() % EVENTS_PER_APPEND, 0, "no partial append");
    for (index, result) in acknowledged.iter().enumerate() {
        let first = result.first_event_number as usize;
        assert_eq!(first, index * EVENTS_PER_APPEND, "append {index} in place");
    }
    for event in &events {
        assert_eq!(event.data.len(), EVENT_BYTES, "event bytes intact");
    }
    (server, client, events.len())
}

async fn stream_ids(client: &Client, stream: &str) -> Vec<uuid::Uuid> {
    client
        .read_stream(stream, ReadFrom::Start, None, Direction::Forward)
        .map(|event| event.expect("readable").event_id)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_appends_keeps_reads_and_recovers() {
    let disk = Tmpfs::mount(MOUNT_MIB);
    let data_dir = disk.path.join("data");
    let reserve = RESERVE_BYTES.to_string();
    let flags = ["--disk-free-bytes-min", reserve.as_str()];
    let server = Server::start_with(&data_dir, &flags);
    let client = server.client().await;

    // Leave a little more than the reserve, then append until the store says it is full.
    let filler = fill(&disk.path, RESERVE_BYTES + 2 * 1024 * 1024);
    let (mut acknowledged, refusal) = append_until_refused(&client, &disk.path).await;
    assert_eq!(refusal.code(), "unavailable", "{refusal}");
    assert!(refusal.to_string().contains("storage full"), "{refusal}");
    assert!(
        !acknowledged.is_empty(),
        "appends succeeded before the disk filled"
    );

    // Reads keep working, and show exactly the acknowledged appends.
    let stored = stream_ids(&client, "big").await;
    assert_eq!(stored.len(), acknowledged.len() * EVENTS_PER_APPEND);
    // Small appends are refused too: the reserve is for the engine, not for us.
    let small = client
        .append(
            "small",
            ExpectedVersion::Any,
            vec![NewEvent::new("E", "{}")],
        )
        .await
        .expect_err("still full");
    assert_eq!(small.code(), "unavailable");
    client.healthy().await.expect("health answers while full");

    // Free the space: writes resume without a restart.
    std::fs::remove_file(&filler).expect("remove filler");
    let resumed = client
        .append("big", ExpectedVersion::Any, big_append(99))
        .await
        .expect("appends resume once space is freed");
    acknowledged.push(resumed);

    // Nothing lost or damaged across a restart.
    let (server, client, stored) =
        restart_and_check_big(server, &data_dir, &flags, &acknowledged).await;
    assert_eq!(
        stored,
        acknowledged.len() * EVENTS_PER_APPEND,
        "exactly the acknowledged events"
    );
    drop(client);
    drop(server);
    drop(disk);
}

/// Without the reserve (`disk_free_bytes_min` 0) the disk fills under the engine: a journal
/// write fails, and fjall refuses every later write. Reads keep working on the failed engine;
/// once there is room again, the store reopens its storage and writes resume without a
/// restart; every acknowledged event is there, before and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_failing_on_a_full_disk_is_recovered_by_reopening_the_storage() {
    let disk = Tmpfs::mount(MOUNT_MIB);
    let data_dir = disk.path.join("data");
    let flags = ["--disk-free-bytes-min", "0"];
    let server = Server::start_with(&data_dir, &flags);
    let client = server.client().await;
    // A live `$all` subscriber through the failed write and the reopen.
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let subscriber = tokio::spawn({
        let target = target.clone();
        let messages = client.subscribe(Selector::ByStream("$all".into()), StartFrom::Beginning);
        async move {
            let mut messages = std::pin::pin!(messages);
            let mut seen = Vec::new();
            while (seen.len() as u64) < target.load(Ordering::Acquire) {
                match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
                    Ok(Some(Ok(SubscriptionMessage::Event(event)))) => seen.push(event.position),
                    Ok(Some(Ok(SubscriptionMessage::CaughtUp))) => {}
                    other => panic!(
                        "subscription broke after {} events (last {:?}, target {}): {other:?}",
                        seen.len(),
                        seen.last(),
                        target.load(Ordering::Acquire)
                    ),
                }
            }
            seen
        }
    });

    let filler = fill(&disk.path, 2 * 1024 * 1024);
    let (acknowledged, failure) = append_until_refused(&client, &disk.path).await;
    assert_eq!(failure.code(), "unavailable", "{failure}");
    assert!(
        failure.to_string().contains("storage write failed"),
        "{failure}"
    );

    // The failed engine still serves reads, and the store does not try to reopen it on a
    // disk without room (that would close it).
    let stored = stream_ids(&client, "big").await;
    assert!(stored.len() >= acknowledged.len() * EVENTS_PER_APPEND);
    let refused = client
        .append(
            "small",
            ExpectedVersion::Any,
            vec![NewEvent::new("E", "{}")],
        )
        .await
        .expect_err("no room yet");
    assert!(refused.to_string().contains("storage full"), "{refused}");
    assert_eq!(
        stream_ids(&client, "big").await.len(),
        stored.len(),
        "reads still answer"
    );

    std::fs::remove_file(&filler).expect("remove filler");
    let resumed = client
        .append(
            "small",
            ExpectedVersion::Any,
            vec![NewEvent::new("E", "{}")],
        )
        .await
        .expect("writes resume after the storage is reopened");
    assert_eq!(resumed.first_event_number, 0);
    let all: Vec<u64> = client
        .read_all(ReadFrom::Start, None, Direction::Forward, None, &[])
        .map(|event| event.expect("readable").position)
        .collect()
        .await;
    target.store(all.len() as u64, Ordering::Release);
    // Wakes a subscriber that caught up before the target was known.
    client
        .append("wake", ExpectedVersion::Any, vec![NewEvent::new("E", "{}")])
        .await
        .expect("append");
    let seen = subscriber.await.expect("subscriber");
    assert_eq!(
        seen[..all.len()],
        all[..],
        "the subscriber saw every event, in order, through the reopen"
    );

    // The failed append may have been recovered whole (its outcome was reported unknown), but
    // every acknowledged one is there, in place and intact.
    let (server, client, _) = restart_and_check_big(server, &data_dir, &flags, &acknowledged).await;
    assert_eq!(stream_ids(&client, "small").await.len(), 1);
    drop(client);
    drop(server);
    drop(disk);
}
