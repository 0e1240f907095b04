//! `StreamsReaders` workers: a bounded set per partition, shared by the streams being read (a
//! stream always reaches the same reader; reads of `$all` and of the stream list are spread
//! over the readers, so concurrent readers of `$all` do not queue behind one). Reads go
//! straight to a storage snapshot (every committed batch, none in progress), through
//! `system::blocking`; they never wait for the committer.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::storage::EventPage;
use crate::supervision::pool::KeyedWork;
use crate::system::context::StoreContext;
use exesdb_types::StoreError;
use exesdb_types::{Direction, ReadAllRequest, RecordedEvent, StreamInfo};

/// A read, with the channel its answer goes back on.
pub(crate) enum ReadRequest {
    Stream {
        from: Option<u64>,
        count: u64,
        direction: Direction,
        bytes_max: Option<u64>,
        reply: oneshot::Sender<Result<Vec<RecordedEvent>, StoreError>>,
    },
    All {
        request: ReadAllRequest,
        reply: oneshot::Sender<Result<EventPage, StoreError>>,
    },
    Version {
        reply: oneshot::Sender<Result<Option<u64>, StoreError>>,
    },
    ListStreams {
        after: Option<String>,
        count: u64,
        reply: oneshot::Sender<Result<Vec<StreamInfo>, StoreError>>,
    },
}

/// What stream readers do.
pub(crate) struct StreamsReaderWork {
    pub context: Arc<StoreContext>,
}

impl KeyedWork for StreamsReaderWork {
    type Request = ReadRequest;
    const WORKER_NAME: &'static str = "ExESDB.StreamsReader";
    const SHARED_WORKERS: bool = true;

    async fn handle(&self, stream_id: &str, request: ReadRequest) {
        // Storage reads can wait for the disk: they never hold up the runtime's other tasks.
        // The reader waits for its read, so each reader has one at a time.
        let context = self.context.clone();
        let stream_id = stream_id.to_string();
        crate::system::blocking(move || read(&context, &stream_id, request)).await;
    }
}

/// Runs one read against storage and answers it.
fn read(context: &StoreContext, stream_id: &str, request: ReadRequest) {
    let storage = &context.storage;
    match request {
        ReadRequest::Stream {
            from,
            count,
            direction,
            bytes_max,
            reply,
        } => {
            let result = storage
                .engine()
                .and_then(|engine| engine.read_stream(stream_id, from, count, direction, bytes_max))
                .map_err(StoreError::from)
                .and_then(|events| {
                    events.ok_or_else(|| StoreError::StreamNotFound {
                        stream_id: stream_id.to_string(),
                    })
                });
            let _ = reply.send(result);
        }
        ReadRequest::All { request, reply } => {
            let result = storage
                .engine()
                .and_then(|engine| engine.read_all(&request));
            let _ = reply.send(result.map_err(StoreError::from));
        }
        ReadRequest::Version { reply } => {
            let result = storage
                .engine()
                .and_then(|engine| engine.point_view().stream_version(stream_id));
            let _ = reply.send(result.map_err(StoreError::from));
        }
        ReadRequest::ListStreams {
            after,
            count,
            reply,
        } => {
            let result = storage
                .engine()
                .and_then(|engine| engine.list_streams(after.as_deref(), count))
                .map_err(StoreError::from);
            let _ = reply.send(result);
        }
    }
}
