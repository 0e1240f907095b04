//! Embedding the store in a Rust program: start a System, append with optimistic concurrency,
//! read back, take a snapshot, look at the live tree, stop.
//!
//! Run with `cargo run -p exesdb --example embedded` (data goes to a temporary directory).

use exesdb::{
    Direction, ExpectedVersion, NewEvent, ReadAllRequest, SnapshotVersion, StoreError, System,
    SystemConfig,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = std::env::temp_dir().join(format!("exesdb-example-{}", std::process::id()));
    let system = System::start(SystemConfig::new(&data_dir, "default")).await?;

    // A new stream: expect it not to exist yet.
    let placed = NewEvent::json("OrderPlaced", &serde_json::json!({"order": 1, "total": 42}));
    let result = system
        .api()
        .append("order-1", ExpectedVersion::NoStream, vec![placed])
        .await?;
    println!(
        "appended at version {} (position {})",
        result.last_event_number, result.first_position
    );

    // Optimistic concurrency: the second writer that expected version 0 loses.
    let paid = || NewEvent::json("OrderPaid", &serde_json::json!({"order": 1}));
    system
        .api()
        .append("order-1", ExpectedVersion::Exact(0), vec![paid()])
        .await?;
    match system
        .api()
        .append("order-1", ExpectedVersion::Exact(0), vec![paid()])
        .await
    {
        Err(StoreError::WrongExpectedVersion { expected, current }) => {
            println!("conflict as expected: expected {expected}, stream is at {current}")
        }
        other => println!("unexpected: {other:?}"),
    }

    for event in system
        .api()
        .read_stream("order-1", None, 100, Direction::Forward)
        .await?
    {
        println!(
            "#{} {} {}",
            event.event_number,
            event.event_type,
            String::from_utf8_lossy(&event.data)
        );
    }
    let everything = system
        .api()
        .read_all(ReadAllRequest {
            count: 100,
            ..Default::default()
        })
        .await?;
    println!("$all holds {} events", everything.len());

    system
        .api()
        .record_snapshot("order", "order-1", 1, b"{\"paid\":true}".to_vec(), vec![])
        .await?;
    let snapshot = system
        .api()
        .read_snapshot("order", "order-1", SnapshotVersion::Latest)
        .await?;
    println!("latest snapshot at version {}", snapshot.version);

    print!("{}", system.tree().render());
    system.stop().await;
    std::fs::remove_dir_all(&data_dir)?;
    Ok(())
}
