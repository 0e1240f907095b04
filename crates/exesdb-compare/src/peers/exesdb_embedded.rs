//! exesdb as a library, in this process, with no network: the fair comparison for SQLite.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use exesdb::{Direction, ExpectedVersion, NewEvent, ReadAllRequest, System, SystemConfig};

use crate::load::{self, Appender, AsyncFsyncCounter, LoadSettings, ReadCheck, SystemRun, Target};

pub(crate) async fn run(dir: &Path, settings: &LoadSettings) -> Result<SystemRun> {
    let config = SystemConfig::new(dir, "compare");
    let page_events = config.limits.read_events_max;
    let system = Arc::new(System::start(config).await?);
    let target = Embedded {
        system: system.clone(),
    };
    let fsyncs = CommitBatches {
        system: system.clone(),
    };
    let outcome = load::run_all(&target, settings, fsyncs, read_all(&system, page_events)).await;
    drop(target);
    if let Ok(system) = Arc::try_unwrap(system) {
        system.stop().await;
    }
    outcome
}

/// Appends with the exact expected version: `no_stream` for the first, then the number of
/// the stream's last event.
pub(crate) fn expected_version(stream_length: u64) -> ExpectedVersion {
    match stream_length {
        0 => ExpectedVersion::NoStream,
        length => ExpectedVersion::Exact(length - 1),
    }
}

struct Embedded {
    system: Arc<System>,
}

impl Target for Embedded {
    type Appender = EmbeddedAppender;

    async fn appender(&self, _client: u64) -> Result<EmbeddedAppender> {
        Ok(EmbeddedAppender {
            system: self.system.clone(),
        })
    }
}

struct EmbeddedAppender {
    system: Arc<System>,
}

impl Appender for EmbeddedAppender {
    async fn append(
        &mut self,
        stream: &str,
        stream_length: u64,
        events: Vec<Vec<u8>>,
    ) -> Result<()> {
        let events = events
            .into_iter()
            .map(|data| NewEvent::new("Bench", data))
            .collect();
        let appended = self
            .system
            .api()
            .append(stream, expected_version(stream_length), events)
            .await?;
        if appended.first_event_number != stream_length {
            bail!(
                "appended at event number {} instead of {stream_length}",
                appended.first_event_number
            );
        }
        Ok(())
    }
}

/// The committer's own count of its batches: one fsync each.
struct CommitBatches {
    system: Arc<System>,
}

impl AsyncFsyncCounter for CommitBatches {
    async fn count(&mut self) -> Option<u64> {
        Some(self.system.api().commit_stats().batches)
    }

    async fn hops(&mut self) -> Vec<load::HopSum> {
        let hops = self.system.api().append_hops();
        exesdb::Hop::ALL
            .iter()
            .map(|&hop| load::HopSum {
                name: hop.name().to_string(),
                nanos: hops.nanos(hop) as f64,
                requests: hops.count(hop) as f64,
            })
            .collect()
    }
}

/// Reads `$all` from the start in pages, as a catching-up reader does, the fast way an
/// embedding program reads: `read_all_pages`, whose pages lend their events, the next page
/// read while this one is checked.
async fn read_all(system: &System, page_events: u64) -> Result<load::ReadResult> {
    let mut check = ReadCheck::start();
    let mut pages = system
        .api()
        .read_all_pages(ReadAllRequest {
            from_position: Some(0),
            count: page_events,
            direction: Direction::Forward,
            stream_prefix: None,
            event_types: Vec::new(),
            bytes_max: None,
        })
        .await;
    while let Some(page) = pages.next().await {
        for event in page?.iter() {
            check.event(event.position, event.stream_id, Some(event.event_number));
        }
    }
    Ok(check.finish())
}
