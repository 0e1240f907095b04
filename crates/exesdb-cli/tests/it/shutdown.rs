//! SIGTERM under load: the server finishes what it acknowledged, exits 0, and after a restart
//! every append that got an OK is there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::{PATIENCE, Server, wait_for};
use exesdb_client::{Client, Direction, ExpectedVersion, NewEvent, ReadFrom};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_keeps_every_acknowledged_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let url = server.url();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..8u64 {
        let url = url.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let client = Client::connect(&url).await.expect("connect");
            let mut acknowledged = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = uuid::Uuid::now_v7();
                let stream = format!("w{writer}-{}", i % 5);
                i += 1;
                match client
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        vec![NewEvent::new("E", vec![1; 64]).with_id(id)],
                    )
                    .await
                {
                    Ok(result) => acknowledged.push((stream, result.first_event_number, id)),
                    // Refused or cut off by the shutdown: not acknowledged, nothing to check.
                    Err(_) => {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
            }
            acknowledged
        }));
    }
    // Let the load build up, then stop the server while it runs.
    let probe = &Client::connect(&url).await.expect("connect");
    wait_for(PATIENCE, || async move {
        match probe.stream_version("w0-0").await {
            Ok(version) if version >= 20 => Ok(()),
            other => Err(format!(
                "w0-0 reaches version 20 under load; it is {other:?}"
            )),
        }
    })
    .await;
    let exit = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("join");
    stop.store(true, Ordering::Relaxed);
    assert_eq!(exit.code(), Some(0), "exit status after SIGTERM");
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    assert!(
        acknowledged.len() > 100,
        "the load ran ({} appends)",
        acknowledged.len()
    );

    let server = Server::start(dir.path());
    let client = server.client().await;
    let mut by_stream: std::collections::BTreeMap<String, Vec<(u64, uuid::Uuid)>> =
        Default::default();
    for (stream, number, id) in acknowledged {
        by_stream.entry(stream).or_default().push((number, id));
    }
    for (stream, expected) in by_stream {
        let events = client.read_stream(&stream, ReadFrom::Start, None, Direction::Forward);
        let stored: Vec<uuid::Uuid> = events
            .map(|e| e.expect("readable").event_id)
            .collect()
            .await;
        for (number, id) in expected {
            assert_eq!(stored.get(number as usize), Some(&id), "{stream}@{number}");
        }
    }
}
