//! The secondary indexes through the embedded API: `$et-<type>` and `$ce-<category>` read as
//! read-only streams of the original events in global order, filtered `$all` reads, and
//! subscriptions (transient and persistent) that catch up through an index and go live. Each
//! answer is checked against the same filter applied to an unfiltered read of `$all`.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{event, start};
use exesdb::{
    Direction, ExpectedVersion, ReadAllRequest, RecordedEvent, Selector, StartFrom, StoreError,
    SubscriptionDefinition, SubscriptionMessage, System, category_of,
};

/// (stream, type) of the events the tests write, in position order.
const EVENTS: [(&str, &str); 9] = [
    ("order-1", "Placed"),
    ("customer-7", "Registered"),
    ("order-2", "Placed"),
    ("order-1", "Shipped"),
    ("orders", "Placed"),
    ("customer-7", "Moved"),
    ("order-2", "Shipped"),
    ("orderly-1", "Placed"),
    ("order-3", "Placed"),
];

async fn write_events(system: &System) {
    for (stream_id, event_type) in EVENTS {
        system
            .api()
            .append(
                stream_id,
                ExpectedVersion::Any,
                vec![event(event_type, "{}")],
            )
            .await
            .expect("append");
    }
}

async fn everything(system: &System) -> Vec<RecordedEvent> {
    system
        .api()
        .read_all(ReadAllRequest {
            count: 10_000,
            ..ReadAllRequest::default()
        })
        .await
        .expect("read $all")
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|event| event.position).collect()
}

/// What an index stream holds, by the filter itself.
fn expected(all: &[RecordedEvent], stream_id: &str) -> Vec<RecordedEvent> {
    all.iter()
        .filter(|event| match stream_id.split_at(4) {
            ("$et-", event_type) => event.event_type == event_type,
            ("$ce-", category) => category_of(&event.stream_id) == Some(category),
            _ => unreachable!("an index stream"),
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn index_streams_read_the_original_events_in_global_order() {
    let store = start().await;
    write_events(&store.system).await;
    let all = everything(&store.system).await;
    let api = store.system.api();
    for stream_id in [
        "$ce-order",
        "$ce-customer",
        "$ce-orderly",
        "$et-Placed",
        "$et-Moved",
    ] {
        let wanted = expected(&all, stream_id);
        let forward = api
            .read_stream(stream_id, None, 100, Direction::Forward)
            .await
            .expect("read forward");
        assert_eq!(
            forward, wanted,
            "{stream_id}: the events themselves, in order"
        );
        let backward = api
            .read_stream(stream_id, None, 100, Direction::Backward)
            .await
            .expect("read backward");
        let reversed: Vec<RecordedEvent> = wanted.iter().rev().cloned().collect();
        assert_eq!(backward, reversed, "{stream_id} backward");
        // Paging: `from` is a position, so the next page starts after the last event's.
        let mut paged = Vec::new();
        let mut from = None;
        loop {
            let page = api
                .read_stream(stream_id, from, 2, Direction::Forward)
                .await
                .expect("read a page");
            let Some(last) = page.last() else { break };
            from = Some(last.position + 1);
            paged.extend(page);
        }
        assert_eq!(paged, wanted, "{stream_id} read two at a time");
    }
    // `orders` has no '-' (no category); `orderly-1` is its own category, not `order`'s.
    let order = api
        .read_stream("$ce-order", None, 100, Direction::Forward)
        .await
        .expect("read");
    assert!(
        order
            .iter()
            .all(|event| event.stream_id.starts_with("order-"))
    );
    assert_eq!(order.len(), 5);
    for missing in ["$ce-invoice", "$et-Cancelled"] {
        let error = api
            .read_stream(missing, None, 10, Direction::Forward)
            .await
            .expect_err("an index with no events");
        assert!(
            matches!(error, StoreError::StreamNotFound { .. }),
            "{missing}: {error:?}"
        );
    }
    store.system.stop().await;
}

#[tokio::test]
async fn index_streams_are_read_only_and_have_no_event_numbers() {
    let store = start().await;
    write_events(&store.system).await;
    let api = store.system.api();
    for stream_id in ["$ce-order", "$et-Placed"] {
        let error = api
            .append(stream_id, ExpectedVersion::Any, vec![event("Placed", "{}")])
            .await
            .expect_err("an index stream takes no appends");
        assert_eq!(error.code(), "invalid_argument");
        assert!(error.to_string().contains("read-only"), "{error}");
        let error = api
            .stream_version(stream_id)
            .await
            .expect_err("no version of its own");
        assert_eq!(error.code(), "invalid_argument");
        let error = api
            .subscribe(
                Selector::ByStream(stream_id.into()),
                StartFrom::EventNumber(1),
            )
            .await
            .expect_err("no event numbers of its own");
        assert!(error.to_string().contains("positions"), "{error}");
    }
    for malformed in ["$ce-", "$et-", "$ce-order-1"] {
        let error = api
            .read_stream(malformed, None, 10, Direction::Forward)
            .await
            .expect_err("malformed");
        assert_eq!(error.code(), "invalid_argument", "{malformed}");
    }
    // Nothing was written by the refused appends.
    assert_eq!(everything(&store.system).await.len(), EVENTS.len());
    store.system.stop().await;
}

#[tokio::test]
async fn a_filtered_read_of_all_answers_as_its_filter_does() {
    let store = start().await;
    write_events(&store.system).await;
    let all = everything(&store.system).await;
    let api = store.system.api();
    let filters: [(Option<&str>, &[&str]); 6] = [
        (None, &["Shipped", "Registered"]),
        (None, &["Placed"]),
        (Some("order-"), &[]),
        (Some("order-"), &["Placed"]),
        (Some("order"), &[]),
        (Some("customer-"), &["Placed"]),
    ];
    for (prefix, types) in filters {
        for (direction, from) in [
            (Direction::Forward, None),
            (Direction::Forward, Some(3)),
            (Direction::Backward, None),
            (Direction::Backward, Some(5)),
        ] {
            let request = ReadAllRequest {
                from_position: from,
                count: 100,
                direction,
                stream_prefix: prefix.map(str::to_string),
                event_types: types.iter().map(|t| t.to_string()).collect(),
                bytes_max: None,
            };
            let mut wanted: Vec<RecordedEvent> = all
                .iter()
                .filter(|e| prefix.is_none_or(|p| e.stream_id.starts_with(p)))
                .filter(|e| types.is_empty() || types.contains(&e.event_type.as_str()))
                .filter(|e| match (direction, from) {
                    (_, None) => true,
                    (Direction::Forward, Some(from)) => e.position >= from,
                    (Direction::Backward, Some(from)) => e.position <= from,
                })
                .cloned()
                .collect();
            if direction == Direction::Backward {
                wanted.reverse();
            }
            let got = api.read_all(request).await.expect("read");
            assert_eq!(
                positions(&got),
                positions(&wanted),
                "{prefix:?} {types:?} {direction:?} from {from:?}"
            );
        }
    }
    store.system.stop().await;
}

async fn next_event(subscription: &mut exesdb::Subscription) -> Arc<RecordedEvent> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("a message within 10 s")
            .expect("open");
        if let SubscriptionMessage::Event(event) = message {
            return event;
        }
    }
}

#[tokio::test]
async fn a_subscription_to_an_index_stream_catches_up_and_goes_live() {
    let store = start().await;
    write_events(&store.system).await;
    let api = store.system.api();
    for (selector, index_stream) in [
        (Selector::ByStream("$ce-order".into()), "$ce-order"),
        (Selector::ByEventType("Shipped".into()), "$et-Shipped"),
        (Selector::ByStream("$et-Shipped".into()), "$et-Shipped"),
    ] {
        // Each round appends: what it should catch up on is read anew.
        let wanted = expected(&everything(&store.system).await, index_stream);
        let mut subscription = api
            .subscribe(selector.clone(), StartFrom::Beginning)
            .await
            .expect("subscribe");
        let mut caught_up = Vec::new();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
                .await
                .expect("a message within 10 s")
                .expect("open");
            match message {
                SubscriptionMessage::Event(event) => caught_up.push((*event).clone()),
                SubscriptionMessage::CaughtUp => break,
            }
        }
        assert_eq!(positions(&caught_up), positions(&wanted), "{selector:?}");
        // Live: an event it must not get, then one it must; the second arriving next shows
        // the first was passed over (delivery is in position order).
        api.append(
            "customer-9",
            ExpectedVersion::Any,
            vec![event("Placed", "{}")],
        )
        .await
        .expect("append");
        let live = api
            .append(
                "order-9",
                ExpectedVersion::Any,
                vec![event("Shipped", "{}")],
            )
            .await
            .expect("append");
        let received = next_event(&mut subscription).await;
        assert_eq!(
            (received.stream_id.as_str(), received.position),
            ("order-9", live.first_position),
            "{selector:?}"
        );
    }
    store.system.stop().await;
}

#[tokio::test]
async fn a_persistent_subscription_to_a_category_delivers_its_events() {
    let store = start().await;
    write_events(&store.system).await;
    let all = everything(&store.system).await;
    let api = store.system.api();
    api.save_subscription(SubscriptionDefinition::new(
        "customers",
        Selector::ByStream("$ce-customer".into()),
        StartFrom::Beginning,
    ))
    .await
    .expect("save");
    let mut consumer = api
        .connect_subscription("customers")
        .await
        .expect("connect");
    let live = api
        .append(
            "customer-8",
            ExpectedVersion::Any,
            vec![event("Registered", "{}")],
        )
        .await
        .expect("append");
    let mut wanted = positions(&expected(&all, "$ce-customer"));
    wanted.push(live.first_position);
    let mut got = Vec::new();
    while got.len() < wanted.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery within 10 s")
            .expect("open");
        consumer.ack(delivery.event.position);
        got.push(delivery.event.position);
    }
    assert_eq!(got, wanted);
    store.system.stop().await;
}
