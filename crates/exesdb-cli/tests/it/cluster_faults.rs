//! Cluster mode under faults, with real processes, each test checking its history
//! (`exesdb_test_support::history`): a leader paused with SIGSTOP is deposed while it sleeps,
//! and once resumed acknowledges nothing the cluster does not hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use exesdb_client::{Client, ExpectedVersion, NewEvent};
use exesdb_test_support::history::{History, Record};
use exesdb_test_support::wait_until;
use uuid::Uuid;

use crate::cluster::{Cluster, all_events, final_logs, recorded_append};
use crate::common::PATIENCE;

/// How long the paused leader sleeps: longer than an election, so that it wakes deposed.
const PAUSE: Duration = Duration::from_secs(5);

/// One writer, until `writing` turns false: each event keeps its id through its retries, which
/// go to the next node after an error. Counts each acknowledged event in `acknowledged`.
async fn write_while(
    history: Arc<History>,
    clients: Vec<(usize, Client)>,
    writer: usize,
    writing: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
) {
    let mut turn = writer;
    let mut n = 0;
    while writing.load(Ordering::Acquire) {
        let id = Uuid::now_v7();
        loop {
            let (node, client) = &clients[turn % clients.len()];
            let event = NewEvent::new("Written", format!("{{\"n\":{n}}}")).with_id(id);
            // A call to the paused node waits for it; the history takes the answer it gives
            // once it runs again.
            let answer = tokio::time::timeout(
                PATIENCE,
                recorded_append(
                    &history,
                    (writer, *node, client),
                    &format!("writer-{writer}"),
                    ExpectedVersion::Any,
                    vec![event],
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("writer {writer}: node {node} never answered"));
            if answer.is_ok() {
                acknowledged.fetch_add(1, Ordering::AcqRel);
                break;
            }
            turn += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n += 1;
    }
}

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
            tokio::spawn(write_while(
                history.clone(),
                clients.clone(),
                writer,
                writing.clone(),
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
