//! Cluster mode with real processes: three `exesdb serve --mode cluster` nodes on loopback
//! ports form a cluster, take appends through every node, keep identical `$all` logs, lose
//! their leader to SIGKILL under load without losing an acknowledged event, and take the lost
//! node back, which catches up from the log. A wrong cluster secret is refused. The tests that
//! write record their histories and check them (`exesdb_test_support::history`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use exesdb_client::{
    AppendResult, Client, ClientError, Direction, ExpectedVersion, NewEvent, ReadFrom,
    RecordedEvent,
};
use exesdb_test_support::history::{self, Appended, Expected, History, Operation, Outcome};
use tokio_stream::StreamExt;
use uuid::Uuid;

use crate::common::{PATIENCE, Server, http_get, wait_for};

/// A loopback port free now (the test's own nodes take them a moment later).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

pub(crate) struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    /// Where each node's peers reach it (its `--peer-advertise`, and the seeds).
    pub(crate) peers: Vec<String>,
    /// Where each node takes peer calls (`--peer-listen`): its peer address, unless a proxy
    /// stands in front of it.
    peer_listen: Vec<String>,
    nodes: Vec<Option<Server>>,
    /// Each node's client address, once it has started.
    client_addrs: Vec<Option<String>>,
    extra: Vec<String>,
    /// Seeds given beside the cluster's own peers (another cluster's, say).
    pub(crate) extra_seeds: Vec<String>,
}

impl Cluster {
    /// Starts `size` nodes. A peer port is chosen free, then bound by the node a moment
    /// later; if another process took it meanwhile, the whole cluster starts again on new
    /// ports.
    pub(crate) fn new(size: usize, extra: &[&str]) -> Cluster {
        Cluster::new_behind(size, extra, |_, _| None)
    }

    /// Starts `size` nodes, each reached by its peers at the address `advertise(index, its
    /// peer port)` gives (a proxy in front of it), or at its peer port itself.
    pub(crate) fn new_behind(
        size: usize,
        extra: &[&str],
        advertise: impl FnMut(usize, &str) -> Option<String>,
    ) -> Cluster {
        Cluster::start_all(size, extra, |_| "127.0.0.1".to_string(), advertise)
    }

    /// Starts `size` nodes, each taking peer calls on its own address `peer_host(index)` (and
    /// calling its peers from it), so that a firewall can cut the links between two nodes.
    #[cfg(feature = "root-tests")]
    pub(crate) fn new_on(
        size: usize,
        extra: &[&str],
        peer_host: impl Fn(usize) -> String,
    ) -> Cluster {
        Cluster::start_all(size, extra, peer_host, |_, _| None)
    }

    fn start_all(
        size: usize,
        extra: &[&str],
        peer_host: impl Fn(usize) -> String,
        mut advertise: impl FnMut(usize, &str) -> Option<String>,
    ) -> Cluster {
        let mut last_log = String::new();
        for _ in 0..3 {
            let listen: Vec<String> = (0..size)
                .map(|index| format!("{}:{}", peer_host(index), free_port()))
                .collect();
            let mut cluster = Cluster {
                dirs: (0..size)
                    .map(|_| tempfile::tempdir().expect("tempdir"))
                    .collect(),
                peers: listen
                    .iter()
                    .enumerate()
                    .map(|(index, listen)| advertise(index, listen).unwrap_or(listen.clone()))
                    .collect(),
                peer_listen: listen,
                nodes: (0..size).map(|_| None).collect(),
                client_addrs: vec![None; size],
                extra: extra.iter().map(|arg| arg.to_string()).collect(),
                extra_seeds: Vec::new(),
            };
            match (0..size).try_for_each(|index| cluster.try_start(index)) {
                Ok(()) => return cluster,
                Err(log) if log.contains("Address already in use") => last_log = log,
                Err(log) => panic!("a node did not start; its log:\n{log}"),
            }
        }
        panic!("no free peer ports after three tries; the last node's log:\n{last_log}");
    }

    pub(crate) fn start(&mut self, index: usize) {
        if let Err(log) = self.try_start(index) {
            panic!("node {index} did not start; its log:\n{log}");
        }
    }

    fn try_start(&mut self, index: usize) -> Result<(), String> {
        let size = self.peers.len().to_string();
        let seeds = [self.peers.as_slice(), self.extra_seeds.as_slice()]
            .concat()
            .join(",");
        let mut args = vec![
            "--mode",
            "cluster",
            "--cluster-name",
            "test",
            "--cluster-size",
            &size,
            "--peer-listen",
            &self.peer_listen[index],
            "--peer-advertise",
            &self.peers[index],
            "--seeds",
            &seeds,
        ];
        args.extend(self.extra.iter().map(String::as_str));
        // A node that ran before comes back on its client address, as a deployed one does
        // (the membership records it, and clients know it).
        let known = self.client_addrs[index].clone();
        if let Some(address) = &known {
            args.extend(["--listen", address.as_str()]);
        }
        let (child, address) = exesdb_test_support::try_spawn_server(
            Path::new(env!("CARGO_BIN_EXE_exesdb")),
            self.dirs[index].path(),
            &args,
        )?;
        self.client_addrs[index] = Some(address.clone());
        self.nodes[index] = Some(Server {
            child,
            address,
            data_dir: self.dirs[index].path().to_path_buf(),
        });
        Ok(())
    }

    pub(crate) fn node(&self, index: usize) -> &Server {
        self.nodes[index].as_ref().expect("the node runs")
    }

    pub(crate) fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|index| self.nodes[*index].is_some())
            .collect()
    }

    /// SIGKILL: the node gets no chance to hand anything over.
    pub(crate) fn kill(&mut self, index: usize) {
        if let Some(mut server) = self.nodes[index].take() {
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to a running node's process.
    pub(crate) fn signal(&self, index: usize, signal: &str) {
        let pid = self.node(index).child.id().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// SIGTERM: the node stops gracefully (a leader hands over first).
    pub(crate) fn terminate(&mut self, index: usize) -> std::process::ExitStatus {
        let server = self.nodes[index].take().expect("the node runs");
        server.terminate()
    }

    /// Empties a stopped node's data directory: the node has lost its disk.
    pub(crate) fn wipe(&mut self, index: usize) {
        assert!(self.nodes[index].is_none(), "stop the node first");
        let dir = self.dirs[index].path();
        std::fs::remove_dir_all(dir).expect("remove the data");
        std::fs::create_dir(dir).expect("an empty data directory");
    }

    /// Waits until every running node reports the same leader, a running one; returns its index.
    pub(crate) async fn leader(&self) -> usize {
        self.leader_among(&self.running()).await
    }

    /// Waits until the nodes `among` report the same leader, one of them; returns its index.
    pub(crate) async fn leader_among(&self, among: &[usize]) -> usize {
        wait_for(PATIENCE, || {
            let seen: Vec<(usize, Option<u64>, bool, String)> = among
                .iter()
                .copied()
                .map(|index| {
                    let (status, body) = http_get(&self.node(index).address, "/health");
                    let health: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let store = &health["stores"][0];
                    (
                        index,
                        store["leader_node"].as_u64().filter(|_| status == 200),
                        store["leader"].as_bool().unwrap_or(false),
                        body,
                    )
                })
                .collect();
            let leaders: Vec<usize> = seen
                .iter()
                .filter(|(_, _, leads, _)| *leads)
                .map(|(index, _, _, _)| *index)
                .collect();
            let agreed = seen.iter().all(|(_, leader, _, _)| leader.is_some())
                && seen.windows(2).all(|pair| pair[0].1 == pair[1].1);
            std::future::ready(match (agreed, leaders.as_slice()) {
                (true, [leader]) => Ok(*leader),
                _ => Err(format!("one leader every node agrees on: {seen:?}")),
            })
        })
        .await
    }

    pub(crate) async fn client(&self, index: usize) -> Client {
        self.node(index).client().await
    }
}

/// Events as the history checker sees them.
pub(crate) fn as_stored(events: &[RecordedEvent]) -> Vec<history::StoredEvent> {
    events
        .iter()
        .map(|event| history::StoredEvent {
            stream: event.stream_id.clone(),
            version: event.event_number,
            position: event.position,
            id: event.event_id.as_u128(),
        })
        .collect()
}

/// An append's answer as the history records it: a wrong expected version certainly wrote
/// nothing; any other error may have (the leader may have committed it before the answer was
/// lost).
pub(crate) fn append_outcome(answer: &Result<AppendResult, ClientError>) -> Outcome<Appended> {
    match answer {
        Ok(result) => Outcome::Ok(Appended {
            first_version: result.first_event_number,
            first_position: result.first_position,
        }),
        Err(error) if error.code() == "wrong_expected_version" => Outcome::Fail(error.to_string()),
        Err(error) => Outcome::Unknown(error.to_string()),
    }
}

/// Appends through `client` (node `node`), recording the operation in `history`.
pub(crate) async fn recorded_append(
    history: &History,
    (client_number, node, client): (usize, usize, &Client),
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendResult, ClientError> {
    // Every event gets its id here, so that the checker knows each stored event's sender.
    let events: Vec<NewEvent> = events
        .into_iter()
        .map(|event| match event.event_id {
            Some(_) => event,
            None => event.with_id(Uuid::now_v7()),
        })
        .collect();
    let ids = events
        .iter()
        .filter_map(|event| event.event_id)
        .map(|id| id.as_u128())
        .collect();
    let start = history.now();
    let answer = client.append(stream, expected, events).await;
    history.record(
        client_number,
        node,
        start,
        Operation::Append {
            stream: stream.to_string(),
            expected: match expected {
                ExpectedVersion::Any | ExpectedVersion::StreamExists => Expected::Any,
                ExpectedVersion::NoStream => Expected::NoStream,
                ExpectedVersion::Exact(version) => Expected::Exact(version),
            },
            ids,
            outcome: append_outcome(&answer),
        },
    );
    answer
}

/// Reads `$all` through `client` (node `node`), recording the operation in `history`.
pub(crate) async fn recorded_read(
    history: &History,
    (client_number, node, client): (usize, usize, &Client),
) -> Option<Vec<RecordedEvent>> {
    let start = history.now();
    let read: Result<Vec<RecordedEvent>, ClientError> = client
        .read_all(ReadFrom::Start, None, Direction::Forward, None, &[])
        .collect()
        .await;
    let outcome = match &read {
        Ok(events) => Outcome::Ok(as_stored(events)),
        Err(error) => Outcome::Unknown(error.to_string()),
    };
    history.record(client_number, node, start, Operation::ReadAll { outcome });
    read.ok()
}

pub(crate) async fn all_events(client: &Client) -> Vec<RecordedEvent> {
    client
        .read_all(ReadFrom::Start, None, Direction::Forward, None, &[])
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("reads $all")
}

/// Each running node's `$all` once it holds `count` events, as the history checker takes them.
pub(crate) async fn final_logs(cluster: &Cluster, count: usize) -> Vec<Vec<history::StoredEvent>> {
    let mut logs = Vec::new();
    for index in cluster.running() {
        logs.push(as_stored(
            &events_once_there(cluster.node(index), count).await,
        ));
    }
    logs
}

/// Waits until the node's `$all` holds `count` events, and returns them.
pub(crate) async fn events_once_there(server: &Server, count: usize) -> Vec<RecordedEvent> {
    let client = server.client().await;
    wait_for(PATIENCE, || {
        let client = client.clone();
        async move {
            let events = all_events(&client).await;
            if events.len() >= count {
                Ok(events)
            } else {
                Err(format!("{count} events, {} so far", events.len()))
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_take_appends_through_every_node() {
    let cluster = Cluster::new(3, &[]);
    cluster.leader().await;
    let history = History::new();
    let mut acknowledged = Vec::new();
    let mut clients = Vec::new();
    for index in 0..3 {
        clients.push(cluster.client(index).await);
    }
    for index in 0..3 {
        for n in 0..5u64 {
            // Each append expects the version the one before it left.
            let expected = n
                .checked_sub(1)
                .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            let result = recorded_append(
                &history,
                (index, index, &clients[index]),
                &format!("order-{index}"),
                expected,
                vec![NewEvent::new("Placed", format!("{{\"n\":{n}}}"))],
            )
            .await
            .unwrap_or_else(|error| panic!("node {index} takes the append: {error}"));
            acknowledged.push(result.first_position);
            // Reads are linearizable: a read on another node, begun after the append was
            // acknowledged, sees it at once (no waiting here; the checker holds it to that).
            let other = (index + 1 + n as usize % 2) % 3;
            let seen = recorded_read(&history, (3 + other, other, &clients[other]))
                .await
                .unwrap_or_else(|| panic!("node {other} serves a read"));
            assert!(
                seen.iter()
                    .any(|event| event.position == result.first_position),
                "node {other} does not show position {} acknowledged by node {index}",
                result.first_position
            );
        }
    }
    assert_eq!(acknowledged, (0..15).collect::<Vec<_>>());
    let reference = events_once_there(cluster.node(0), 15).await;
    let mut nodes = vec![as_stored(&reference)];
    for index in 1..3 {
        nodes.push(as_stored(&events_once_there(cluster.node(index), 15).await));
    }
    history.assert_valid(&nodes);
    // Optimistic concurrency holds across nodes: the version check is the leader's.
    let follower = (cluster.leader().await + 1) % 3;
    let client = cluster.client(follower).await;
    let refused = client
        .append(
            "order-0",
            ExpectedVersion::Exact(1),
            vec![NewEvent::new("Placed", "{}")],
        )
        .await
        .expect_err("order-0 is at version 4");
    assert_eq!(refused.code(), "wrong_expected_version", "{refused}");

    // `exesdb cluster status --json` on any node: the spec's shape, the same leader.
    let leader = cluster.leader().await;
    let status = exesdb_cli(&[
        "cluster",
        "status",
        "--json",
        "--server",
        &cluster.node(follower).url(),
    ]);
    assert_eq!(status.status.code(), Some(0), "{status:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&status.stdout).expect("one JSON object");
    let members = report["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    let leading: Vec<&serde_json::Value> = members
        .iter()
        .filter(|member| member["state"] == "leader")
        .collect();
    assert_eq!(leading.len(), 1, "{report}");
    assert_eq!(
        leading[0]["client_addr"].as_str(),
        Some(cluster.node(leader).address.as_str())
    );
    assert_eq!(report["stores"][0]["store"], "default");
    assert_eq!(report["stores"][0]["leader"], leading[0]["node_id"]);
    assert!(report["stores"][0]["applied_index"].as_u64() >= Some(15));
    assert!(report["cluster_id"].is_string(), "{report}");
}

pub(crate) fn exesdb_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_exesdb"))
        .args(args)
        .output()
        .expect("exesdb runs")
}

/// One writer's events, while `more(events written so far)` says so: each keeps its id
/// through every retry, so a retry after a lost answer is recognised instead of written twice;
/// a retry goes to the next node. A call to a paused node waits for it (the history takes the
/// answer it gives once it runs again). Counts each acknowledged event in `acknowledged`.
pub(crate) async fn write_through_failures(
    history: Arc<History>,
    clients: Vec<(usize, Client)>,
    writer: usize,
    more: impl Fn(usize) -> bool,
    acknowledged: Arc<AtomicUsize>,
) -> Vec<(Uuid, u64)> {
    let mut written = Vec::new();
    let mut turn = writer;
    while more(written.len()) {
        let n = written.len();
        let id = Uuid::now_v7();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (node, client) = &clients[turn % clients.len()];
            let event = NewEvent::new("Written", format!("{{\"n\":{n}}}")).with_id(id);
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
            match answer {
                Ok(result) => {
                    written.push((id, result.first_position));
                    acknowledged.fetch_add(1, Ordering::AcqRel);
                    break;
                }
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "writer {writer} could not write event {n}: {error}"
                    );
                    // Another node, after a pause as short as a retry should be.
                    turn += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_under_load_loses_no_acknowledged_event_and_comes_back_from_the_log() {
    let mut cluster = Cluster::new(3, &[]);
    let leader = cluster.leader().await;
    let mut clients = Vec::new();
    for index in 0..3 {
        clients.push((index, cluster.client(index).await));
    }
    let history = Arc::new(History::new());
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            tokio::spawn(write_through_failures(
                history.clone(),
                clients.clone(),
                writer,
                |written| written < 60,
                Arc::new(AtomicUsize::new(0)),
            ))
        })
        .collect();
    // A reader goes round the nodes meanwhile: each read must hold every append acknowledged
    // before it began, whichever node serves it.
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = tokio::spawn({
        let (history, clients, reading) = (history.clone(), clients.clone(), reading.clone());
        async move {
            let mut turn = 0;
            while reading.load(std::sync::atomic::Ordering::Acquire) {
                let (node, client) = &clients[turn % clients.len()];
                if recorded_read(&history, (4, *node, client)).await.is_none() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                turn += 1;
            }
        }
    });
    // Kill the leader once the load is under way.
    let before = clients[(leader + 1) % 3].1.clone();
    wait_for(PATIENCE, || {
        let client = before.clone();
        async move {
            let stored = all_events(&client).await.len();
            if stored >= 40 {
                Ok(())
            } else {
                Err(format!("40 events before the kill, {stored} so far"))
            }
        }
    })
    .await;
    cluster.kill(leader);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let mut acknowledged: HashMap<Uuid, u64> = HashMap::new();
    for writer in writers {
        for (id, position) in writer.await.expect("the writer finishes") {
            assert!(
                acknowledged.insert(id, position).is_none(),
                "one answer per event"
            );
        }
    }
    assert_eq!(acknowledged.len(), 240);
    reading.store(false, std::sync::atomic::Ordering::Release);
    reader.await.expect("the reader finishes");
    let survivors = cluster.running();
    let reference = events_once_there(cluster.node(survivors[0]), 240).await;
    assert_eq!(
        events_once_there(cluster.node(survivors[1]), 240).await,
        reference
    );
    // Every acknowledged event is stored once, where its acknowledgement said, and nothing
    // else is (each writer's events were each acknowledged).
    let stored: BTreeMap<u64, Uuid> = reference
        .iter()
        .map(|event| (event.position, event.event_id))
        .collect();
    assert_eq!(stored.len(), reference.len(), "positions are unique");
    for (id, position) in &acknowledged {
        assert_eq!(
            stored.get(position),
            Some(id),
            "the event acknowledged at {position}"
        );
    }
    let written: Vec<&RecordedEvent> = reference
        .iter()
        .filter(|event| event.stream_id.starts_with("writer-"))
        .collect();
    assert_eq!(written.len(), 240, "no event twice: {}", written.len());

    // The killed node comes back from its directory and catches up from the log.
    cluster.start(leader);
    let caught_up = events_once_there(cluster.node(leader), 240).await;
    assert_eq!(caught_up, reference);
    let mut nodes = vec![as_stored(&reference), as_stored(&caught_up)];
    nodes.push(as_stored(
        &events_once_there(cluster.node(survivors[1]), 240).await,
    ));
    history.assert_valid(&nodes);
    let (status, _) = http_get(&cluster.node(leader).address, "/health");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_cluster_secret_is_refused() {
    let secrets = tempfile::tempdir().expect("tempdir");
    let right = secrets.path().join("right");
    let wrong = secrets.path().join("wrong");
    std::fs::write(&right, "the-right-secret\n").expect("write");
    std::fs::write(&wrong, "not-the-secret\n").expect("write");
    let secret_file = |path: &Path| path.to_str().expect("utf-8").to_string();
    let right_arg = secret_file(&right);
    // Two nodes with the secret form a cluster of two; a third with the wrong one is refused
    // by both, and counted as refused, not taken for a peer that is down.
    let mut cluster = Cluster::new(2, &["--cluster-secret-file", &right_arg]);
    cluster.leader().await;
    let intruder_dir = tempfile::tempdir().expect("tempdir");
    let intruder_peer = format!("127.0.0.1:{}", free_port());
    let seeds = cluster.peers.join(",");
    let wrong_arg = secret_file(&wrong);
    let intruder = Server::start_with(
        intruder_dir.path(),
        &[
            "--mode",
            "cluster",
            "--cluster-name",
            "test",
            "--cluster-size",
            "2",
            "--peer-listen",
            &intruder_peer,
            "--seeds",
            &seeds,
            "--cluster-secret-file",
            &wrong_arg,
        ],
    );
    let first = cluster.node(0).address.clone();
    wait_for(PATIENCE, || {
        let refused = crate::common::metric(
            &first,
            "exesdb_peer_refused_total{reason=\"cluster_secret\"}",
        );
        std::future::ready(if refused >= 1.0 {
            Ok(())
        } else {
            Err("a refused peer call counted".to_string())
        })
    })
    .await;
    // The intruder never forms or joins anything.
    let (status, _) = http_get(&intruder.address, "/health");
    assert_eq!(status, 503);
    cluster.kill(0);
    drop(intruder);
}

#[test]
fn cluster_status_on_a_single_node_says_it_has_no_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let status = exesdb_cli(&["cluster", "status", "--json", "--server", &server.url()]);
    assert_eq!(status.status.code(), Some(1), "{status:?}");
    let answer: serde_json::Value = serde_json::from_slice(&status.stdout).expect("a JSON error");
    assert_eq!(answer["error"]["code"], "invalid_argument", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("single mode")),
        "{answer}"
    );
}

#[test]
fn a_node_of_another_cluster_is_refused_and_counted() {
    // Two clusters of one node each, formed apart; then the second is pointed at the first.
    let first = Cluster::new(1, &[]);
    let mut second = Cluster::new(1, &[]);
    let formed = |server: &Server| {
        let server_url = server.url();
        move || {
            let output = exesdb_cli(&["cluster", "status", "--json", "--server", &server_url]);
            let report: serde_json::Value =
                serde_json::from_slice(&output.stdout).unwrap_or_default();
            report["cluster_id"].as_str().map(str::to_string)
        }
    };
    let wait_formed = |check: &dyn Fn() -> Option<String>| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(id) = check() {
                return id;
            }
            assert!(Instant::now() < deadline, "a cluster of one forms");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let first_id = wait_formed(&formed(first.node(0)));
    let second_id = wait_formed(&formed(second.node(0)));
    assert_ne!(first_id, second_id);
    second.kill(0);
    second.peers = vec![second.peers[0].clone(), first.peers[0].clone()];
    second.start(0);
    let address = first.node(0).address.clone();
    let deadline = Instant::now() + PATIENCE;
    while crate::common::metric(&address, "exesdb_peer_refused_total{reason=\"cluster_id\"}") < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the first cluster refuses and counts the other cluster's calls"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Neither takes the other in: each still has its own cluster id and one member.
    assert_eq!(wait_formed(&formed(second.node(0))), second_id);
    let output = exesdb_cli(&[
        "cluster",
        "status",
        "--json",
        "--server",
        &first.node(0).url(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["cluster_id"], first_id.as_str());
}
