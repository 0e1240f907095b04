//! Every API call through the Rust client against a real server process.

use crate::common::Server;
use exesdb_client::{
    Client, ClientError, Direction, ExpectedVersion, NewEvent, ReadFrom, SnapshotVersion,
    StoreError,
};
use tokio_stream::StreamExt;

fn event(data: &str) -> NewEvent {
    NewEvent::new("Tested", data.as_bytes().to_vec())
}

async fn collect<T>(
    stream: impl tokio_stream::Stream<Item = Result<T, ClientError>>,
) -> Result<Vec<T>, ClientError> {
    let mut stream = std::pin::pin!(stream);
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item?);
    }
    Ok(items)
}

fn store_error(error: ClientError) -> StoreError {
    match error {
        ClientError::Store(error) => error,
        other => panic!("expected a store error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_versions_over_the_wire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let client = server.client().await;

    let error = client
        .append("s", ExpectedVersion::StreamExists, vec![event("1")])
        .await
        .expect_err("stream_exists on nothing");
    assert_eq!(
        store_error(error),
        StoreError::WrongExpectedVersion {
            expected: "stream_exists".into(),
            current: -1
        }
    );
    let first = client
        .append("s", ExpectedVersion::NoStream, vec![event("1"), event("2")])
        .await
        .expect("no_stream");
    assert_eq!((first.first_event_number, first.last_event_number), (0, 1));
    let error = client
        .append("s", ExpectedVersion::Exact(0), vec![event("3")])
        .await
        .expect_err("stale exact");
    assert_eq!(
        store_error(error),
        StoreError::WrongExpectedVersion {
            expected: "0".into(),
            current: 1
        }
    );
    let error = client
        .append("s", ExpectedVersion::NoStream, vec![event("3")])
        .await
        .expect_err("no_stream on existing");
    assert_eq!(store_error(error).code(), "wrong_expected_version");
    client
        .append("s", ExpectedVersion::Exact(1), vec![event("3")])
        .await
        .expect("exact");
    client
        .append("s", ExpectedVersion::StreamExists, vec![event("4")])
        .await
        .expect("exists");
    let any = client
        .append("s", ExpectedVersion::Any, vec![event("5")])
        .await
        .expect("any");
    assert_eq!(any.last_event_number, 4);
    assert_eq!(client.stream_version("s").await.expect("version"), 4);
    assert_eq!(client.stream_version("nothing").await.expect("version"), -1);

    // Idempotent retry with client ids.
    let id = uuid::Uuid::now_v7();
    let original = client
        .append("t", ExpectedVersion::NoStream, vec![event("x").with_id(id)])
        .await
        .expect("append");
    let retry = client
        .append("t", ExpectedVersion::NoStream, vec![event("x").with_id(id)])
        .await
        .expect("retry");
    assert_eq!(original, retry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_pages_filters_snapshots_stores_and_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let client = server.client().await;
    // More than one server page (read_events_max is 10,000 by default).
    for chunk in 0..12 {
        let events = (0..1_000)
            .map(|i| event(&format!("{}", chunk * 1_000 + i)))
            .collect();
        client
            .append("big", ExpectedVersion::Any, events)
            .await
            .expect("append chunk");
    }
    client
        .append(
            "order-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("Placed", b"o".to_vec())],
        )
        .await
        .expect("append");

    let all_big = collect(client.read_stream("big", ReadFrom::Start, None, Direction::Forward))
        .await
        .expect("read");
    assert_eq!(all_big.len(), 12_000);
    assert!(
        all_big
            .iter()
            .enumerate()
            .all(|(i, e)| e.event_number == i as u64)
    );
    let backward =
        collect(client.read_stream("big", ReadFrom::At(5), Some(3), Direction::Backward))
            .await
            .expect("read");
    assert_eq!(
        backward.iter().map(|e| e.event_number).collect::<Vec<_>>(),
        vec![5, 4, 3]
    );
    let huge_count = collect(client.read_stream(
        "order-1",
        ReadFrom::Start,
        Some(u64::MAX),
        Direction::Forward,
    ))
    .await
    .expect("absurd count is a bound, not an error");
    assert_eq!(huge_count.len(), 1);
    let error = collect(client.read_stream("missing", ReadFrom::Start, None, Direction::Forward))
        .await
        .expect_err("missing stream");
    assert_eq!(error.code(), "stream_not_found");

    let all = collect(client.read_all(ReadFrom::Start, None, Direction::Forward, None, &[]))
        .await
        .expect("read all");
    assert_eq!(all.len(), 12_001);
    assert!(all.iter().enumerate().all(|(i, e)| e.position == i as u64));
    let orders = collect(client.read_all(
        ReadFrom::Start,
        Some(10),
        Direction::Forward,
        Some("order-"),
        &[],
    ))
    .await
    .expect("prefix");
    assert_eq!(orders.len(), 1);
    let placed = collect(client.read_all(
        ReadFrom::Start,
        None,
        Direction::Backward,
        None,
        &["Placed".to_string()],
    ))
    .await
    .expect("types");
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].position, 12_000);

    let streams = collect(client.list_streams(None, None))
        .await
        .expect("streams");
    assert_eq!(
        streams
            .iter()
            .map(|s| (s.stream_id.as_str(), s.version))
            .collect::<Vec<_>>(),
        vec![("big", 11_999), ("order-1", 0)]
    );
    let after = collect(client.list_streams(Some("big"), Some(5)))
        .await
        .expect("streams after");
    assert_eq!(after.len(), 1);

    client
        .record_snapshot("order", "order-1", 3, b"s3".to_vec(), b"m".to_vec())
        .await
        .expect("record");
    client
        .record_snapshot("order", "order-1", 9, b"s9".to_vec(), vec![])
        .await
        .expect("record");
    let exact = client
        .read_snapshot("order", "order-1", SnapshotVersion::Exact(3))
        .await
        .expect("exact");
    assert_eq!(
        (exact.data.as_slice(), exact.metadata.as_slice()),
        (&b"s3"[..], &b"m"[..])
    );
    let below = client
        .read_snapshot("order", "order-1", SnapshotVersion::AtOrBelow(8))
        .await
        .expect("below");
    assert_eq!(below.version, 3);
    let latest = client
        .read_snapshot("order", "order-1", SnapshotVersion::Latest)
        .await
        .expect("latest");
    assert_eq!(latest.version, 9);
    let listed = client
        .list_snapshots(Some("order"), None, 0)
        .await
        .expect("list");
    assert_eq!(listed.len(), 2);
    client
        .delete_snapshot("order", "order-1", 9)
        .await
        .expect("delete");
    let error = client
        .read_snapshot("order", "order-1", SnapshotVersion::Exact(9))
        .await
        .expect_err("deleted");
    assert_eq!(error.code(), "snapshot_not_found");

    assert_eq!(
        client.list_stores().await.expect("stores"),
        vec!["default".to_string()]
    );
    let tree = client.tree().await.expect("tree");
    assert_eq!(tree.name, "ExESDB.System");
    assert!(tree.find("ExESDB.GatewayWorkers").is_some());
    assert!(client.healthy().await.expect("health"));

    let other = client.with_store("nope");
    let error = other
        .append("s", ExpectedVersion::Any, vec![event("x")])
        .await
        .expect_err("unknown store");
    assert_eq!(error.code(), "store_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_race_for_each_version_of_one_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let url = server.url();
    let rounds = 20u64;
    let mut tasks = Vec::new();
    for writer in 0..32u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&url).await.expect("connect");
            let mut wins = Vec::new();
            let mut losses = 0u64;
            for _ in 0..rounds {
                let version = client.stream_version("contended").await.expect("version");
                let expected = if version < 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(version as u64)
                };
                match client
                    .append("contended", expected, vec![event(&writer.to_string())])
                    .await
                {
                    Ok(result) => wins.push(result.first_event_number),
                    Err(ClientError::Store(StoreError::WrongExpectedVersion {
                        current, ..
                    })) => {
                        assert!(
                            current > version,
                            "current {current} is past the version {version} we saw"
                        );
                        losses += 1;
                    }
                    Err(other) => panic!("unexpected {other}"),
                }
            }
            (wins, losses)
        }));
    }
    let mut all_wins = Vec::new();
    let mut losses = 0;
    for task in tasks {
        let (wins, lost) = task.await.expect("task");
        all_wins.extend(wins);
        losses += lost;
    }
    all_wins.sort_unstable();
    let count = all_wins.len() as u64;
    assert_eq!(
        all_wins,
        (0..count).collect::<Vec<_>>(),
        "exactly one winner per version, no gaps"
    );
    assert_eq!(count + losses, 32 * rounds);
    let client = server.client().await;
    let events =
        collect(client.read_stream("contended", ReadFrom::Start, None, Direction::Forward))
            .await
            .expect("read");
    assert_eq!(events.len() as u64, count);
}
