//! `StreamsWriters` workers: a bounded set per partition, shared by the streams being written
//! (a stream always reaches the same writer). A writer fixes what `apply` must not decide
//! (event ids, the acceptance time), then queues the append for the committer without waiting
//! for it, so appends to one stream keep their order, many streams commit together, and one
//! writer serves any number of streams.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::supervision::pool::KeyedWork;
use crate::system::context::StoreContext;
use crate::system::core::store::state_machine::{AppendCommand, Command, Outcome, PreparedEvent};
use crate::system::hops::Hop;
use exesdb_types::StoreError;
use exesdb_types::{ExpectedVersion, NewEvent};

/// An append on its way to the committer.
pub(crate) struct AppendRequest {
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<Outcome, StoreError>>,
    /// When the store admitted it.
    pub admitted: Instant,
}

/// What stream writers do.
pub(crate) struct StreamsWriterWork {
    pub context: Arc<StoreContext>,
}

impl KeyedWork for StreamsWriterWork {
    type Request = AppendRequest;
    const WORKER_NAME: &'static str = "ExESDB.StreamsWriter";
    const SHARED_WORKERS: bool = true;

    async fn handle(&self, stream_id: &str, request: AppendRequest) {
        let taken = Instant::now();
        let hops = &self.context.hops;
        hops.add(Hop::ToWriter, request.admitted, taken);
        let command = Command::Append(AppendCommand {
            stream_id: stream_id.to_string(),
            expected: request.expected,
            created_micros: now_micros(),
            events: request.events.into_iter().map(prepare).collect(),
        });
        hops.add(Hop::Writer, taken, Instant::now());
        self.context.submit(command, request.reply).await;
    }
}

fn prepare(event: NewEvent) -> PreparedEvent {
    PreparedEvent {
        client_event_id: event.event_id.is_some(),
        event_id: event.event_id.unwrap_or_else(Uuid::now_v7),
        event_type: event.event_type,
        data: event.data,
        metadata: event.metadata,
        data_content_type: event.data_content_type,
        metadata_content_type: event.metadata_content_type,
    }
}

/// Microseconds since the Unix epoch; a clock before 1970 counts as 0.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
        })
}
