//! The client commands of `spec/cli.md`: each talks to a server through `exesdb-client`.
//! Exit status: 0 success, 1 the server refused the request, 2 usage or connection error.

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use exesdb_client::{
    Client, ClientError, ClientOptions, DEFAULT_SERVER, Direction, ExpectedVersion, NewEvent,
    ReadFrom, Selector, SnapshotVersion, StartFrom, SubscriptionDefinition, SubscriptionMessage,
};
use serde_json::{Value, json};
use tokio_stream::{Stream, StreamExt};
use uuid::Uuid;

use crate::output;

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub(crate) struct ClientArgs {
    /// The server to talk to.
    #[arg(long, env = "EXESDB_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
    /// The store to use.
    #[arg(long, env = "EXESDB_STORE", default_value = "default", global = true)]
    pub store: String,
    /// Print one JSON object per line and nothing else on stdout.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum SnapshotCommand {
    /// Record (or replace) a snapshot.
    Record {
        source_uuid: String,
        stream_uuid: String,
        version: u64,
        /// The snapshot as JSON text, or @FILE.
        #[arg(long)]
        data: String,
        /// Metadata as JSON text, or @FILE.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Read a snapshot: the latest, or at exactly / at or below a version.
    Read {
        source_uuid: String,
        stream_uuid: String,
        /// Exactly this version.
        #[arg(long, conflicts_with = "at_or_below")]
        version: Option<u64>,
        /// The newest at or below this version.
        #[arg(long)]
        at_or_below: Option<u64>,
    },
    /// Delete a snapshot.
    Delete {
        source_uuid: String,
        stream_uuid: String,
        version: u64,
    },
    /// List snapshots.
    List {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ClientCommand {
    /// Append events: one from flags, or NDJSON lines from stdin when --type is absent.
    Append {
        stream: String,
        /// The event type (omit to read NDJSON from stdin).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// The event data as JSON text, or @FILE.
        #[arg(long, requires = "event_type")]
        data: Option<String>,
        /// The event metadata as JSON text, or @FILE.
        #[arg(long, requires = "event_type")]
        metadata: Option<String>,
        /// The event id (a UUID); makes a retry idempotent.
        #[arg(long, requires = "event_type")]
        id: Option<Uuid>,
        /// any, no-stream, exists, or a version number.
        #[arg(long, default_value = "any", value_parser = parse_expected)]
        expected: ExpectedVersion,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read a stream, or an index stream: `$et-<event type>`, `$ce-<category>`.
    Read {
        stream: String,
        /// The first event number (for `$all` and the index streams, the first position).
        #[arg(long)]
        from: Option<u64>,
        /// At most this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Newest first.
        #[arg(long)]
        backward: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read all events of the store in global order.
    ReadAll {
        /// The first position.
        #[arg(long)]
        from: Option<u64>,
        /// At most this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Newest first.
        #[arg(long)]
        backward: bool,
        /// Only streams whose id starts with this.
        #[arg(long)]
        stream_prefix: Option<String>,
        /// Only events of this type (repeat for several).
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a stream's version (-1 for a stream without events).
    Version {
        stream: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the store's streams.
    Streams {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the stores the server hosts.
    Stores {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Snapshots: record, read, delete, list.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow events as they are stored: first those already there, then a caught-up line,
    /// then new ones, until interrupted.
    Subscribe {
        /// A stream id or `$all` (by-stream), an event type, or a JSON object (by-event-pattern,
        /// by-event-payload).
        selector: String,
        /// What the selector selects by.
        #[arg(long, value_enum, default_value = "by-stream")]
        kind: SubscribeKind,
        /// Use the persistent subscription of this name (created with this selector if it does
        /// not exist): delivery resumes where the last consumer left off, and each printed
        /// event is acknowledged.
        #[arg(long)]
        name: Option<String>,
        /// `start` (the default), `end` (live only), or a number: an event number of the
        /// stream for by-stream subscriptions to one stream, a global position otherwise.
        #[arg(long, default_value = "start")]
        from: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the store's live supervision tree, in the spec's notation.
    Tree {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cluster mode: the members and each store's leader, term and indexes, as the node asked
    /// sees them.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `exesdb cluster ...`.
#[derive(Subcommand, Debug, Clone)]
pub(crate) enum ClusterCommand {
    /// Members (id, addresses, state) and, per store, leader, term, commit and applied index.
    Status,
    /// Add the node at this peer address (its --peer-advertise): it joins every store's group
    /// as a learner and, once caught up, as a voter.
    Add {
        /// The new node's peer address.
        peer_addr: String,
    },
    /// Remove the node with this id from every store's group.
    Remove {
        /// The node's id, as `exesdb cluster status` shows it.
        node_id: u64,
    },
    /// Hand one store's leadership to another voter.
    TransferLeader {
        /// The voter that should lead.
        #[arg(long = "to")]
        to: u64,
    },
}

/// The `--kind` values of `spec/cli.md` (`by-stream`, ...), named as the spec names them.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum SubscribeKind {
    ByStream,
    ByEventType,
    ByEventPattern,
    ByEventPayload,
}

fn parse_expected(text: &str) -> Result<ExpectedVersion, String> {
    match text {
        "any" => Ok(ExpectedVersion::Any),
        "no-stream" | "no_stream" | "-1" => Ok(ExpectedVersion::NoStream),
        "exists" | "stream-exists" | "stream_exists" => Ok(ExpectedVersion::StreamExists),
        number => number
            .parse()
            .map(ExpectedVersion::Exact)
            .map_err(|_| format!("{text:?} is not any, no-stream, exists or a version number")),
    }
}

/// A failure of a command, with the exit status it leads to.
enum Failure {
    /// Bad input on the command line or stdin: exit 2.
    Usage(String),
    /// From the client: exit 1 if the server refused, 2 if it could not be reached.
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure::Client(error)
    }
}

impl ClientCommand {
    fn client_args(&self) -> &ClientArgs {
        match self {
            ClientCommand::Append { client, .. }
            | ClientCommand::Read { client, .. }
            | ClientCommand::ReadAll { client, .. }
            | ClientCommand::Version { client, .. }
            | ClientCommand::Streams { client }
            | ClientCommand::Stores { client }
            | ClientCommand::Snapshot { client, .. }
            | ClientCommand::Subscribe { client, .. }
            | ClientCommand::Tree { client }
            | ClientCommand::Cluster { client, .. } => client,
        }
    }
}

/// Runs a client command and turns its outcome into an exit status.
pub(crate) async fn run(command: ClientCommand) -> ExitCode {
    let args = command.client_args().clone();
    let options = ClientOptions {
        store_id: args.store.clone(),
        ..ClientOptions::default()
    };
    let result = match Client::connect_with(&args.server, options).await {
        Ok(client) => execute(&client, command, args.json).await,
        Err(error) => Err(Failure::Client(error)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            if args.json {
                print_json(&json!({"error": {"code": "usage", "message": message}}));
            }
            eprintln!("exesdb: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Client(error)) => {
            if args.json {
                print_json(&output::error(&error));
            }
            eprintln!("exesdb: {error}");
            match error {
                ClientError::Store(_) => ExitCode::from(1),
                _ => ExitCode::from(2),
            }
        }
    }
}

fn print_json(value: &Value) {
    outln!("{value}");
}

async fn execute(client: &Client, command: ClientCommand, json: bool) -> Result<(), Failure> {
    match command {
        ClientCommand::Append {
            stream,
            event_type,
            data,
            metadata,
            id,
            expected,
            ..
        } => {
            let events = match event_type {
                Some(event_type) => vec![event_from_flags(event_type, data, metadata, id)?],
                None => events_from_stdin()?,
            };
            let result = client.append(&stream, expected, events).await?;
            if json {
                print_json(&json!({
                    "stream_id": stream,
                    "first_event_number": result.first_event_number,
                    "last_event_number": result.last_event_number,
                    "first_position": result.first_position,
                    "last_position": result.last_position,
                }));
            } else {
                outln!(
                    "appended to {stream}: events {}..={} at positions {}..={}",
                    result.first_event_number,
                    result.last_event_number,
                    result.first_position,
                    result.last_position
                );
            }
        }
        ClientCommand::Read {
            stream,
            from,
            count,
            backward,
            ..
        } => {
            let events = client.read_stream(&stream, read_from(from), count, direction(backward));
            print_events(events, json).await?;
        }
        ClientCommand::ReadAll {
            from,
            count,
            backward,
            stream_prefix,
            event_types,
            ..
        } => {
            let events = client.read_all(
                read_from(from),
                count,
                direction(backward),
                stream_prefix.as_deref(),
                &event_types,
            );
            print_events(events, json).await?;
        }
        ClientCommand::Version { stream, .. } => {
            let version = client.stream_version(&stream).await?;
            if json {
                print_json(&json!({"stream_id": stream, "version": version}));
            } else {
                outln!("{version}");
            }
        }
        ClientCommand::Streams { .. } => {
            let mut streams = std::pin::pin!(client.list_streams(None, None));
            while let Some(info) = streams.next().await {
                let info = info?;
                if json {
                    print_json(&json!({"stream_id": info.stream_id, "version": info.version}));
                } else {
                    outln!("{}  {}", info.stream_id, info.version);
                }
            }
        }
        ClientCommand::Stores { .. } => {
            for store in client.list_stores().await? {
                if json {
                    print_json(&json!({"store_id": store}));
                } else {
                    outln!("{store}");
                }
            }
        }
        ClientCommand::Snapshot { command, .. } => snapshot(client, command, json).await?,
        ClientCommand::Subscribe {
            selector,
            kind,
            name,
            from,
            ..
        } => {
            let (selector, start) = subscription_request(&selector, kind, &from)?;
            if let Some(name) = name {
                return consume_persistent(client, name, selector, start, json).await;
            }
            let mut messages = std::pin::pin!(client.subscribe(selector, start));
            while let Some(message) = messages.next().await {
                match message? {
                    SubscriptionMessage::Event(event) if json => print_json(&output::event(&event)),
                    SubscriptionMessage::Event(event) => outln!("{}", output::event_line(&event)),
                    SubscriptionMessage::CaughtUp if json => {
                        print_json(&json!({"caught_up": true}))
                    }
                    SubscriptionMessage::CaughtUp => {
                        outln!("-- caught up: following new events --")
                    }
                }
            }
        }
        ClientCommand::Cluster { command, .. } => {
            let outcomes = match command {
                ClusterCommand::Status => {
                    let stores = client.cluster_status().await?;
                    if json {
                        print_json(&output::cluster_status(&stores));
                    } else {
                        out!("{}", output::cluster_status_text(&stores));
                    }
                    return Ok(());
                }
                ClusterCommand::Add { peer_addr } => client.cluster_add(&peer_addr).await?,
                ClusterCommand::Remove { node_id } => client.cluster_remove(node_id).await?,
                ClusterCommand::TransferLeader { to } => client.cluster_transfer_leader(to).await?,
            };
            if json {
                print_json(&output::membership_outcomes(&outcomes));
            } else {
                for (store_id, outcome) in &outcomes {
                    outln!("{store_id}: {outcome}");
                }
            }
        }
        ClientCommand::Tree { .. } => {
            let tree = client.tree().await?;
            if json {
                print_json(&serde_json::to_value(&tree).unwrap_or(Value::Null));
            } else {
                out!("{}", tree.render());
            }
        }
    }
    Ok(())
}

async fn snapshot(client: &Client, command: SnapshotCommand, json: bool) -> Result<(), Failure> {
    match command {
        SnapshotCommand::Record {
            source_uuid,
            stream_uuid,
            version,
            data,
            metadata,
        } => {
            let data = json_argument(&data)?;
            let metadata = metadata
                .map(|m| json_argument(&m))
                .transpose()?
                .unwrap_or_default();
            client
                .record_snapshot(&source_uuid, &stream_uuid, version, data, metadata)
                .await?;
            if json {
                print_json(
                    &json!({"source_uuid": source_uuid, "stream_uuid": stream_uuid, "version": version}),
                );
            } else {
                outln!("recorded snapshot {source_uuid}/{stream_uuid} at version {version}");
            }
        }
        SnapshotCommand::Read {
            source_uuid,
            stream_uuid,
            version,
            at_or_below,
        } => {
            let which = match (version, at_or_below) {
                (Some(v), _) => SnapshotVersion::Exact(v),
                (None, Some(v)) => SnapshotVersion::AtOrBelow(v),
                (None, None) => SnapshotVersion::Latest,
            };
            let found = client
                .read_snapshot(&source_uuid, &stream_uuid, which)
                .await?;
            let value = output::snapshot(&found);
            if json {
                print_json(&value);
            } else {
                outln!(
                    "{}/{} version {} created {}\n{}",
                    found.source_uuid,
                    found.stream_uuid,
                    found.version,
                    value["created"],
                    value["data"]
                );
            }
        }
        SnapshotCommand::Delete {
            source_uuid,
            stream_uuid,
            version,
        } => {
            client
                .delete_snapshot(&source_uuid, &stream_uuid, version)
                .await?;
            if json {
                print_json(
                    &json!({"deleted": true, "source_uuid": source_uuid, "stream_uuid": stream_uuid, "version": version}),
                );
            } else {
                outln!("deleted snapshot {source_uuid}/{stream_uuid} at version {version}");
            }
        }
        SnapshotCommand::List { source, stream } => {
            let found = client
                .list_snapshots(source.as_deref(), stream.as_deref(), 0)
                .await?;
            for snapshot in found {
                if json {
                    print_json(&output::snapshot(&snapshot));
                } else {
                    outln!(
                        "{}  {}  {}",
                        snapshot.source_uuid,
                        snapshot.stream_uuid,
                        snapshot.version
                    );
                }
            }
        }
    }
    Ok(())
}

async fn print_events(
    events: impl Stream<Item = Result<exesdb_client::RecordedEvent, ClientError>>,
    json: bool,
) -> Result<(), Failure> {
    let mut events = std::pin::pin!(events);
    let mut first = true;
    while let Some(event) = events.next().await {
        let event = event?;
        if json {
            print_json(&output::event(&event));
        } else {
            if first {
                outln!("{}", output::EVENT_HEADER);
                first = false;
            }
            outln!("{}", output::event_line(&event));
        }
    }
    Ok(())
}

/// Joins (creating if needed) a persistent subscription and prints what it delivers, acking
/// each event once it is printed.
async fn consume_persistent(
    client: &Client,
    name: String,
    selector: Selector,
    start: StartFrom,
    json: bool,
) -> Result<(), Failure> {
    let exists = client
        .list_subscriptions()
        .await?
        .iter()
        .any(|definition| definition.name == name);
    if !exists {
        let start = match start {
            StartFrom::EventNumber(_) => {
                return Err(Failure::Usage(
                    "a persistent subscription starts at start, end or a position".into(),
                ));
            }
            other => other,
        };
        client
            .save_subscription(&SubscriptionDefinition::new(name.clone(), selector, start))
            .await?;
    }
    let mut consumer = client.consume(&name).await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        if json {
            print_json(&output::event(&delivery.event));
        } else {
            outln!("{}", output::event_line(&delivery.event));
        }
        consumer.ack(delivery.event.position).await?;
    }
    Ok(())
}

fn subscription_request(
    selector: &str,
    kind: SubscribeKind,
    from: &str,
) -> Result<(Selector, StartFrom), Failure> {
    let pattern = |text: &str| {
        serde_json::from_str::<Value>(text)
            .map_err(|error| Failure::Usage(format!("the pattern is not JSON ({error}): {text}")))
    };
    let selector = match kind {
        SubscribeKind::ByStream => Selector::ByStream(selector.to_string()),
        SubscribeKind::ByEventType => Selector::ByEventType(selector.to_string()),
        SubscribeKind::ByEventPattern => Selector::ByEventPattern(pattern(selector)?),
        SubscribeKind::ByEventPayload => Selector::ByEventPayload(pattern(selector)?),
    };
    // A number is an event number of one stream; of `$all` or an index stream, a position.
    let one_stream =
        matches!(&selector, Selector::ByStream(s) if !exesdb_client::reads_by_position(s));
    let start = match from {
        "start" | "beginning" => StartFrom::Beginning,
        "end" => StartFrom::End,
        number => {
            let number: u64 = number.parse().map_err(|_| {
                Failure::Usage(format!(
                    "--from {number:?}: expected start, end or a number"
                ))
            })?;
            if one_stream {
                StartFrom::EventNumber(number)
            } else {
                StartFrom::Position(number)
            }
        }
    };
    Ok((selector, start))
}

fn read_from(from: Option<u64>) -> ReadFrom {
    from.map_or(ReadFrom::Start, ReadFrom::At)
}

fn direction(backward: bool) -> Direction {
    if backward {
        Direction::Backward
    } else {
        Direction::Forward
    }
}

/// JSON text, or `@FILE` holding JSON text; checked to be JSON, returned as its bytes.
fn json_argument(argument: &str) -> Result<Vec<u8>, Failure> {
    let text = match argument.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(Path::new(path))
            .map_err(|error| Failure::Usage(format!("cannot read {path}: {error}")))?,
        None => argument.to_string(),
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|error| Failure::Usage(format!("not JSON ({error}): {text}")))?;
    Ok(value.to_string().into_bytes())
}

fn json_event(event_type: String, data: Vec<u8>, metadata: Vec<u8>, id: Option<Uuid>) -> NewEvent {
    NewEvent {
        event_id: id,
        event_type,
        data,
        metadata,
        data_content_type: "application/json".to_string(),
        metadata_content_type: "application/json".to_string(),
    }
}

fn event_from_flags(
    event_type: String,
    data: Option<String>,
    metadata: Option<String>,
    id: Option<Uuid>,
) -> Result<NewEvent, Failure> {
    let data = data
        .map(|d| json_argument(&d))
        .transpose()?
        .unwrap_or_default();
    let metadata = metadata
        .map(|m| json_argument(&m))
        .transpose()?
        .unwrap_or_default();
    Ok(json_event(event_type, data, metadata, id))
}

/// One event per line: `{"event_type":..,"data":..,"metadata":..,"event_id":..}`.
fn events_from_stdin() -> Result<Vec<NewEvent>, Failure> {
    let mut events = Vec::new();
    for (index, line) in std::io::stdin().lock().lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|error| Failure::Usage(format!("cannot read stdin: {error}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| Failure::Usage(format!("stdin line {number}: {why}"));
        let value: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let event_type = value["event_type"]
            .as_str()
            .ok_or_else(|| bad("no \"event_type\" string".into()))?
            .to_string();
        let bytes = |field: &str| match &value[field] {
            Value::Null => Vec::new(),
            other => other.to_string().into_bytes(),
        };
        let id = match &value["event_id"] {
            Value::Null => None,
            Value::String(text) => Some(
                Uuid::parse_str(text)
                    .map_err(|_| bad(format!("event_id {text:?} is not a UUID")))?,
            ),
            _ => return Err(bad("event_id must be a string".into())),
        };
        events.push(json_event(event_type, bytes("data"), bytes("metadata"), id));
    }
    if events.is_empty() {
        return Err(Failure::Usage(
            "no events: give --type and --data, or NDJSON lines on stdin".into(),
        ));
    }
    Ok(events)
}
