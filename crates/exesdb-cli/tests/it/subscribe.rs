//! Subscriptions over the wire: through the client, and `exesdb subscribe --json` printing one
//! line per event and `{"caught_up":true}` when it switches to live.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{PATIENCE, Server, wait_for};
use exesdb_client::{ExpectedVersion, NewEvent, Selector, StartFrom, SubscriptionMessage};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_subscription_catches_up_then_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let client = server.client().await;
    for i in 0..1_500u64 {
        let event = NewEvent::json(if i % 2 == 0 { "Even" } else { "Odd" }, &json!({"i": i}));
        client
            .append("numbers", ExpectedVersion::Any, vec![event])
            .await
            .expect("append");
    }
    let mut messages =
        std::pin::pin!(client.subscribe(Selector::ByEventType("Odd".into()), StartFrom::Beginning));
    let mut seen = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        match message {
            SubscriptionMessage::Event(event) => seen.push(event.position),
            SubscriptionMessage::CaughtUp => break,
        }
    }
    assert_eq!(seen, (0..1_500).filter(|p| p % 2 == 1).collect::<Vec<_>>());
    client
        .append(
            "numbers",
            ExpectedVersion::Any,
            vec![NewEvent::json("Odd", &json!({"i": 1500}))],
        )
        .await
        .expect("append");
    let live = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("ok");
    assert!(
        matches!(live, SubscriptionMessage::Event(ref e) if e.position == 1_500),
        "{live:?}"
    );

    let mut from_number = std::pin::pin!(client.subscribe(
        Selector::ByStream("numbers".into()),
        StartFrom::EventNumber(1_499)
    ));
    let first = from_number.next().await.expect("open").expect("ok");
    assert!(
        matches!(first, SubscriptionMessage::Event(ref e) if e.event_number == 1_499),
        "{first:?}"
    );
    let error = client.subscribe(Selector::ByStream("$all".into()), StartFrom::EventNumber(3));
    let mut error = std::pin::pin!(error);
    let refused = error
        .next()
        .await
        .expect("an answer")
        .expect_err("$all has no event numbers");
    assert_eq!(refused.code(), "invalid_argument");
}

#[test]
fn the_cli_prints_events_then_caught_up_then_live_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let exesdb = env!("CARGO_BIN_EXE_exesdb");
    let append_to = |stream: &str, data: &str| {
        let status = Command::new(exesdb)
            .args([
                "append",
                stream,
                "--type",
                "Placed",
                "--data",
                data,
                "--server",
                &server.url(),
            ])
            .stdout(Stdio::null())
            .status()
            .expect("append runs");
        assert!(status.success());
    };
    let append = |data: &str| append_to("orders", data);
    append(r#"{"n":1}"#);
    append(r#"{"n":2}"#);
    let mut subscriber = Command::new(exesdb)
        .args(["subscribe", "$all", "--json", "--server", &server.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("subscribe runs");
    let mut lines = BufReader::new(subscriber.stdout.take().expect("stdout")).lines();
    let mut next = || -> Value {
        serde_json::from_str(&lines.next().expect("a line").expect("readable")).expect("JSON")
    };
    assert_eq!(next()["data"], json!({"n": 1}));
    assert_eq!(next()["data"], json!({"n": 2}));
    assert_eq!(next(), json!({"caught_up": true}));
    append(r#"{"n":3}"#);
    let live = next();
    assert_eq!(
        (live["data"].clone(), live["position"].clone()),
        (json!({"n": 3}), json!(2))
    );
    let _ = subscriber.kill();
    let _ = subscriber.wait();

    // A persistent subscription by name: what was printed (and so acknowledged) does not
    // come again for the next consumer of the same name.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = server.url();
    let checkpoint_reaches = |position: u64| {
        runtime.block_on(async {
            let client = &exesdb_client::Client::connect(&url).await.expect("connect");
            wait_for(PATIENCE, || async move {
                match client.subscription_checkpoint("printer").await {
                    Ok(Some(stored)) if stored == position => Ok(()),
                    other => Err(format!(
                        "the checkpoint of printer reaches {position}; it is {other:?}"
                    )),
                }
            })
            .await;
        })
    };
    let persistent = |count: usize, checkpoint: u64| -> Vec<Value> {
        let mut child = Command::new(exesdb)
            .args([
                "subscribe",
                "$all",
                "--name",
                "printer",
                "--json",
                "--server",
                &server.url(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("subscribe runs");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let got = (0..count)
            .map(|_| {
                serde_json::from_str(&lines.next().expect("a line").expect("readable"))
                    .expect("JSON")
            })
            .collect();
        // Leave only once what was printed (and acknowledged) is in the stored checkpoint.
        checkpoint_reaches(checkpoint);
        let _ = child.kill();
        let _ = child.wait();
        got
    };
    let first: Vec<Value> = persistent(3, 3);
    assert_eq!(
        first
            .iter()
            .map(|e| e["position"].clone())
            .collect::<Vec<_>>(),
        vec![json!(0), json!(1), json!(2)]
    );
    append(r#"{"n":4}"#);
    let second = persistent(1, 4);
    assert_eq!(
        second[0]["position"], 3,
        "resumes after what the first consumer acknowledged"
    );

    // A category's index stream: `--from` is a position there (an event number would be
    // refused), and only the category's events come.
    append_to("order-1", r#"{"n":4}"#);
    append_to("customer-1", r#"{"n":5}"#);
    append_to("order-2", r#"{"n":6}"#);
    let mut subscriber = Command::new(exesdb)
        .args(["subscribe", "$ce-order", "--from", "5", "--json"])
        .args(["--server", &server.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("subscribe runs");
    let mut lines = BufReader::new(subscriber.stdout.take().expect("stdout")).lines();
    let mut next = || -> Value {
        serde_json::from_str(&lines.next().expect("a line").expect("readable")).expect("JSON")
    };
    let first = next();
    assert_eq!(
        (first["stream_id"].clone(), first["position"].clone()),
        (json!("order-2"), json!(6))
    );
    assert_eq!(next(), json!({"caught_up": true}));
    let _ = subscriber.kill();
    let _ = subscriber.wait();
}

/// A subscriber whose reader went away (`exesdb subscribe ... | head -1`) ends at its next
/// event, with status 0 and no panic, in both output formats.
#[test]
fn a_subscriber_whose_reader_is_gone_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let exesdb = env!("CARGO_BIN_EXE_exesdb");
    let append = || {
        let status = Command::new(exesdb)
            .args(["append", "piped", "--type", "Noted", "--data", "{}"])
            .args(["--server", &server.url()])
            .stdout(Stdio::null())
            .status()
            .expect("append runs");
        assert!(status.success());
    };
    append();
    for format in [None, Some("--json")] {
        let mut subscriber = Command::new(exesdb)
            .args(["subscribe", "$all", "--server", &server.url()])
            .args(format)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("subscribe runs");
        let mut lines = BufReader::new(subscriber.stdout.take().expect("stdout")).lines();
        let first = lines.next().expect("a line").expect("readable");
        assert!(!first.is_empty());
        drop(lines);
        // The next write finds the pipe closed.
        append();
        let pid = subscriber.id().to_string();
        let (exited, exit) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = exited.send(subscriber.wait_with_output());
        });
        let Ok(output) = exit.recv_timeout(PATIENCE) else {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            panic!("the subscriber ({format:?}) went on after its reader had gone");
        };
        let output = output.expect("waitable");
        let (status, stderr) = (output.status, String::from_utf8_lossy(&output.stderr));
        assert!(status.success(), "{format:?}: {status}, stderr: {stderr}");
        assert!(!stderr.contains("panicked"), "{format:?}: {stderr}");
    }
}

#[test]
fn sigterm_ends_open_subscriptions_and_the_server_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let exesdb = env!("CARGO_BIN_EXE_exesdb");
    let mut subscribers: Vec<_> = [
        vec!["subscribe", "$all", "--json"],
        vec!["subscribe", "$all", "--name", "held", "--json"],
    ]
    .into_iter()
    .map(|args| {
        Command::new(exesdb)
            .args(args)
            .args(["--server", &server.url()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("subscribe runs")
    })
    .collect();
    // The transient one says it is live; the persistent one has joined once it prints an
    // event appended now.
    let mut lines = BufReader::new(subscribers[0].stdout.take().expect("stdout")).lines();
    assert_eq!(
        lines.next().expect("a line").expect("readable"),
        r#"{"caught_up":true}"#
    );
    let appended = Command::new(exesdb)
        .args(["append", "held", "--type", "Joined", "--data", "{}"])
        .args(["--server", &server.url()])
        .stdout(Stdio::null())
        .status()
        .expect("append runs");
    assert!(appended.success());
    let mut held = BufReader::new(subscribers[1].stdout.take().expect("stdout")).lines();
    let joined: Value =
        serde_json::from_str(&held.next().expect("a line").expect("readable")).expect("JSON");
    assert_eq!(joined["event_type"], "Joined", "{joined}");
    let exit = server.terminate();
    assert_eq!(
        exit.code(),
        Some(0),
        "the server stops although subscriptions were open"
    );
    for subscriber in &mut subscribers {
        let status = subscriber
            .wait()
            .expect("the subscriber ends with its stream");
        assert!(status.code().is_some(), "ended by itself, not by a signal");
    }
}

/// Opens a subscription from the end and waits for the server's first answer, so it is
/// counted: `Ok` once it is open, or the refusal.
async fn open_from_end(
    client: &exesdb_client::Client,
) -> Result<
    impl tokio_stream::Stream<Item = Result<SubscriptionMessage, exesdb_client::ClientError>>,
    exesdb_client::ClientError,
> {
    let mut messages =
        Box::pin(client.subscribe(Selector::ByStream("$all".into()), StartFrom::End));
    // From the end of an empty store the first message is `CaughtUp`.
    match tokio::time::timeout(PATIENCE, messages.next()).await {
        Ok(Some(Ok(SubscriptionMessage::CaughtUp))) => Ok(messages),
        Ok(Some(Ok(other))) => panic!("an empty store sent {other:?}"),
        Ok(Some(Err(error))) => Err(error),
        Ok(None) => panic!("the subscription ended at once"),
        Err(_) => panic!("no answer to the subscription in time"),
    }
}

/// A subscription whose client goes away is released then, on a quiet store too, not when
/// the next event would have found nobody: with `--subscriptions-max 2`, subscriptions keep
/// opening after many more than two have been opened and dropped, and the store's workers
/// go back down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscription_is_released_without_waiting_for_an_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--subscriptions-max", "2"]);
    let client = server.client().await;
    let first = open_from_end(&client).await.expect("the first opens");
    let second = open_from_end(&client).await.expect("the second opens");
    let Err(refused) = open_from_end(&client).await else {
        panic!("a third subscription opened past subscriptions_max 2");
    };
    assert_eq!(refused.code(), "limit_exceeded", "{refused}");
    drop((first, second));
    for round in 0..10 {
        let opened = wait_for(PATIENCE, || async {
            open_from_end(&client)
                .await
                .map_err(|error| format!("round {round}: {error}"))
        })
        .await;
        drop(opened);
    }
}
