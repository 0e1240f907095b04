//! Where an append's time goes, hop by hop, summed over appends: a load divides the change in
//! each sum by the change in its count for the mean cost of the hop. Each hop is two clock
//! reads and one relaxed add, cheap beside the microseconds a hop costs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The hops of an append, in the order it passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// From the network handler to the store's API: admission to the gateway, the gateway
    /// worker, and the task it starts (per gateway call).
    GatewayIn,
    /// Waiting for an admission permit of the store (`requests_in_flight_max`).
    Admission,
    /// From the dispatch to the stream's writer until the writer takes the request.
    ToWriter,
    /// In the writer: fixing ids and time, and queueing the command for the committer.
    Writer,
    /// In the committer's queue until the committer takes the batch it belongs to.
    CommitQueue,
    /// From the batch's start until its reply is sent: applying the batch, writing it, fsync.
    Commit,
    /// From the reply being sent until the API call resumes with it.
    Reply,
    /// From the API call's end back to the network handler (per gateway call).
    GatewayOut,
}

impl Hop {
    /// Every hop, in order.
    pub const ALL: [Hop; 8] = [
        Hop::GatewayIn,
        Hop::Admission,
        Hop::ToWriter,
        Hop::Writer,
        Hop::CommitQueue,
        Hop::Commit,
        Hop::Reply,
        Hop::GatewayOut,
    ];

    /// The hop's name in metrics and reports.
    pub fn name(self) -> &'static str {
        match self {
            Hop::GatewayIn => "gateway_in",
            Hop::Admission => "admission",
            Hop::ToWriter => "to_writer",
            Hop::Writer => "writer",
            Hop::CommitQueue => "commit_queue",
            Hop::Commit => "commit",
            Hop::Reply => "reply",
            Hop::GatewayOut => "gateway_out",
        }
    }

    /// Whether the hop is counted per gateway call rather than per append.
    pub fn per_gateway_call(self) -> bool {
        matches!(self, Hop::GatewayIn | Hop::GatewayOut)
    }
}

/// The running sums.
#[derive(Debug, Default)]
pub(crate) struct HopCounters {
    nanos: [AtomicU64; Hop::ALL.len()],
    /// From admission to the answer: `Reply` is this less the hops between.
    after_admission: AtomicU64,
    appends: AtomicU64,
    gateway_calls: AtomicU64,
}

impl HopCounters {
    pub(crate) fn add(&self, hop: Hop, from: Instant, to: Instant) {
        let nanos = u64::try_from(to.saturating_duration_since(from).as_nanos()).unwrap_or(0);
        self.nanos[hop as usize].fetch_add(nanos, Ordering::Relaxed);
    }

    /// Adds `nanos` already summed over several requests.
    pub(crate) fn add_nanos(&self, hop: Hop, nanos: u64) {
        self.nanos[hop as usize].fetch_add(nanos, Ordering::Relaxed);
    }

    /// Counts an answered append, with the time from its admission to its answer.
    pub(crate) fn count_append(&self, admitted: Instant, answered: Instant) {
        let nanos =
            u64::try_from(answered.saturating_duration_since(admitted).as_nanos()).unwrap_or(0);
        self.after_admission.fetch_add(nanos, Ordering::Relaxed);
        self.appends.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_gateway_call(&self) {
        self.gateway_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> AppendHops {
        let mut nanos: [u64; Hop::ALL.len()] =
            std::array::from_fn(|i| self.nanos[i].load(Ordering::Relaxed));
        let between: u64 = [Hop::ToWriter, Hop::Writer, Hop::CommitQueue, Hop::Commit]
            .iter()
            .map(|hop| nanos[*hop as usize])
            .sum();
        nanos[Hop::Reply as usize] = self
            .after_admission
            .load(Ordering::Relaxed)
            .saturating_sub(between);
        AppendHops {
            nanos,
            appends: self.appends.load(Ordering::Relaxed),
            gateway_calls: self.gateway_calls.load(Ordering::Relaxed),
        }
    }
}

/// A copy of the sums: nanoseconds per hop since the store started, with the counts they are
/// summed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendHops {
    nanos: [u64; Hop::ALL.len()],
    /// Appends answered through the committer.
    pub appends: u64,
    /// Calls through the gateway (appends and others).
    pub gateway_calls: u64,
}

impl AppendHops {
    /// The nanoseconds summed for `hop`.
    pub fn nanos(&self, hop: Hop) -> u64 {
        self.nanos[hop as usize]
    }

    /// How many requests `hop`'s sum is over.
    pub fn count(&self, hop: Hop) -> u64 {
        if hop.per_gateway_call() {
            self.gateway_calls
        } else {
            self.appends
        }
    }
}
