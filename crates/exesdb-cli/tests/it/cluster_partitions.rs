//! Partitions at the kernel level, each test checking its history
//! (`exesdb_test_support::history`). A test runs on a thread that `unshare(2)` moved into a
//! network namespace of its own, so every node it starts lives there too; each node takes
//! peer calls on a loopback address of its own and calls its peers from it, and nftables
//! rules in the namespace cut the links between two addresses: dropped (a black hole, where
//! nothing answers) or reset (the caller knows at once). Client traffic comes from 127.0.0.1
//! and is never cut: a client beside the minority still reaches it.
//!
//! Namespaces and nftables need root: these tests are built with the feature `root-tests`
//! only (`cargo test -p exesdb-cli --features root-tests --test it -- cluster_partitions`;
//! `.ci/run` does this, as root, after `apt-get install nftables`), and with it they fail,
//! never pass quietly, without root or without `nft`.

use std::future::Future;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use exesdb_client::{ExpectedVersion, NewEvent};
use exesdb_test_support::history::History;
use uuid::Uuid;

use crate::cluster::{Cluster, recorded_append};
use crate::cluster_faults::Load;
use crate::common::PATIENCE;

/// openraft's leader lease, the longest election timeout (`--election-timeout-max-ms`, 1 s by
/// default): a leader that has heard from no majority for this long takes no write.
const LEADER_LEASE: Duration = Duration::from_secs(1);
/// How long a paused leader sleeps: longer than an election.
const PAUSE: Duration = Duration::from_secs(4);
/// Time for a write begun after the lease to reach the leader (the probes go every 100 ms).
const LEASE_SLACK: Duration = Duration::from_millis(500);

/// Node `index`'s own address, for its peer port and its calls to its peers.
fn host(index: usize) -> String {
    format!("127.0.0.{}", 11 + index)
}

/// Runs `test` on a thread of its own in a new network namespace holding only a loopback
/// device, on a runtime whose threads (and so whose child processes) all live there.
fn in_private_network<F>(test: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()>,
{
    let ran = std::thread::spawn(move || {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "the partition tests make a network namespace and firewall it, which needs root: \
             run them as root (CI does) or build without the feature `root-tests`"
        );
        // SAFETY: unshare takes no pointers; it moves this thread alone into a new namespace.
        let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            unshared,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        run("ip", &["link", "set", "lo", "up"], "");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(test());
    })
    .join();
    if let Err(panic) = ran {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `program` with `input` on its standard input; panics with its words if it fails.
fn run(program: &str, args: &[&str], input: &str) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "{program} does not run ({error}): the partition tests need iproute2 and nftables"
            )
        });
    child
        .stdin
        .take()
        .expect("its standard input")
        .write_all(input.as_bytes())
        .expect("write its input");
    let output = child.wait_with_output().expect("it ends");
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{input}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// How a cut link fails.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// Packets vanish: calls wait until they time out.
    BlackHole,
    /// Packets are answered with a reset: calls fail at once.
    Reset,
}

/// The namespace's firewall: one nftables chain on the output hook (loopback packets pass it
/// once), emptied to heal.
struct Firewall;

const TABLE: &str = "inet exesdb_partitions";

impl Firewall {
    fn new() -> Firewall {
        nft(&format!(
            "add table {TABLE}\n\
             add chain {TABLE} links {{ type filter hook output priority 0; policy accept; }}\n"
        ));
        Firewall
    }

    /// Cuts every packet between nodes `a` and `b`, both ways.
    fn cut(&self, a: usize, b: usize, how: Cut) {
        let verdict = match how {
            Cut::BlackHole => "drop",
            Cut::Reset => "reject with tcp reset",
        };
        let (a, b) = (host(a), host(b));
        nft(&format!(
            "add rule {TABLE} links ip saddr {a} ip daddr {b} meta l4proto tcp {verdict}\n\
             add rule {TABLE} links ip saddr {b} ip daddr {a} meta l4proto tcp {verdict}\n"
        ));
    }

    /// Cuts `node` from every other of `size` nodes.
    fn isolate(&self, node: usize, size: usize, how: Cut) {
        for other in (0..size).filter(|other| *other != node) {
            self.cut(node, other, how);
        }
    }

    /// `from` can no longer call `to` (the connections it opens to `to`'s peer port go dark,
    /// both ways), while `to` still calls `from` and is answered.
    fn one_way(&self, cluster: &Cluster, from: usize, to: usize) {
        let port = cluster.peers[to]
            .rsplit(':')
            .next()
            .expect("a peer address has a port");
        let (from, to) = (host(from), host(to));
        nft(&format!(
            "add rule {TABLE} links ip saddr {from} ip daddr {to} tcp dport {port} drop\n\
             add rule {TABLE} links ip saddr {to} ip daddr {from} tcp sport {port} drop\n"
        ));
    }

    fn heal(&self) {
        nft(&format!("flush chain {TABLE} links\n"));
    }
}

fn nft(rules: &str) {
    run("nft", &["-f", "-"], rules);
}

/// Writes to `node` every 100 ms from `since` on, each write its own client call, until one
/// is refused or `PATIENCE` runs out; records them all in `history`. Returns each write's
/// start (after `since`) and whether it was acknowledged or refused (neither: it timed out).
async fn probe_writes(
    cluster: &Cluster,
    node: usize,
    history: &Arc<History>,
    since: Instant,
) -> Vec<(Duration, Probe)> {
    let client = cluster.client(node).await;
    let refused = Arc::new(AtomicBool::new(false));
    let mut probes = Vec::new();
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    for number in 0.. {
        interval.tick().await;
        if refused.load(Ordering::Acquire) || since.elapsed() > PATIENCE {
            break;
        }
        let (client, history, refused) = (client.clone(), history.clone(), refused.clone());
        probes.push(tokio::spawn(async move {
            let started = since.elapsed();
            let event = NewEvent::new("Probed", "{}").with_id(Uuid::now_v7());
            let answer = recorded_append(
                &history,
                (100 + number, node, &client),
                "probe",
                ExpectedVersion::Any,
                vec![event],
            )
            .await;
            let probe = match answer {
                Ok(_) => Probe::Acknowledged,
                Err(error) if error.to_string().contains("not the leader") => {
                    refused.store(true, Ordering::Release);
                    Probe::Refused
                }
                Err(_) => Probe::Unanswered,
            };
            (started, probe)
        }));
    }
    let mut answered = Vec::new();
    for probe in probes {
        answered.push(probe.await.expect("the probe ends"));
    }
    answered
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Probe {
    Acknowledged,
    Refused,
    Unanswered,
}

/// Three nodes on their own addresses, a firewall, and four writers under way.
struct Partitioned {
    cluster: Cluster,
    firewall: Firewall,
    leader: usize,
    load: Load,
}

impl Partitioned {
    async fn under_load() -> Partitioned {
        let cluster = Cluster::new_on(3, &[], host);
        let firewall = Firewall::new();
        let leader = cluster.leader().await;
        let load = Load::start(&cluster).await;
        load.more(20, "writes before the partition").await;
        Partitioned {
            cluster,
            firewall,
            leader,
            load,
        }
    }
}

/// Once the links are whole again: one leader every node agrees on, writes going on, and the
/// history checked against every node.
async fn heal_and_check(cluster: &Cluster, load: Load) {
    cluster.leader().await;
    load.more(20, "writes after healing").await;
    load.check(cluster).await;
}

#[test]
fn a_leader_cut_off_from_the_majority_refuses_writes_within_its_lease_and_the_majority_goes_on() {
    in_private_network(|| async {
        let Partitioned {
            cluster,
            firewall,
            leader,
            load,
        } = Partitioned::under_load().await;
        let others: Vec<usize> = (0..3).filter(|index| *index != leader).collect();

        firewall.isolate(leader, 3, Cut::BlackHole);
        let cut = Instant::now();
        let (probes, new_leader) = tokio::join!(
            probe_writes(&cluster, leader, &load.history, cut),
            cluster.leader_among(&others)
        );
        load.more(20, "the majority writes without the old leader")
            .await;
        // Cut off from every other node, it can have committed nothing.
        assert!(
            probes
                .iter()
                .all(|(_, probe)| *probe != Probe::Acknowledged),
            "the cut-off leader acknowledged a write: {probes:?}"
        );
        let first_refused = probes
            .iter()
            .find(|(_, probe)| *probe == Probe::Refused)
            .map(|(started, _)| *started)
            .unwrap_or_else(|| panic!("the cut-off leader never refused a write: {probes:?}"));
        // Accepted before its lease ran out, a write waits for the write timeout; begun after,
        // it is refused at once.
        let late_unanswered: Vec<_> = probes
            .iter()
            .filter(|(started, probe)| {
                *started > LEADER_LEASE + LEASE_SLACK && *probe != Probe::Refused
            })
            .collect();
        assert!(
            late_unanswered.is_empty(),
            "writes begun after the leader lease were not refused: {late_unanswered:?}"
        );
        println!(
            "the cut-off leader refused writes begun {} ms after the cut; node {new_leader} \
             took over",
            first_refused.as_millis()
        );

        firewall.heal();
        heal_and_check(&cluster, load).await;
    });
}

#[test]
fn a_follower_cut_off_catches_up_once_healed_without_disturbing_the_leader() {
    in_private_network(|| async {
        let Partitioned {
            cluster,
            firewall,
            leader,
            load,
        } = Partitioned::under_load().await;
        let follower = (leader + 1) % 3;

        firewall.isolate(follower, 3, Cut::Reset);
        load.more(40, "the majority, with the leader, writes on")
            .await;
        // Longer than an election timeout: the follower has given up on the leader.
        tokio::time::sleep(LEADER_LEASE + LEASE_SLACK).await;

        firewall.heal();
        // Pre-vote: the others, hearing from their leader, turn down the returning node's
        // election, so the leadership stays where it was.
        assert_eq!(cluster.leader().await, leader, "the leadership stayed");
        heal_and_check(&cluster, load).await;
    });
}

#[test]
fn a_leader_that_cannot_call_its_followers_is_replaced_and_follows_over_their_calls() {
    in_private_network(|| async {
        let Partitioned {
            cluster,
            firewall,
            leader,
            load,
        } = Partitioned::under_load().await;
        let others: Vec<usize> = (0..3).filter(|index| *index != leader).collect();

        // One way: the leader's calls go dark, the followers' calls to it still arrive.
        for other in &others {
            firewall.one_way(&cluster, leader, *other);
        }
        let new_leader = cluster.leader_among(&others).await;
        // The old leader hears the new one's calls and follows it: all three agree.
        assert_eq!(cluster.leader().await, new_leader);
        load.more(20, "writes during the one-way partition").await;

        firewall.heal();
        heal_and_check(&cluster, load).await;
    });
}

/// The faults the cycles draw from.
const FAULTS: [&str; 5] = [
    "isolate the leader",
    "isolate a follower",
    "the leader cannot call out",
    "kill the leader",
    "pause the leader",
];

/// Cycle after cycle, one fault drawn at random under load, then healed; the history is
/// checked at the end. `EXESDB_FAULT_CYCLES` sets the number of cycles (4 by default; the
/// manual long run in RELIABILITY.md takes 200) and `EXESDB_FAULT_SEED` replays a run, whose
/// seed is printed first.
#[test]
fn random_faults_cycle_after_cycle_lose_nothing_acknowledged() {
    let cycles: usize = std::env::var("EXESDB_FAULT_CYCLES")
        .map(|cycles| cycles.parse().expect("EXESDB_FAULT_CYCLES is a number"))
        .unwrap_or(4);
    let seed: u64 = std::env::var("EXESDB_FAULT_SEED")
        .map(|seed| seed.parse().expect("EXESDB_FAULT_SEED is a number"))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("fault cycles: {cycles}, EXESDB_FAULT_SEED={seed}");
    in_private_network(move || async move {
        let mut random = seed | 1;
        let mut draw = move |below: usize| {
            // xorshift64: enough to vary the faults, and replayable from the seed.
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            (random % below as u64) as usize
        };
        let mut cluster = Cluster::new_on(3, &[], host);
        let firewall = Firewall::new();
        cluster.leader().await;
        let load = Load::start(&cluster).await;
        let started = Instant::now();
        for cycle in 0..cycles {
            let leader = cluster.leader().await;
            let others: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
            let fault = draw(FAULTS.len());
            println!(
                "cycle {cycle} ({} s in): {}, leader {leader}",
                started.elapsed().as_secs(),
                FAULTS[fault]
            );
            load.more(10, &format!("writes before cycle {cycle}")).await;
            match fault {
                0 => {
                    firewall.isolate(leader, 3, Cut::BlackHole);
                    cluster.leader_among(&others).await;
                    load.more(10, "the majority writes on").await;
                    firewall.heal();
                }
                1 => {
                    firewall.isolate(others[draw(2)], 3, Cut::Reset);
                    load.more(10, "the majority writes on").await;
                    firewall.heal();
                }
                2 => {
                    for other in &others {
                        firewall.one_way(&cluster, leader, *other);
                    }
                    cluster.leader_among(&others).await;
                    load.more(10, "the majority writes on").await;
                    firewall.heal();
                }
                3 => {
                    cluster.kill(leader);
                    cluster.leader_among(&others).await;
                    load.more(10, "the survivors write on").await;
                    cluster.start(leader);
                }
                _ => {
                    // A fixed pause, with no writes asked for meanwhile: a writer's call to
                    // the sleeping node waits for it (as a call forwarded to it waits for the
                    // write timeout), so within seconds every writer may be waiting on it.
                    cluster.signal(leader, "STOP");
                    let paused = Instant::now();
                    cluster.leader_among(&others).await;
                    tokio::time::sleep_until((paused + PAUSE).into()).await;
                    cluster.signal(leader, "CONT");
                }
            }
            cluster.leader().await;
        }
        load.more(10, "writes after the last cycle").await;
        let history = load.check(&cluster).await;
        println!(
            "{cycles} cycles in {} s: {} operations checked, no violation",
            started.elapsed().as_secs(),
            history.records().len()
        );
    });
}
