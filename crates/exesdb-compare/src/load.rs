//! The workloads every system runs, and the driver that runs them: concurrent clients that
//! each own a set of streams (so an exact expected version always holds), append until a
//! deadline, and record each append's latency. The catch-up read is checked here too.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

/// One write workload: how many clients, and how many events per append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Workload {
    /// A short key, also the prefix of the workload's stream names.
    pub key: &'static str,
    pub clients: u64,
    pub events_per_append: u64,
    /// Each append goes to a new stream (one stream per aggregate): no stream is written twice.
    pub new_streams: bool,
}

impl Workload {
    pub(crate) fn label(&self) -> String {
        if self.new_streams {
            format!(
                "{} clients, 1 event/append, a new stream each",
                self.clients
            )
        } else if self.clients == 1 {
            format!(
                "1 client, sequential, {} event/append",
                self.events_per_append
            )
        } else {
            format!(
                "{} clients, {} event{}/append",
                self.clients,
                self.events_per_append,
                if self.events_per_append == 1 { "" } else { "s" }
            )
        }
    }
}

/// The parameters shared by every system in one run.
#[derive(Debug, Clone)]
pub(crate) struct LoadSettings {
    pub duration: Duration,
    pub clients: u64,
    pub streams: u64,
    pub event_bytes: usize,
    pub batch_events: u64,
    /// Connections that network clients share (gRPC and NATS multiplex; PostgreSQL cannot and
    /// opens one per client).
    pub connections: u64,
    /// Appends of the many-streams load, which runs until they are done (0: for `duration`).
    pub new_streams_total: u64,
}

impl LoadSettings {
    /// The four write workloads, in the order they run.
    pub(crate) fn workloads(&self) -> [Workload; 4] {
        [
            Workload {
                key: "w1",
                clients: self.clients,
                events_per_append: 1,
                new_streams: false,
            },
            Workload {
                key: "wb",
                clients: self.clients,
                events_per_append: self.batch_events,
                new_streams: false,
            },
            Workload {
                key: "ws",
                clients: 1,
                events_per_append: 1,
                new_streams: false,
            },
            Workload {
                key: "wn",
                clients: self.clients,
                events_per_append: 1,
                new_streams: true,
            },
        ]
    }
}

/// One client's connection to a system under test.
pub(crate) trait Appender: Send + 'static {
    /// Appends `events` to `stream` atomically where the system allows it, durably, on the
    /// condition that the stream holds exactly `stream_length` events (0: the stream does not
    /// exist yet).
    fn append(
        &mut self,
        stream: &str,
        stream_length: u64,
        events: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// A system under test, as far as writing goes: it hands out one appender per client.
pub(crate) trait Target: Sync {
    type Appender: Appender;
    fn appender(&self, client: u64) -> impl Future<Output = Result<Self::Appender>> + Send;
}

/// What one write workload measured.
#[derive(Debug, Clone)]
pub(crate) struct WriteResult {
    pub workload: Workload,
    pub appends: u64,
    pub events: u64,
    pub seconds: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Events per fsync during this workload, where the system lets us count its fsyncs.
    pub events_per_fsync: Option<f64>,
    /// The mean time of each of an append's hops inside the server, where it reports them.
    pub hops: Vec<HopMean>,
    /// The mean latency the clients saw, µs.
    pub mean_us: f64,
}

/// One hop's mean over a workload.
#[derive(Debug, Clone)]
pub(crate) struct HopMean {
    pub name: String,
    pub mean_us: f64,
}

/// Running sums of one hop as the system reports them: nanoseconds and requests.
#[derive(Debug, Clone)]
pub(crate) struct HopSum {
    pub name: String,
    pub nanos: f64,
    pub requests: f64,
}

/// The means over a workload, from the sums before and after it.
fn hop_means(before: &[HopSum], after: &[HopSum]) -> Vec<HopMean> {
    after
        .iter()
        .filter_map(|end| {
            let start = before.iter().find(|hop| hop.name == end.name);
            let (nanos, requests) = start.map_or((0.0, 0.0), |s| (s.nanos, s.requests));
            let requests = end.requests - requests;
            (requests > 0.0).then(|| HopMean {
                name: end.name.clone(),
                mean_us: (end.nanos - nanos) / requests / 1_000.0,
            })
        })
        .collect()
}

impl WriteResult {
    pub(crate) fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    pub(crate) fn appends_per_second(&self) -> f64 {
        self.appends as f64 / self.seconds.max(1e-9)
    }
}

struct ClientOutcome {
    latencies: Histogram<u64>,
    appends: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Runs one workload against `target`: every client connects first, then all append until
/// the deadline; an append that fails ends its client (its stream lengths are unknown after).
pub(crate) async fn run_writes<T: Target>(
    target: &T,
    workload: Workload,
    settings: &LoadSettings,
) -> Result<WriteResult> {
    let mut appenders = Vec::new();
    for client in 0..workload.clients {
        appenders.push(
            target
                .appender(client)
                .await
                .with_context(|| format!("client {client} cannot connect"))?,
        );
    }
    let started = Instant::now();
    let deadline = started + settings.duration;
    // The many-streams load is a number of streams, shared out as the clients go.
    let quota = (workload.new_streams && settings.new_streams_total > 0)
        .then(|| Arc::new(AtomicU64::new(settings.new_streams_total)));
    let mut tasks = Vec::new();
    for (client, appender) in appenders.into_iter().enumerate() {
        let streams = if workload.new_streams {
            Streams::New(format!("{}-c{client}", workload.key))
        } else {
            Streams::Owned(owned_streams(workload, client as u64, settings.streams))
        };
        let event_bytes = settings.event_bytes;
        tasks.push(tokio::spawn(drive_client(
            appender,
            streams,
            workload.events_per_append,
            event_bytes,
            client as u64,
            match &quota {
                Some(quota) => Until::Quota(quota.clone()),
                None => Until::Deadline(deadline),
            },
        )));
    }
    let mut latencies = new_histogram()?;
    let (mut appends, mut errors, mut first_error) = (0, 0, None);
    for task in tasks {
        let outcome = task.await.context("a client task panicked")??;
        latencies.add(&outcome.latencies)?;
        appends += outcome.appends;
        errors += outcome.errors;
        first_error = first_error.or(outcome.first_error);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(WriteResult {
        workload,
        appends,
        events: appends * workload.events_per_append,
        seconds,
        p50_us: latencies.value_at_quantile(0.5),
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
        errors,
        first_error,
        events_per_fsync: None,
        hops: Vec::new(),
        mean_us: latencies.mean(),
    })
}

/// The streams a client owns: every `clients`-th of the workload's streams, so no two
/// clients ever write to the same stream.
fn owned_streams(workload: Workload, client: u64, streams: u64) -> Vec<String> {
    let streams = streams.max(workload.clients);
    (client..streams)
        .step_by(workload.clients as usize)
        .map(|stream| format!("{}-{stream}", workload.key))
        .collect()
}

/// Where a client's appends go.
enum Streams {
    /// Round robin over streams of its own.
    Owned(Vec<String>),
    /// A new stream each time, named by this prefix and a counter.
    New(String),
}

/// When a client stops.
enum Until {
    Deadline(Instant),
    /// Appends left to all clients together.
    Quota(Arc<AtomicU64>),
}

impl Until {
    /// Whether the client may send one more append (taking it from the quota).
    fn one_more(&self) -> bool {
        match self {
            Until::Deadline(deadline) => Instant::now() < *deadline,
            Until::Quota(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(1)
                })
                .is_ok(),
        }
    }
}

async fn drive_client<A: Appender>(
    mut appender: A,
    streams: Streams,
    events_per_append: u64,
    event_bytes: usize,
    seed: u64,
    until: Until,
) -> Result<ClientOutcome> {
    let mut outcome = ClientOutcome {
        latencies: new_histogram()?,
        appends: 0,
        errors: 0,
        first_error: None,
    };
    let owned = match &streams {
        Streams::Owned(owned) => owned.len(),
        Streams::New(_) => 1,
    };
    let mut lengths = vec![0u64; owned];
    let mut payloads = Payloads::new(seed);
    let mut next = 0usize;
    while until.one_more() {
        let events = (0..events_per_append)
            .map(|_| payloads.next(event_bytes))
            .collect();
        let stream = match &streams {
            Streams::Owned(owned) => Cow::Borrowed(owned[next].as_str()),
            Streams::New(prefix) => Cow::Owned(format!("{prefix}-n{}", outcome.appends)),
        };
        let sent = Instant::now();
        match appender.append(&stream, lengths[next], events).await {
            Ok(()) => {
                outcome
                    .latencies
                    .saturating_record(sent.elapsed().as_micros() as u64);
                outcome.appends += 1;
                if let Streams::Owned(_) = streams {
                    lengths[next] += events_per_append;
                }
            }
            Err(error) => {
                outcome.errors += 1;
                outcome.first_error = Some(format!("{error:#}"));
                break;
            }
        }
        next = (next + 1) % owned;
    }
    Ok(outcome)
}

pub(crate) fn new_histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// Event payloads that differ from each other, so that no system gains from compressing or
/// deduplicating repeated bytes (xorshift; not for anything but filling buffers).
pub(crate) struct Payloads {
    state: u64,
}

impl Payloads {
    pub(crate) fn new(seed: u64) -> Payloads {
        Payloads {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub(crate) fn next(&mut self, bytes: usize) -> Vec<u8> {
        let mut data = Vec::with_capacity(bytes + 8);
        while data.len() < bytes {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            data.extend_from_slice(&self.state.to_le_bytes());
        }
        data.truncate(bytes);
        data
    }
}

/// What the catch-up read measured and found.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReadResult {
    pub events: u64,
    pub seconds: f64,
    /// Global positions strictly increase.
    pub in_order: bool,
    /// Within each stream, versions count up from 0 without a gap (true when the system
    /// keeps no per-stream version).
    pub versions_contiguous: bool,
}

impl ReadResult {
    pub(crate) fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// Checks a catch-up read event by event while it runs.
pub(crate) struct ReadCheck {
    started: Instant,
    events: u64,
    last_position: Option<u64>,
    in_order: bool,
    next_version: HashMap<String, u64>,
    versions_contiguous: bool,
}

impl ReadCheck {
    pub(crate) fn start() -> ReadCheck {
        ReadCheck {
            started: Instant::now(),
            events: 0,
            last_position: None,
            in_order: true,
            next_version: HashMap::new(),
            versions_contiguous: true,
        }
    }

    /// One event, in the order the read returned it. `version` is `None` for a system that
    /// keeps no per-stream version.
    pub(crate) fn event(&mut self, position: u64, stream: &str, version: Option<u64>) {
        self.events += 1;
        self.in_order &= self.last_position.is_none_or(|last| position > last);
        self.last_position = Some(position);
        if let Some(version) = version {
            match self.next_version.get_mut(stream) {
                Some(next) => {
                    self.versions_contiguous &= *next == version;
                    *next = version + 1;
                }
                None => {
                    self.versions_contiguous &= version == 0;
                    self.next_version.insert(stream.to_string(), version + 1);
                }
            }
        }
    }

    pub(crate) fn finish(self) -> ReadResult {
        ReadResult {
            events: self.events,
            seconds: self.started.elapsed().as_secs_f64(),
            in_order: self.in_order,
            versions_contiguous: self.versions_contiguous,
        }
    }
}

/// Everything one system did in a run.
#[derive(Debug, Clone)]
pub(crate) struct SystemRun {
    pub writes: Vec<WriteResult>,
    pub read: ReadResult,
}

impl SystemRun {
    pub(crate) fn acknowledged_events(&self) -> u64 {
        self.writes.iter().map(|write| write.events).sum()
    }

    /// The run checks its own work: no append failed, and the read returned every
    /// acknowledged event once, in global order, with gapless per-stream versions.
    pub(crate) fn self_check(&self) -> Result<(), String> {
        let errors: u64 = self.writes.iter().map(|write| write.errors).sum();
        if errors > 0 {
            let first = self
                .writes
                .iter()
                .find_map(|write| write.first_error.clone())
                .unwrap_or_default();
            return Err(format!("{errors} appends failed; first: {first}"));
        }
        if self.read.events != self.acknowledged_events() {
            return Err(format!(
                "read {} events back, {} were acknowledged",
                self.read.events,
                self.acknowledged_events()
            ));
        }
        if !self.read.in_order {
            return Err("the read was not in global order".into());
        }
        if !self.read.versions_contiguous {
            return Err("stream versions read back have gaps".into());
        }
        if self.read.events == 0 {
            return Err("no events were written".into());
        }
        Ok(())
    }
}

/// Runs the three write workloads, then the read, against one system. `fsyncs` is asked
/// before and after each write workload, for the events per fsync where the system can tell.
pub(crate) async fn run_all<T, R, F>(
    target: &T,
    settings: &LoadSettings,
    mut fsyncs: F,
    read: R,
) -> Result<SystemRun>
where
    T: Target,
    F: AsyncFsyncCounter,
    R: Future<Output = Result<ReadResult>>,
{
    let mut writes = Vec::new();
    for workload in settings.workloads() {
        let before = fsyncs.count().await;
        let hops_before = fsyncs.hops().await;
        let mut result = run_writes(target, workload, settings).await?;
        let after = fsyncs.count().await;
        result.hops = hop_means(&hops_before, &fsyncs.hops().await);
        if let (Some(before), Some(after)) = (before, after)
            && after > before
        {
            result.events_per_fsync = Some(result.events as f64 / (after - before) as f64);
        }
        eprintln!(
            "  {:<36} {:>10.0} events/s  p50 {:>6} us  p99 {:>6} us  errors {}",
            workload.label(),
            result.events_per_second(),
            result.p50_us,
            result.p99_us,
            result.errors
        );
        writes.push(result);
    }
    let read = read.await?;
    eprintln!(
        "  {:<36} {:>10.0} events/s  ({} events)",
        "read all, 1 client",
        read.events_per_second(),
        read.events
    );
    Ok(SystemRun { writes, read })
}

/// Counts a system's fsyncs so far, where it can (the count may lag by a moment).
pub(crate) trait AsyncFsyncCounter {
    fn count(&mut self) -> impl Future<Output = Option<u64>>;

    /// The system's running sums of an append's hops, where it reports them.
    fn hops(&mut self) -> impl Future<Output = Vec<HopSum>> {
        std::future::ready(Vec::new())
    }
}

/// For a system whose fsyncs we cannot count.
pub(crate) struct NoFsyncCount;

impl AsyncFsyncCounter for NoFsyncCount {
    async fn count(&mut self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_check_accepts_interleaved_streams_in_order() {
        let mut check = ReadCheck::start();
        check.event(0, "a", Some(0));
        check.event(1, "b", Some(0));
        check.event(2, "a", Some(1));
        let read = check.finish();
        assert_eq!(read.events, 3);
        assert!(read.in_order && read.versions_contiguous);
    }

    #[test]
    fn the_read_check_catches_a_version_gap_and_a_position_going_back() {
        let mut gap = ReadCheck::start();
        gap.event(0, "a", Some(0));
        gap.event(1, "a", Some(2));
        assert!(!gap.finish().versions_contiguous);

        let mut back = ReadCheck::start();
        back.event(5, "a", None);
        back.event(5, "b", None);
        assert!(!back.finish().in_order);
    }

    #[test]
    fn clients_own_disjoint_streams_that_cover_them_all() {
        let workload = Workload {
            key: "w",
            clients: 3,
            events_per_append: 1,
            new_streams: false,
        };
        let mut all: Vec<String> = (0..3)
            .flat_map(|client| owned_streams(workload, client, 10))
            .collect();
        assert_eq!(all.len(), 10);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 10);
    }

    #[test]
    fn payloads_differ_from_one_event_to_the_next() {
        let mut payloads = Payloads::new(7);
        let (first, second) = (payloads.next(256), payloads.next(256));
        assert_eq!(first.len(), 256);
        assert_ne!(first, second);
    }
}
