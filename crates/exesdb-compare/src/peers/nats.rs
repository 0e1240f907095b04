//! NATS JetStream (Debian's `nats-server`) as an event store: one stream over the subjects
//! `es.>` with file storage and one replica, a subject per event stream, and optimistic
//! concurrency through the `Nats-Expected-Last-Subject-Sequence` header, each publish waiting
//! for its PubAck.
//!
//! What it guarantees differs from the others, and the report says so:
//! - nats-server 2.9 acknowledges a message once its file store has taken it, without an
//!   fsync: the store fsyncs on a timer (every 2 minutes), and 2.9 has no setting to change
//!   that (`sync_interval`, with `always`, came in 2.10). A power loss or an OS crash can
//!   lose acknowledged messages.
//! - A publish is one message: an append of several events is that many messages, published
//!   back to back; only the first carries the expected sequence, and they are not atomic
//!   (batch publishing came in 2.12).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::HeaderMap;
use async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE;
use async_nats::jetstream::{self, consumer, stream};
use tokio_stream::StreamExt;

use crate::load::{self, Appender, LoadSettings, NoFsyncCount, ReadCheck, SystemRun, Target};
use crate::process::{ServerProcess, first_existing, on_path};

const STREAM: &str = "ES";

/// `nats-server`, from `given`, `PATH` or Debian's place for it.
pub(crate) fn find_binary(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(given) = given {
        return given.is_file().then(|| given.to_path_buf());
    }
    on_path("nats-server").or_else(|| first_existing([PathBuf::from("/usr/sbin/nats-server")]))
}

/// The server's version, as `nats-server --version` prints it.
pub(crate) fn version(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    Some(text.trim().trim_start_matches("nats-server: ").to_string())
}

pub(crate) async fn run(binary: &Path, dir: &Path, settings: &LoadSettings) -> Result<SystemRun> {
    let port = crate::process::free_port()?;
    let mut command = Command::new(binary);
    command.args(["-js", "-sd"]).arg(dir.join("store")).args([
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]);
    let (server, _) = ServerProcess::start_and_wait_for(
        "nats-server",
        command,
        "Server is ready",
        &dir.join("log"),
    )?;
    let url = format!("nats://127.0.0.1:{port}");
    let mut pool = Vec::new();
    for _ in 0..settings.connections.max(1) {
        let client = async_nats::connect(&url)
            .await
            .context("cannot connect to nats-server")?;
        pool.push(jetstream::new(client));
    }
    pool[0]
        .create_stream(stream::Config {
            name: STREAM.to_string(),
            subjects: vec!["es.>".to_string()],
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .context("cannot create the stream")?;
    let read_context = pool[0].clone();
    let target = Nats { pool };
    let outcome = load::run_all(&target, settings, NoFsyncCount, read_all(read_context)).await;
    drop(target);
    server.stop(Duration::from_secs(30))?;
    outcome
}

struct Nats {
    pool: Vec<jetstream::Context>,
}

impl Target for Nats {
    type Appender = NatsAppender;

    async fn appender(&self, client: u64) -> Result<NatsAppender> {
        Ok(NatsAppender {
            context: self.pool[client as usize % self.pool.len()].clone(),
            last_sequence: HashMap::new(),
        })
    }
}

struct NatsAppender {
    context: jetstream::Context,
    /// The stream sequence of each owned subject's last message (the header wants a stream
    /// sequence, not a count).
    last_sequence: HashMap<String, u64>,
}

impl Appender for NatsAppender {
    async fn append(
        &mut self,
        stream: &str,
        stream_length: u64,
        events: Vec<Vec<u8>>,
    ) -> Result<()> {
        let expected = match stream_length {
            0 => 0,
            _ => *self
                .last_sequence
                .get(stream)
                .context("a stream this client never wrote")?,
        };
        let subject = format!("es.{stream}");
        let mut acks = Vec::with_capacity(events.len());
        for (index, data) in events.into_iter().enumerate() {
            let ack = if index == 0 {
                let mut headers = HeaderMap::new();
                headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
                self.context
                    .publish_with_headers(subject.clone(), headers, data.into())
                    .await?
            } else {
                self.context.publish(subject.clone(), data.into()).await?
            };
            acks.push(ack);
        }
        let mut last = expected;
        for ack in acks {
            let ack = ack.await?;
            if ack.sequence <= last {
                bail!("sequence {} after {last}", ack.sequence);
            }
            last = ack.sequence;
        }
        self.last_sequence.insert(stream.to_string(), last);
        Ok(())
    }
}

/// One ordered consumer reads the whole stream from the first message.
async fn read_all(context: jetstream::Context) -> Result<load::ReadResult> {
    let mut stream = context.get_stream(STREAM).await?;
    let total = stream.info().await?.state.messages;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut check = ReadCheck::start();
    let mut messages = consumer.messages().await?;
    let mut read = 0;
    while read < total {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .context("no message for 30 s")?
            .context("the consumer ended")??;
        let info = message
            .info()
            .map_err(|error| anyhow::anyhow!("no message info: {error}"))?;
        let subject = message.subject.as_str();
        check.event(info.stream_sequence, subject, None);
        read += 1;
    }
    Ok(check.finish())
}
