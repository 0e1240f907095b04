//! PubSub: native topics over subscriptions, and an application's bus fed by the supervised
//! `ExESDB.PubSub` process: at least once and in order, across a kill of the process under
//! load, a bus that refuses for a while, and a SIGKILL of the whole program.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::{PATIENCE, event, start_with, wait_until};
use exesdb::{
    BusError, EventBus, ExpectedVersion, ExternalBus, RecordedEvent, SubscriptionMessage,
};

#[derive(Default)]
struct RecordingBus {
    published: Mutex<Vec<(String, u64)>>,
    /// While set, every publish is refused (the bus is down).
    down: AtomicBool,
    refusals: AtomicU64,
}

impl EventBus for RecordingBus {
    fn publish(&self, topic: &str, event: &RecordedEvent) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            self.refusals.fetch_add(1, Ordering::SeqCst);
            return Err(BusError("the bus is down".into()));
        }
        self.published
            .lock()
            .expect("lock")
            .push((topic.to_string(), event.position));
        Ok(())
    }
}

impl RecordingBus {
    fn positions(&self, topic: &str) -> Vec<u64> {
        self.published
            .lock()
            .expect("lock")
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_bus_gets_every_event_under_both_topics_even_across_a_pubsub_crash() {
    let bus = Arc::new(RecordingBus::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let shared: Arc<dyn EventBus> = bus.clone();
    let store = start_with(dir, |config| config.event_bus = Some(ExternalBus(shared))).await;
    let s = &store.system;
    for i in 0..10 {
        let kind = if i % 2 == 0 { "Even" } else { "Odd" };
        s.api()
            .append("n", ExpectedVersion::Any, vec![event(kind, &i.to_string())])
            .await
            .expect("append");
    }
    // Each event goes to $all, then to its type's topic: wait for the last of both.
    wait_until(PATIENCE, "10 events on $all and 5 on Odd", || {
        bus.positions("default:$all").len() == 10 && bus.positions("default:Odd").len() == 5
    })
    .await;
    assert_eq!(bus.positions("default:Odd"), vec![1, 3, 5, 7, 9]);

    // Killed while a writer appends: the restarted process resumes where it was.
    let api = s.api().clone();
    let writer = tokio::spawn(async move {
        for i in 10..20 {
            api.append(
                "n",
                ExpectedVersion::Any,
                vec![event("Even", &i.to_string())],
            )
            .await
            .expect("append");
        }
    });
    s.inject_fault("ExESDB.PubSub").expect("kill PubSub");
    writer.await.expect("writer");
    wait_until(PATIENCE, "event 19 on $all", || {
        bus.positions("default:$all").last() == Some(&19)
    })
    .await;
    let mut all = bus.positions("default:$all");
    all.dedup();
    assert_eq!(
        all,
        (0..20).collect::<Vec<_>>(),
        "in order, nothing skipped"
    );
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_topics_deliver_from_now_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |_| {}).await;
    let s = &store.system;
    s.api()
        .append("n", ExpectedVersion::Any, vec![event("Old", "x")])
        .await
        .expect("append");
    let mut all = s.api().listen("default:$all").await.expect("listen");
    let mut placed = s.api().listen("default:Placed").await.expect("listen");
    assert_eq!(all.next().await, Some(SubscriptionMessage::CaughtUp));
    assert_eq!(placed.next().await, Some(SubscriptionMessage::CaughtUp));
    s.api()
        .append(
            "n",
            ExpectedVersion::Any,
            vec![event("Placed", "y"), event("Other", "z")],
        )
        .await
        .expect("append");
    for expected in [1, 2] {
        match all.next().await {
            Some(SubscriptionMessage::Event(e)) => assert_eq!(e.position, expected),
            other => panic!("{other:?}"),
        }
    }
    match placed.next().await {
        Some(SubscriptionMessage::Event(e)) => assert_eq!(e.event_type, "Placed"),
        other => panic!("{other:?}"),
    }
    let error = s
        .api()
        .listen("other-store:$all")
        .await
        .expect_err("another store's topic");
    assert_eq!(error.code(), "invalid_argument");
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_that_refuses_for_a_while_gets_every_event_in_order_once_it_recovers() {
    let bus = Arc::new(RecordingBus::default());
    bus.down.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tempdir");
    let shared: Arc<dyn EventBus> = bus.clone();
    let store = start_with(dir, |config| config.event_bus = Some(ExternalBus(shared))).await;
    let s = &store.system;
    // Writers are not held up by a bus that is down.
    for i in 0..30 {
        s.api()
            .append("n", ExpectedVersion::Any, vec![event("E", &i.to_string())])
            .await
            .expect("append while the bus is down");
    }
    wait_until(
        PATIENCE,
        "the bus refuses the first event three times",
        || bus.refusals.load(Ordering::SeqCst) >= 3,
    )
    .await;
    assert!(bus.positions("default:$all").is_empty());
    bus.down.store(false, Ordering::SeqCst);
    wait_until(PATIENCE, "all 30 events on $all and on E", || {
        bus.positions("default:E").len() >= 30
    })
    .await;
    // Refused events are offered again, not skipped, and each topic gets each event once.
    assert_eq!(bus.positions("default:$all"), (0..30).collect::<Vec<_>>());
    assert_eq!(bus.positions("default:E"), (0..30).collect::<Vec<_>>());
    store.system.stop().await;
}

const BUS_CHILD_DIR: &str = "EXESDB_BUS_CHILD_DIR";
const BUS_CHILD_FILE: &str = "EXESDB_BUS_CHILD_FILE";

/// A bus that appends `<run> <position> <topic>` lines to a file: what it was handed survives a
/// SIGKILL of its process (the lines are in the page cache, written before `publish` returns).
struct FileBus {
    run: u64,
    file: Mutex<std::fs::File>,
}

impl EventBus for FileBus {
    fn publish(&self, topic: &str, event: &RecordedEvent) -> Result<(), BusError> {
        let mut file = self.file.lock().map_err(|_| BusError("poisoned".into()))?;
        writeln!(file, "{} {} {topic}", self.run, event.position)
            .map_err(|error| BusError(error.to_string()))
    }
}

fn file_bus(path: &str, run: u64) -> Arc<dyn EventBus> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the bus's file");
    // Ends a line the last run's kill may have cut, so this run's first line stands alone.
    writeln!(file).expect("write the bus's file");
    Arc::new(FileBus {
        run,
        file: Mutex::new(file),
    })
}

/// The child: a store with a `FileBus`, and a writer that appends until the process is
/// killed, printing `ACK <position>` for each append.
fn run_bus_child(dir: &str, file: &str, run: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut config = crate::common::config(std::path::Path::new(dir));
        config.event_bus = Some(ExternalBus(file_bus(file, run)));
        let system = exesdb::System::start(config)
            .await
            .expect("child store starts");
        for i in 0u64.. {
            let result = system
                .api()
                .append("n", ExpectedVersion::Any, vec![event("E", &i.to_string())])
                .await
                .expect("append");
            println!("ACK {}", result.first_position);
        }
    });
}

/// Every committed event reaches the bus at least once, in position order, across SIGKILLs of
/// the program: each run starts no later than where the runs before it got to, so nothing
/// between them is skipped.
#[test]
fn every_committed_event_reaches_the_bus_across_sigkill_and_restart() {
    if let (Ok(dir), Ok(file)) = (std::env::var(BUS_CHILD_DIR), std::env::var(BUS_CHILD_FILE)) {
        let run = std::env::var("EXESDB_BUS_CHILD_RUN")
            .ok()
            .and_then(|run| run.parse().ok())
            .unwrap_or(0);
        run_bus_child(&dir, &file, run);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bus.log");
    let data = dir.path().join("data");
    for run in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "pubsub::every_committed_event_reaches_the_bus_across_sigkill_and_restart",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(BUS_CHILD_DIR, &data)
            .env(BUS_CHILD_FILE, &file)
            .env("EXESDB_BUS_CHILD_RUN", run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // Killed at a different point of each run, well into its load.
        let kill_after = 200 + run as usize * 150;
        let mut acknowledged = 0;
        while acknowledged < kill_after {
            let line = lines.next().expect("the child acknowledges").expect("line");
            acknowledged += usize::from(line.starts_with("ACK "));
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }
    // A last, clean run in this process: it must hand over everything committed.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let file_path = file.to_string_lossy().to_string();
    let committed = runtime.block_on(async {
        let mut config = crate::common::config(&data);
        config.event_bus = Some(ExternalBus(file_bus(&file_path, 3)));
        let system = exesdb::System::start(config).await.expect("restarts");
        let last = system
            .api()
            .read_all(exesdb::ReadAllRequest {
                count: 1,
                direction: exesdb::Direction::Backward,
                ..Default::default()
            })
            .await
            .expect("read the last event");
        let committed = last.first().expect("events were written").position + 1;
        let published_all = || {
            std::fs::read_to_string(&file)
                .unwrap_or_default()
                .lines()
                .any(|line| line == format!("3 {} default:$all", committed - 1))
        };
        wait_until(
            PATIENCE,
            "the last committed event reaches the bus",
            published_all,
        )
        .await;
        system.stop().await;
        committed
    });
    let text = std::fs::read_to_string(&file).expect("the bus's file");
    let mut runs: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(run), Some(position), Some(topic)) = (parts.next(), parts.next(), parts.next())
        else {
            // A line cut by the kill (no topic yet) counts for nothing.
            continue;
        };
        if topic != "default:$all" {
            continue;
        }
        let (Ok(run), Ok(position)) = (run.parse(), position.parse()) else {
            continue;
        };
        runs.entry(run).or_default().push(position);
    }
    assert_eq!(runs.len(), 4, "every run published: {:?}", runs.keys());
    let mut reached = 0u64; // every position below this was published by an earlier run
    for (run, positions) in &runs {
        assert!(
            positions.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "run {run} published in order without gaps"
        );
        let first = positions[0];
        assert!(
            first <= reached,
            "run {run} starts at {first}, after {reached}: events in between were skipped"
        );
        reached = reached.max(positions[positions.len() - 1] + 1);
    }
    assert_eq!(reached, committed, "every committed event was published");
}
