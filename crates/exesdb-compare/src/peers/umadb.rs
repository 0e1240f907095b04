//! UmaDB (`umadb` 0.7.8, a gRPC event store built for Dynamic Consistency Boundaries) through its
//! Rust client, `umadb-client` 0.7.8. Built only with the feature `umadb` (its client brings a
//! TLS stack with a C build); `bench/compare.sh` installs the server and turns the feature on.
//!
//! UmaDB has no streams: events carry tags, and an append's condition is a query that must
//! match no event after a given position. A stream here is a tag, and the exact expected version
//! is its DCB form: fail if any event tagged with the stream exists after the position of the
//! stream's last event this client appended (for a new stream: after nothing, so any such event
//! fails it). An append of several events is one append request, which UmaDB takes atomically.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use umadb_client::AsyncUmaDbClient;
use umadb_dcb::{DcbAppendCondition, DcbEvent, DcbEventStoreAsync, DcbQuery, DcbQueryItem};

use crate::load::{self, Appender, LoadSettings, NoFsyncCount, ReadCheck, SystemRun, Target};
use crate::process::ServerProcess;

/// The version `bench/compare.sh` installs, and the cache directory's name for it.
pub(crate) const VERSION: &str = "0.7.8";

/// `umadb`, from `given`, `PATH` or `bench/compare.sh`'s cache.
pub(crate) fn find_binary(given: Option<&Path>) -> Option<PathBuf> {
    crate::process::find_peer_binary(given, "umadb", VERSION)
}

/// Tagged as the version the cache holds; `umadb` prints its version only in a banner.
pub(crate) fn version(binary: &Path) -> Option<String> {
    binary
        .to_string_lossy()
        .contains(&format!("umadb-{VERSION}"))
        .then(|| VERSION.to_string())
}

pub(crate) async fn run(binary: &Path, dir: &Path, settings: &LoadSettings) -> Result<SystemRun> {
    let port = crate::process::free_port()?;
    let mut command = Command::new(binary);
    command
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--db-path")
        .arg(dir.join("uma.db"));
    let (server, _) = ServerProcess::start_and_wait_for_stdout(
        "umadb",
        command,
        "UmaDB is listening on",
        &dir.join("log"),
    )?;
    let url = format!("http://127.0.0.1:{port}");
    let mut pool = Vec::new();
    for _ in 0..settings.connections.max(1) {
        let client = AsyncUmaDbClient::connect(url.clone(), None, None, None)
            .await
            .map_err(|error| anyhow::anyhow!("cannot connect to umadb: {error}"))?;
        pool.push(Arc::new(client));
    }
    let reader = pool[0].clone();
    let target = Umadb { pool };
    let outcome = load::run_all(&target, settings, NoFsyncCount, read_all(reader)).await;
    drop(target);
    server.stop(Duration::from_secs(30))?;
    outcome
}

struct Umadb {
    pool: Vec<Arc<AsyncUmaDbClient>>,
}

impl Target for Umadb {
    type Appender = UmadbAppender;

    async fn appender(&self, client: u64) -> Result<UmadbAppender> {
        Ok(UmadbAppender {
            client: self.pool[client as usize % self.pool.len()].clone(),
            last_position: HashMap::new(),
        })
    }
}

struct UmadbAppender {
    client: Arc<AsyncUmaDbClient>,
    /// The position of each owned stream's last event.
    last_position: HashMap<String, u64>,
}

impl Appender for UmadbAppender {
    async fn append(
        &mut self,
        stream: &str,
        stream_length: u64,
        events: Vec<Vec<u8>>,
    ) -> Result<()> {
        let after = match stream_length {
            0 => None,
            _ => Some(
                *self
                    .last_position
                    .get(stream)
                    .context("a stream this client never wrote")?,
            ),
        };
        let condition = DcbAppendCondition {
            fail_if_events_match: DcbQuery::with_items([DcbQueryItem {
                types: Vec::new(),
                tags: vec![stream.to_string()],
            }]),
            after,
        };
        let count = events.len() as u64;
        let events = events
            .into_iter()
            .map(|data| DcbEvent {
                event_type: "Bench".to_string(),
                tags: vec![stream.to_string()],
                data,
                uuid: None,
                metadata: Vec::new(),
            })
            .collect();
        let last = self
            .client
            .append(events, Some(condition), None)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        if let Some(after) = after
            && last < after + count
        {
            bail!("position {last} after {after} for {count} events");
        }
        self.last_position.insert(stream.to_string(), last);
        Ok(())
    }
}

/// One read of everything from the start, batch by batch.
async fn read_all(client: Arc<AsyncUmaDbClient>) -> Result<load::ReadResult> {
    let mut check = ReadCheck::start();
    let (mut previous, mut gaps) = (None::<u64>, 0u64);
    let mut response = client
        .read(None, None, false, None)
        .await
        .map_err(|error| anyhow::anyhow!("cannot read: {error}"))?;
    loop {
        let batch = response
            .next_batch()
            .await
            .map_err(|error| anyhow::anyhow!("the read failed: {error}"))?;
        if batch.is_empty() {
            break;
        }
        for sequenced in batch {
            let stream = sequenced.event.tags.first().map_or("", String::as_str);
            check.event(sequenced.position, stream, None);
            if previous.is_some_and(|previous| sequenced.position != previous + 1) {
                gaps += 1;
            }
            previous = Some(sequenced.position);
        }
    }
    eprintln!(
        "  positions {} (gaps between consecutive events: {gaps})",
        match previous {
            Some(last) => format!("up to {last}"),
            None => "none".to_string(),
        }
    );
    Ok(check.finish())
}
