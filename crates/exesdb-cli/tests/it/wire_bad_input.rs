//! Bad input over the wire: each gets a clear status, nothing is written, and the server keeps
//! serving. Malformed messages are built by hand with a look-alike message type whose fields
//! have the same tags but looser types (bytes where the contract says string).

use crate::common::Server;
use exesdb_client::{ClientError, Direction, ExpectedVersion, NewEvent, ReadFrom};
use exesdb_proto::v1 as wire;
use tokio_stream::StreamExt;
use tonic::Code;

/// `AppendEventsRequest` with `stream_id` as raw bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct LooseAppend {
    #[prost(string, tag = "1")]
    store_id: String,
    #[prost(bytes = "vec", tag = "2")]
    stream_id: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    expected: Option<wire::ExpectedVersion>,
    #[prost(message, repeated, tag = "4")]
    events: Vec<wire::NewEvent>,
}

/// `AppendEventsRequest` whose `stream_id` field has the wrong wire type (a varint).
#[derive(Clone, PartialEq, prost::Message)]
struct MistypedAppend {
    #[prost(string, tag = "1")]
    store_id: String,
    #[prost(uint64, tag = "2")]
    stream_id: u64,
}

async fn raw_call<M: prost::Message + Default + Send + Sync + 'static>(
    server: &Server,
    request: M,
) -> Result<wire::AppendEventsResponse, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<M, wire::AppendEventsResponse>::default();
    grpc.unary(
        tonic::Request::new(request),
        "/exesdb.v1.EventStore/AppendEvents".parse().expect("path"),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn raw_append(
    server: &Server,
    request: LooseAppend,
) -> Result<wire::AppendEventsResponse, tonic::Status> {
    raw_call(server, request).await
}

fn wire_event(data: Vec<u8>) -> wire::NewEvent {
    wire::NewEvent {
        event_type: "E".into(),
        data,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_invalid_requests_get_clear_statuses_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let client = server.client().await;
    let base = LooseAppend {
        store_id: "default".into(),
        stream_id: b"ok-stream".to_vec(),
        expected: None,
        events: vec![wire_event(b"x".to_vec())],
    };

    // Invalid UTF-8 where the contract says string: a protobuf parse error, INTERNAL per the
    // gRPC status code guide, with a message that says what was wrong.
    let status = raw_append(
        &server,
        LooseAppend {
            stream_id: vec![0xff, 0xfe, b'a'],
            ..base.clone()
        },
    )
    .await
    .expect_err("invalid UTF-8");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{}", status.message());

    // A field of the wrong wire type: a parse error too.
    let status = raw_call(
        &server,
        MistypedAppend {
            store_id: "default".into(),
            stream_id: 7,
        },
    )
    .await
    .expect_err("mistyped field");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("decode"), "{}", status.message());

    // A store id that no store can have.
    let status = raw_append(
        &server,
        LooseAppend {
            store_id: "\u{0}".into(),
            ..base.clone()
        },
    )
    .await
    .expect_err("control character in the store id");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let cases: Vec<(&str, LooseAppend, Code, &str)> = vec![
        (
            "unknown store",
            LooseAppend {
                store_id: "nope".into(),
                ..base.clone()
            },
            Code::NotFound,
            "store_not_found",
        ),
        (
            "empty stream id",
            LooseAppend {
                stream_id: vec![],
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_argument",
        ),
        (
            "control character",
            LooseAppend {
                stream_id: b"a\nb".to_vec(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_argument",
        ),
        (
            "reserved stream",
            LooseAppend {
                stream_id: b"$all".to_vec(),
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_argument",
        ),
        (
            "long stream id",
            LooseAppend {
                stream_id: vec![b'x'; 513],
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_argument",
        ),
        (
            "no events",
            LooseAppend {
                events: vec![],
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_argument",
        ),
        (
            "bad event id",
            LooseAppend {
                events: vec![wire::NewEvent {
                    event_id: "not-a-uuid".into(),
                    ..wire_event(vec![])
                }],
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_argument",
        ),
        (
            "empty event type",
            LooseAppend {
                events: vec![wire::NewEvent {
                    event_type: String::new(),
                    ..wire_event(vec![])
                }],
                ..base.clone()
            },
            Code::InvalidArgument,
            "invalid_argument",
        ),
        (
            "event over event_bytes_max",
            LooseAppend {
                events: vec![wire_event(vec![0; 1024 * 1024 + 1])],
                ..base.clone()
            },
            Code::ResourceExhausted,
            "limit_exceeded",
        ),
        (
            "too many events",
            LooseAppend {
                events: (0..10_001).map(|_| wire_event(vec![])).collect(),
                ..base.clone()
            },
            Code::ResourceExhausted,
            "limit_exceeded",
        ),
    ];
    for (name, request, code, error_code) in cases {
        let status = raw_append(&server, request).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert_eq!(
            status
                .metadata()
                .get("exesdb-error-code")
                .and_then(|v| v.to_str().ok()),
            Some(error_code),
            "{name}"
        );
    }

    // A message bigger than the server accepts at all: refused before decoding.
    let status = raw_append(
        &server,
        LooseAppend {
            events: vec![wire_event(vec![0; 18 * 1024 * 1024])],
            ..base.clone()
        },
    )
    .await
    .expect_err("oversized message");
    // gRPC's table: a message over the limit is RESOURCE_EXHAUSTED, and it carries our code and
    // the setting's name like any smaller over-limit append (tonic alone says OUT_OF_RANGE).
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("exesdb-error-code")
            .and_then(|v| v.to_str().ok()),
        Some("limit_exceeded")
    );
    match exesdb_proto::convert::store_error(&status) {
        Some(exesdb_client::StoreError::LimitExceeded { limit, actual, .. }) => {
            assert_eq!(limit, "append_bytes_max");
            assert!(actual > 18 * 1024 * 1024, "the message's length: {actual}");
        }
        other => panic!("expected limit_exceeded in the detail, got {other:?}"),
    }
    let error = client
        .append(
            "big",
            ExpectedVersion::Any,
            vec![NewEvent::new("E", vec![0; 40 * 1024 * 1024])],
        )
        .await
        .expect_err("a 40 MB append");
    assert_eq!(error.code(), "limit_exceeded", "{error}");

    // Nothing was written, and the server still serves.
    let mut all = client.read_all(ReadFrom::Start, None, Direction::Forward, None, &[]);
    assert!(
        all.next().await.is_none(),
        "a rejected request wrote something"
    );
    let result = client
        .append(
            "ok-stream",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("E", b"x".to_vec())],
        )
        .await
        .expect("still serving");
    assert_eq!(result.first_position, 0);
    let error = client
        .append(
            "ok-stream",
            ExpectedVersion::Exact(9),
            vec![NewEvent::new("E", vec![])],
        )
        .await
        .expect_err("wrong version");
    assert!(matches!(error, ClientError::Store(_)));
}
