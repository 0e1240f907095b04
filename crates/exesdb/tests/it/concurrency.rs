//! Many concurrent appenders on random streams, with `any` and exact expected versions: event
//! numbers and positions stay gapless, every acknowledgement matches what is stored, and each
//! exact-version conflict names the right current version.

use std::collections::BTreeMap;
use std::sync::Arc;

use exesdb::{AppendResult, Direction, ExpectedVersion, NewEvent, ReadAllRequest, StoreError};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
struct Plan {
    tasks: usize,
    appends_per_task: usize,
    streams: usize,
    seed: u64,
}

fn plans() -> impl Strategy<Value = Plan> {
    (2usize..12, 5usize..40, 1usize..6, any::<u64>()).prop_map(
        |(tasks, appends_per_task, streams, seed)| Plan {
            tasks,
            appends_per_task,
            streams,
            seed,
        },
    )
}

/// A tiny deterministic generator, so a failing case replays from its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

async fn run(plan: Plan) {
    let store = Arc::new(crate::common::start().await);
    let mut handles = Vec::new();
    for task in 0..plan.tasks {
        let store = store.clone();
        let plan = plan.clone();
        handles.push(tokio::spawn(async move {
            let mut random = Lcg(plan.seed ^ (task as u64).wrapping_mul(0x9E3779B97F4A7C15));
            let mut acknowledged: Vec<(String, Vec<Uuid>, AppendResult)> = Vec::new();
            for _ in 0..plan.appends_per_task {
                let stream = format!("stream-{}", random.next(plan.streams as u64));
                let count = 1 + random.next(3) as usize;
                let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
                let events = ids
                    .iter()
                    .map(|id| NewEvent::new("E", b"x".to_vec()).with_id(*id))
                    .collect();
                let exact = random.next(2) == 0;
                let expected = if exact {
                    let version = store
                        .system
                        .api()
                        .stream_version(&stream)
                        .await
                        .expect("version");
                    if version < 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(version as u64)
                    }
                } else {
                    ExpectedVersion::Any
                };
                match store.system.api().append(&stream, expected, events).await {
                    Ok(result) => {
                        if let ExpectedVersion::Exact(v) = expected {
                            assert_eq!(result.first_event_number, v + 1);
                        }
                        acknowledged.push((stream, ids, result));
                    }
                    Err(StoreError::WrongExpectedVersion { current, .. }) => {
                        let asked = match expected {
                            ExpectedVersion::Exact(v) => v as i64,
                            _ => -1,
                        };
                        assert!(exact, "only exact appends may conflict");
                        assert!(
                            current > asked,
                            "current {current} must be past the expected {asked}"
                        );
                    }
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for handle in handles {
        acknowledged.extend(handle.await.expect("task"));
    }
    let system = &store.system;
    let total: u64 = acknowledged
        .iter()
        .map(|(_, ids, _)| ids.len() as u64)
        .sum();
    let all = system
        .api()
        .read_all(ReadAllRequest {
            count: 10_000,
            ..Default::default()
        })
        .await
        .expect("read all");
    assert_eq!(
        all.len() as u64,
        total,
        "every acknowledged event, nothing else"
    );
    for (i, event) in all.iter().enumerate() {
        assert_eq!(event.position, i as u64, "$all positions are gapless");
    }
    let mut per_stream: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for event in &all {
        per_stream
            .entry(&event.stream_id)
            .or_default()
            .push(event.event_number);
    }
    for (stream, numbers) in per_stream {
        let expected: Vec<u64> = (0..numbers.len() as u64).collect();
        assert_eq!(
            numbers, expected,
            "{stream}: event numbers gapless and in position order"
        );
    }
    for (stream, ids, result) in &acknowledged {
        let events = system
            .api()
            .read_stream(
                stream,
                Some(result.first_event_number),
                ids.len() as u64,
                Direction::Forward,
            )
            .await
            .expect("read");
        let stored: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(
            &stored, ids,
            "the acknowledged events are where the result says"
        );
        assert_eq!(events[0].position, result.first_position);
        assert_eq!(events[events.len() - 1].position, result.last_position);
        assert_eq!(
            result.last_position - result.first_position + 1,
            ids.len() as u64,
            "an append is contiguous in $all"
        );
    }
    if let Ok(store) = Arc::try_unwrap(store) {
        store.system.stop().await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_appenders_leave_a_gapless_log(plan in plans()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(plan));
    }
}
