//! Fault injection over the whole single-mode tree: every process is killed in turn. For each,
//! the processes restarted are exactly those its supervisor's strategy names; repeated
//! failures beyond the intensity escalate to the parent; the store answers reads and writes
//! afterwards with nothing acknowledged lost. The test prints the table kept in
//! docs/RELIABILITY.md (`cargo test -p exesdb --test it fault_injection -- --nocapture`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{PATIENCE, event, holds_throughout, start, start_with, wait_for, wait_until};
use exesdb::{
    Direction, ExpectedVersion, Kind, Selector, StartFrom, StoreApi, Strategy,
    SubscriptionDefinition, SubscriptionMessage, System, TreeSnapshot,
};

/// A static process of the tree with its parent's strategy and its siblings, in start order.
struct Placement {
    name: String,
    parent: String,
    strategy: Strategy,
    siblings: Vec<String>,
}

/// The processes whose supervisor has a fixed set of children: supervisors' children and
/// partition supervisors' partitions. (Workers under the partitions come and go; their
/// restarts are covered by the pool tests.)
fn placements(node: &TreeSnapshot, out: &mut Vec<Placement>) {
    if matches!(node.kind, Kind::Supervisor | Kind::PartitionSupervisor) {
        let siblings: Vec<String> = node.children.iter().map(|c| c.name.clone()).collect();
        for child in &node.children {
            out.push(Placement {
                name: child.name.clone(),
                parent: node.name.clone(),
                strategy: node.strategy.expect("supervisors have a strategy"),
                siblings: siblings.clone(),
            });
        }
    }
    for child in &node.children {
        placements(child, out);
    }
}

fn expected_scope(placement: &Placement) -> Vec<String> {
    let index = placement
        .siblings
        .iter()
        .position(|s| *s == placement.name)
        .expect("a sibling of itself");
    match placement.strategy {
        Strategy::OneForOne => vec![placement.name.clone()],
        Strategy::OneForAll => placement.siblings.clone(),
        Strategy::RestForOne => placement.siblings[index..].to_vec(),
    }
}

fn restarts(system: &System, name: &str) -> u64 {
    system.tree().find(name).map_or(0, |n| n.restarts)
}

/// Appends until the store answers, then checks every acknowledged event is there.
async fn serves(system: &System, acknowledged: &mut u64) {
    let result = wait_for(PATIENCE, || async move {
        match system
            .api()
            .append("probe", ExpectedVersion::Any, vec![event("E", "x")])
            .await
        {
            Ok(result) => Ok(result),
            Err(error) => {
                assert_eq!(error.code(), "unavailable", "{error}");
                Err(format!("the store serves again: {error}"))
            }
        }
    })
    .await;
    *acknowledged += 1;
    assert_eq!(result.last_event_number + 1, *acknowledged);
    let events = system
        .api()
        .read_stream("probe", None, 10_000, Direction::Forward)
        .await
        .expect("reads work");
    assert_eq!(
        events.len() as u64,
        *acknowledged,
        "no acknowledged event lost"
    );
}

async fn kill_and_wait(system: &System, name: &str) {
    let old = system.process_id(name).expect("running");
    system.inject_fault(name).expect("inject");
    wait_until(PATIENCE, &format!("{name} comes back"), || {
        system.process_id(name).is_some_and(|id| id != old)
    })
    .await;
}

/// The restart intensity period of the tests that kill one process after another.
const INTENSITY_PERIOD_MS: u64 = 100;

/// Waits out the intensity period, so that the next kill does not add up with the last one
/// to an escalation: the supervisor counts restarts in wall-clock time, so this wait is for
/// time itself, not for something to happen.
async fn let_the_intensity_period_pass() {
    tokio::time::sleep(Duration::from_millis(INTENSITY_PERIOD_MS + 20)).await;
}

/// How long the check that nothing outside a restart scope restarted keeps watching.
const OUTSIDE_THE_SCOPE_WATCH: Duration = Duration::from_millis(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_restarts_exactly_its_strategys_scope() {
    // A short intensity period, waited out between processes, so that killing one sibling
    // after another never adds up to an escalation here (that has its own test below).
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| {
        config.intensity.period_ms = INTENSITY_PERIOD_MS
    })
    .await;
    let s = &store.system;
    let mut acknowledged = 0;
    serves(s, &mut acknowledged).await;
    let mut all = Vec::new();
    placements(&s.tree(), &mut all);
    let mut table = vec![
        "| process | supervisor (strategy) | restarted (observed) | as the strategy says | recovered in |".to_string(),
        "|---|---|---|---|---|".to_string(),
    ];
    for placement in &all {
        let watched = &placement.siblings;
        let expected = expected_scope(placement);
        let before: Vec<u64> = watched.iter().map(|n| restarts(s, n)).collect();
        let old_ids: Vec<Option<String>> = expected.iter().map(|n| s.process_id(n)).collect();
        let rose = || -> Vec<String> {
            watched
                .iter()
                .zip(&before)
                .filter(|(name, before)| restarts(s, name) > **before)
                .map(|(name, _)| name.clone())
                .collect()
        };
        let started = Instant::now();
        kill_and_wait(s, &placement.name).await;
        serves(s, &mut acknowledged).await;
        let recovered = started.elapsed();
        // The restart is over once every process of the scope runs again.
        wait_until(
            PATIENCE,
            &format!("killing {}: {expected:?} running again", placement.name),
            || {
                expected.iter().zip(&old_ids).all(|(name, old)| {
                    let now = s.process_id(name);
                    now.is_some() && now != *old
                })
            },
        )
        .await;
        // A supervisor restarts a scope in one pass, counting each child just before starting
        // it; only a sibling that a wrong strategy would restart after the scope could still
        // be to come, and nothing observable marks the end of the pass: a bounded watch.
        holds_throughout(
            OUTSIDE_THE_SCOPE_WATCH,
            &format!("killing {}: exactly {expected:?} restart", placement.name),
            || rose() == expected,
        )
        .await;
        let rose = rose();
        table.push(format!(
            "| {} | {} (:{}) | {} | yes | {:.1} ms |",
            placement.name,
            placement.parent,
            placement.strategy.name(),
            rose.join(", "),
            recovered.as_secs_f64() * 1000.0
        ));
        let_the_intensity_period_pass().await;
    }
    println!("{}", table.join("\n"));
    store.system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_escalate_to_the_grandparent_for_every_process() {
    let mut all = Vec::new();
    {
        let store = start().await;
        placements(&store.system.tree(), &mut all);
        store.system.stop().await;
    }
    // Children of the root would take the root down (by design: the System stops), so they
    // are left out here.
    for placement in all.iter().filter(|p| p.parent != "ExESDB.System") {
        let store = start().await;
        let s = &store.system;
        let mut acknowledged = 0;
        serves(s, &mut acknowledged).await;
        let parent_before = restarts(s, &placement.parent);
        // The default intensity tolerates 3 restarts in 5 s; the 4th failure escalates.
        for _ in 0..4 {
            kill_and_wait(s, &placement.name).await;
        }
        wait_until(
            PATIENCE,
            &format!(
                "{} failing 4 times restarts {}",
                placement.name, placement.parent
            ),
            || restarts(s, &placement.parent) > parent_before,
        )
        .await;
        serves(s, &mut acknowledged).await;
        store.system.stop().await;
    }
}

/// How long a subscriber may wait for the next event before the test calls it stuck.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(30);

/// Reads a transient `$all` subscription until it has seen every position below `target`
/// (which the test sets once the writes are done); returns the positions in delivery order.
async fn transient_reader(
    mut subscription: exesdb::Subscription,
    target: Arc<AtomicU64>,
) -> Vec<u64> {
    let mut seen = Vec::new();
    while (seen.len() as u64) < target.load(Ordering::Acquire) {
        match tokio::time::timeout(DELIVERY_PATIENCE, subscription.next()).await {
            Ok(Some(SubscriptionMessage::Event(event))) => seen.push(event.position),
            Ok(Some(_)) => {}
            Ok(None) => panic!(
                "the transient subscription ended after {} events",
                seen.len()
            ),
            Err(_) => panic!(
                "the transient subscription stalled after {} events",
                seen.len()
            ),
        }
    }
    seen
}

/// Consumes a persistent subscription, acknowledging everything, until every position below
/// `target` was delivered; a consumer whose group went away joins again, as a client would.
async fn persistent_reader(api: StoreApi, name: &str, target: Arc<AtomicU64>) -> u64 {
    let api = &api;
    let mut delivered = BTreeSet::new();
    let mut joins = 0;
    'join: loop {
        // Between a fault and the group's return, joining answers an error: try again.
        let mut consumer = wait_for(PATIENCE, || async move {
            api.connect_subscription(name)
                .await
                .map_err(|error| format!("{name} can be joined again: {error}"))
        })
        .await;
        joins += 1;
        assert!(joins < 200, "the persistent subscription keeps going away");
        while (delivered.range(..target.load(Ordering::Acquire)).count() as u64)
            < target.load(Ordering::Acquire)
        {
            match tokio::time::timeout(DELIVERY_PATIENCE, consumer.next()).await {
                Ok(Some(delivery)) => {
                    consumer.ack(delivery.event.position);
                    delivered.insert(delivery.event.position);
                }
                Ok(None) => continue 'join,
                Err(_) => panic!("the persistent subscription stalled at {}", delivered.len()),
            }
        }
        assert_eq!(
            delivered
                .range(..target.load(Ordering::Acquire))
                .copied()
                .collect::<Vec<_>>(),
            (0..target.load(Ordering::Acquire)).collect::<Vec<_>>(),
            "every event delivered to the persistent subscription"
        );
        return joins;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_resume_after_every_process_fault() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| {
        config.intensity.period_ms = INTENSITY_PERIOD_MS
    })
    .await;
    let s = &store.system;
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let transient = s
        .api()
        .subscribe(Selector::ByStream("$all".into()), StartFrom::Beginning)
        .await
        .expect("subscribe");
    let transient = tokio::spawn(transient_reader(transient, target.clone()));
    s.api()
        .save_subscription(SubscriptionDefinition::new(
            "faults",
            Selector::ByStream("$all".into()),
            StartFrom::Beginning,
        ))
        .await
        .expect("save");
    let api: StoreApi = s.api().clone();
    let persistent = tokio::spawn({
        let target = target.clone();
        async move { persistent_reader(api, "faults", target).await }
    });

    let mut acknowledged = 0;
    serves(s, &mut acknowledged).await;
    let mut all = Vec::new();
    placements(&s.tree(), &mut all);
    for placement in &all {
        // Events in flight to both subscribers while the process dies.
        for i in 0..5 {
            s.api()
                .append(
                    "load",
                    ExpectedVersion::Any,
                    vec![event("E", &i.to_string())],
                )
                .await
                .expect("the store serves between faults");
        }
        kill_and_wait(s, &placement.name).await;
        serves(s, &mut acknowledged).await;
        let_the_intensity_period_pass().await;
    }
    let stored = s
        .api()
        .read_all(exesdb::ReadAllRequest {
            count: 10_000,
            ..Default::default()
        })
        .await
        .expect("read all");
    let total = stored.len() as u64;
    assert!(total >= acknowledged, "acknowledged probes are stored");
    target.store(total, Ordering::Release);
    // Wake a reader that caught up before the target was known.
    s.api()
        .append("load", ExpectedVersion::Any, vec![event("E", "last")])
        .await
        .expect("append");
    let seen = transient.await.expect("transient reader");
    assert_eq!(
        seen[..total as usize],
        (0..total).collect::<Vec<_>>()[..],
        "the transient subscription saw every event once, in order, through {} faults",
        all.len()
    );
    let joins = persistent.await.expect("persistent reader");
    println!(
        "{} processes killed; {total} events; transient: gapless; persistent: all delivered \
         ({joins} joins)",
        all.len()
    );
    store.system.stop().await;
}
