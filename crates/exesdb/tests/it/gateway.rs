//! The gateway's admission control: a full gateway refuses at once with `unavailable` instead of
//! queueing, and serves again as soon as calls finish.

use std::sync::Arc;

use crate::common::{PATIENCE, start_with, wait_until};
use exesdb::{ExpectedVersion, NewEvent, StoreError};
use tokio::sync::Semaphore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_refuses_at_once_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = start_with(dir, |config| {
        config.pools.gateway_requests_in_flight_max = 2
    })
    .await;
    let gateway = store.system.gateway().clone();
    // Held calls wait for permits that only the test hands out, whenever they get there.
    let release = Arc::new(Semaphore::new(0));
    let mut held = Vec::new();
    for i in 0..2 {
        let gateway = gateway.clone();
        let release = release.clone();
        held.push(tokio::spawn(async move {
            gateway
                .call(&format!("held-{i}"), move |api| async move {
                    let _permit = release.acquire().await;
                    api.append(
                        &format!("held-{i}"),
                        ExpectedVersion::Any,
                        vec![NewEvent::new("E", vec![])],
                    )
                    .await
                })
                .await
        }));
    }
    wait_until(PATIENCE, "both held calls in flight", || {
        gateway.in_flight() == 2
    })
    .await;
    let refused = gateway
        .call(
            "other",
            |api| async move { api.stream_version("other").await },
        )
        .await
        .expect_err("the gateway is full");
    assert!(
        matches!(&refused, StoreError::Unavailable(m) if m.contains("gateway_requests_in_flight_max")),
        "{refused}"
    );

    release.add_permits(2);
    for call in held {
        call.await.expect("task").expect("held calls complete");
    }
    let version = gateway
        .call(
            "other",
            |api| async move { api.stream_version("held-0").await },
        )
        .await
        .expect("served again");
    assert_eq!(version, 0);
    // A call's permit is released just after its reply is sent, so the count can trail the
    // reply by a moment.
    wait_until(PATIENCE, "no call in flight", || gateway.in_flight() == 0).await;
    store.system.stop().await;
}
