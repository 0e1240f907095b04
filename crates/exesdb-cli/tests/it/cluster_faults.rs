//! Cluster mode under faults, with real processes, each test checking its history
//! (`exesdb_test_support::history`): a leader paused with SIGSTOP is deposed while it sleeps,
//! and once resumed acknowledges nothing the cluster does not hold; twenty leader kills; a
//! rolling restart; a node behind a link with 200 ms of delay causes no election; a follower
//! whose peers' links to it are cut, then black-holed, catches up once healed; two clusters
//! given each other's seeds under load stay two. (Partitions, which need root:
//! `cluster_partitions.rs`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use exesdb_test_support::history::{History, Operation, Outcome, Record};
use exesdb_test_support::wait_until;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::cluster::{Cluster, all_events, final_logs, write_through_failures};
use crate::cluster_changes::{cluster_cli, node_id};
use crate::common::{PATIENCE, metric, wait_for};

/// How long the paused leader sleeps: longer than an election, so that it wakes deposed.
const PAUSE: Duration = Duration::from_secs(5);

/// Four writers going on through every node (each retrying an event with its id on the next
/// node) until `check` stops them, recording into one history.
pub(crate) struct Load {
    pub(crate) history: Arc<History>,
    writing: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
    writers: Vec<tokio::task::JoinHandle<Vec<(uuid::Uuid, u64)>>>,
}

impl Load {
    pub(crate) async fn start(cluster: &Cluster) -> Load {
        let mut clients = Vec::new();
        for index in cluster.running() {
            clients.push((index, cluster.client(index).await));
        }
        let history = Arc::new(History::new());
        let writing = Arc::new(AtomicBool::new(true));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let writers = (0..4)
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
        Load {
            history,
            writing,
            acknowledged,
            writers,
        }
    }

    /// Waits until `more` events more are acknowledged.
    pub(crate) async fn more(&self, more: usize, what: &str) {
        let target = self.acknowledged.load(Ordering::Acquire) + more;
        wait_until(PATIENCE, what, || {
            self.acknowledged.load(Ordering::Acquire) >= target
        })
        .await;
    }

    /// Stops the writers, then checks the history against every running node.
    pub(crate) async fn check(self, cluster: &Cluster) -> Arc<History> {
        self.writing.store(false, Ordering::Release);
        for writer in self.writers {
            writer.await.expect("the writer finishes");
        }
        let leader = cluster.leader().await;
        let total = all_events(&cluster.client(leader).await).await.len();
        self.history.assert_valid(&final_logs(cluster, total).await);
        self.history
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_deposed_and_acknowledges_nothing_after_it_resumes() {
    let cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let others: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    let load = Load::start(&cluster).await;
    load.more(20, "writes before the pause").await;

    cluster.signal(leader, "STOP");
    let paused = Instant::now();
    // The two others elect one of them and go on writing without it.
    let new_leader = cluster.leader_among(&others).await;
    load.more(20, "writes while the old leader sleeps").await;
    // The fault lasts its full length, whatever happened meanwhile.
    tokio::time::sleep_until((paused + PAUSE).into()).await;
    let resumed = load.history.now();
    cluster.signal(leader, "CONT");

    // Deposed: once awake it follows the new leader, as the others do.
    assert_eq!(cluster.leader().await, new_leader);
    load.more(20, "writes after it resumed").await;
    // Whatever the old leader answered after it woke is checked against what every node
    // holds; and calls were waiting on it when it woke, so this test saw what it answers then.
    let history = load.check(&cluster).await;
    let woke_to: Vec<Record> = history
        .records()
        .into_iter()
        .filter(|record| record.node == leader && record.start < resumed && record.end > resumed)
        .collect();
    assert!(!woke_to.is_empty(), "no call waited on the paused leader");
    // A write a follower had forwarded to the sleeping leader was answered once the follower
    // saw the new leader: outcome unknown, retry with the same ids; not after the write
    // timeout, and not only once the old leader woke.
    let records = history.records();
    let answered_asleep: Vec<&Record> = records
        .iter()
        .filter(|record| record.node != leader && record.end < resumed)
        .filter(|record| {
            matches!(&record.operation, Operation::Append { outcome: Outcome::Unknown(why), .. }
                if why.contains("lost the leadership"))
        })
        .collect();
    assert!(
        !answered_asleep.is_empty(),
        "no forwarded write was answered while the old leader slept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_leader_kills_under_load_lose_nothing_acknowledged() {
    let mut cluster = Cluster::new(3, &[]);
    let load = Load::start(&cluster).await;
    for kill in 0..20 {
        let leader = cluster.leader().await;
        load.more(10, &format!("writes before kill {kill}")).await;
        cluster.kill(leader);
        let others: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
        cluster.leader_among(&others).await;
        // The killed node comes back on its old addresses, so its clients find it again.
        cluster.start(leader);
    }
    load.more(10, "writes after the last kill").await;
    load.check(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_loses_nothing_acknowledged() {
    let mut cluster = Cluster::new(3, &[]);
    cluster.leader().await;
    let load = Load::start(&cluster).await;
    // Each node in turn stops gracefully (the leader hands over first), and comes back.
    for index in 0..3 {
        load.more(20, &format!("writes before node {index} stops"))
            .await;
        let exit = tokio::task::block_in_place(|| cluster.terminate(index));
        assert_eq!(exit.code(), Some(0), "node {index} stops cleanly");
        let others: Vec<usize> = (0..3).filter(|other| *other != index).collect();
        cluster.leader_among(&others).await;
        cluster.start(index);
        cluster.leader().await;
    }
    load.more(20, "writes after the last restart").await;
    load.check(&cluster).await;
}

/// What a [`LinkProxy`] does with the bytes it is given.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    /// Forwards them, each held the proxy's delay.
    Open,
    /// Closes every connection, and each new one at once: the caller knows.
    Cut,
    /// Keeps every connection open and forwards nothing: the caller waits. Healing closes
    /// them, as their peers would once the retransmissions gave up.
    BlackHole,
}

/// A TCP proxy on a free loopback port (this kernel has no netem): each connection goes on to
/// `upstream`, every byte held `delay` in each direction, while the link is open; `set` cuts
/// or black-holes it, and opens it again. Stops when dropped.
struct LinkProxy {
    address: String,
    link: tokio::sync::watch::Sender<Link>,
    accepting: tokio::task::JoinHandle<()>,
}

impl LinkProxy {
    fn start(upstream: &str, delay: Duration) -> LinkProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("its address").to_string();
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        let upstream = upstream.to_string();
        let (link, state) = tokio::sync::watch::channel(Link::Open);
        let accepting = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut state = state.clone();
                tokio::spawn(async move {
                    let link = *state.borrow_and_update();
                    if link != Link::Open {
                        // Cut: dropped now; black hole: held, silent, until the link changes.
                        if link == Link::BlackHole {
                            let _ = state.changed().await;
                        }
                        return;
                    }
                    let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (from_client, to_client) = inbound.into_split();
                    let (from_server, to_server) = outbound.into_split();
                    let forwarding = async {
                        tokio::join!(
                            delayed_copy(from_client, to_server, delay),
                            delayed_copy(from_server, to_client, delay)
                        )
                    };
                    tokio::select! {
                        _ = forwarding => {}
                        _ = async {
                            while state.changed().await.is_ok() {
                                let link = *state.borrow_and_update();
                                match link {
                                    Link::Open => {}
                                    Link::Cut => return,
                                    // Nothing more goes through; the sockets stay open
                                    // until the link changes again.
                                    Link::BlackHole => {
                                        let _ = state.changed().await;
                                        return;
                                    }
                                }
                            }
                        } => {}
                    }
                });
            }
        });
        LinkProxy {
            address,
            link,
            accepting,
        }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (chunks, mut due) = mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(1024);
    let reading = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read) = from.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            let at = tokio::time::Instant::now() + delay;
            if chunks.send((at, buffer[..read].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writing = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_link_with_200_ms_of_delay_causes_no_election() {
    const DELAY: Duration = Duration::from_millis(200);
    let mut proxies = Vec::new();
    // Node 2's peers reach it through the proxy, both ways of each connection delayed.
    let cluster = Cluster::new_behind(3, &[], |index, listen| {
        (index == 2).then(|| {
            let proxy = LinkProxy::start(listen, DELAY);
            let address = proxy.address.clone();
            proxies.push(proxy);
            address
        })
    });
    // The delayed node follows: the leader's calls to it (appends, heartbeats) cross the link.
    let leader = follow_through_proxy(&cluster).await;
    let term = |index: usize| {
        metric(
            &cluster.node(index).address,
            "exesdb_raft_term{store=\"default\"}",
        )
    };
    // The term every node reports once the monitor has published it.
    let terms_before = wait_for(PATIENCE, || {
        let terms: Vec<f64> = (0..3).map(term).collect();
        std::future::ready(
            if terms[0] > 0.0 && terms.windows(2).all(|t| t[0] == t[1]) {
                Ok(terms)
            } else {
                Err(format!("one term on every node: {terms:?}"))
            },
        )
    })
    .await;
    let load = Load::start(&cluster).await;
    load.more(100, "writes through every node").await;
    load.check(&cluster).await;
    assert_eq!(cluster.leader().await, leader, "the leadership stayed");
    let terms_after: Vec<f64> = (0..3).map(term).collect();
    assert_eq!(terms_after, terms_before, "no election on any node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_peers_are_cut_off_then_black_holed_catches_up_once_healed() {
    let mut proxies = Vec::new();
    // Node 2's peers reach it through the proxy; its own calls to them go straight.
    let cluster = Cluster::new_behind(3, &[], |index, listen| {
        (index == 2).then(|| {
            let proxy = LinkProxy::start(listen, Duration::ZERO);
            let address = proxy.address.clone();
            proxies.push(proxy);
            address
        })
    });
    let leader = follow_through_proxy(&cluster).await;
    let load = Load::start(&cluster).await;
    load.more(20, "writes before the cut").await;
    for (link, what) in [(Link::Cut, "cut"), (Link::BlackHole, "black-holed")] {
        proxies[0].set(link);
        load.more(30, &format!("the others write on while node 2 is {what}"))
            .await;
        // Longer than an election timeout: node 2 has given up on the leader.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
    }
    proxies[0].set(Link::Open);
    // Pre-vote: the others, hearing from their leader, turn down node 2's elections.
    assert_eq!(cluster.leader().await, leader, "the leadership stayed");
    load.more(20, "writes after healing").await;
    // Every acknowledged event is on node 2 too, where acknowledged.
    load.check(&cluster).await;
}

/// Moves the leadership off node 2 (the node behind a proxy), so that the leader's calls to
/// it cross the proxy; returns the leader.
async fn follow_through_proxy(cluster: &Cluster) -> usize {
    let leader = cluster.leader().await;
    if leader != 2 {
        return leader;
    }
    let to = node_id(cluster.node(0)).to_string();
    let (code, moved) = cluster_cli(cluster.node(2), &["transfer-leader", "--to", &to]);
    assert_eq!(code, Some(0), "{moved}");
    let leader = cluster.leader().await;
    assert_ne!(leader, 2);
    leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_given_each_others_seeds_under_load_stay_two() {
    let mut clusters = [Cluster::new(3, &[]), Cluster::new(3, &[])];
    let mut loads = Vec::new();
    for cluster in &clusters {
        cluster.leader().await;
        loads.push(Load::start(cluster).await);
    }
    let refused = |cluster: &Cluster| -> f64 {
        cluster
            .running()
            .into_iter()
            .map(|index| {
                metric(
                    &cluster.node(index).address,
                    "exesdb_peer_refused_total{reason=\"cluster_id\"}",
                )
            })
            .sum()
    };
    // Node by node, each cluster comes back with the other's peers among its seeds (both go
    // by the same cluster name), while both keep writing.
    for index in 0..3 {
        for (this, other) in [(0, 1), (1, 0)] {
            let seeds = clusters[other].peers.clone();
            let refused_before = refused(&clusters[other]);
            let cluster = &mut clusters[this];
            cluster.kill(index);
            cluster.extra_seeds = seeds;
            cluster.start(index);
            // The restarted node called the other cluster's seeds, and was turned away.
            let other_cluster = &clusters[other];
            wait_until(
                PATIENCE,
                "the other cluster refuses the node's calls",
                || refused(other_cluster) > refused_before,
            )
            .await;
            clusters[this].leader().await;
            loads[this]
                .more(
                    10,
                    &format!("cluster {this} writes after node {index} restarted"),
                )
                .await;
        }
    }
    for (cluster, load) in clusters.iter().zip(loads) {
        // Each still has three members of its own; and each history holds against its own
        // nodes alone, so no event of the other's reached them (no phantoms).
        let (code, report) = cluster_cli(cluster.node(0), &["status"]);
        assert_eq!(code, Some(0), "{report}");
        assert_eq!(
            report["members"].as_array().map(Vec::len),
            Some(3),
            "{report}"
        );
        load.check(cluster).await;
    }
    let ids: Vec<String> = clusters
        .iter()
        .map(|cluster| {
            let (_, report) = cluster_cli(cluster.node(1), &["status"]);
            report["cluster_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        !ids[0].is_empty() && ids[0] != ids[1],
        "two cluster ids: {ids:?}"
    );
}
