//! Helpers shared by the integration tests: a store in a fresh temporary directory.

#![allow(dead_code)]

use exesdb::{NewEvent, System, SystemConfig};

pub struct TestStore {
    pub system: System,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &std::path::Path) -> SystemConfig {
    let mut config = SystemConfig::new(dir, "default");
    config.shutdown_timeout_ms = 5_000;
    config
}

pub async fn start() -> TestStore {
    let dir = tempfile::tempdir().expect("temporary directory");
    start_in(dir).await
}

pub async fn start_in(dir: tempfile::TempDir) -> TestStore {
    let system = System::start(config(dir.path()))
        .await
        .expect("store starts");
    TestStore { system, dir }
}

pub async fn start_with(
    dir: tempfile::TempDir,
    change: impl FnOnce(&mut SystemConfig),
) -> TestStore {
    let mut config = config(dir.path());
    change(&mut config);
    let system = System::start(config).await.expect("store starts");
    TestStore { system, dir }
}

impl TestStore {
    /// Stops the store and starts it again on the same data.
    pub async fn restart(self) -> TestStore {
        let TestStore { system, dir } = self;
        system.stop().await;
        start_in(dir).await
    }
}

pub fn event(event_type: &str, data: &str) -> NewEvent {
    NewEvent::new(event_type, data.as_bytes().to_vec())
}
