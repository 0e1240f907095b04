//! `exesdb bench`: load against a running server, shaped like the write and read floods other
//! event stores publish. Each run shows progress, then throughput and latency percentiles (HDR
//! histogram), checks its own work and says so: a fast wrong run does not pass for a result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use exesdb_client::{
    Client, ClientOptions, Direction, ExpectedVersion, NewEvent, ReadFrom, Selector, StartFrom,
    SubscriptionMessage,
};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

#[derive(Args, Debug, Clone)]
pub(crate) struct BenchTarget {
    /// The server to load.
    #[arg(long, env = "EXESDB_SERVER", default_value = exesdb_client::DEFAULT_SERVER, global = true)]
    pub server: String,
    /// The store to load.
    #[arg(long, env = "EXESDB_STORE", default_value = "default", global = true)]
    pub store: String,
    /// Print one JSON object with every figure and the parameters, nothing else.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum BenchExpected {
    /// No version check.
    Any,
    /// Each client appends to its own streams at the exact next version.
    Exact,
}

#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Concurrent appends.
    Write(WriteLoad),
    /// Reads one stream from start to end, repeatedly.
    Read {
        /// The stream (it must exist).
        #[arg(long)]
        stream: String,
        /// Concurrent readers.
        #[arg(long, default_value_t = 1)]
        clients: u64,
        /// Whole-stream reads per reader.
        #[arg(long, default_value_t = 10)]
        requests: u64,
    },
    /// Reads all of `$all` once per reader, the readers at the same time (the catch-up rate).
    ReadAll {
        /// Readers reading all of `$all` together, each on its own connection.
        #[arg(long, default_value_t = 1)]
        readers: u64,
    },
    /// Fan-out: subscribers at the end of `$all`, first idle (the server's CPU then), then
    /// receiving appends made at a set rate, each measuring from an append's acknowledgement
    /// to its receipt.
    Subscribe(SubscribeLoad),
    /// Stream catch-up in a big store: writes a stream's events spread through a store of
    /// many others, then compares a by-stream subscription's time to `CaughtUp` with a plain
    /// read of the stream, and times the same events through the indexes (by type and by
    /// category, subscribed to and read).
    CatchUp {
        /// Events written in all (the stream's included).
        #[arg(long, default_value_t = 1_000_000)]
        store_events: u64,
        /// Events of the stream caught up, spread evenly through the others.
        #[arg(long, default_value_t = 1_000)]
        stream_events: u64,
        /// Timed reads and catch-ups of each kind (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: u64,
    },
}

pub(crate) async fn run(command: BenchCommand, target: BenchTarget) -> Result<(), String> {
    let report = match command {
        BenchCommand::Write(load) => write(&target, load).await?,
        BenchCommand::Read {
            stream,
            clients,
            requests,
        } => read(&target, &stream, clients, requests).await?,
        BenchCommand::ReadAll { readers } => read_all(&target, readers.max(1)).await?,
        BenchCommand::Subscribe(load) => subscribe(&target, load).await?,
        BenchCommand::CatchUp {
            store_events,
            stream_events,
            runs,
        } => catch_up(&target, store_events, stream_events.max(1), runs.max(1)).await?,
    };
    if target.json {
        outln!("{}", report.json);
    } else {
        out!("{}", report.text);
    }
    if report.ok {
        Ok(())
    } else {
        Err("the benchmark's self-check failed: see above".into())
    }
}

struct Report {
    ok: bool,
    text: String,
    json: Value,
}

async fn connect(target: &BenchTarget) -> Result<Client, String> {
    let options = ClientOptions {
        store_id: target.store.clone(),
        ..ClientOptions::default()
    };
    Client::connect_with(&target.server, options)
        .await
        .map_err(|error| error.to_string())
}

fn progress(target: &BenchTarget, total: u64, what: &str) -> ProgressBar {
    if target.json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(what.to_string());
    bar
}

fn percentiles(histogram: &Histogram<u64>) -> Value {
    json!({
        "p50_us": histogram.value_at_quantile(0.5),
        "p95_us": histogram.value_at_quantile(0.95),
        "p99_us": histogram.value_at_quantile(0.99),
        "p999_us": histogram.value_at_quantile(0.999),
        "max_us": histogram.max(),
    })
}

fn latency_line(histogram: &Histogram<u64>) -> String {
    format!(
        "latency     p50 {} us  p95 {} us  p99 {} us  p99.9 {} us  max {} us\n",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.95),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    )
}

fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new(3).map_err(|error| error.to_string())
}

/// The parameters of `bench write`.
#[derive(Args, Debug)]
pub(crate) struct WriteLoad {
    /// Concurrent clients (each waits for its append before the next).
    #[arg(long, default_value_t = 64)]
    clients: u64,
    /// Connections the clients share.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Appends per client (the run ends when all are done).
    #[arg(long, default_value_t = 1_000)]
    requests: u64,
    /// Run for this many seconds instead: each client appends until then (`--requests` is
    /// then ignored). For tail latency, which needs a long run.
    #[arg(long, conflicts_with = "requests")]
    seconds: Option<f64>,
    /// Streams written to.
    #[arg(long, default_value_t = 1_000)]
    streams: u64,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Events per append.
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Expected version of each append.
    #[arg(long, value_enum, default_value = "any")]
    expected: BenchExpected,
    /// Each append goes to a new stream of its own, with expected version no-stream: the load
    /// of one stream per aggregate (`--streams` and `--expected` are then ignored).
    #[arg(long)]
    new_streams: bool,
}

/// What one write client did.
struct ClientResult {
    latencies: Histogram<u64>,
    positions: Vec<u64>,
    /// (stream, first event number) of each acknowledged append, for the exact-version check.
    versions: Vec<(String, u64)>,
    errors: Vec<String>,
}

async fn write(target: &BenchTarget, load: WriteLoad) -> Result<Report, String> {
    let connections = load.connections.max(1);
    let mut pool = Vec::new();
    for _ in 0..connections {
        pool.push(connect(target).await?);
    }
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let started = Instant::now();
    let (requests, deadline) = match load.seconds {
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => (
            u64::MAX,
            Some(started + std::time::Duration::from_secs_f64(seconds)),
        ),
        Some(seconds) => return Err(format!("--seconds must be above 0, not {seconds}")),
        None => (load.requests, None),
    };
    let bar = match deadline {
        Some(_) => progress(target, 0, "appends"),
        None => progress(target, load.clients * load.requests, "appends"),
    };
    let mut tasks = Vec::new();
    for task in 0..load.clients {
        let client = pool[(task % connections) as usize].clone();
        let bar = bar.clone();
        let run_id = run_id.clone();
        let (streams, size, batch, expected) = (load.streams, load.size, load.batch, load.expected);
        let clients = load.clients;
        let new_streams = load.new_streams;
        tasks.push(tokio::spawn(async move {
            let mut result = ClientResult {
                latencies: Histogram::new(3).expect("3 significant digits is valid"),
                positions: Vec::new(),
                versions: Vec::new(),
                errors: Vec::new(),
            };
            let mut next_version: std::collections::HashMap<String, u64> = Default::default();
            for i in 0..requests {
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    break;
                }
                let stream = match expected {
                    _ if new_streams => format!("bench-{run_id}-c{task}-n{i}"),
                    // Streams of its own, so exact versions never race with other clients.
                    BenchExpected::Exact => {
                        format!("bench-{run_id}-c{task}-{}", i % streams.max(1))
                    }
                    BenchExpected::Any => {
                        format!("bench-{run_id}-{}", (task + i * clients) % streams.max(1))
                    }
                };
                let expected_version = match expected {
                    _ if new_streams => ExpectedVersion::NoStream,
                    BenchExpected::Any => ExpectedVersion::Any,
                    BenchExpected::Exact => match next_version.get(&stream) {
                        None => ExpectedVersion::NoStream,
                        Some(next) => ExpectedVersion::Exact(next - 1),
                    },
                };
                let events = (0..batch)
                    .map(|_| NewEvent::new("Bench", vec![0xAB; size]))
                    .collect();
                let sent = Instant::now();
                match client.append(&stream, expected_version, events).await {
                    Ok(appended) => {
                        let _ = result.latencies.record(sent.elapsed().as_micros() as u64);
                        result.positions.push(appended.first_position);
                        result
                            .versions
                            .push((stream.clone(), appended.first_event_number));
                        if !new_streams {
                            next_version.insert(stream, appended.last_event_number + 1);
                        }
                    }
                    Err(error) => result.errors.push(error.to_string()),
                }
                bar.inc(1);
            }
            result
        }));
    }
    let mut latencies = new_histogram()?;
    let mut positions = Vec::new();
    let mut versions = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        let result = task.await.map_err(|error| error.to_string())?;
        latencies
            .add(&result.latencies)
            .map_err(|error| error.to_string())?;
        positions.extend(result.positions);
        versions.extend(result.versions);
        errors.extend(result.errors);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let appends = positions.len() as u64;
    positions.sort_unstable();
    positions.dedup();
    let distinct_positions = positions.len() as u64 == appends;
    // Every acknowledged (stream, version) is distinct, and per stream they count up by batch.
    versions.sort();
    let distinct_versions = versions.windows(2).all(|w| w[0] != w[1]);
    let contiguous = load.expected == BenchExpected::Any
        || versions.chunk_by(|a, b| a.0 == b.0).all(|run| {
            run.iter()
                .enumerate()
                .all(|(i, (_, v))| *v == i as u64 * load.batch)
        });
    let ok = errors.is_empty() && distinct_positions && distinct_versions && contiguous;
    let appends_per_second = appends as f64 / elapsed;
    let events_per_second = (appends * load.batch) as f64 / elapsed;
    let mut text = format!(
        "clients {} connections {connections} streams {} new streams {} size {} B batch {} expected {:?}\n",
        load.clients, load.streams, load.new_streams, load.size, load.batch, load.expected
    );
    text += &format!("appends     {appends} in {elapsed:.2} s: {appends_per_second:.0}/s\n");
    text += &format!("events/s    {events_per_second:.0}\n");
    text += &latency_line(&latencies);
    text += &format!(
        "self-check  {} (errors {}, distinct positions {distinct_positions}, distinct versions {distinct_versions}, contiguous versions {contiguous})\n",
        if ok { "ok" } else { "FAILED" },
        errors.len()
    );
    if let Some(first) = errors.first() {
        text += &format!("first error {first}\n");
    }
    let json = json!({
        "bench": "write",
        "parameters": {
            "clients": load.clients, "connections": connections, "requests": load.requests,
            "seconds": load.seconds,
            "streams": load.streams, "new_streams": load.new_streams, "size": load.size, "batch": load.batch,
            "expected": format!("{:?}", load.expected).to_lowercase(),
            "server": target.server, "store": target.store,
        },
        "appends": appends,
        "seconds": elapsed,
        "appends_per_second": appends_per_second,
        "events_per_second": events_per_second,
        "latency": percentiles(&latencies),
        "errors": errors.len(),
        "self_check": { "ok": ok, "distinct_positions": distinct_positions, "distinct_versions": distinct_versions, "contiguous_versions": contiguous },
    });
    Ok(Report { ok, text, json })
}

async fn read(
    target: &BenchTarget,
    stream: &str,
    clients: u64,
    requests: u64,
) -> Result<Report, String> {
    let client = connect(target).await?;
    let version = client
        .stream_version(stream)
        .await
        .map_err(|e| e.to_string())?;
    if version < 0 {
        return Err(format!("stream {stream} has no events to read"));
    }
    let length = version as u64 + 1;
    let bar = progress(target, clients * requests, "stream reads");
    let events_read = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let stream = stream.to_string();
        let bar = bar.clone();
        let events_read = events_read.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3).expect("valid");
            let mut ok = true;
            for _ in 0..requests {
                let sent = Instant::now();
                let mut events = std::pin::pin!(client.read_stream(
                    &stream,
                    ReadFrom::Start,
                    Some(length),
                    Direction::Forward
                ));
                let mut expected = 0;
                while let Some(event) = events.next().await {
                    match event {
                        Ok(event) if event.event_number == expected => expected += 1,
                        _ => ok = false,
                    }
                }
                ok &= expected == length;
                events_read.fetch_add(expected, Ordering::Relaxed);
                let _ = latencies.record(sent.elapsed().as_micros() as u64);
                bar.inc(1);
            }
            (latencies, ok)
        }));
    }
    let mut latencies = new_histogram()?;
    let mut ok = true;
    for task in tasks {
        let (histogram, task_ok) = task.await.map_err(|error| error.to_string())?;
        latencies
            .add(&histogram)
            .map_err(|error| error.to_string())?;
        ok &= task_ok;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let events = events_read.load(Ordering::Relaxed);
    let rate = events as f64 / elapsed;
    let mut text =
        format!("stream {stream} ({length} events), {clients} readers x {requests} reads\n");
    text += &format!("events/s    {rate:.0} ({events} events in {elapsed:.2} s)\n");
    text += &latency_line(&latencies).replace("latency ", "per read");
    text += &format!(
        "self-check  {}\n",
        if ok {
            "ok (every read returned the whole stream in order)"
        } else {
            "FAILED"
        }
    );
    let json = json!({
        "bench": "read",
        "parameters": { "stream": stream, "clients": clients, "requests": requests, "server": target.server, "store": target.store },
        "events": events, "seconds": elapsed, "events_per_second": rate,
        "latency_per_read": percentiles(&latencies),
        "self_check": { "ok": ok },
    });
    Ok(Report { ok, text, json })
}

async fn read_all(target: &BenchTarget, readers: u64) -> Result<Report, String> {
    let mut clients = Vec::new();
    for _ in 0..readers {
        clients.push(connect(target).await?);
    }
    let bar = progress(target, 0, "events");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let mut events = std::pin::pin!(client.read_all(
                ReadFrom::Start,
                None,
                Direction::Forward,
                None,
                &[]
            ));
            let mut count = 0u64;
            let mut gapless = true;
            while let Some(event) = events.next().await {
                let event = event.map_err(|error| error.to_string())?;
                gapless &= event.position == count;
                count += 1;
                if count.is_multiple_of(10_000) {
                    bar.inc(10_000);
                }
            }
            Ok::<_, String>((count, gapless))
        }));
    }
    let mut counts = Vec::new();
    let mut gapless = true;
    for task in tasks {
        let (count, reader_gapless) = task.await.map_err(|error| error.to_string())??;
        counts.push(count);
        gapless &= reader_gapless;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = counts.iter().sum();
    // Every reader read the same store from the start: the same events.
    let same = counts.windows(2).all(|pair| pair[0] == pair[1]);
    let ok = gapless && same;
    let rate = total as f64 / elapsed;
    let per_reader = counts.first().copied().unwrap_or(0);
    let text = format!(
        "read-all    {readers} reader(s) x {per_reader} events in {elapsed:.2} s: {rate:.0} events/s in all\nself-check  {}\n",
        if ok {
            "ok (positions gapless from 0, every reader read the same events)"
        } else {
            "FAILED"
        }
    );
    let json = json!({
        "bench": "read-all",
        "parameters": { "server": target.server, "store": target.store, "readers": readers },
        "events": total, "events_per_reader": per_reader, "seconds": elapsed, "events_per_second": rate,
        "self_check": { "ok": ok, "gapless": gapless, "same_events": same },
    });
    Ok(Report { ok, text, json })
}

/// The parameters of `bench subscribe`.
#[derive(Args, Debug)]
pub(crate) struct SubscribeLoad {
    /// Subscribers at the end of `$all` (0: the same appends with no one subscribed, the
    /// writers' baseline).
    #[arg(long, default_value_t = 1)]
    subscribers: u64,
    /// Events appended per second, one an append.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// How long to append, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds the subscribers stay idle first, while the server's CPU is measured (only
    /// with `--server-pid`).
    #[arg(long, default_value_t = 5)]
    idle_seconds: u64,
    /// The server's process id, on this machine: its CPU time is read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Runs the store in this process, on a fresh data directory of its own (removed after),
    /// instead of loading a server: the store's own fan-out, without gRPC's cost per message.
    /// The CPU figures are then this process's.
    #[arg(long)]
    embedded: bool,
}

/// Where the subscribe load runs.
enum FanoutStore {
    /// A server, through connections of its own.
    Remote(Vec<Client>),
    /// A store in this process, in a directory removed at the end.
    Embedded(exesdb::System, std::path::PathBuf),
}

impl FanoutStore {
    async fn open(
        target: &BenchTarget,
        load: &SubscribeLoad,
        run_id: &str,
    ) -> Result<Self, String> {
        if load.embedded {
            let dir = std::env::temp_dir().join(format!("exesdb-bench-{run_id}"));
            let mut config = exesdb::SystemConfig::new(&dir, &target.store);
            let limits = &mut config.limits;
            limits.subscriptions_max = limits.subscriptions_max.max(load.subscribers as usize);
            let system = exesdb::System::start(config)
                .await
                .map_err(|error| format!("cannot start the embedded store: {error}"))?;
            return Ok(FanoutStore::Embedded(system, dir));
        }
        let connections = load
            .subscribers
            .div_ceil(SUBSCRIPTIONS_PER_CONNECTION)
            .max(1);
        let mut clients = Vec::new();
        for _ in 0..connections {
            clients.push(connect(target).await?);
        }
        Ok(FanoutStore::Remote(clients))
    }

    /// Steps the store's emitters took (known only embedded).
    fn emitter_steps(&self) -> Option<u64> {
        match self {
            FanoutStore::Remote(_) => None,
            FanoutStore::Embedded(system, _) => Some(system.api().emitter_steps()),
        }
    }

    fn connections(&self) -> usize {
        match self {
            FanoutStore::Remote(clients) => clients.len(),
            FanoutStore::Embedded(..) => 0,
        }
    }

    fn appender(&self, index: u64) -> Appender {
        match self {
            FanoutStore::Remote(clients) => {
                Appender::Remote(Box::new(clients[index as usize % clients.len()].clone()))
            }
            FanoutStore::Embedded(system, _) => Appender::Embedded(system.api().clone()),
        }
    }

    /// A subscription at the end of `$all`, once its `CaughtUp` has come.
    async fn subscribe_at_end(&self, index: u64) -> Result<Feed, String> {
        let mut feed = match self {
            FanoutStore::Remote(clients) => Feed::Remote(Box::pin(
                clients[index as usize % clients.len()]
                    .subscribe(Selector::ByStream("$all".into()), StartFrom::End),
            )),
            FanoutStore::Embedded(system, _) => Feed::Embedded(
                system
                    .api()
                    .subscribe(Selector::ByStream("$all".into()), StartFrom::End)
                    .await
                    .map_err(|error| error.to_string())?,
            ),
        };
        loop {
            match feed.next().await {
                Some(Ok(SubscriptionMessage::CaughtUp)) => return Ok(feed),
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(error),
                None => return Err("the subscription ended".into()),
            }
        }
    }

    async fn close(self) {
        if let FanoutStore::Embedded(system, dir) = self {
            system.stop().await;
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

type RemoteFeed = std::pin::Pin<
    Box<
        dyn tokio_stream::Stream<Item = Result<SubscriptionMessage, exesdb_client::ClientError>>
            + Send,
    >,
>;

/// One subscriber's messages.
enum Feed {
    Remote(RemoteFeed),
    Embedded(exesdb::Subscription),
}

impl Feed {
    async fn next(&mut self) -> Option<Result<SubscriptionMessage, String>> {
        match self {
            Feed::Remote(stream) => stream
                .next()
                .await
                .map(|message| message.map_err(|error| error.to_string())),
            Feed::Embedded(subscription) => subscription.next().await.map(Ok),
        }
    }
}

/// One writer's way to append.
enum Appender {
    Remote(Box<Client>),
    Embedded(exesdb::StoreApi),
}

impl Appender {
    async fn append(&self, stream: &str, event: NewEvent) -> Result<(), String> {
        let appended = match self {
            Appender::Remote(client) => client
                .append(stream, ExpectedVersion::Any, vec![event])
                .await
                .map_err(|error| error.to_string()),
            Appender::Embedded(api) => api
                .append(stream, ExpectedVersion::Any, vec![event])
                .await
                .map_err(|error| error.to_string()),
        };
        appended.map(|_| ())
    }
}

/// Each subscriber times one event in this many (with at least this many subscribers, every
/// event is timed by one of them).
const LATENCY_SAMPLE: u64 = 8;

/// Subscriptions one connection carries: HTTP/2 servers limit the streams of a connection
/// (hyper to 200 by default).
const SUBSCRIPTIONS_PER_CONNECTION: u64 = 100;

/// CPU time (user and system) of a process, from /proc, in seconds. Linux reports it in
/// clock ticks of 1/100 s (USER_HZ) on every architecture it runs on.
fn process_cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|error| {
        format!("cannot read the server's CPU time (/proc/{pid}/stat): {error}")
    })?;
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("unexpected /proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; fields[0] is field 3.
    let ticks = |index: usize| -> Result<f64, String> {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .ok_or_else(|| "unexpected /proc stat format".to_string())
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Percent of one core the server used while `work` ran, when its pid is known.
async fn server_cpu_percent<T>(
    pid: Option<u32>,
    work: impl std::future::Future<Output = T>,
) -> Result<(T, Option<f64>), String> {
    let before = pid.map(process_cpu_seconds).transpose()?;
    let started = Instant::now();
    let done = work.await;
    let seconds = started.elapsed().as_secs_f64();
    let after = pid.map(process_cpu_seconds).transpose()?;
    let percent = before
        .zip(after)
        .map(|(before, after)| 100.0 * (after - before) / seconds.max(1e-9));
    Ok((done, percent))
}

/// What one subscriber saw of the run's events.
struct Receipts {
    received: u64,
    in_order: bool,
    latencies: Histogram<u64>,
}

async fn subscribe(target: &BenchTarget, load: SubscribeLoad) -> Result<Report, String> {
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let store = FanoutStore::open(target, &load, &run_id).await?;
    let connections = store.connections();
    // Embedded, the store's CPU is this process's.
    let cpu_pid = match load.embedded {
        true => Some(std::process::id()),
        false => load.server_pid,
    };
    let stream_prefix = format!("bench-sub-{run_id}-");
    let total = load.rate * load.duration;
    let writers = 16u64.min(total.max(1));
    let expected = (total / writers) * writers;
    // Each event carries its number in the run; the writer notes when its append was
    // acknowledged (µs since `epoch`, 0 until then) and each subscriber measures from that.
    let epoch = Instant::now();
    let acks: Arc<Vec<AtomicU64>> = Arc::new((0..expected).map(|_| AtomicU64::new(0)).collect());

    let mut subscriptions = Vec::new();
    for index in 0..load.subscribers {
        subscriptions.push(store.subscribe_at_end(index).await?);
    }
    let idle_cpu = if load.idle_seconds > 0 && load.subscribers > 0 && cpu_pid.is_some() {
        let idle = tokio::time::sleep(Duration::from_secs(load.idle_seconds));
        server_cpu_percent(cpu_pid, idle).await?.1
    } else {
        None
    };

    let bar = progress(target, expected * load.subscribers.max(1), "delivered");
    let mut receivers = Vec::new();
    for (index, mut subscription) in subscriptions.into_iter().enumerate() {
        let acks = acks.clone();
        let prefix = stream_prefix.clone();
        let bar = bar.clone();
        // The measuring must not cost more than what it measures: each subscriber times one
        // event in LATENCY_SAMPLE (the subscribers together time every event), and the whole
        // run, not each message, has a deadline.
        let sampled = index as u64 % LATENCY_SAMPLE;
        let deadline = Duration::from_secs(load.duration + 60);
        receivers.push(tokio::spawn(async move {
            let receiving = async move {
                let mut receipts = Receipts {
                    received: 0,
                    in_order: true,
                    latencies: new_histogram()?,
                };
                let mut last_position = None;
                while receipts.received < expected {
                    let event = match subscription.next().await {
                        Some(Ok(SubscriptionMessage::Event(event))) => event,
                        Some(Ok(SubscriptionMessage::CaughtUp)) => continue,
                        Some(Err(error)) => return Err(error.to_string()),
                        None => return Err("a subscription ended".into()),
                    };
                    receipts.in_order &=
                        last_position.is_none_or(|last| event.position == last + 1);
                    last_position = Some(event.position);
                    if !event.stream_id.starts_with(&prefix) {
                        continue;
                    }
                    receipts.received += 1;
                    if receipts.received.is_multiple_of(1_024) {
                        bar.inc(1_024);
                    }
                    let number = event
                        .data
                        .get(..8)
                        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                        .map(u64::from_le_bytes)
                        .ok_or("an event without its number")?;
                    if number % LATENCY_SAMPLE != sampled {
                        continue;
                    }
                    let received_us = epoch.elapsed().as_micros() as u64;
                    let acked_us = acks
                        .get(number as usize)
                        .map_or(0, |ack| ack.load(Ordering::Acquire));
                    // 0: received before its writer saw the acknowledgement, no wait at all.
                    let waited_us = match acked_us {
                        0 => 0,
                        acked_us => received_us.saturating_sub(acked_us),
                    };
                    let _ = receipts.latencies.record(waited_us);
                }
                Ok::<Receipts, String>(receipts)
            };
            tokio::time::timeout(deadline, receiving)
                .await
                .map_err(|_| format!("a subscriber did not get every event within {deadline:?}"))?
        }));
    }

    let writing = async {
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let client = store.appender(writer);
            let acks = acks.clone();
            let stream = format!("{stream_prefix}{writer}");
            let rate = load.rate;
            tasks.push(tokio::spawn(async move {
                let per_writer = expected / writers;
                let mut ticker = tokio::time::interval(Duration::from_secs_f64(
                    writers as f64 / rate.max(1) as f64,
                ));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut failures = 0u64;
                let mut latencies = new_histogram()?;
                for sequence in 0..per_writer {
                    ticker.tick().await;
                    let number = sequence * writers + writer;
                    let mut data = vec![0xAB; 256];
                    data[..8].copy_from_slice(&number.to_le_bytes());
                    let sent = Instant::now();
                    match client.append(&stream, NewEvent::new("Bench", data)).await {
                        Ok(_) => {
                            let _ = latencies.record(sent.elapsed().as_micros() as u64);
                            if let Some(ack) = acks.get(number as usize) {
                                ack.store(epoch.elapsed().as_micros() as u64, Ordering::Release);
                            }
                        }
                        Err(_) => failures += 1,
                    }
                }
                Ok::<_, String>((failures, latencies))
            }));
        }
        let mut failures = 0;
        let mut latencies = new_histogram()?;
        for task in tasks {
            let (failed, histogram) = task.await.map_err(|error| error.to_string())??;
            failures += failed;
            latencies
                .add(histogram)
                .map_err(|error| error.to_string())?;
        }
        Ok::<_, String>((failures, latencies))
    };
    let started = Instant::now();
    let (written, load_cpu) = server_cpu_percent(cpu_pid, writing).await?;
    let (failures, append_latencies) = written?;
    let append_seconds = started.elapsed().as_secs_f64();
    let mut delivery = new_histogram()?;
    let mut all_received = true;
    let mut in_order = true;
    for receiver in receivers {
        let receipts = receiver.await.map_err(|error| error.to_string())??;
        all_received &= receipts.received == expected;
        in_order &= receipts.in_order;
        delivery
            .add(receipts.latencies)
            .map_err(|error| error.to_string())?;
    }
    bar.finish_and_clear();
    let emitter_steps = store.emitter_steps();
    store.close().await;
    let delivered_seconds = started.elapsed().as_secs_f64();
    let append_rate = (expected - failures) as f64 / append_seconds;
    let ok = failures == 0 && in_order && all_received;
    let cpu = |percent: Option<f64>| {
        percent.map_or("not measured (no --server-pid)".to_string(), |p| {
            format!("{p:.1} % of a core")
        })
    };
    let mut text = format!(
        "{expected} events appended at {rate}/s asked, {append_rate:.0}/s done, by {writers} writers; {subscribers} $all subscriber(s) {place}\n",
        rate = load.rate,
        subscribers = load.subscribers,
        place = match load.embedded {
            true => "in this process (embedded: CPU is the process's)".to_string(),
            false => format!("on {connections} connection(s)"),
        },
    );
    if idle_cpu.is_some() {
        text += &format!(
            "idle        server CPU {} over {} s with every subscriber idle\n",
            cpu(idle_cpu),
            load.idle_seconds
        );
    }
    text += &format!("loaded      server CPU {}\n", cpu(load_cpu));
    text += &latency_line(&append_latencies).replace("latency ", "append  ");
    if load.subscribers > 0 {
        text += &latency_line(&delivery).replace("latency ", "ack->recv");
        text +=
            &format!("delivered   every event to every subscriber in {delivered_seconds:.2} s\n");
        if let Some(steps) = emitter_steps {
            let deliveries = (expected * load.subscribers).max(1);
            text += &format!(
                "steps       {steps} emitter steps, {:.2} events delivered a step\n",
                deliveries as f64 / steps.max(1) as f64
            );
        }
    }
    text += &format!(
        "self-check  {} (append failures {failures}, positions consecutive {in_order}, every subscriber got every event {all_received})\n",
        if ok { "ok" } else { "FAILED" },
    );
    let json = json!({
        "bench": "subscribe",
        "parameters": {
            "subscribers": load.subscribers, "rate": load.rate, "duration": load.duration,
            "idle_seconds": load.idle_seconds, "writers": writers, "connections": connections,
            "embedded": load.embedded,
            "server": target.server, "store": target.store,
        },
        "events": expected,
        "append_events_per_second": append_rate,
        "server_cpu_idle_percent": idle_cpu,
        "server_cpu_loaded_percent": load_cpu,
        "emitter_steps": emitter_steps,
        "latency_append": percentiles(&append_latencies),
        "latency_ack_to_receipt": percentiles(&delivery),
        "self_check": { "ok": ok, "append_failures": failures, "in_order": in_order, "all_received": all_received },
    });
    Ok(Report { ok, text, json })
}

/// Events of one filler append in `bench catch-up`.
const FILL_APPEND_EVENTS: u64 = 1_000;

async fn catch_up(
    target: &BenchTarget,
    store_events: u64,
    stream_events: u64,
    runs: u64,
) -> Result<Report, String> {
    let client = connect(target).await?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    // Its own category too: `$ce-catchup<id>` selects exactly the stream's events.
    let category = format!("catchup{run_id}");
    let stream = format!("{category}-stream");
    let fill_events = store_events.saturating_sub(stream_events);
    let chunks = fill_events.div_ceil(FILL_APPEND_EVENTS).max(1);
    let bar = progress(target, store_events, "written");
    let payload = vec![0xAB; 100];
    // Unique to the run: a by-type subscription then selects exactly the stream's events.
    let our_type = format!("Ours-{run_id}");
    for chunk in 0..chunks {
        // The stream's events go between the others', evenly.
        let ours = (chunk + 1) * stream_events / chunks - chunk * stream_events / chunks;
        if ours > 0 {
            let events = (0..ours)
                .map(|_| NewEvent::new(&our_type, payload.clone()))
                .collect();
            client
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .map_err(|error| error.to_string())?;
        }
        let others = FILL_APPEND_EVENTS.min(fill_events.saturating_sub(chunk * FILL_APPEND_EVENTS));
        if others > 0 {
            let events = (0..others)
                .map(|_| NewEvent::new("Other", payload.clone()))
                .collect();
            client
                .append(
                    &format!("bench-fill-{run_id}-{}", chunk % 16),
                    ExpectedVersion::Any,
                    events,
                )
                .await
                .map_err(|error| error.to_string())?;
        }
        bar.inc(ours + others);
    }
    bar.finish_and_clear();

    let mut ok = true;
    let mut reads = Vec::new();
    let mut catch_ups = Vec::new();
    let mut by_type = Vec::new();
    let mut by_category = Vec::new();
    let mut read_by_type = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let mut events = std::pin::pin!(client.read_stream(
            &stream,
            ReadFrom::Start,
            Some(stream_events),
            Direction::Forward
        ));
        let mut read = 0;
        while let Some(event) = events.next().await {
            ok &= event.is_ok_and(|event| event.event_number == read);
            read += 1;
        }
        ok &= read == stream_events;
        reads.push(started.elapsed().as_secs_f64());

        let (seconds, delivered) =
            time_catch_up(&client, Selector::ByStream(stream.clone())).await?;
        ok &= delivered == stream_events;
        catch_ups.push(seconds);
        let (seconds, delivered) =
            time_catch_up(&client, Selector::ByEventType(our_type.clone())).await?;
        ok &= delivered == stream_events;
        by_type.push(seconds);
        let (seconds, delivered) =
            time_catch_up(&client, Selector::ByStream(format!("$ce-{category}"))).await?;
        ok &= delivered == stream_events;
        by_category.push(seconds);

        let started = Instant::now();
        let types = [our_type.clone()];
        let mut events = std::pin::pin!(client.read_all(
            ReadFrom::Start,
            None,
            Direction::Forward,
            None,
            &types
        ));
        let mut read = 0;
        while let Some(event) = events.next().await {
            ok &= event.is_ok_and(|event| event.event_number == read);
            read += 1;
        }
        ok &= read == stream_events;
        read_by_type.push(started.elapsed().as_secs_f64());
    }
    let median = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let read_seconds = median(&mut reads);
    let catch_up_seconds = median(&mut catch_ups);
    let by_type_seconds = median(&mut by_type);
    let by_category_seconds = median(&mut by_category);
    let read_by_type_seconds = median(&mut read_by_type);
    let ratio = catch_up_seconds / read_seconds.max(1e-9);
    let text = format!(
        "stream of {stream_events} events among {store_events} in all; median of {runs} runs\n\
         read        {:.2} ms (the whole stream, forward)\n\
         catch-up    {:.2} ms (a by-stream subscription from the start to CaughtUp)\n\
         ratio       {ratio:.2}x the read\n\
         by type     {:.2} ms (the same events subscribed to by event type, to CaughtUp)\n\
         category    {:.2} ms (the same events subscribed to as $ce-<its category>)\n\
         read type   {:.2} ms (the same events read from $all filtered by their type)\n\
         self-check  {}\n",
        read_seconds * 1e3,
        catch_up_seconds * 1e3,
        by_type_seconds * 1e3,
        by_category_seconds * 1e3,
        read_by_type_seconds * 1e3,
        if ok {
            "ok (every read and catch-up got the whole stream, in order)"
        } else {
            "FAILED"
        },
    );
    let json = json!({
        "bench": "catch-up",
        "parameters": { "store_events": store_events, "stream_events": stream_events, "runs": runs, "server": target.server, "store": target.store },
        "read_ms": read_seconds * 1e3, "catch_up_ms": catch_up_seconds * 1e3, "ratio": ratio,
        "by_type_catch_up_ms": by_type_seconds * 1e3,
        "by_category_catch_up_ms": by_category_seconds * 1e3,
        "read_all_by_type_ms": read_by_type_seconds * 1e3,
        "self_check": { "ok": ok },
    });
    Ok(Report { ok, text, json })
}

/// Subscribes from the start and times the catch-up: seconds to `CaughtUp`, events delivered
/// (checked to come in position order).
async fn time_catch_up(client: &Client, selector: Selector) -> Result<(f64, u64), String> {
    let started = Instant::now();
    let mut subscription = std::pin::pin!(client.subscribe(selector, StartFrom::Beginning));
    let mut delivered = 0;
    let mut last_position = None;
    loop {
        match subscription.next().await {
            Some(Ok(SubscriptionMessage::Event(event))) => {
                if last_position.is_some_and(|last| event.position <= last) {
                    return Err("a catch-up delivered out of order".into());
                }
                last_position = Some(event.position);
                delivered += 1;
            }
            Some(Ok(SubscriptionMessage::CaughtUp)) => break,
            Some(Err(error)) => return Err(error.to_string()),
            None => return Err("the subscription ended before CaughtUp".into()),
        }
    }
    Ok((started.elapsed().as_secs_f64(), delivered))
}
