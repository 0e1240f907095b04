//! The tree: it matches the spec's single-mode diagram, and failures restart exactly the scope
//! each strategy promises, escalate past the intensity, and lose no acknowledged event.
//!
//! The spec's diagrams are kept as data in `tests/data/supervision-tree-{single,cluster}.txt`,
//! so that the repository tests itself without the spec beside it.

use std::time::Duration;

use crate::common::{
    PATIENCE, event, holds_throughout, start, start_in, start_with, wait_for, wait_until,
};
use exesdb::{
    Direction, ExpectedVersion, Kind, Selector, StartFrom, Strategy, System, TreeSnapshot,
};

/// One process of a tree file in `tests/data/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpecNode {
    depth: usize,
    name: String,
    /// `S`, `GS`, `PS`, `DS` or `W` (the spec's legend), or `varies` for a group of
    /// alternatives.
    kind: String,
    strategy: Option<String>,
    /// After `→`: what runs under a partition supervisor, not listed because it comes and goes.
    pool: Option<String>,
    /// After `(if`: the configuration that selects this alternative of a `[varies]` group.
    condition: Option<String>,
}

/// The tree of `mode` (`single` or `cluster`), read from its file in `tests/data/`.
fn spec_tree(mode: &str) -> Vec<SpecNode> {
    let path = format!(
        "{}/tests/data/supervision-tree-{mode}.txt",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
    let lines: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
    let nodes: Vec<SpecNode> = lines.iter().map(|line| parse_spec_line(line)).collect();
    // Depth is read from the width of the drawing alone; drawing the nodes again gives back
    // the file only if every ├── └── │ stands where the depths say it must.
    assert_eq!(
        draw(&nodes),
        lines.join("\n") + "\n",
        "the drawing in {path}"
    );
    nodes
}

/// One line: drawing, then `NAME [KIND]`, then `(:STRATEGY)`, `→ POOL` or `(if CONDITION)`.
fn parse_spec_line(line: &str) -> SpecNode {
    let name_at = line
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or_else(|| panic!("no name in {line:?}"));
    let drawing_columns = line[..name_at].chars().count();
    assert_eq!(drawing_columns % 4, 0, "four columns a level: {line:?}");
    let (name, rest) = line[name_at..]
        .split_once(" [")
        .unwrap_or_else(|| panic!("no [KIND] in {line:?}"));
    let (kind, mut rest) = rest
        .split_once(']')
        .unwrap_or_else(|| panic!("no ] in {line:?}"));
    let strategy = take_field(&mut rest, " (:", ")");
    let pool = take_field(&mut rest, " → ", "");
    let condition = take_field(&mut rest, " (if ", ")");
    assert!(rest.is_empty(), "unexpected {rest:?} in {line:?}");
    assert!(
        ["S", "GS", "PS", "DS", "W", "varies"].contains(&kind),
        "a kind of the legend in {line:?}"
    );
    assert!(
        strategy.is_none() || kind == "S",
        "only supervisors have a strategy: {line:?}"
    );
    assert_eq!(
        pool.is_some(),
        kind == "PS",
        "a pool is what a [PS] holds: {line:?}"
    );
    SpecNode {
        depth: drawing_columns / 4,
        name: name.to_string(),
        kind: kind.to_string(),
        strategy,
        pool,
        condition,
    }
}

/// Takes `open` VALUE `close` from the start of `rest` (an empty `close`: to the end).
fn take_field(rest: &mut &str, open: &str, close: &str) -> Option<String> {
    let inner = rest.strip_prefix(open)?;
    let end = if close.is_empty() {
        inner.len()
    } else {
        inner.find(close)?
    };
    let value = inner[..end].to_string();
    *rest = &inner[end + close.len()..];
    Some(value)
}

/// The nodes in the spec's notation, drawn as [`TreeSnapshot::render`] draws the live tree.
fn draw(nodes: &[SpecNode]) -> String {
    let has_later_sibling = |index: usize| {
        let depth = nodes[index].depth;
        nodes[index + 1..]
            .iter()
            .find(|node| node.depth <= depth)
            .is_some_and(|node| node.depth == depth)
    };
    let mut out = String::new();
    // For each level above the current node, whether a │ runs down past it to a later sibling.
    let mut continues: Vec<bool> = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        continues.truncate(node.depth);
        if node.depth > 0 {
            for &more in &continues[1..] {
                out.push_str(if more { "│   " } else { "    " });
            }
            out.push_str(if has_later_sibling(index) {
                "├── "
            } else {
                "└── "
            });
        }
        continues.push(has_later_sibling(index));
        out.push_str(&format!("{} [{}]", node.name, node.kind));
        if let Some(strategy) = &node.strategy {
            out.push_str(&format!(" (:{strategy})"));
        }
        if let Some(pool) = &node.pool {
            out.push_str(&format!(" → {pool}"));
        }
        if let Some(condition) = &node.condition {
            out.push_str(&format!(" (if {condition})"));
        }
        out.push('\n');
    }
    out
}

/// The processes a store with native PubSub runs, as the live tree shows them: each
/// `[varies]` group gives way to its `(if :native)` alternative, which takes the group's
/// place, and pools are not drawn.
fn as_run_with_native_pubsub(nodes: &[SpecNode]) -> Vec<SpecNode> {
    let mut out = Vec::new();
    let mut group_depth = None;
    let mut keeping = true;
    for node in nodes {
        let mut node = node.clone();
        if group_depth.is_some_and(|depth| node.depth <= depth) {
            group_depth = None;
            keeping = true;
        }
        if node.kind == "varies" {
            group_depth = Some(node.depth);
            continue;
        }
        if let Some(depth) = group_depth {
            if node.depth == depth + 1 {
                keeping = node.condition.as_deref() == Some(":native");
            }
            node.depth -= 1;
        }
        if keeping {
            node.pool = None;
            node.condition = None;
            out.push(node);
        }
    }
    out
}

/// The live tree as the diagram draws it: a partition supervisor without its partitions and
/// their workers (the diagram's "→ ... pools") and without a strategy (the diagram gives
/// none; ours are `one_for_one`).
fn as_in_the_diagram(node: &TreeSnapshot) -> TreeSnapshot {
    let mut node = node.clone();
    if node.kind == Kind::PartitionSupervisor {
        assert_eq!(node.strategy, Some(Strategy::OneForOne), "{}", node.name);
        assert!(
            !node.children.is_empty()
                && node
                    .children
                    .iter()
                    .all(|partition| partition.kind == Kind::DynamicSupervisor),
            "the partitions of {} are dynamic supervisors",
            node.name
        );
        node.strategy = None;
        node.children.clear();
    } else {
        node.children = node.children.iter().map(as_in_the_diagram).collect();
    }
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tree_matches_the_spec_diagram() {
    let store = start().await;
    let tree = store.system.tree();
    let expected = as_run_with_native_pubsub(&spec_tree("single"));
    assert_eq!(as_in_the_diagram(&tree).render(), draw(&expected));

    // The JSON has the shape of `tree --json`.
    let json = serde_json::to_value(&tree).expect("json");
    assert_eq!(json["name"], "ExESDB.System");
    assert_eq!(json["kind"], "S");
    assert_eq!(json["strategy"], "rest_for_one");
    assert_eq!(json["restarts"], 0);
    assert!(json["children"].is_array());
    store.system.stop().await;
}

/// The cluster diagram, as data, says what the spec says of it: the single tree with the
/// cluster layer before the gateway.
#[test]
fn the_cluster_tree_is_the_single_tree_with_the_cluster_layer_before_the_gateway() {
    let single = spec_tree("single");
    let cluster = spec_tree("cluster");
    let node = |depth, name: &str, kind: &str, strategy: Option<&str>| SpecNode {
        depth,
        name: name.to_string(),
        kind: kind.to_string(),
        strategy: strategy.map(str::to_string),
        pool: None,
        condition: None,
    };
    let cluster_layer = [
        node(1, "LibCluster", "S", None),
        node(1, "ExESDB.ClusterSystem", "S", Some("one_for_one")),
        node(2, "ExESDB.StoreCoordinator", "GS", None),
        node(2, "ExESDB.NodeMonitor", "GS", None),
    ];
    // After CoreSystem and its subtree, before GatewaySystem (which starts last).
    let gateway = single
        .iter()
        .position(|node| node.name == "ExESDB.GatewaySystem")
        .expect("GatewaySystem in the single tree");
    assert_eq!(single[gateway].depth, 1);
    let expected: Vec<SpecNode> = single[..gateway]
        .iter()
        .cloned()
        .chain(cluster_layer)
        .chain(single[gateway..].iter().cloned())
        .collect();
    assert_eq!(cluster, expected);
}

/// A transport to no one: a cluster of one node never calls a peer.
struct NoPeers;

impl exesdb::PeerTransport for NoPeers {
    fn call(
        &self,
        peer_addr: &str,
        _call: exesdb::PeerCall,
        _deadline: Duration,
    ) -> exesdb::PeerCallFuture {
        let peer = peer_addr.to_string();
        Box::pin(async move { Err(exesdb::PeerCallError::Unreachable(peer)) })
    }

    fn stream(
        &self,
        peer_addr: &str,
        _call: exesdb::PeerCall,
        _messages: exesdb::PeerMessages,
    ) -> exesdb::PeerStreamFuture {
        let peer = peer_addr.to_string();
        Box::pin(async move { Err(exesdb::PeerCallError::Unreachable(peer)) })
    }
}

/// Cluster mode with a cluster of one: node 7, which forms the group alone.
fn one_node_cluster() -> exesdb::ClusterConfig {
    exesdb::ClusterConfig::new(
        7,
        "test",
        1,
        "127.0.0.1:1",
        "127.0.0.1:2",
        std::sync::Arc::new(NoPeers),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_cluster_tree_matches_the_spec_diagram_and_a_one_node_cluster_forms_and_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| config.cluster = Some(one_node_cluster())).await;
    let expected = as_run_with_native_pubsub(&spec_tree("cluster"));
    assert_eq!(
        as_in_the_diagram(&store.system.tree()).render(),
        draw(&expected)
    );
    // The coordinator forms the group of one, which then leads and takes writes.
    let status = wait_for(PATIENCE, || {
        let status = store.system.cluster_status();
        std::future::ready(match &status {
            Some(status) if status.leader == Some(7) && status.cluster_id.is_some() => {
                Ok(status.clone())
            }
            _ => Err(format!("a formed group of one: {status:?}")),
        })
    })
    .await;
    assert_eq!(status.members.len(), 1);
    assert_eq!(status.members[0].state, "leader");
    let result = store
        .system
        .api()
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![event("Placed", "{}")],
        )
        .await
        .expect("the leader appends");
    assert_eq!(result.first_position, 0);
    // A killed Store restarts its Raft group over the same log: still in the cluster, its
    // data kept, and it takes writes again (CoreSystem is one_for_all: all of it restarts).
    store
        .system
        .inject_fault("ExESDB.Store")
        .expect("the Store runs");
    let api = store.system.api().clone();
    // One event id through every retry: an attempt answered `unavailable` (outcome unknown)
    // may have been committed, and its retry must then be recognised, not refused.
    let shipped = event("Shipped", "{}").with_id(uuid::Uuid::now_v7());
    let second = wait_for(PATIENCE, || {
        let api = api.clone();
        let shipped = shipped.clone();
        async move {
            api.append("order-1", ExpectedVersion::Exact(0), vec![shipped])
                .await
                .map_err(|error| format!("an append after the Store's restart: {error}"))
        }
    })
    .await;
    assert_eq!((second.first_event_number, second.first_position), (1, 1));
    drop(api);
    let after = store.system.cluster_status().expect("cluster mode");
    assert_eq!(after.cluster_id, status.cluster_id);
    assert_eq!(after.members.len(), 1);
    let cluster_id = status.cluster_id.clone().expect("formed");
    let data = store.dir.path().join("default");
    store.system.stop().await;
    assert_eq!(
        std::fs::read_to_string(data.join("CLUSTER_ID"))
            .expect("the cluster id is kept")
            .trim(),
        cluster_id
    );
    // The same data in single mode is refused: its writes would never reach the cluster.
    let refused = System::start(exesdb::SystemConfig::new(store.dir.path(), "default"))
        .await
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(refused.contains(&cluster_id), "{refused}");
    assert!(refused.contains("--mode cluster"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_mode_store_is_refused_in_cluster_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_in(dir).await;
    store
        .system
        .api()
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![event("Placed", "{}")],
        )
        .await
        .expect("appends");
    store.system.stop().await;
    let mut config = exesdb::SystemConfig::new(store.dir.path(), "default");
    config.cluster = Some(one_node_cluster());
    let refused = System::start(config)
        .await
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(refused.contains("single-mode data (1 events)"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_workers_start_on_demand_and_stop_when_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| {
        config.pools.writer_idle_ms = 100;
        config.pools.reader_idle_ms = 100;
    })
    .await;
    assert_eq!(store.system.api().active_workers(), 0);
    for i in 0..5 {
        store
            .system
            .api()
            .append(
                &format!("s{i}"),
                ExpectedVersion::Any,
                vec![event("E", "x")],
            )
            .await
            .expect("append");
    }
    assert_eq!(store.system.api().active_workers(), 5);
    let tree = store.system.tree();
    let workers: usize = tree
        .find("ExESDB.StreamsWriters")
        .expect("writers")
        .children
        .iter()
        .map(|partition| partition.children.len())
        .sum();
    assert_eq!(workers, 5);
    wait_until(PATIENCE, "every worker stopped when idle", || {
        store.system.api().active_workers() == 0
    })
    .await;
    // An idle-stopped worker is not a failure: nothing restarted.
    assert!(all_restarts(&store.system.tree()) == 0);
    store.system.stop().await;
}

fn all_restarts(node: &TreeSnapshot) -> u64 {
    node.restarts + node.children.iter().map(all_restarts).sum::<u64>()
}

fn restarts(system: &System, name: &str) -> u64 {
    system
        .tree()
        .find(name)
        .unwrap_or_else(|| panic!("{name} in tree"))
        .restarts
}

/// How long the check that nothing outside a restart scope restarted keeps watching.
const OUTSIDE_THE_SCOPE_WATCH: Duration = Duration::from_millis(100);

/// Kills `victim`, waits until the restart it causes is over (every process in `expected`
/// restarted and running again), and checks that of `watched`, exactly `expected` restarted.
async fn fail_and_expect(system: &System, victim: &str, watched: &[&str], expected: &[&str]) {
    let before: Vec<u64> = watched.iter().map(|name| restarts(system, name)).collect();
    let old_ids: Vec<Option<String>> = expected
        .iter()
        .map(|name| system.process_id(name))
        .collect();
    let rose = || -> Vec<String> {
        watched
            .iter()
            .zip(&before)
            .filter(|(name, before)| restarts(system, name) > **before)
            .map(|(name, _)| name.to_string())
            .collect()
    };
    eprintln!("failing {victim}");
    system.inject_fault(victim).expect("inject");
    let restart_over = || {
        let back = expected.iter().zip(&old_ids).all(|(name, old)| {
            let now = system.process_id(name);
            now.is_some() && now != *old
        });
        if back {
            Ok(())
        } else {
            Err(format!(
                "{victim} failed: {expected:?} running again; restarted so far {:?}",
                rose()
            ))
        }
    };
    wait_for(PATIENCE, || std::future::ready(restart_over())).await;
    // A supervisor restarts a scope in one pass, counting each child just before starting
    // it, so the restarts counted by now are this failure's; only a sibling that a wrong
    // strategy would restart after the scope could still be to come. Nothing observable marks
    // the end of the pass, so that check watches for a bounded while.
    holds_throughout(
        OUTSIDE_THE_SCOPE_WATCH,
        &format!("{victim} failed: of {watched:?} exactly {expected:?} restart"),
        || rose() == expected,
    )
    .await;
}

async fn append_and_check(system: &System, stream: &str, acknowledged: &mut u64) {
    // Right after a restart the store may briefly answer `unavailable`: never a wrong answer.
    let result = wait_for(PATIENCE, || async move {
        match system
            .api()
            .append(stream, ExpectedVersion::Any, vec![event("E", "x")])
            .await
        {
            Ok(result) => Ok(result),
            Err(error) => {
                assert_eq!(error.code(), "unavailable", "{error}");
                Err(format!("the store serves again after the restart: {error}"))
            }
        }
    })
    .await;
    *acknowledged += 1;
    assert_eq!(result.last_event_number + 1, *acknowledged);
    let events = system
        .api()
        .read_stream(stream, None, 10_000, Direction::Forward)
        .await
        .expect("read");
    assert_eq!(
        events.len() as u64,
        *acknowledged,
        "no acknowledged event lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_strategy_restarts_exactly_its_scope() {
    let store = start().await;
    let s = &store.system;
    let mut acknowledged = 0;
    append_and_check(s, "probe", &mut acknowledged).await;

    // one_for_one (Subscriptions): only the failed child.
    fail_and_expect(
        s,
        "ExESDB.SubscriptionsReader",
        &[
            "ExESDB.SubscriptionsReader",
            "ExESDB.SubscriptionsWriter",
            "ExESDB.Subscriptions",
        ],
        &["ExESDB.SubscriptionsReader"],
    )
    .await;
    append_and_check(s, "probe", &mut acknowledged).await;

    // rest_for_one (StoreSystem): the Store and those started after it.
    fail_and_expect(
        s,
        "ExESDB.StoreCluster",
        &[
            "ExESDB.Store",
            "ExESDB.StoreCluster",
            "ExESDB.StoreRegistry",
        ],
        &["ExESDB.StoreCluster", "ExESDB.StoreRegistry"],
    )
    .await;
    fail_and_expect(
        s,
        "ExESDB.Store",
        &[
            "ExESDB.Store",
            "ExESDB.StoreCluster",
            "ExESDB.StoreRegistry",
            "ExESDB.PersistenceSystem",
        ],
        &[
            "ExESDB.Store",
            "ExESDB.StoreCluster",
            "ExESDB.StoreRegistry",
        ],
    )
    .await;
    append_and_check(s, "probe", &mut acknowledged).await;

    // rest_for_one (LeaderSystem): tracker failing restarts the worker after it.
    fail_and_expect(
        s,
        "ExESDB.LeaderTracker",
        &[
            "ExESDB.LeaderTracker",
            "ExESDB.LeaderWorker",
            "ExESDB.EmitterSystem",
        ],
        &["ExESDB.LeaderTracker", "ExESDB.LeaderWorker"],
    )
    .await;

    // one_for_all (CoreSystem): all three children.
    fail_and_expect(
        s,
        "ExESDB.NotificationSystem",
        &[
            "ExESDB.PersistenceSystem",
            "ExESDB.NotificationSystem",
            "ExESDB.StoreSystem",
            "ExESDB.GatewaySystem",
        ],
        &[
            "ExESDB.PersistenceSystem",
            "ExESDB.NotificationSystem",
            "ExESDB.StoreSystem",
        ],
    )
    .await;
    append_and_check(s, "probe", &mut acknowledged).await;

    // rest_for_one (System): CoreSystem failing restarts the GatewaySystem after it.
    fail_and_expect(
        s,
        "ExESDB.CoreSystem",
        &["ExESDB.CoreSystem", "ExESDB.GatewaySystem"],
        &["ExESDB.CoreSystem", "ExESDB.GatewaySystem"],
    )
    .await;
    append_and_check(s, "probe", &mut acknowledged).await;

    // A stream worker under its dynamic supervisor: only that worker.
    s.api()
        .append("worker-probe", ExpectedVersion::Any, vec![event("E", "x")])
        .await
        .expect("starts a worker");
    // Writers are shared by streams and named by their number: take the one serving it.
    let name = writer_names(s)
        .into_iter()
        .next()
        .expect("a writer runs after an append");
    let name = name.as_str();
    fail_and_expect(s, name, &[name, "ExESDB.StreamsWriters"], &[name]).await;
    append_and_check(s, "probe", &mut acknowledged).await;
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_intensity_escalates_to_the_parent() {
    let store = start().await;
    let s = &store.system;
    let mut acknowledged = 0;
    append_and_check(s, "probe", &mut acknowledged).await;
    // Default intensity: 3 restarts in 5 s. The fourth failure makes Subscriptions give up,
    // and its parent (PersistenceSystem, one_for_one) restarts it.
    for _ in 0..3 {
        let victim = "ExESDB.SubscriptionsWriter";
        fail_and_expect(s, victim, &[victim], &[victim]).await;
    }
    assert_eq!(restarts(s, "ExESDB.SubscriptionsWriter"), 3);
    assert_eq!(restarts(s, "ExESDB.Subscriptions"), 0);
    fail_and_expect(
        s,
        "ExESDB.SubscriptionsWriter",
        &[
            "ExESDB.Subscriptions",
            "ExESDB.Streams",
            "ExESDB.Snapshots",
            "ExESDB.PersistenceSystem",
        ],
        &["ExESDB.Subscriptions"],
    )
    .await;
    append_and_check(s, "probe", &mut acknowledged).await;
    store.system.stop().await;
}

/// The names of the StreamsWriter workers running now.
fn writer_names(system: &System) -> Vec<String> {
    let tree = system.tree();
    let writers = tree.find("ExESDB.StreamsWriters").expect("writers");
    writers
        .children
        .iter()
        .flat_map(|partition| partition.children.iter().map(|w| w.name.clone()))
        .collect()
}

/// The regression that opened issue 11: one writer process per stream, at most 16,384 per
/// partition, refused the 65,537th active stream with `unavailable`, although one stream per
/// aggregate means millions of them. Streams now share a bounded set of writers and readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_workers_are_all_served_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| {
        config.pools.streams_writers_partitions = 1;
        config.pools.streams_readers_partitions = 1;
        config.pools.stream_workers_per_partition_max = 2;
    })
    .await;
    let s = &store.system;
    let streams = 200;
    for round in 0..2u64 {
        for i in 0..streams {
            let expected = if round == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(0)
            };
            let result = s
                .api()
                .append(&format!("order-{i}"), expected, vec![event("E", "x")])
                .await
                .expect("every stream is served, however many there are");
            assert_eq!(result.first_event_number, round);
        }
    }
    let writers = writer_names(s);
    assert!(
        !writers.is_empty() && writers.len() <= 2,
        "at most the limit of writers: {writers:?}"
    );
    for i in 0..streams {
        let events = s
            .api()
            .read_stream(&format!("order-{i}"), None, 10, Direction::Forward)
            .await
            .expect("read");
        let numbers: Vec<u64> = events.iter().map(|e| e.event_number).collect();
        assert_eq!(numbers, vec![0, 1]);
    }
    store.system.stop().await;
}

/// Emitters keep a worker each (a step waits on its subscriber), so their pools still refuse
/// past `workers_per_partition_max`, and serve again once a subscription ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_emitter_partition_answers_unavailable_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| {
        config.pools.emitter_partitions = 1;
        config.pools.workers_per_partition_max = 2;
        config.pools.reader_idle_ms = 200;
    })
    .await;
    let s = &store.system;
    let first = s
        .api()
        .subscribe(Selector::ByStream("a".into()), StartFrom::Beginning)
        .await
        .expect("within the limit");
    let _second = s
        .api()
        .subscribe(Selector::ByStream("b".into()), StartFrom::Beginning)
        .await
        .expect("within the limit");
    let error = s
        .api()
        .subscribe(Selector::ByStream("c".into()), StartFrom::Beginning)
        .await
        .expect_err("a third emitter exceeds workers_per_partition_max");
    assert_eq!(error.code(), "unavailable");
    assert!(
        error.to_string().contains("workers_per_partition_max"),
        "{error}"
    );
    drop(first);
    wait_for(PATIENCE, || async move {
        match s
            .api()
            .subscribe(Selector::ByStream("c".into()), StartFrom::Beginning)
            .await
        {
            Ok(subscription) => Ok(subscription),
            Err(error) => {
                assert_eq!(error.code(), "unavailable", "{error}");
                Err(format!("c served once a subscription ends: {error}"))
            }
        }
    })
    .await;
    store.system.stop().await;
}
