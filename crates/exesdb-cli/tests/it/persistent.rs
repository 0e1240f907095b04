//! Persistent subscriptions over the wire: stored, consumed with acks, resumed from the
//! checkpoint after a server restart, shared by a group, nacks and parked events.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{PATIENCE, Server, wait_for};
use exesdb_client::{
    Consumer, Delivery, ExpectedVersion, NackAction, NewEvent, Selector, StartFrom,
    SubscriptionDefinition,
};

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("open")
        .expect("ok")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_ack_and_resume_after_a_server_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let client = server.client().await;
    for i in 0..10 {
        client
            .append(
                "s",
                ExpectedVersion::Any,
                vec![NewEvent::new("E", format!("{i}").into_bytes())],
            )
            .await
            .expect("append");
    }
    let definition = SubscriptionDefinition::new(
        "audit",
        Selector::ByStream("$all".into()),
        StartFrom::Beginning,
    );
    client.save_subscription(&definition).await.expect("save");
    assert_eq!(
        client.list_subscriptions().await.expect("list"),
        vec![definition]
    );
    let mut consumer = client.consume("audit").await.expect("consume");
    for expected in 0..10u64 {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.event.position, expected);
        if expected < 7 {
            consumer.ack(expected).await.expect("ack");
        }
    }
    consumer.nack(7, NackAction::Park).await.expect("park");
    // 0..=6 acknowledged, 7 parked, 8 and 9 still out: the checkpoint settles at 8.
    wait_for(PATIENCE, || {
        let client = &client;
        async move {
            match client
                .subscription_checkpoint("audit")
                .await
                .expect("checkpoint")
            {
                Some(8) => Ok(()),
                other => Err(format!(
                    "the checkpoint of audit reaches 8; it is {other:?}"
                )),
            }
        }
    })
    .await;
    drop(consumer);
    let parked = client.parked_events("audit").await.expect("parked");
    assert_eq!(
        parked.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![7]
    );
    drop(client);
    let exit = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("join");
    assert_eq!(exit.code(), Some(0));

    let server = Server::start(dir.path());
    let client = server.client().await;
    let mut consumer = client
        .consume("audit")
        .await
        .expect("consume after restart");
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let delivery = next(&mut consumer).await;
        let position = delivery.event.position;
        assert!(position > 7, "{position} was acknowledged or parked");
        seen.insert(position);
        consumer.ack(position).await.expect("ack");
    }
    assert_eq!(seen, [8, 9].into_iter().collect());
    assert_eq!(client.replay_parked("audit").await.expect("replay"), 1);
    assert_eq!(next(&mut consumer).await.event.position, 7);
    client.remove_subscription("audit").await.expect("remove");
    assert!(client.list_subscriptions().await.expect("list").is_empty());
    let error = client
        .consume("nothing")
        .await
        .expect_err("unknown subscription");
    assert_eq!(error.code(), "subscription_not_found");
}

/// A persistent subscription name that no subscription has is `subscription_not_found`
/// (gRPC `NOT_FOUND`), whether consumed or asked for its parked events: an empty list would
/// hide a typo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_subscription_name_is_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let client = server.client().await;
    let Err(consumed) = client.consume("no-such-subscription").await else {
        panic!("a consumer of a subscription nobody saved");
    };
    assert_eq!(consumed.code(), "subscription_not_found", "{consumed}");
    let parked = client
        .parked_events("no-such-subscription")
        .await
        .expect_err("no parked list for a name nobody has");
    assert_eq!(parked.code(), "subscription_not_found", "{parked}");
}
