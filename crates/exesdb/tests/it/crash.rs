//! Durability under SIGKILL: a child process appends under load and prints each
//! acknowledgement; it is killed mid-load; the data directory, reopened, holds every
//! acknowledged event, identical, and no part of an append without the rest of it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use exesdb::{Direction, ExpectedVersion, ReadAllRequest};
use uuid::Uuid;

const CHILD_DIR: &str = "EXESDB_CRASH_CHILD_DIR";
const CHILD_SEED: &str = "EXESDB_CRASH_CHILD_SEED";

/// An acknowledged append as the child reported it.
struct Ack {
    stream: String,
    first_event_number: u64,
    first_position: u64,
    ids: Vec<Uuid>,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let stream = parts.next()?.to_string();
    let first_event_number = parts.next()?.parse().ok()?;
    let first_position = parts.next()?.parse().ok()?;
    let ids = parts
        .next()?
        .split(',')
        .map(|id| id.parse().ok())
        .collect::<Option<Vec<_>>>()?;
    Some(Ack {
        stream,
        first_event_number,
        first_position,
        ids,
    })
}

/// The child: 8 tasks append batches of 1 to 3 events until killed. Each event's data names its
/// append ("append-id:index:count") so the parent can find partial appends.
fn run_child(dir: &str, seed: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let system = Arc::new(
            exesdb::System::start(crate::common::config(std::path::Path::new(dir)))
                .await
                .expect("child store starts"),
        );
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let system = system.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let stream = format!("s{}", (seed + task * 7 + i) % 13);
                    let count = 1 + ((seed + i + task) % 3) as usize;
                    let (ids, events) = crate::common::tagged_append(count, 0);
                    let result = system
                        .api()
                        .append(&stream, ExpectedVersion::Any, events)
                        .await
                        .expect("append");
                    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
                    println!(
                        "ACK {stream} {} {} {}",
                        result.first_event_number,
                        result.first_position,
                        ids.join(",")
                    );
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let seed = std::env::var(CHILD_SEED)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        run_child(&dir, seed);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acknowledged: Vec<Ack> = Vec::new();
    for cycle in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "crash::acknowledged_appends_survive_sigkill",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_SEED, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Kill at a different point each cycle, well into the load.
        let kill_after = 300 + cycle as usize * 250;
        let mut seen = 0;
        while seen < kill_after {
            let line = lines
                .next()
                .expect("child keeps acknowledging")
                .expect("line");
            if let Some(ack) = parse_ack(&line) {
                acknowledged.push(ack);
                seen += 1;
            }
        }
        child.kill().expect("SIGKILL");
        // Acknowledgements already in the pipe were acknowledged before the kill.
        for line in lines.map_while(Result::ok) {
            if let Some(ack) = parse_ack(&line) {
                acknowledged.push(ack);
            }
        }
        let _ = child.wait();
        verify(dir.path(), &acknowledged);
    }
}

fn verify(dir: &std::path::Path, acknowledged: &[Ack]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut config = crate::common::config(dir);
        config.limits.read_events_max = 1_000_000;
        let system = exesdb::System::start(config)
            .await
            .expect("reopens after SIGKILL");
        for ack in acknowledged {
            let events = system
                .api()
                .read_stream(
                    &ack.stream,
                    Some(ack.first_event_number),
                    ack.ids.len() as u64,
                    Direction::Forward,
                )
                .await
                .expect("acknowledged stream is there");
            let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
            assert_eq!(
                ids, ack.ids,
                "acknowledged events of {} are intact",
                ack.stream
            );
            assert_eq!(events[0].position, ack.first_position);
        }
        let all = system
            .api()
            .read_all(ReadAllRequest {
                count: 1_000_000,
                ..Default::default()
            })
            .await
            .expect("read all");
        let mut appends: BTreeMap<String, Vec<(u64, usize, usize)>> = BTreeMap::new();
        let mut streams: BTreeMap<String, u64> = BTreeMap::new();
        for (i, event) in all.iter().enumerate() {
            assert_eq!(event.position, i as u64, "no gap in $all");
            let next = streams.entry(event.stream_id.clone()).or_insert(0);
            assert_eq!(event.event_number, *next, "no gap in {}", event.stream_id);
            *next += 1;
            let data = String::from_utf8(event.data.clone()).expect("utf-8");
            let mut parts = data.split(':');
            let append_id = parts.next().expect("append id").to_string();
            let index: usize = parts.next().and_then(|p| p.parse().ok()).expect("index");
            let count: usize = parts.next().and_then(|p| p.parse().ok()).expect("count");
            appends
                .entry(append_id)
                .or_default()
                .push((event.position, index, count));
        }
        for (append_id, events) in appends {
            let count = events[0].2;
            assert_eq!(events.len(), count, "append {append_id} is whole");
            for (offset, (position, index, _)) in events.iter().enumerate() {
                assert_eq!(*index, offset);
                assert_eq!(
                    *position,
                    events[0].0 + offset as u64,
                    "append {append_id} is contiguous"
                );
            }
        }
        system.stop().await;
    });
}
