//! A request message over the node's size limit is refused by tonic before it is decoded, with
//! `OUT_OF_RANGE` ("decoded message length too large") and none of our error detail. gRPC's
//! status table prescribes `RESOURCE_EXHAUSTED` for a message over the limit, and our clients
//! read the stable code from the detail: this layer rewrites that one status into the same
//! `limit_exceeded` answer a smaller over-limit append gets, naming the setting that bounds it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use exesdb_proto::convert;
use exesdb_types::StoreError;
use tonic::{Code, Status};

/// What tonic's decoder says when a message is over the limit.
const TOO_LARGE: &str = "decoded message length too large";

/// The settings a refused message is reported against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageLimits {
    /// The largest `append_bytes_max` of the node's stores.
    pub(crate) append_bytes_max: u64,
    /// The largest `snapshot_bytes_max` of the node's stores.
    pub(crate) snapshot_bytes_max: u64,
}

/// Runs the call, and answers an over-limit message as `limit_exceeded`.
pub(crate) async fn refuse_oversized_messages(
    State(limits): State<Arc<MessageLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let snapshot = request.uri().path().ends_with("/RecordSnapshot");
    let response = next.run(request).await;
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != Code::OutOfRange || !status.message().contains(TOO_LARGE) {
        return response;
    }
    let (limit, max) = if snapshot {
        ("snapshot_bytes_max", limits.snapshot_bytes_max)
    } else {
        ("append_bytes_max", limits.append_bytes_max)
    };
    let error = StoreError::limit(limit, max, found_bytes(status.message()).unwrap_or(0));
    convert::status(&error).into_http::<Body>()
}

/// The message's length as tonic reports it ("... found N bytes, ...").
fn found_bytes(message: &str) -> Option<u64> {
    let rest = message.split("found ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_length_from_tonics_message() {
        let message = "Error, decoded message length too large: found 41943045 bytes, \
                       the limit is: 17825792 bytes";
        assert_eq!(found_bytes(message), Some(41_943_045));
        assert_eq!(found_bytes("something else"), None);
    }
}
