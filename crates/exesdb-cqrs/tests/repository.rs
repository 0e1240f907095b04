//! The repository against a real `exesdb serve` process (and, with the `embedded` feature, an
//! embedded store), as cqrs-es's PostgreSQL backend is tested: the event repository (empty,
//! insert, read, a stale insert refused, streams), the snapshot repository (a stale update
//! refused), commit and load through cqrs-es's stores, and an upcasted event.

use std::collections::HashMap;
use std::process::Child;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, SemanticVersionEventUpcaster,
    SerializedEvent,
};
use cqrs_es::{Aggregate, AggregateContext, CqrsFramework, DomainEvent, EventStore};
use exesdb_cqrs::{ExesdbEventRepository, stream_id};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Account {
    opened: bool,
    balance: i64,
}

#[derive(Debug)]
enum AccountCommand {
    Open,
    Deposit(i64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Opened,
    Deposited { amount: i64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        match self {
            AccountEvent::Opened => "Opened".into(),
            AccountEvent::Deposited { .. } => "Deposited".into(),
        }
    }

    fn event_version(&self) -> String {
        "2.0".into()
    }
}

#[derive(Debug, PartialEq)]
struct AccountError(String);

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AccountError {}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: AccountCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), AccountError> {
        // cqrs-es 0.5.0's snapshot stores apply a commit's events to the loaded aggregate
        // once more when they take a snapshot, so the events go through a copy here and the
        // aggregate itself is left as loaded (README, "cqrs-es").
        let mut scratch = Account {
            opened: self.opened,
            balance: self.balance,
        };
        match command {
            AccountCommand::Open if self.opened => Err(AccountError("already open".into())),
            AccountCommand::Open => {
                sink.write(AccountEvent::Opened, &mut scratch).await;
                Ok(())
            }
            AccountCommand::Deposit(_) if !self.opened => Err(AccountError("not open".into())),
            AccountCommand::Deposit(amount) => {
                sink.write(AccountEvent::Deposited { amount }, &mut scratch)
                    .await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Opened => self.opened = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
        }
    }
}

/// A real `exesdb serve` on a free loopback port with its own data directory, killed when
/// dropped. The binary is the workspace's (`cargo test --workspace` builds it).
struct Server {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let binary = std::env::current_exe()
            .ok()
            .and_then(|test| Some(test.parent()?.parent()?.join("exesdb")))
            .filter(|path| path.exists())
            .expect("the exesdb binary beside this test's directory: run `cargo build -p exesdb-cli` (or test the workspace)");
        let data = tempfile::tempdir().expect("tempdir");
        let (child, address) = exesdb_test_support::spawn_server(&binary, data.path(), &[]);
        Server {
            child,
            url: format!("http://{address}"),
            _data: data,
        }
    }

    async fn repository(&self) -> ExesdbEventRepository {
        let client = exesdb_client::Client::connect(&self.url)
            .await
            .expect("client connects");
        ExesdbEventRepository::new(client)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn event(aggregate_id: &str, sequence: usize, payload: AccountEvent) -> SerializedEvent {
    SerializedEvent {
        aggregate_id: aggregate_id.to_string(),
        sequence,
        aggregate_type: Account::TYPE.to_string(),
        event_type: payload.event_type(),
        event_version: payload.event_version(),
        payload: serde_json::to_value(&payload).expect("serializes"),
        metadata: json!({"user": "test"}),
    }
}

async fn replayed(
    mut stream: cqrs_es::persist::ReplayStream,
) -> Vec<(String, usize, AccountEvent)> {
    let mut events = Vec::new();
    while let Some(envelope) = stream.next::<Account>(&[]).await {
        let envelope = envelope.expect("a replayed event");
        events.push((envelope.aggregate_id, envelope.sequence, envelope.payload));
    }
    events
}

async fn event_repository_cases(repo: &ExesdbEventRepository) {
    // Empty.
    let none = repo.get_events::<Account>("a-1").await.expect("reads");
    assert!(none.is_empty());
    // Insert and read back, every field.
    let first = [
        event("a-1", 1, AccountEvent::Opened),
        event("a-1", 2, AccountEvent::Deposited { amount: 10 }),
    ];
    repo.persist::<Account>(&first, None)
        .await
        .expect("persists");
    assert_eq!(
        repo.get_events::<Account>("a-1").await.expect("reads"),
        first
    );
    // A second writer that read the same version: refused, and nothing written.
    let stale = [event("a-1", 2, AccountEvent::Deposited { amount: 99 })];
    let refused = repo.persist::<Account>(&stale, None).await;
    assert!(
        matches!(refused, Err(PersistenceError::OptimisticLockError)),
        "{refused:?}"
    );
    let next = [event("a-1", 3, AccountEvent::Deposited { amount: 5 })];
    repo.persist::<Account>(&next, None)
        .await
        .expect("persists");
    // The events after a sequence.
    assert_eq!(
        repo.get_last_events::<Account>("a-1", 2)
            .await
            .expect("reads"),
        next
    );
    assert_eq!(
        repo.get_events::<Account>("a-1")
            .await
            .expect("reads")
            .len(),
        3
    );
    // Another instance, then the streams: of one instance, and of the whole type in order.
    repo.persist::<Account>(&[event("a-2", 1, AccountEvent::Opened)], None)
        .await
        .expect("persists");
    let one = replayed(repo.stream_events::<Account>("a-1").await.expect("streams")).await;
    assert_eq!(
        one,
        vec![
            ("a-1".to_string(), 1, AccountEvent::Opened),
            ("a-1".to_string(), 2, AccountEvent::Deposited { amount: 10 }),
            ("a-1".to_string(), 3, AccountEvent::Deposited { amount: 5 }),
        ]
    );
    let all = replayed(repo.stream_all_events::<Account>().await.expect("streams")).await;
    let order: Vec<(String, usize)> = all.into_iter().map(|(id, n, _)| (id, n)).collect();
    assert_eq!(
        order,
        vec![
            ("a-1".to_string(), 1),
            ("a-1".to_string(), 2),
            ("a-1".to_string(), 3),
            ("a-2".to_string(), 1),
        ]
    );
    assert_eq!(stream_id(Account::TYPE, "a-1"), "account-a-1");
}

/// The aggregate's latest snapshot: its state, the sequence it covers, and its version.
async fn latest_snapshot(repo: &ExesdbEventRepository, id: &str) -> (Value, usize, usize) {
    let snapshot = repo
        .get_snapshot::<Account>(id)
        .await
        .expect("reads")
        .expect("a snapshot");
    (
        snapshot.aggregate,
        snapshot.current_sequence,
        snapshot.current_snapshot,
    )
}

async fn snapshot_repository_cases(repo: &ExesdbEventRepository) {
    assert!(
        repo.get_snapshot::<Account>("s-1")
            .await
            .expect("reads")
            .is_none()
    );
    let state = json!({"opened": true, "balance": 0});
    repo.persist::<Account>(
        &[event("s-1", 1, AccountEvent::Opened)],
        Some(("s-1".to_string(), state.clone(), 1)),
    )
    .await
    .expect("persists with a snapshot");
    assert_eq!(latest_snapshot(repo, "s-1").await, (state, 1, 1));
    let newer = json!({"opened": true, "balance": 7});
    repo.persist::<Account>(
        &[event("s-1", 2, AccountEvent::Deposited { amount: 7 })],
        Some(("s-1".to_string(), newer.clone(), 2)),
    )
    .await
    .expect("persists with the next snapshot");
    // A stale update (snapshot 2 again): refused, and its event is not written.
    let stale = repo
        .persist::<Account>(
            &[event("s-1", 3, AccountEvent::Deposited { amount: 1 })],
            Some(("s-1".to_string(), json!({"opened": true, "balance": 8}), 2)),
        )
        .await;
    assert!(
        matches!(stale, Err(PersistenceError::OptimisticLockError)),
        "{stale:?}"
    );
    assert_eq!(
        repo.get_events::<Account>("s-1")
            .await
            .expect("reads")
            .len(),
        2
    );
    assert_eq!(latest_snapshot(repo, "s-1").await, (newer, 2, 2));
}

async fn commit_and_load_cases(repo: ExesdbEventRepository) {
    // Through the event store: every load replays the events.
    let store = PersistedEventStore::<_, Account>::new_event_store(repo.clone());
    let cqrs = CqrsFramework::new(store, vec![], ());
    cqrs.execute("c-1", AccountCommand::Open)
        .await
        .expect("opens");
    cqrs.execute("c-1", AccountCommand::Deposit(3))
        .await
        .expect("deposits");
    cqrs.execute("c-1", AccountCommand::Deposit(4))
        .await
        .expect("deposits");
    assert!(cqrs.execute("c-1", AccountCommand::Open).await.is_err());
    let store = PersistedEventStore::<_, Account>::new_event_store(repo.clone());
    let mut loaded = store.load_aggregate("c-1").await.expect("loads");
    assert_eq!(
        loaded.aggregate(),
        &Account {
            opened: true,
            balance: 7
        }
    );
    let events = store.load_events("c-1").await.expect("loads");
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].metadata, HashMap::new());

    // Through a snapshot store, a snapshot every 2 events.
    let store = PersistedEventStore::<_, Account>::new_snapshot_store(repo.clone(), 2);
    let cqrs = CqrsFramework::new(store, vec![], ());
    cqrs.execute("c-2", AccountCommand::Open)
        .await
        .expect("opens");
    for amount in 1..=4 {
        cqrs.execute("c-2", AccountCommand::Deposit(amount))
            .await
            .expect("deposits");
    }
    let snapshot = repo
        .get_snapshot::<Account>("c-2")
        .await
        .expect("reads")
        .expect("taken");
    assert_eq!(snapshot.current_snapshot, 2);
    assert_eq!(snapshot.current_sequence, 4);
    let store = PersistedEventStore::<_, Account>::new_snapshot_store(repo, 2);
    let mut loaded = store.load_aggregate("c-2").await.expect("loads");
    assert_eq!(
        loaded.aggregate(),
        &Account {
            opened: true,
            balance: 10
        }
    );
}

async fn upcaster_case(repo: ExesdbEventRepository) {
    // An event written as version 1.0 counted cents; 2.0 counts whole units.
    let old = SerializedEvent {
        aggregate_id: "u-1".into(),
        sequence: 2,
        aggregate_type: Account::TYPE.into(),
        event_type: "Deposited".into(),
        event_version: "1.0".into(),
        payload: json!({"Deposited": {"cents": 1200}}),
        metadata: json!({}),
    };
    repo.persist::<Account>(&[event("u-1", 1, AccountEvent::Opened), old], None)
        .await
        .expect("persists");
    let upcaster = SemanticVersionEventUpcaster::new(
        "Deposited",
        "2.0",
        Box::new(|payload: Value| {
            let cents = payload["Deposited"]["cents"].as_i64().unwrap_or(0);
            json!({"Deposited": {"amount": cents / 100}})
        }),
    );
    let store = PersistedEventStore::<_, Account>::new_event_store(repo)
        .with_upcasters(vec![Box::new(upcaster)]);
    let mut loaded = store.load_aggregate("u-1").await.expect("loads");
    assert_eq!(
        loaded.aggregate(),
        &Account {
            opened: true,
            balance: 12
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_client_against_a_real_server() {
    let server = Server::start();
    let repo = server.repository().await;
    event_repository_cases(&repo).await;
    snapshot_repository_cases(&repo).await;
    commit_and_load_cases(repo.clone()).await;
    upcaster_case(repo).await;
    // What the store holds is what the mapping says: the category index sees the type.
    let client = exesdb_client::Client::connect(&server.url)
        .await
        .expect("connects");
    let version = client.stream_version("account-a-1").await.expect("version");
    assert_eq!(version, 2, "sequences 1..=3 are event numbers 0..=2");
}

#[cfg(feature = "embedded")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_an_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let system = exesdb::System::start(exesdb::SystemConfig::new(dir.path(), "cqrs"))
        .await
        .expect("starts");
    let repo = ExesdbEventRepository::embedded(system.api().clone());
    event_repository_cases(&repo).await;
    snapshot_repository_cases(&repo).await;
    commit_and_load_cases(repo.clone()).await;
    upcaster_case(repo).await;
    system.stop().await;
}
