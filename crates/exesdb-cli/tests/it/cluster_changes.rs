//! Cluster mode's changes, with real processes: a follower catching up from the log and from
//! a snapshot, a 5-node cluster losing two nodes and then a third, a graceful stop of the
//! leader handing over, and a node that lost its disk being refused under its old id, then
//! taken back with `exesdb cluster remove` and `add`, and given the leadership with
//! `transfer-leader`. Each test that writes with event ids records its history and checks it
//! against every running node at the end (`exesdb_test_support::history`).

use exesdb_client::{Client, Direction, ExpectedVersion, NewEvent, ReadFrom};
use exesdb_test_support::history::{Delivery, History, Operation};
use tokio_stream::StreamExt;
use uuid::Uuid;

use crate::cluster::{
    Cluster, as_stored, events_once_there, exesdb_cli, final_logs, recorded_append,
};
use crate::common::{PATIENCE, Server, http_get, metric, wait_for};

/// Appends `count` events one by one through `client` (node `node`), recording each in
/// `history`.
async fn append_recorded(
    history: &History,
    node: usize,
    client: &Client,
    stream: &str,
    count: usize,
) {
    for n in 0..count {
        recorded_append(
            history,
            (0, node, client),
            stream,
            ExpectedVersion::Any,
            vec![NewEvent::new("Noted", format!("{{\"n\":{n}}}"))],
        )
        .await
        .unwrap_or_else(|error| panic!("append {n} to {stream}: {error}"));
    }
}

/// Appends `count` events through `client` without a history: for the test whose raw wire
/// appends carry no event ids, which the checker could not tell from phantoms.
async fn append_events(client: &Client, stream: &str, count: usize) {
    for n in 0..count {
        client
            .append(
                stream,
                ExpectedVersion::Any,
                vec![NewEvent::new("Noted", format!("{{\"n\":{n}}}"))],
            )
            .await
            .unwrap_or_else(|error| panic!("append {n} to {stream}: {error}"));
    }
}

/// `exesdb cluster ... --json` against `server`: the exit code and the JSON it printed.
pub(crate) fn cluster_cli(server: &Server, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let url = server.url();
    let mut all = vec!["cluster"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", "--server", &url]);
    let output = exesdb_cli(&all);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        serde_json::json!({"stdout": String::from_utf8_lossy(&output.stdout),
                           "stderr": String::from_utf8_lossy(&output.stderr)})
    });
    (output.status.code(), report)
}

pub(crate) fn node_id(server: &Server) -> u64 {
    let (code, report) = cluster_cli(server, &["status"]);
    assert_eq!(code, Some(0), "{report}");
    report["node_id"].as_u64().expect("a node id")
}

fn snapshot_bytes_received(server: &Server) -> f64 {
    metric(
        &server.address,
        "exesdb_raft_snapshot_received_bytes_total{store=\"default\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_from_the_log_and_after_a_long_absence_from_a_snapshot() {
    // A snapshot every 50 entries, and 50 kept behind it.
    let mut cluster = Cluster::new(3, &["--raft-snapshot-entries", "50"]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let client = cluster.client(leader).await;
    let history = History::new();
    append_recorded(&history, leader, &client, "before", 10).await;
    events_once_there(cluster.node(follower), 10).await;

    // Away briefly: the entries it missed are still in the leader's log.
    cluster.kill(follower);
    append_recorded(&history, leader, &client, "briefly-away", 20).await;
    cluster.start(follower);
    let reference = events_once_there(cluster.node(leader), 30).await;
    assert_eq!(
        events_once_there(cluster.node(follower), 30).await,
        reference
    );
    assert_eq!(
        snapshot_bytes_received(cluster.node(follower)),
        0.0,
        "caught up from the log"
    );

    // Away long: the leader snapshots and drops the log the follower would need.
    cluster.kill(follower);
    append_recorded(&history, leader, &client, "long-away", 300).await;
    let leader_address = cluster.node(leader).address.clone();
    wait_for(PATIENCE, || {
        let purged = metric(
            &leader_address,
            "exesdb_raft_purged_index{store=\"default\"}",
        );
        std::future::ready(if purged >= 100.0 {
            Ok(())
        } else {
            Err(format!("the leader's log purged past 100, at {purged}"))
        })
    })
    .await;
    cluster.start(follower);
    let reference = events_once_there(cluster.node(leader), 330).await;
    assert_eq!(
        events_once_there(cluster.node(follower), 330).await,
        reference
    );
    assert!(
        snapshot_bytes_received(cluster.node(follower)) > 0.0,
        "caught up from a snapshot"
    );
    // And it follows the log again after the snapshot.
    append_recorded(&history, leader, &client, "after", 5).await;
    assert_eq!(
        events_once_there(cluster.node(follower), 335).await,
        events_once_there(cluster.node(leader), 335).await
    );
    history.assert_valid(&final_logs(&cluster, 335).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_serve_with_two_down_and_refuse_writes_with_three_down() {
    let mut cluster = Cluster::new(5, &[]);
    let leader = cluster.leader().await;
    let others: Vec<usize> = (0..5).filter(|index| *index != leader).collect();
    cluster.kill(others[0]);
    cluster.kill(others[1]);
    let via_leader = cluster.client(leader).await;
    let via_follower = cluster.client(others[2]).await;
    let history = History::new();
    append_recorded(&history, leader, &via_leader, "two-down", 3).await;
    append_recorded(&history, others[2], &via_follower, "two-down", 3).await;
    assert_eq!(events_once_there(cluster.node(others[3]), 6).await.len(), 6);

    // Two of five left: no majority, so no write is acknowledged.
    cluster.kill(others[2]);
    let id = Uuid::now_v7();
    let event = || NewEvent::new("Noted", "{}").with_id(id);
    let refused = recorded_append(
        &history,
        (0, leader, &via_leader),
        "three-down",
        ExpectedVersion::Any,
        vec![event()],
    )
    .await
    .expect_err("two of five nodes cannot commit");
    assert_eq!(refused.code(), "unavailable", "{refused}");
    assert!(
        refused.to_string().contains("same event ids"),
        "the refusal says how to retry: {refused}"
    );

    // A majority again: the retry with the same id is written once, whatever became of the
    // first attempt.
    cluster.start(others[0]);
    let retried = wait_for(PATIENCE, || {
        let (client, history) = (via_leader.clone(), &history);
        async move {
            recorded_append(
                history,
                (0, leader, &client),
                "three-down",
                ExpectedVersion::Any,
                vec![event()],
            )
            .await
            .map_err(|error| error.to_string())
        }
    })
    .await;
    let stored: Vec<_> = via_leader
        .read_stream("three-down", ReadFrom::Start, None, Direction::Forward)
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("reads the stream");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].event_id, id);
    assert_eq!(stored[0].position, retried.first_position);
    history.assert_valid(&final_logs(&cluster, 7).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_of_the_leader_hands_the_leadership_over() {
    // Elections wait a minute here: a new leader within the test's patience (30 s) was
    // handed the leadership; none was elected after a timeout.
    let mut cluster = Cluster::new(
        3,
        &[
            "--election-timeout-min-ms",
            "60000",
            "--election-timeout-max-ms",
            "90000",
        ],
    );
    let leader = cluster.leader().await;
    let survivor = (leader + 1) % 3;
    let client = cluster.client(survivor).await;
    let history = History::new();
    append_recorded(&history, survivor, &client, "handover", 5).await;
    let exit = tokio::task::block_in_place(|| cluster.terminate(leader));
    assert_eq!(exit.code(), Some(0), "a graceful stop exits 0");
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    append_recorded(&history, survivor, &client, "handover", 5).await;
    assert_eq!(
        events_once_there(cluster.node(new_leader), 10).await,
        events_once_there(cluster.node(survivor), 10).await
    );
    history.assert_valid(&final_logs(&cluster, 10).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_is_refused_under_its_old_id_and_rejoins_as_a_new_member() {
    let mut cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let lost = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let old_id = node_id(cluster.node(lost));
    let client = cluster.client(leader).await;
    let history = History::new();
    append_recorded(&history, leader, &client, "kept", 10).await;
    let reference = events_once_there(cluster.node(lost), 10).await;

    cluster.kill(lost);
    cluster.wipe(lost);
    cluster.start(lost);
    let new_id = node_id(cluster.node(lost));
    assert_ne!(new_id, old_id, "a node id is never reused");
    // The leader still calls the old id at that address; the new node refuses, and counts.
    let lost_address = cluster.node(lost).address.clone();
    wait_for(PATIENCE, || {
        let refused = metric(
            &lost_address,
            "exesdb_peer_refused_total{reason=\"node_id\"}",
        );
        std::future::ready(if refused >= 1.0 {
            Ok(())
        } else {
            Err("calls for the old id refused".to_string())
        })
    })
    .await;
    let (status, body) = http_get(&lost_address, "/health");
    assert_eq!(status, 503, "not a member, so not healthy: {body}");

    // While the old id is a member at that address, the new node is not added.
    let peer = cluster.peers[lost].clone();
    let (code, refused) = cluster_cli(cluster.node(leader), &["add", &peer]);
    assert_eq!(code, Some(1), "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_argument", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("still a member")),
        "{refused}"
    );

    // Remove the old id (asked of a follower, which asks the leader), then add the new node.
    let (code, removed) = cluster_cli(cluster.node(other), &["remove", &old_id.to_string()]);
    assert_eq!(code, Some(0), "{removed}");
    let (code, added) = cluster_cli(cluster.node(leader), &["add", &peer]);
    assert_eq!(code, Some(0), "{added}");
    assert_eq!(added["stores"][0]["store"], "default", "{added}");
    let (_, status) = cluster_cli(cluster.node(leader), &["status"]);
    let mut members: Vec<u64> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|member| member["node_id"].as_u64())
        .collect();
    members.sort_unstable();
    let mut expected = vec![
        node_id(cluster.node(leader)),
        node_id(cluster.node(other)),
        new_id,
    ];
    expected.sort_unstable();
    assert_eq!(members, expected, "{status}");
    assert_eq!(events_once_there(cluster.node(lost), 10).await, reference);

    // The new member can lead.
    let (code, moved) = cluster_cli(
        cluster.node(other),
        &["transfer-leader", "--to", &new_id.to_string()],
    );
    assert_eq!(code, Some(0), "{moved}");
    assert_eq!(cluster.leader().await, lost);
    append_recorded(&history, other, &cluster.client(other).await, "kept", 1).await;
    assert_eq!(events_once_there(cluster.node(lost), 11).await.len(), 11);
    history.assert_valid(&final_logs(&cluster, 11).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_every_member_follows_the_leader_through_a_failover() {
    let mut cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let urls: Vec<String> = (0..3).map(|index| cluster.node(index).url()).collect();
    // The leader last, so that following it is the client's doing.
    let mut given = urls.clone();
    given.retain(|url| *url != urls[leader]);
    given.push(urls[leader].clone());
    let client = Client::connect(&given.join(","))
        .await
        .expect("connects to the first that answers");
    assert_eq!(client.server(), urls[leader], "talks to the leader");
    // The client chooses its node; the history names the one it began with.
    let history = History::new();
    append_recorded(&history, leader, &client, "followed", 10).await;

    cluster.kill(leader);
    // No retry here: the client moves to another member and tries again by itself.
    append_recorded(&history, leader, &client, "followed", 10).await;
    let new_leader = cluster.leader().await;
    // It moved to a survivor: the new leader, or a follower that forwards to it when the
    // election was still on as the client moved.
    assert_ne!(client.server(), urls[leader], "left the lost leader");
    let stored: Vec<_> = client
        .read_stream("followed", ReadFrom::Start, None, Direction::Forward)
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("reads the stream");
    let numbers: Vec<u64> = stored.iter().map(|event| event.event_number).collect();
    assert_eq!(numbers, (0..20).collect::<Vec<_>>(), "each append once");
    history.assert_valid(&final_logs(&cluster, 20).await);

    // The command line takes several servers too, and skips one that is down.
    let (code, status) = {
        let output = exesdb_cli(&[
            "cluster",
            "status",
            "--json",
            "--server",
            &format!("{},{}", urls[leader], urls[new_leader]),
        ]);
        (
            output.status.code(),
            serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap_or_default(),
        )
    };
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(
        status["stores"][0]["leader"].as_u64(),
        Some(node_id(cluster.node(new_leader)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_asked_not_to_forward_names_the_leader_and_the_client_follows_it() {
    use exesdb_proto::v1 as wire;
    let cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let append = |stream: &str| {
        let mut request = tonic::Request::new(wire::AppendEventsRequest {
            store_id: "default".into(),
            stream_id: stream.into(),
            expected: None,
            events: vec![wire::NewEvent {
                event_type: "Noted".into(),
                data: b"{}".to_vec(),
                ..Default::default()
            }],
        });
        request.metadata_mut().insert(
            exesdb_proto::convert::NOT_LEADER_METADATA,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        request
    };
    let mut raw = wire::event_store_client::EventStoreClient::connect(cluster.node(follower).url())
        .await
        .expect("connects to the follower");
    let refused = raw
        .append_events(append("redirected"))
        .await
        .expect_err("a follower asked not to forward refuses");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert_eq!(
        exesdb_proto::convert::store_error(&refused),
        Some(exesdb_client::StoreError::NotLeader {
            leader_node_id: Some(node_id(cluster.node(leader))),
            leader_addr: Some(cluster.node(leader).address.clone()),
        })
    );
    // Nothing was written; without the header the follower forwards.
    let forwarded = cluster.client(follower).await;
    assert_eq!(forwarded.stream_version("redirected").await.ok(), Some(-1));
    append_events(&forwarded, "redirected", 1).await;
    // The leader itself takes the same request.
    let mut at_leader =
        wire::event_store_client::EventStoreClient::connect(cluster.node(leader).url())
            .await
            .expect("connects to the leader");
    at_leader
        .append_events(append("redirected"))
        .await
        .expect("the leader takes it");

    // A client of every member moves to a new leader on its first not_leader answer, where a
    // forwarded write would have left it talking to the old one.
    let urls: Vec<String> = (0..3).map(|index| cluster.node(index).url()).collect();
    let client = Client::connect(&urls.join(",")).await.expect("connects");
    assert_eq!(client.server(), urls[leader]);
    let target = node_id(cluster.node(follower)).to_string();
    let (code, report) = cluster_cli(cluster.node(leader), &["transfer-leader", "--to", &target]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(cluster.leader().await, follower);
    append_events(&client, "redirected", 1).await;
    assert_eq!(client.server(), urls[follower], "moved to the leader named");
    assert_eq!(client.stream_version("redirected").await.ok(), Some(2));
}

async fn next_delivery(consumer: &mut exesdb_client::Consumer) -> exesdb_client::Delivery {
    tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the consumer is open")
        .expect("a delivery")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_delivers_a_persistent_subscription_and_the_next_leader_resumes_it() {
    use exesdb_client::{Selector, StartFrom, SubscriptionDefinition};
    let mut cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let client = cluster.client(leader).await;
    let history = History::new();
    append_recorded(&history, leader, &client, "s", 10).await;
    // Every delivery, across the failover: the group promises each event at least once.
    let mut delivered = Vec::new();
    let definition = SubscriptionDefinition::new(
        "audit",
        Selector::ByStream("$all".into()),
        StartFrom::Beginning,
    );
    client
        .save_subscription(&definition)
        .await
        .expect("saved through the leader");
    let mut consumer = client.consume("audit").await.expect("the leader delivers");
    for expected in 0..10u64 {
        let delivery = next_delivery(&mut consumer).await;
        delivered.push(delivery.event.clone());
        assert_eq!(delivery.event.position, expected);
        if expected < 6 {
            consumer.ack(expected).await.expect("ack");
        }
    }
    // The checkpoint is replicated: the follower has it too.
    let on_follower = cluster.client(follower).await;
    wait_for(PATIENCE, || {
        let client = on_follower.clone();
        async move {
            match client.subscription_checkpoint("audit").await {
                Ok(Some(6)) => Ok(()),
                other => Err(format!("the follower's checkpoint reaches 6: {other:?}")),
            }
        }
    })
    .await;
    let refused = on_follower
        .consume("audit")
        .await
        .expect_err("a follower does not deliver");
    assert_eq!(refused.code(), "unavailable", "{refused}");
    assert!(refused.to_string().contains("leader"), "{refused}");

    drop(consumer);
    cluster.kill(leader);
    let new_leader = cluster.leader().await;
    let resumed_client = cluster.client(new_leader).await;
    let mut resumed = resumed_client
        .consume("audit")
        .await
        .expect("the new leader delivers");
    for expected in 6..10u64 {
        let delivery = next_delivery(&mut resumed).await;
        delivered.push(delivery.event.clone());
        assert_eq!(
            delivery.event.position, expected,
            "resumed from the replicated checkpoint"
        );
    }
    // Leadership moves on again: the node that lost it stops delivering, and its consumer's
    // stream ends.
    let next = cluster
        .running()
        .into_iter()
        .find(|index| *index != new_leader)
        .expect("a third node");
    let (code, moved) = cluster_cli(
        cluster.node(new_leader),
        &[
            "transfer-leader",
            "--to",
            &node_id(cluster.node(next)).to_string(),
        ],
    );
    assert_eq!(code, Some(0), "{moved}");
    let ended = tokio::time::timeout(PATIENCE, resumed.next())
        .await
        .expect("the stream ends in time");
    assert!(
        !matches!(ended, Some(Ok(_))),
        "no delivery from a node that no longer leads: {ended:?}"
    );
    let start = history.now();
    history.record(
        1,
        new_leader,
        start,
        Operation::Subscribe {
            delivery: Delivery::AtLeastOnce,
            from: 0,
            through: 9,
            delivered: as_stored(&delivered),
        },
    );
    history.assert_valid(&final_logs(&cluster, 10).await);
}

/// The leader node of each store, as every running node agrees it is; `None` until they do.
fn store_leaders(cluster: &Cluster) -> Option<std::collections::BTreeMap<String, u64>> {
    let mut agreed: Option<std::collections::BTreeMap<String, u64>> = None;
    for index in cluster.running() {
        let (status, body) = http_get(&cluster.node(index).address, "/health");
        if status != 200 {
            return None;
        }
        let health: serde_json::Value = serde_json::from_str(&body).ok()?;
        let seen = health["stores"]
            .as_array()?
            .iter()
            .map(|store| {
                Some((
                    store["store"].as_str()?.to_string(),
                    store["leader_node"].as_u64()?,
                ))
            })
            .collect::<Option<std::collections::BTreeMap<_, _>>>()?;
        match &agreed {
            Some(earlier) if *earlier != seen => return None,
            _ => agreed = Some(seen),
        }
    }
    agreed
}

/// Waits until the three stores' leaders are three different nodes; returns them.
async fn leaders_spread(cluster: &Cluster) -> std::collections::BTreeMap<String, u64> {
    wait_for(PATIENCE, || {
        std::future::ready(match store_leaders(cluster) {
            Some(leaders)
                if leaders.len() == 3
                    && leaders
                        .values()
                        .collect::<std::collections::BTreeSet<_>>()
                        .len()
                        == 3 =>
            {
                Ok(leaders)
            }
            other => Err(format!("each store led by another node: {other:?}")),
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_of_several_stores_spread_over_the_nodes_and_spread_again_after_a_failure() {
    let stores = ["--store", "alpha", "--store", "beta", "--store", "gamma"];
    let mut cluster = Cluster::new(3, &stores);
    let spread = leaders_spread(&cluster).await;
    // Kill the node leading alpha: its store moves to a survivor, so one node leads two.
    let ids: Vec<u64> = (0..3).map(|index| node_id(cluster.node(index))).collect();
    let lost = ids
        .iter()
        .position(|id| Some(id) == spread.get("alpha"))
        .expect("alpha's leader is a node");
    cluster.kill(lost);
    let doubled = wait_for(PATIENCE, || {
        std::future::ready(match store_leaders(&cluster) {
            Some(leaders) if leaders.values().all(|leader| *leader != ids[lost]) => Ok(leaders),
            other => Err(format!("every store led by a survivor: {other:?}")),
        })
    })
    .await;
    assert_eq!(doubled.len(), 3);
    // Back and caught up, the node takes its store's leadership again.
    cluster.start(lost);
    assert_eq!(leaders_spread(&cluster).await, spread);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_subscription_saved_through_a_follower_is_delivered_by_the_leader_only() {
    use exesdb_client::{Selector, StartFrom, SubscriptionDefinition};
    let cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let via_leader = cluster.client(leader).await;
    let via_follower = cluster.client(follower).await;
    let history = History::new();
    append_recorded(&history, leader, &via_leader, "s", 5).await;
    let definition = SubscriptionDefinition::new(
        "from-follower",
        Selector::ByStream("$all".into()),
        StartFrom::Beginning,
    );
    via_follower
        .save_subscription(&definition)
        .await
        .expect("saved through the follower");
    let refused = via_follower
        .consume("from-follower")
        .await
        .expect_err("a follower does not deliver");
    assert_eq!(refused.code(), "unavailable", "{refused}");
    let mut consumer = via_leader
        .consume("from-follower")
        .await
        .expect("the leader delivers what a follower saved");
    let mut delivered = Vec::new();
    for expected in 0..5u64 {
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(delivery.event.position, expected);
        delivered.push(delivery.event.clone());
    }
    let start = history.now();
    history.record(
        1,
        leader,
        start,
        Operation::Subscribe {
            delivery: Delivery::AtLeastOnce,
            from: 0,
            through: 4,
            delivered: as_stored(&delivered),
        },
    );
    history.assert_valid(&final_logs(&cluster, 5).await);
}
