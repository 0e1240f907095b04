//! Floods and slow readers against a real `exesdb serve`: every queue between the socket and
//! the store has a size and an answer for "full". Too many connections are closed at once,
//! silent ones lose their slot, too many calls get `unavailable` at once, and a client that
//! stops reading holds a bounded amount of the server's memory while writers carry on.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::Server;
use exesdb_client::{
    Client, Direction, ExpectedVersion, NewEvent, ReadFrom, Selector, StartFrom,
    SubscriptionMessage,
};
use tokio_stream::StreamExt;

/// Long enough for anything that should happen to happen on a loaded CI machine; reaching it
/// means a hang, not slowness.
const HANG: Duration = Duration::from_secs(60);

/// What a silent client socket sees of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Open,
    Closed,
}

fn peer_state(mut socket: &TcpStream) -> Peer {
    let mut byte = [0u8; 1];
    match socket.read(&mut byte) {
        Ok(0) => Peer::Closed,
        Ok(_) => Peer::Open, // the server spoke first; it has not closed
        Err(error) if error.kind() == ErrorKind::WouldBlock => Peer::Open,
        Err(_) => Peer::Closed, // reset
    }
}

fn silent_connections(address: &str, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|_| {
            let socket = TcpStream::connect(address).expect("the kernel completes the handshake");
            socket.set_nonblocking(true).expect("nonblocking");
            socket
        })
        .collect()
}

/// Waits until `closed` of the sockets are closed by the server.
async fn wait_closed(sockets: &[TcpStream], closed: usize) {
    tokio::time::timeout(HANG, async {
        loop {
            let now = sockets
                .iter()
                .filter(|socket| peer_state(socket) == Peer::Closed)
                .count();
            if now >= closed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the server closes the connections");
}

async fn append_one(client: &Client, stream: &str) -> Result<(), exesdb_client::ClientError> {
    client
        .append(
            stream,
            ExpectedVersion::Any,
            vec![NewEvent::new("Tick", "{}")],
        )
        .await
        .map(|_| ())
}

async fn count_all(client: &Client) -> usize {
    let events = client.read_all(ReadFrom::Start, None, Direction::Forward, None, &[]);
    let mut events = std::pin::pin!(events);
    let mut count = 0;
    while let Some(event) = events.next().await {
        event.expect("read");
        count += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_and_the_connected_client_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Silent sockets keep their slot for a minute: long past this test's checks.
    let server = Server::start_with(
        dir.path(),
        &[
            "--connections-max",
            "8",
            "--connection-first-bytes-ms",
            "60000",
        ],
    );
    let client = server.client().await;
    append_one(&client, "steady").await.expect("first append");

    // The client holds one slot: 7 of the 40 silent sockets get the rest, 33 are closed.
    let flood = silent_connections(&server.address, 40);
    wait_closed(&flood, 33).await;
    for _ in 0..20 {
        append_one(&client, "steady")
            .await
            .expect("append during the flood");
    }
    assert!(client.healthy().await.expect("health during the flood"));
    assert_eq!(count_all(&client).await, 21, "reads work during the flood");
    let open = flood
        .iter()
        .filter(|socket| peer_state(socket) == Peer::Open)
        .count();
    assert_eq!(open, 7, "exactly connections_max connections stay open");

    // A new client finds no slot.
    let refused = match Client::connect(&server.url()).await {
        Ok(late) => append_one(&late, "late").await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a connection past connections_max is not served");

    // Closing the silent sockets frees their slots.
    drop(flood);
    let late = tokio::time::timeout(HANG, async {
        loop {
            if let Ok(late) = Client::connect(&server.url()).await
                && append_one(&late, "late").await.is_ok()
            {
                return late;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a slot frees up once the flood closes");
    assert_eq!(
        count_all(&late).await,
        22,
        "only served appends were stored"
    );
    append_one(&client, "steady")
        .await
        .expect("the first client still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_lose_their_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(
        dir.path(),
        &[
            "--connections-max",
            "4",
            "--connection-first-bytes-ms",
            "300",
        ],
    );
    // Four silent sockets take every slot; the server closes them once the wait is over.
    let silent = silent_connections(&server.address, 4);
    wait_closed(&silent, 4).await;
    let client = server.client().await;
    append_one(&client, "after")
        .await
        .expect("served after the silent ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_gateway_limit_get_unavailable_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--gateway-requests-in-flight-max", "2"]);
    let mut calls = tokio::task::JoinSet::new();
    for connection in 0..3 {
        let client = server.client().await;
        for call in 0..100 {
            let client = client.clone();
            calls
                .spawn(async move { append_one(&client, &format!("s-{connection}-{call}")).await });
        }
    }
    let (mut acknowledged, mut unavailable) = (0, 0);
    let results = tokio::time::timeout(HANG, calls.join_all())
        .await
        .expect("every call is answered, none queues for ever");
    for result in results {
        match result {
            Ok(()) => acknowledged += 1,
            Err(error) => {
                assert_eq!(error.code(), "unavailable", "{error}");
                assert!(
                    error.to_string().contains("gateway_requests_in_flight_max"),
                    "{error}"
                );
                unavailable += 1;
            }
        }
    }
    assert!(
        unavailable > 0,
        "300 calls at once over 2 slots: some are refused"
    );
    assert!(acknowledged > 0, "and some are served");
    let client = server.client().await;
    append_one(&client, "after")
        .await
        .expect("served after the burst");
    assert_eq!(
        count_all(&client).await,
        acknowledged + 1,
        "refused calls wrote nothing"
    );
}

/// Peak resident memory of a process (`VmHWM`), bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

const EVENT_BYTES: usize = 64 * 1024;
const EVENTS_PER_APPEND: usize = 32;

async fn append_batches(client: &Client, batches: usize) {
    let data = vec![b'x'; EVENT_BYTES];
    for _ in 0..batches {
        let events = (0..EVENTS_PER_APPEND)
            .map(|_| NewEvent::new("Big", data.clone()))
            .collect();
        tokio::time::timeout(HANG, client.append("big", ExpectedVersion::Any, events))
            .await
            .expect("appends are not held up by readers that stopped")
            .expect("append acknowledged");
    }
}

/// Four subscribers and two `$all` reads stop reading while 160 MiB is appended. Buffers
/// without a bound would hold it all, once per reader (640 MiB and more on top of the store's
/// own memory); with each reader's buffer set small (64 events of 64 KiB), the server's peak
/// stays under 500 MiB, the writer is never held up, and every reader, when it reads again,
/// gets every event in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_stop_reading_hold_bounded_memory_and_do_not_block_writers() {
    const BOUND_BYTES: u64 = 500 * 1024 * 1024;
    const SUBSCRIBERS: usize = 4;
    const READS: usize = 2;
    let dir = tempfile::tempdir().expect("tempdir");
    // Small memtables and cache, so that storage's own memory leaves room to see the readers'.
    let server = Server::start_with(
        dir.path(),
        &[
            "--memtable-bytes-max",
            "8388608",
            "--cache-bytes-max",
            "8388608",
            "--subscriber-buffer-events-max",
            "64",
            "--read-events-max",
            "64",
        ],
    );
    let writer = server.client().await;

    // Each reader on its own connection: streams of one HTTP/2 connection share its flow
    // control window, so stalled streams would stall the connection's other calls too.
    let mut subscriptions = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let reader = server.client().await;
        let mut subscription =
            Box::pin(reader.subscribe(Selector::ByStream("$all".into()), StartFrom::Beginning));
        let first = tokio::time::timeout(HANG, subscription.next()).await;
        assert!(
            matches!(first, Ok(Some(Ok(SubscriptionMessage::CaughtUp)))),
            "an empty store: caught up at once"
        );
        subscriptions.push(subscription);
    }

    let first_part = 16; // 32 MiB, in place before the reads start
    append_batches(&writer, first_part).await;
    let mut reads = Vec::new();
    for _ in 0..READS {
        let reader = server.client().await;
        let mut read =
            Box::pin(reader.read_all(ReadFrom::Start, None, Direction::Forward, None, &[]));
        let opened = tokio::time::timeout(HANG, read.next()).await;
        assert!(matches!(opened, Ok(Some(Ok(_)))), "the read started");
        reads.push(read);
    }

    // No reader reads while the rest is appended.
    let second_part = 64; // 128 MiB
    append_batches(&writer, second_part).await;
    let total = ((first_part + second_part) * EVENTS_PER_APPEND) as u64;
    let peak = peak_rss_bytes(server.child.id());
    eprintln!(
        "slow readers: {} MiB appended, server peak RSS {} MiB",
        total * EVENT_BYTES as u64 / (1024 * 1024),
        peak / (1024 * 1024)
    );
    assert!(
        peak < BOUND_BYTES,
        "server peak RSS {} MiB with stalled readers",
        peak / (1024 * 1024)
    );

    // Resumed, each subscriber gets every event once, in order.
    for mut subscription in subscriptions {
        tokio::time::timeout(HANG, async {
            let mut next_position = 0u64;
            while next_position < total {
                match subscription.next().await {
                    Some(Ok(SubscriptionMessage::Event(event))) => {
                        assert_eq!(event.position, next_position, "in order, none skipped");
                        assert_eq!(event.data.len(), EVENT_BYTES);
                        next_position += 1;
                    }
                    other => panic!("subscription ended or failed: {other:?}"),
                }
            }
        })
        .await
        .expect("the subscriber catches up");
    }

    // Each read, resumed, goes on from where it stopped to the end.
    for mut read in reads {
        let end = tokio::time::timeout(HANG, async {
            let mut next_position = 1u64;
            while let Some(event) = read.next().await {
                let event = event.expect("the stalled read goes on");
                assert_eq!(event.position, next_position, "in order, none skipped");
                next_position += 1;
            }
            next_position
        })
        .await
        .expect("the read finishes");
        assert!(
            end >= (first_part * EVENTS_PER_APPEND) as u64,
            "the read returned at least what was stored when it began ({end})"
        );
    }
}
