//! Cluster mode under faults, with real processes, each test checking its history
//! (`exesdb_test_support::history`): a leader paused with SIGSTOP is deposed while it sleeps,
//! and once resumed acknowledges nothing the cluster does not hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use exesdb_test_support::history::{History, Record};
use exesdb_test_support::wait_until;

use crate::cluster::{Cluster, all_events, final_logs, write_through_failures};
use crate::common::PATIENCE;

/// How long the paused leader sleeps: longer than an election, so that it wakes deposed.
const PAUSE: Duration = Duration::from_secs(5);

async fn wait_for_more(acknowledged: &AtomicUsize, more: usize, what: &str) {
    let target = acknowledged.load(Ordering::Acquire) + more;
    wait_until(PATIENCE, what, || {
        acknowledged.load(Ordering::Acquire) >= target
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_deposed_and_acknowledges_nothing_after_it_resumes() {
    let cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let others: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    let mut clients = Vec::new();
    for index in 0..3 {
        clients.push((index, cluster.client(index).await));
    }
    let history = Arc::new(History::new());
    let writing = Arc::new(AtomicBool::new(true));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let writing = writing.clone();
            tokio::spawn(write_through_failures(
                history.clone(),
                clients.clone(),
                writer,
                move |_| writing.load(Ordering::Acquire),
                acknowledged.clone(),
            ))
        })
        .collect();
    wait_for_more(&acknowledged, 20, "writes before the pause").await;

    cluster.signal(leader, "STOP");
    let paused = Instant::now();
    // The two others elect one of them and go on writing without it.
    let new_leader = cluster.leader_among(&others).await;
    wait_for_more(&acknowledged, 20, "writes while the old leader sleeps").await;
    // The fault lasts its full length, whatever happened meanwhile.
    tokio::time::sleep_until((paused + PAUSE).into()).await;
    let resumed = history.now();
    cluster.signal(leader, "CONT");

    // Deposed: once awake it follows the new leader, as the others do.
    assert_eq!(cluster.leader().await, new_leader);
    wait_for_more(&acknowledged, 20, "writes after it resumed").await;
    writing.store(false, Ordering::Release);
    for writer in writers {
        writer.await.expect("the writer finishes");
    }
    // Calls were waiting on the old leader when it woke (so this test saw what it answers
    // then), and whatever it answered is checked against what every node holds.
    let woke_to: Vec<Record> = history
        .records()
        .into_iter()
        .filter(|record| record.node == leader && record.start < resumed && record.end > resumed)
        .collect();
    assert!(!woke_to.is_empty(), "no call waited on the paused leader");
    let total = all_events(&cluster.client(new_leader).await).await.len();
    history.assert_valid(&final_logs(&cluster, total).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_leader_kills_under_load_lose_nothing_acknowledged() {
    let mut cluster = Cluster::new(3, &[]);
    let mut clients = Vec::new();
    for index in 0..3 {
        clients.push((index, cluster.client(index).await));
    }
    let history = Arc::new(History::new());
    let writing = Arc::new(AtomicBool::new(true));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let writing = writing.clone();
            tokio::spawn(write_through_failures(
                history.clone(),
                clients.clone(),
                writer,
                move |_| writing.load(Ordering::Acquire),
                acknowledged.clone(),
            ))
        })
        .collect();
    for kill in 0..20 {
        let leader = cluster.leader().await;
        wait_for_more(&acknowledged, 10, &format!("writes before kill {kill}")).await;
        cluster.kill(leader);
        let others: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
        cluster.leader_among(&others).await;
        // The killed node comes back from its directory (its client reconnects by itself).
        cluster.start(leader);
    }
    wait_for_more(&acknowledged, 10, "writes after the last kill").await;
    writing.store(false, Ordering::Release);
    for writer in writers {
        writer.await.expect("the writer finishes");
    }
    let leader = cluster.leader().await;
    let total = all_events(&cluster.client(leader).await).await.len();
    assert!(total >= 210, "{total} events stored");
    history.assert_valid(&final_logs(&cluster, total).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_loses_nothing_acknowledged() {
    let mut cluster = Cluster::new(3, &[]);
    cluster.leader().await;
    let mut clients = Vec::new();
    for index in 0..3 {
        clients.push((index, cluster.client(index).await));
    }
    let history = Arc::new(History::new());
    let writing = Arc::new(AtomicBool::new(true));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let writing = writing.clone();
            tokio::spawn(write_through_failures(
                history.clone(),
                clients.clone(),
                writer,
                move |_| writing.load(Ordering::Acquire),
                acknowledged.clone(),
            ))
        })
        .collect();
    // Each node in turn stops gracefully (the leader hands over first), and comes back.
    for index in 0..3 {
        wait_for_more(
            &acknowledged,
            20,
            &format!("writes before node {index} stops"),
        )
        .await;
        let exit = tokio::task::block_in_place(|| cluster.terminate(index));
        assert_eq!(exit.code(), Some(0), "node {index} stops cleanly");
        let others: Vec<usize> = (0..3).filter(|other| *other != index).collect();
        cluster.leader_among(&others).await;
        cluster.start(index);
        cluster.leader().await;
    }
    wait_for_more(&acknowledged, 20, "writes after the last restart").await;
    writing.store(false, Ordering::Release);
    for writer in writers {
        writer.await.expect("the writer finishes");
    }
    let leader = cluster.leader().await;
    let total = all_events(&cluster.client(leader).await).await.len();
    history.assert_valid(&final_logs(&cluster, total).await);
}
