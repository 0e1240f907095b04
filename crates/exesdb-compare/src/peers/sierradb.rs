//! SierraDB (`sierradb-server` 0.3.1), a partitioned event store that speaks RESP3, through
//! this crate's RESP3 client (`crate::resp`). `bench/compare.sh` installs it.
//!
//! An append of one event is `EAPPEND <stream> <type> EXPECTED_VERSION <empty | n> PAYLOAD …`;
//! an append of several is one `EMAPPEND` transaction (atomic) in the stream's partition, each
//! event with its expected version. SierraDB keeps gapless versions per stream and a gapless
//! sequence per partition (32 partitions by default), but no global order: the catch-up read
//! scans each partition in turn (`EPSCAN`), and the check sees partition then sequence as the
//! position.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::Mutex;

use crate::load::{self, Appender, LoadSettings, NoFsyncCount, ReadCheck, SystemRun, Target};
use crate::process::ServerProcess;
use crate::resp::{Connection, Reply};

/// The version `bench/compare.sh` installs, and the cache directory's name for it.
pub(crate) const VERSION: &str = "0.3.1";

/// SierraDB's namespace for the partition key it derives from a stream id (its default when
/// an append names no partition key).
const NAMESPACE_PARTITION_KEY: uuid::Uuid = uuid::uuid!("219bd637-e279-53e9-9e2b-eabe5d9120cc");

/// `sierradb`, from `given`, `PATH` or `bench/compare.sh`'s cache.
pub(crate) fn find_binary(given: Option<&Path>) -> Option<PathBuf> {
    crate::process::find_peer_binary(given, "sierradb", VERSION)
}

/// The server's version, as `sierradb --version` prints it.
pub(crate) fn version(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().last().map(str::to_string)
}

pub(crate) async fn run(binary: &Path, dir: &Path, settings: &LoadSettings) -> Result<SystemRun> {
    let port = crate::process::free_port()?;
    let address = format!("127.0.0.1:{port}");
    let mut command = Command::new(binary);
    command
        .arg("--dir")
        .arg(dir.join("data"))
        .arg("--client-address")
        .arg(&address)
        .args(["--node-count", "1", "--node-index", "0"]);
    let (server, _) = ServerProcess::start_and_wait_for_stdout(
        "sierradb",
        command,
        "ready to receive connections on",
        &dir.join("log"),
    )?;
    // The log line comes as the listener task starts, not once it has bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        match Connection::open(&address).await {
            Ok(connection) => break connection,
            Err(error) if std::time::Instant::now() > deadline => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut pool = vec![Arc::new(Mutex::new(first))];
    for _ in 1..settings.clients.max(1) {
        pool.push(Arc::new(Mutex::new(Connection::open(&address).await?)));
    }
    let reader = Connection::open(&address).await?;
    let target = Sierradb { pool };
    let outcome = load::run_all(&target, settings, NoFsyncCount, read_all(reader)).await;
    drop(target);
    server.stop(Duration::from_secs(30))?;
    outcome
}

/// A connection per client: RESP has one request in flight per connection, as a PostgreSQL
/// connection does.
struct Sierradb {
    pool: Vec<Arc<Mutex<Connection>>>,
}

impl Target for Sierradb {
    type Appender = SierradbAppender;

    async fn appender(&self, client: u64) -> Result<SierradbAppender> {
        Ok(SierradbAppender {
            connection: self.pool[client as usize % self.pool.len()].clone(),
        })
    }
}

struct SierradbAppender {
    connection: Arc<Mutex<Connection>>,
}

fn expected_version(stream_length: u64) -> String {
    match stream_length {
        0 => "empty".to_string(),
        length => (length - 1).to_string(),
    }
}

impl Appender for SierradbAppender {
    async fn append(
        &mut self,
        stream: &str,
        stream_length: u64,
        events: Vec<Vec<u8>>,
    ) -> Result<()> {
        let count = events.len() as u64;
        let mut arguments: Vec<Vec<u8>> = Vec::with_capacity(2 + events.len() * 6);
        if count == 1 {
            arguments.extend([b"EAPPEND".to_vec(), stream.into(), b"Bench".to_vec()]);
            arguments.push(b"EXPECTED_VERSION".to_vec());
            arguments.push(expected_version(stream_length).into_bytes());
            arguments.push(b"PAYLOAD".to_vec());
            arguments.extend(events);
        } else {
            let partition_key = uuid::Uuid::new_v5(&NAMESPACE_PARTITION_KEY, stream.as_bytes());
            arguments.push(b"EMAPPEND".to_vec());
            arguments.push(partition_key.to_string().into_bytes());
            for (index, data) in events.into_iter().enumerate() {
                arguments.extend([stream.into(), b"Bench".to_vec()]);
                arguments.push(b"EXPECTED_VERSION".to_vec());
                arguments.push(expected_version(stream_length + index as u64).into_bytes());
                arguments.push(b"PAYLOAD".to_vec());
                arguments.push(data);
            }
        }
        let arguments: Vec<&[u8]> = arguments.iter().map(Vec::as_slice).collect();
        let reply = self.connection.lock().await.call(&arguments).await?;
        if let Reply::Error(error) = &reply {
            bail!("{error}");
        }
        let last_version = if count == 1 {
            reply.field("stream_version").and_then(Reply::as_number)
        } else {
            // EMAPPEND answers each event it wrote; the last one's version is the stream's.
            match reply.field("events") {
                Some(Reply::Array(events)) => events
                    .last()
                    .and_then(|event| event.field("stream_version"))
                    .and_then(Reply::as_number),
                _ => None,
            }
        };
        let expected_last = (stream_length + count - 1) as i64;
        match last_version {
            Some(version) if version == expected_last => Ok(()),
            other => bail!(
                "stream version {other:?} after the append, {expected_last} expected: {reply:?}"
            ),
        }
    }
}

/// Every partition from its first sequence, in turn.
async fn read_all(mut connection: Connection) -> Result<load::ReadResult> {
    let hello = connection.call(&[b"HELLO", b"3"]).await?;
    let partitions = hello
        .field("num_partitions")
        .and_then(Reply::as_number)
        .context("HELLO names no partition count")?;
    settle(&mut connection, partitions).await?;
    let mut check = ReadCheck::start();
    for partition in 0..partitions {
        let partition_text = partition.to_string();
        let mut start = "-".to_string();
        loop {
            let reply = connection
                .call(&[
                    b"EPSCAN",
                    partition_text.as_bytes(),
                    start.as_bytes(),
                    b"+",
                    b"COUNT",
                    b"1000",
                ])
                .await?;
            if let Reply::Error(error) = &reply {
                bail!("EPSCAN {partition}: {error}");
            }
            let Some(Reply::Array(events)) = reply.field("events") else {
                bail!("EPSCAN {partition} answered no events: {reply:?}");
            };
            let mut last_sequence = None;
            for event in events {
                let sequence = event
                    .field("partition_sequence")
                    .and_then(Reply::as_number)
                    .context("an event without its partition sequence")?;
                let stream = event
                    .field("stream_id")
                    .and_then(Reply::as_text)
                    .context("an event without its stream")?;
                let version = event
                    .field("stream_version")
                    .and_then(Reply::as_number)
                    .context("an event without its stream version")?;
                check.event(
                    ((partition as u64) << 40) | sequence as u64,
                    stream,
                    Some(version as u64),
                );
                last_sequence = Some(sequence);
            }
            let more = matches!(reply.field("has_more"), Some(Reply::Boolean(true)));
            match (more, last_sequence) {
                (true, Some(last)) => start = (last + 1).to_string(),
                _ => break,
            }
        }
    }
    Ok(check.finish())
}

/// The sum of every partition's last sequence (and one, so that an empty partition counts 0).
async fn partition_heads(connection: &mut Connection, partitions: i64) -> Result<i64> {
    let mut total = 0;
    for partition in 0..partitions {
        let partition = partition.to_string();
        let reply = connection.call(&[b"EPSEQ", partition.as_bytes()]).await?;
        total += match reply {
            Reply::Number(last) => last + 1,
            Reply::Null => 0,
            other => bail!("EPSEQ {partition} answered {other:?}"),
        };
    }
    Ok(total)
}

/// SierraDB answers an append before a read sees it: a read started right after the last
/// acknowledgement missed a few dozen events in every run here, and found them all a moment
/// later. The read waits until the partitions' heads hold still for 200 ms, and says how long
/// that took.
async fn settle(connection: &mut Connection, partitions: i64) -> Result<()> {
    let started = std::time::Instant::now();
    let mut last = partition_heads(connection, partitions).await?;
    let mut still = 0;
    while still < 4 {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the partitions' heads still moved after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = partition_heads(connection, partitions).await?;
        if now == last {
            still += 1;
        } else {
            still = 0;
            last = now;
        }
    }
    eprintln!(
        "  the partitions' heads held still after {:.0} ms ({last} events)",
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}
