//! Transient subscriptions: catch-up then live with `CaughtUp` between, every selector kind,
//! every start, emitters restarted without loss, and a property test under concurrent appends.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{PATIENCE, event, holds_throughout, start, start_with, wait_for, wait_until};
use exesdb::{
    Direction, ExpectedVersion, NewEvent, RecordedEvent, Selector, StartFrom, Subscription,
    SubscriptionMessage, System,
};
use proptest::prelude::*;
use serde_json::json;

/// Receives events until `count` have arrived; returns them and whether `CaughtUp` came, and
/// checks `CaughtUp` came at most once.
async fn receive(subscription: &mut Subscription, count: usize) -> (Vec<RecordedEvent>, bool) {
    let mut events = Vec::new();
    let mut caught_up = false;
    while events.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("a message within 10 s")
            .expect("the subscription is open");
        match message {
            SubscriptionMessage::Event(event) => events.push(Arc::unwrap_or_clone(event)),
            SubscriptionMessage::CaughtUp => {
                assert!(!caught_up, "CaughtUp twice");
                caught_up = true;
            }
        }
    }
    (events, caught_up)
}

async fn expect_caught_up(subscription: &mut Subscription) {
    let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("a message within 10 s")
        .expect("open");
    assert_eq!(message, SubscriptionMessage::CaughtUp);
}

/// Appends `marker` (which the subscription selects) to the stream `marker` and checks it is
/// the next message. Delivery is in position order, so anything the subscription must not get
/// from before the marker would have come first: the marker shows nothing did, where a fixed
/// wait would only show nothing came quickly.
async fn expect_only_the_marker(
    system: &System,
    subscription: &mut Subscription,
    marker: NewEvent,
) {
    let appended = system
        .api()
        .append("marker", ExpectedVersion::Any, vec![marker])
        .await
        .expect("append the marker");
    let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("the marker within 10 s")
        .expect("open");
    assert!(
        matches!(&message, SubscriptionMessage::Event(e) if e.position == appended.last_position),
        "the marker came next, not {message:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_then_caught_up_then_live() {
    let store = start().await;
    let s = &store.system;
    for i in 0..10 {
        s.api()
            .append(
                &format!("s{}", i % 3),
                ExpectedVersion::Any,
                vec![event("E", &i.to_string())],
            )
            .await
            .expect("append");
    }
    let mut all = s
        .api()
        .subscribe(Selector::ByStream("$all".into()), StartFrom::Beginning)
        .await
        .expect("subscribe");
    let (events, caught_up) = receive(&mut all, 10).await;
    assert!(!caught_up, "CaughtUp only after the stored events");
    assert_eq!(
        events.iter().map(|e| e.position).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    expect_caught_up(&mut all).await;
    for i in 10..15 {
        s.api()
            .append(
                "live",
                ExpectedVersion::Any,
                vec![event("E", &i.to_string())],
            )
            .await
            .expect("append");
    }
    let (live, caught_up) = receive(&mut all, 5).await;
    assert!(!caught_up);
    assert_eq!(
        live.iter().map(|e| e.position).collect::<Vec<_>>(),
        (10..15).collect::<Vec<_>>()
    );
    expect_only_the_marker(s, &mut all, event("Marker", "")).await;
    drop(all);
    wait_until(
        PATIENCE,
        "the emitter notices the subscriber left and the subscription ends",
        || s.api().subscription_count() == 0,
    )
    .await;
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_selector_kind_and_start() {
    let store = start().await;
    let s = &store.system;
    let placed = |order: u64, total: u64| {
        NewEvent::json("OrderPlaced", &json!({"order": order, "total": total}))
    };
    s.api()
        .append("order-1", ExpectedVersion::Any, vec![placed(1, 10)])
        .await
        .expect("append");
    s.api()
        .append(
            "cart-1",
            ExpectedVersion::Any,
            vec![event("ItemAdded", "{}")],
        )
        .await
        .expect("append");
    s.api()
        .append("order-2", ExpectedVersion::Any, vec![placed(2, 99)])
        .await
        .expect("append");

    let mut by_stream = s
        .api()
        .subscribe(Selector::ByStream("order-2".into()), StartFrom::Beginning)
        .await
        .expect("sub");
    let mut by_type = s
        .api()
        .subscribe(
            Selector::ByEventType("OrderPlaced".into()),
            StartFrom::Beginning,
        )
        .await
        .expect("sub");
    let mut by_pattern = s
        .api()
        .subscribe(
            Selector::ByEventPattern(json!({"stream_id": "cart-1"})),
            StartFrom::Beginning,
        )
        .await
        .expect("sub");
    let mut by_payload = s
        .api()
        .subscribe(
            Selector::ByEventPayload(json!({"total": 99})),
            StartFrom::Beginning,
        )
        .await
        .expect("sub");
    let mut from_end = s
        .api()
        .subscribe(Selector::ByStream("$all".into()), StartFrom::End)
        .await
        .expect("sub");
    let mut from_position = s
        .api()
        .subscribe(Selector::ByStream("$all".into()), StartFrom::Position(2))
        .await
        .expect("sub");

    let streams = |events: &[RecordedEvent]| {
        events
            .iter()
            .map(|e| e.stream_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        streams(&receive(&mut by_stream, 1).await.0),
        vec!["order-2"]
    );
    assert_eq!(
        streams(&receive(&mut by_type, 2).await.0),
        vec!["order-1", "order-2"]
    );
    assert_eq!(
        streams(&receive(&mut by_pattern, 1).await.0),
        vec!["cart-1"]
    );
    assert_eq!(
        streams(&receive(&mut by_payload, 1).await.0),
        vec!["order-2"]
    );
    assert_eq!(receive(&mut from_position, 1).await.0[0].position, 2);
    for subscription in [
        &mut by_stream,
        &mut by_type,
        &mut by_pattern,
        &mut by_payload,
        &mut from_end,
        &mut from_position,
    ] {
        expect_caught_up(subscription).await;
    }
    s.api()
        .append("order-2", ExpectedVersion::Any, vec![placed(2, 5)])
        .await
        .expect("append");
    assert_eq!(receive(&mut from_end, 1).await.0[0].position, 3);
    assert_eq!(receive(&mut by_stream, 1).await.0[0].position, 3);
    // Of the events so far only order-2's first has a total of 99.
    expect_only_the_marker(
        s,
        &mut by_payload,
        NewEvent::json("Marker", &json!({"total": 99})),
    )
    .await;

    let error = s
        .api()
        .subscribe(Selector::ByEventPattern(json!([1])), StartFrom::Beginning)
        .await
        .expect_err("a pattern must be an object");
    assert_eq!(error.code(), "invalid_argument");
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_emitter_resumes_without_loss_or_repeat() {
    let store = start().await;
    let s = &store.system;
    let mut subscription = s
        .api()
        .subscribe(Selector::ByStream("$all".into()), StartFrom::Beginning)
        .await
        .expect("sub");
    expect_caught_up(&mut subscription).await;
    let emitter = format!("ExESDB.Emitter({})", subscription.id());
    let mut positions = Vec::new();
    for round in 0..3 {
        for i in 0..20 {
            s.api()
                .append(
                    "s",
                    ExpectedVersion::Any,
                    vec![event("E", &format!("{round}-{i}"))],
                )
                .await
                .expect("append");
        }
        let old = s.process_id(&emitter).expect("the emitter runs");
        s.inject_fault(&emitter).expect("kill the emitter");
        for i in 0..20 {
            s.api()
                .append(
                    "s",
                    ExpectedVersion::Any,
                    vec![event("E", &format!("{round}-after-{i}"))],
                )
                .await
                .expect("append");
        }
        let (events, _) = receive(&mut subscription, 40).await;
        positions.extend(events.iter().map(|e| e.position));
        // The kill is a message the emitter takes in turn: it may still be delivering when
        // the events are in, and restarts after.
        wait_until(PATIENCE, "a new emitter runs", || {
            s.process_id(&emitter).is_some_and(|now| now != old)
        })
        .await;
    }
    assert_eq!(
        positions,
        (0..120).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let tree = s.tree();
    assert!(tree.find(&emitter).expect("emitter in the tree").restarts >= 3);
    store.system.stop().await;
}

/// Reads positions 0 to `total` (exclusive) from `subscription`, in order, checking each event.
async fn read_every_event(
    subscription: &mut exesdb::Subscription,
    total: u64,
    check: impl Fn(&exesdb::RecordedEvent),
) {
    let mut position = 0;
    while position < total {
        match tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("message")
            .expect("open")
        {
            SubscriptionMessage::Event(event) => {
                assert_eq!(event.position, position);
                check(&event);
                position += 1;
            }
            SubscriptionMessage::CaughtUp => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_holds_only_its_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| {
        config.limits.subscriber_buffer_events_max = 16
    })
    .await;
    let s = &store.system;
    let mut idle = s
        .api()
        .subscribe(Selector::ByStream("$all".into()), StartFrom::Beginning)
        .await
        .expect("sub");
    let total = 20_000u64;
    for chunk in 0..(total / 1_000) {
        let events = (0..1_000)
            .map(|i| event("E", &(chunk * 1_000 + i).to_string()))
            .collect();
        s.api()
            .append("bulk", ExpectedVersion::Any, events)
            .await
            .expect("writers are not held up");
    }
    // Only the buffer's worth was taken from storage so far.
    let waiting = idle.receiver_len();
    assert!(
        waiting <= 16,
        "{waiting} messages buffered for a subscriber that reads nothing"
    );
    read_every_event(&mut idle, total, |_| {}).await;
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_large_events_holds_only_its_buffer_bytes() {
    const EVENT_BYTES: usize = 64 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    // The count bound (1,024) would allow 64 MiB of these; the byte bound allows 1 MiB.
    let store = start_with(dir, |config| {
        config.limits.subscriber_buffer_bytes_max = 1024 * 1024
    })
    .await;
    let s = &store.system;
    let mut idle = s
        .api()
        .subscribe(Selector::ByStream("$all".into()), StartFrom::Beginning)
        .await
        .expect("sub");
    let total = 100u64;
    for i in 0..total {
        let data = vec![i as u8; EVENT_BYTES];
        s.api()
            .append(
                "big",
                ExpectedVersion::Any,
                vec![exesdb::NewEvent::new("E", data)],
            )
            .await
            .expect("writers are not held up");
    }
    let stored = s
        .api()
        .read_stream("big", None, 1, Direction::Forward)
        .await
        .expect("read");
    let fits = (1024 * 1024 / stored[0].size_bytes()) as usize;
    // Beside the events, the channel may hold the CaughtUp sent before the first append.
    wait_until(PATIENCE, "the emitter fills the byte budget", || {
        idle.receiver_len() >= fits
    })
    .await;
    // Nothing marks "the emitter has stopped for want of room" from outside, so the claim
    // that it does not send more is watched for a bounded while.
    holds_throughout(
        Duration::from_millis(200),
        &format!("at most {fits} events of 64 KiB buffered against a 1 MiB budget"),
        || idle.receiver_len() <= fits + 1,
    )
    .await;
    read_every_event(&mut idle, total, |event| {
        assert_eq!(event.data, vec![event.position as u8; EVENT_BYTES]);
    })
    .await;
    store.system.stop().await;
}

#[derive(Debug, Clone)]
enum Kind {
    All,
    Stream(u8),
    Type(u8),
    /// `$et-T<n>`: the event-type index read as a stream.
    TypeStream(u8),
    /// `$ce-c<n>`: the category index read as a stream.
    Category(u8),
    Pattern(u8),
    Payload(u8),
}

/// The property's streams, `c0-s0`, `c1-s1`, `c0-s2`: three streams in two categories.
fn stream(n: u8) -> String {
    format!("c{}-s{n}", n % 2)
}

impl Kind {
    fn selector(&self) -> Selector {
        match self {
            Kind::All => Selector::ByStream("$all".into()),
            Kind::Stream(n) => Selector::ByStream(stream(*n)),
            Kind::Type(n) => Selector::ByEventType(format!("T{n}")),
            Kind::TypeStream(n) => Selector::ByStream(format!("$et-T{n}")),
            Kind::Category(n) => Selector::ByStream(format!("$ce-c{n}")),
            Kind::Pattern(n) => Selector::ByEventPattern(json!({"stream_id": stream(*n)})),
            Kind::Payload(n) => Selector::ByEventPayload(json!({"k": n})),
        }
    }
}

fn kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::All),
        (0u8..3).prop_map(Kind::Stream),
        (0u8..3).prop_map(Kind::Type),
        (0u8..3).prop_map(Kind::TypeStream),
        (0u8..2).prop_map(Kind::Category),
        (0u8..3).prop_map(Kind::Pattern),
        (0u8..3).prop_map(Kind::Payload),
    ]
}

/// `tail_events`: the commit tail's size; 0 sends every subscriber to storage, a few events
/// move each between the tail and storage as it falls behind and catches up.
async fn run(subscribers: Vec<(Kind, u8)>, appenders: usize, appends: usize, tail_events: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        start_with(dir, |config| {
            config.limits.commit_tail_events_max = tail_events;
        })
        .await,
    );
    let mut writers = Vec::new();
    for writer in 0..appenders {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..appends {
                let n = ((writer * 7 + i * 3) % 3) as u8;
                let stream = stream(((writer + i) % 3) as u8);
                let event =
                    NewEvent::json(format!("T{n}"), &json!({"k": (i % 3) as u8, "w": writer}));
                store
                    .system
                    .api()
                    .append(&stream, ExpectedVersion::Any, vec![event])
                    .await
                    .expect("append");
            }
        }));
    }
    // Subscribers start at different moments while the writers run. The delays are the
    // property's input (when each subscriber joins), not a wait for anything.
    let mut subscriptions = Vec::new();
    for (kind, delay) in subscribers {
        tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
        let subscription = store
            .system
            .api()
            .subscribe(kind.selector(), StartFrom::Beginning)
            .await
            .expect("sub");
        subscriptions.push((kind, subscription));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    // One marker per n that every kind with that n selects (a category selects the markers of
    // its streams, and $all selects them all):
    // each subscription's last event is a marker, so getting exactly the matching events up to
    // it shows that no other event came, without waiting to see that none does.
    for n in 0..3u8 {
        let marker = NewEvent::json(format!("T{n}"), &json!({"k": n, "marker": true}));
        store
            .system
            .api()
            .append(&stream(n), ExpectedVersion::Any, vec![marker])
            .await
            .expect("append a marker");
    }
    let all = store
        .system
        .api()
        .read_all(exesdb::ReadAllRequest {
            count: 10_000,
            ..Default::default()
        })
        .await
        .expect("read all");
    for (kind, mut subscription) in subscriptions {
        let selector = kind.selector();
        let expected: Vec<u64> = all
            .iter()
            .filter(|e| selector.matches(e))
            .map(|e| e.position)
            .collect();
        let (events, _) = receive(&mut subscription, expected.len()).await;
        let got: Vec<u64> = events.iter().map(|e| e.position).collect();
        assert_eq!(
            got, expected,
            "{kind:?}: exactly the matching events, in order"
        );
        assert!(
            events
                .last()
                .and_then(|e| serde_json::from_slice::<serde_json::Value>(&e.data).ok())
                .is_some_and(|data| data["marker"] == true),
            "{kind:?}: the last event is a marker"
        );
    }
    if let Ok(store) = Arc::try_unwrap(store) {
        store.system.stop().await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn subscribers_of_every_kind_get_exactly_their_events(
        subscribers in proptest::collection::vec((kinds(), 0u8..30), 1..6),
        appenders in 1usize..6,
        appends in 5usize..60,
        tail_events in prop_oneof![Just(0usize), Just(4), Just(16_384)],
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(subscribers, appenders, appends, tail_events));
    }
}

/// A subscriber slower than the writers still gets `CaughtUp`, once every event stored when it
/// subscribed has reached it: the reader takes one event and the writer then appends two, so
/// the committed mark runs ahead of the subscription for ever (with a buffer of 8, the emitter
/// can never overtake it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_slower_than_the_writers_still_gets_caught_up() {
    const STORED: u64 = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| config.limits.subscriber_buffer_events_max = 8).await;
    let api = store.system.api();
    let stored = (0..STORED).map(|i| event("E", &i.to_string())).collect();
    api.append("busy", ExpectedVersion::Any, stored)
        .await
        .expect("stored before subscribing");
    let mut subscription = api
        .subscribe(Selector::ByStream("$all".into()), StartFrom::Beginning)
        .await
        .expect("subscribes");
    let mut received = 0u64;
    loop {
        let message = tokio::time::timeout(PATIENCE, subscription.next())
            .await
            .expect("a message in time")
            .expect("the subscription goes on");
        match message {
            SubscriptionMessage::Event(delivered) => {
                assert_eq!(delivered.position, received, "in order, none skipped");
                received += 1;
                assert!(
                    received <= 4 * STORED,
                    "{received} events delivered and no CaughtUp"
                );
                let more = vec![event("E", "more"), event("E", "more")];
                api.append("busy", ExpectedVersion::Any, more)
                    .await
                    .expect("the writer goes on");
            }
            SubscriptionMessage::CaughtUp => break,
        }
    }
    assert!(
        received >= STORED,
        "CaughtUp after {received} events: every one of the {STORED} stored first comes before it"
    );
    let version = api.stream_version("busy").await.expect("a version");
    let committed = u64::try_from(version + 1).expect("events stored");
    assert!(
        committed > received,
        "the writer was still ahead when CaughtUp came"
    );
    store.system.stop().await;
}

/// An idle subscription costs nothing: its emitter parks at the end of the log and takes no
/// step until a commit wakes it. With a worker idle time of 100 ms, an emitter that polled
/// (as it did, every 50 ms) would keep its worker alive for ever; a parked one lets it stop,
/// and the next commit still reaches the subscriber at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_subscription_takes_no_steps_and_a_commit_wakes_it() {
    let store = crate::common::start_with_short_idle().await;
    let api = store.system.api();
    let mut subscription = api
        .subscribe(Selector::ByStream("$all".into()), StartFrom::End)
        .await
        .expect("subscribes");
    expect_caught_up(&mut subscription).await;
    for round in 0..3u64 {
        crate::common::wait_for_every_worker_to_stop(&store.system).await;
        let appended = api
            .append("quiet", ExpectedVersion::Any, vec![event("E", "wake")])
            .await
            .expect("append");
        let message = tokio::time::timeout(PATIENCE, subscription.next())
            .await
            .expect("the commit wakes the parked emitter")
            .expect("open");
        assert!(
            matches!(&message, SubscriptionMessage::Event(e) if e.position == appended.last_position && e.position == round),
            "round {round}: the new event, not {message:?}"
        );
    }
    store.system.stop().await;
}

/// A subscription dropped on a quiet store is released at once, not when the next event would
/// have found no one: with room for one subscription, each new one needs the last released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscription_is_released_on_a_quiet_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| config.limits.subscriptions_max = 1).await;
    let api = store.system.api();
    for _ in 0..5 {
        let mut subscription = wait_for(PATIENCE, || async {
            api.subscribe(Selector::ByStream("$all".into()), StartFrom::End)
                .await
                .map_err(|error| format!("the last one is not released yet: {error}"))
        })
        .await;
        expect_caught_up(&mut subscription).await;
        assert!(
            api.subscribe(Selector::ByStream("$all".into()), StartFrom::End)
                .await
                .is_err(),
            "a second subscription is refused while the first is open"
        );
        drop(subscription);
    }
    store.system.stop().await;
}

/// A by-stream subscription catches up through the stream's index: the steps it takes follow
/// the stream's size, not the store's. With 16 records a step, scanning the log past 20,000
/// other events would take over 1,250 steps; the stream's 100 events take about 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_by_stream_subscription_catches_up_in_the_streams_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| {
        config.pools.emitter_scan_events_max = 16;
        config.limits.commit_tail_events_max = 0;
    })
    .await;
    let api = store.system.api();
    for chunk in 0..20u64 {
        // Events of the stream sit among the others, first and last in the log included.
        let ours = (0..5)
            .map(|i| event("Ours", &format!("{chunk}:{i}")))
            .collect();
        api.append("target", ExpectedVersion::Any, ours)
            .await
            .expect("append to target");
        let noise = (0..1_000).map(|_| event("Noise", "x")).collect();
        api.append(&format!("noise-{}", chunk % 4), ExpectedVersion::Any, noise)
            .await
            .expect("append noise");
    }
    let tail = (0..3)
        .map(|i| event("Ours", &format!("last:{i}")))
        .collect();
    api.append("target", ExpectedVersion::Any, tail)
        .await
        .expect("append the last");
    let steps_before = api.emitter_steps();
    let mut subscription = api
        .subscribe(Selector::ByStream("target".into()), StartFrom::Beginning)
        .await
        .expect("subscribes");
    let (events, caught_up) = receive(&mut subscription, 103).await;
    let numbers: Vec<u64> = events.iter().map(|e| e.event_number).collect();
    assert_eq!(
        numbers,
        (0..103).collect::<Vec<_>>(),
        "the whole stream, in order"
    );
    assert!(events.iter().all(|e| e.stream_id == "target"));
    if !caught_up {
        expect_caught_up(&mut subscription).await;
    }
    let steps = api.emitter_steps() - steps_before;
    assert!(
        steps <= 30,
        "{steps} emitter steps to catch up 103 events among 20,000: the log was scanned"
    );
    // From an event number, and live after that, through the same index.
    let mut from_middle = api
        .subscribe(
            Selector::ByStream("target".into()),
            StartFrom::EventNumber(50),
        )
        .await
        .expect("subscribes");
    let (events, _) = receive(&mut from_middle, 53).await;
    assert_eq!(events.first().map(|e| e.event_number), Some(50));
    assert_eq!(events.last().map(|e| e.event_number), Some(102));
    let live = api
        .append("target", ExpectedVersion::Any, vec![event("Ours", "live")])
        .await
        .expect("append live");
    let (events, caught_up) = receive(&mut from_middle, 1).await;
    assert!(caught_up, "CaughtUp before the live event");
    assert_eq!(
        events[0].position, live.last_position,
        "the live event next"
    );
    store.system.stop().await;
}
