//! Helpers shared by the integration tests: a store in a fresh temporary directory, and waits
//! on conditions (a test waits for what it needs to see, never for a fixed time).

// Several test binaries include this module, each using a part of it.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

use exesdb::{NewEvent, System, SystemConfig};

pub(crate) use exesdb_test_support::{PATIENCE, POLL_INTERVAL, wait_for, wait_until};

pub(crate) struct TestStore {
    pub system: System,
    pub dir: tempfile::TempDir,
}

pub(crate) fn config(dir: &std::path::Path) -> SystemConfig {
    let mut config = SystemConfig::new(dir, "default");
    config.shutdown_timeout_ms = 5_000;
    config
}

pub(crate) async fn start() -> TestStore {
    let dir = tempfile::tempdir().expect("temporary directory");
    start_in(dir).await
}

pub(crate) async fn start_in(dir: tempfile::TempDir) -> TestStore {
    let system = System::start(config(dir.path()))
        .await
        .expect("store starts");
    TestStore { system, dir }
}

pub(crate) async fn start_with(
    dir: tempfile::TempDir,
    change: impl FnOnce(&mut SystemConfig),
) -> TestStore {
    let mut config = config(dir.path());
    change(&mut config);
    let system = System::start(config).await.expect("store starts");
    TestStore { system, dir }
}

/// A store whose idle workers stop after 100 ms: a test that waits for every worker to stop
/// shows that nothing polls (a worker asked every 50 ms would never stop).
pub(crate) async fn start_with_short_idle() -> TestStore {
    let dir = tempfile::tempdir().expect("temporary directory");
    start_with(dir, |config| {
        config.pools.reader_idle_ms = 100;
        config.pools.writer_idle_ms = 100;
    })
    .await
}

/// Waits until no worker of any pool runs: every emitter parked, every other worker idle.
pub(crate) async fn wait_for_every_worker_to_stop(system: &System) {
    wait_until(PATIENCE, "every worker, the emitters' too, stops", || {
        system.api().active_workers() == 0
    })
    .await;
}

impl TestStore {
    /// Stops the store and starts it again on the same data.
    pub(crate) async fn restart(self) -> TestStore {
        let TestStore { system, dir } = self;
        system.stop().await;
        start_in(dir).await
    }
}

pub(crate) fn event(event_type: &str, data: &str) -> NewEvent {
    NewEvent::new(event_type, data.as_bytes().to_vec())
}

/// One append of `count` events, each with a client-chosen id and data that names its append
/// ("append-id:index:count:" then `padding` bytes of filler), so that a check after a crash
/// can tell a whole append from part of one. Returns the ids and the events.
pub(crate) fn tagged_append(count: usize, padding: usize) -> (Vec<uuid::Uuid>, Vec<NewEvent>) {
    let append_id = uuid::Uuid::now_v7();
    let ids: Vec<uuid::Uuid> = (0..count).map(|_| uuid::Uuid::now_v7()).collect();
    let filler = "x".repeat(padding);
    let events = ids
        .iter()
        .enumerate()
        .map(|(index, id)| {
            NewEvent::new(
                "E",
                format!("{append_id}:{index}:{count}:{filler}").into_bytes(),
            )
            .with_id(*id)
        })
        .collect();
    (ids, events)
}

/// Checks that `condition` holds throughout `period`: the bounded wait of a test that must
/// show something does not happen and has no event to wait for instead. Callers say why.
pub(crate) async fn holds_throughout(
    period: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) {
    let end = tokio::time::Instant::now() + period;
    loop {
        assert!(condition(), "{what}");
        if tokio::time::Instant::now() >= end {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
