//! PubSub: native topics over subscriptions, and an application's bus fed by the supervised
//! `ExESDB.PubSub` process, which resumes after being killed.

use std::sync::{Arc, Mutex};

use crate::common::{PATIENCE, event, start_with, wait_until};
use exesdb::{EventBus, ExpectedVersion, ExternalBus, RecordedEvent, SubscriptionMessage};

#[derive(Default)]
struct RecordingBus {
    published: Mutex<Vec<(String, u64)>>,
}

impl EventBus for RecordingBus {
    fn publish(&self, topic: &str, event: &RecordedEvent) {
        self.published
            .lock()
            .expect("lock")
            .push((topic.to_string(), event.position));
    }
}

impl RecordingBus {
    fn positions(&self, topic: &str) -> Vec<u64> {
        self.published
            .lock()
            .expect("lock")
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_bus_gets_every_event_under_both_topics_even_across_a_pubsub_crash() {
    let bus = Arc::new(RecordingBus::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let shared: Arc<dyn EventBus> = bus.clone();
    let store = start_with(dir, |config| config.event_bus = Some(ExternalBus(shared))).await;
    let s = &store.system;
    for i in 0..10 {
        let kind = if i % 2 == 0 { "Even" } else { "Odd" };
        s.api()
            .append("n", ExpectedVersion::Any, vec![event(kind, &i.to_string())])
            .await
            .expect("append");
    }
    // Each event goes to $all, then to its type's topic: wait for the last of both.
    wait_until(PATIENCE, "10 events on $all and 5 on Odd", || {
        bus.positions("default:$all").len() == 10 && bus.positions("default:Odd").len() == 5
    })
    .await;
    assert_eq!(bus.positions("default:Odd"), vec![1, 3, 5, 7, 9]);

    s.inject_fault("ExESDB.PubSub").expect("kill PubSub");
    for i in 10..20 {
        s.api()
            .append(
                "n",
                ExpectedVersion::Any,
                vec![event("Even", &i.to_string())],
            )
            .await
            .expect("append");
    }
    wait_until(PATIENCE, "event 19 on $all", || {
        bus.positions("default:$all").last() == Some(&19)
    })
    .await;
    let mut all = bus.positions("default:$all");
    all.dedup();
    assert_eq!(
        all,
        (0..20).collect::<Vec<_>>(),
        "in order, nothing skipped"
    );
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_topics_deliver_from_now_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |_| {}).await;
    let s = &store.system;
    s.api()
        .append("n", ExpectedVersion::Any, vec![event("Old", "x")])
        .await
        .expect("append");
    let mut all = s.api().listen("default:$all").await.expect("listen");
    let mut placed = s.api().listen("default:Placed").await.expect("listen");
    assert_eq!(all.next().await, Some(SubscriptionMessage::CaughtUp));
    assert_eq!(placed.next().await, Some(SubscriptionMessage::CaughtUp));
    s.api()
        .append(
            "n",
            ExpectedVersion::Any,
            vec![event("Placed", "y"), event("Other", "z")],
        )
        .await
        .expect("append");
    for expected in [1, 2] {
        match all.next().await {
            Some(SubscriptionMessage::Event(e)) => assert_eq!(e.position, expected),
            other => panic!("{other:?}"),
        }
    }
    match placed.next().await {
        Some(SubscriptionMessage::Event(e)) => assert_eq!(e.event_type, "Placed"),
        other => panic!("{other:?}"),
    }
    let error = s
        .api()
        .listen("other-store:$all")
        .await
        .expect_err("another store's topic");
    assert_eq!(error.code(), "invalid_argument");
    store.system.stop().await;
}
