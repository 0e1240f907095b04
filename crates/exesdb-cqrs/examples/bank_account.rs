//! A bank account on cqrs-es, kept in an embedded ExESDB store: commands become events in the
//! stream `bank_account-<id>`, a snapshot is taken every 3 events, and every account's events
//! replay from the `$ce-bank_account` stream. Checks its own result and exits non-zero if it is
//! wrong.
//!
//! `cargo run -p exesdb-cqrs --features embedded --example bank_account`

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventRepository, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateContext, CqrsFramework, DomainEvent, EventStore};
use exesdb_cqrs::ExesdbEventRepository;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct BankAccount {
    owner: Option<String>,
    balance_cents: i64,
}

#[derive(Debug)]
enum BankCommand {
    Open { owner: String },
    Deposit { cents: i64 },
    Withdraw { cents: i64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum BankEvent {
    Opened { owner: String },
    Deposited { cents: i64 },
    Withdrew { cents: i64 },
}

impl DomainEvent for BankEvent {
    fn event_type(&self) -> String {
        match self {
            BankEvent::Opened { .. } => "AccountOpened",
            BankEvent::Deposited { .. } => "MoneyDeposited",
            BankEvent::Withdrew { .. } => "MoneyWithdrawn",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug)]
struct BankError(&'static str);

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BankError {}

impl Aggregate for BankAccount {
    const TYPE: &'static str = "bank_account";
    type Command = BankCommand;
    type Event = BankEvent;
    type Error = BankError;
    type Services = ();

    async fn handle(
        &mut self,
        command: BankCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), BankError> {
        // cqrs-es 0.5.0's snapshot stores apply the new events to the loaded aggregate again
        // when they snapshot it, so the events are written through a copy.
        let mut scratch = self.clone();
        let event = match command {
            BankCommand::Open { .. } if self.owner.is_some() => {
                return Err(BankError("the account is already open"));
            }
            BankCommand::Open { owner } => BankEvent::Opened { owner },
            _ if self.owner.is_none() => return Err(BankError("the account is not open")),
            BankCommand::Deposit { cents } => BankEvent::Deposited { cents },
            BankCommand::Withdraw { cents } if cents > self.balance_cents => {
                return Err(BankError("insufficient funds"));
            }
            BankCommand::Withdraw { cents } => BankEvent::Withdrew { cents },
        };
        sink.write(event, &mut scratch).await;
        Ok(())
    }

    fn apply(&mut self, event: BankEvent) {
        match event {
            BankEvent::Opened { owner } => self.owner = Some(owner),
            BankEvent::Deposited { cents } => self.balance_cents += cents,
            BankEvent::Withdrew { cents } => self.balance_cents -= cents,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("exesdb-cqrs-bank-{}", std::process::id()));
    let system = exesdb::System::start(exesdb::SystemConfig::new(&dir, "bank")).await?;
    let repository = ExesdbEventRepository::embedded(system.api().clone());
    let store = PersistedEventStore::<_, BankAccount>::new_snapshot_store(repository.clone(), 3);
    let cqrs = CqrsFramework::new(store, vec![], ());

    cqrs.execute(
        "alice",
        BankCommand::Open {
            owner: "Alice".into(),
        },
    )
    .await?;
    cqrs.execute(
        "bob",
        BankCommand::Open {
            owner: "Bob".into(),
        },
    )
    .await?;
    for cents in [1_000, 2_500, 500] {
        cqrs.execute("alice", BankCommand::Deposit { cents })
            .await?;
    }
    cqrs.execute("alice", BankCommand::Withdraw { cents: 1_200 })
        .await?;
    let refused = cqrs
        .execute("bob", BankCommand::Withdraw { cents: 1 })
        .await;
    println!(
        "bob withdraws from an empty account: {}",
        match &refused {
            Ok(()) => "accepted".to_string(),
            Err(error) => format!("refused ({error})"),
        }
    );

    let store = PersistedEventStore::<_, BankAccount>::new_snapshot_store(repository.clone(), 3);
    let mut alice = store.load_aggregate("alice").await?;
    let balance = alice.aggregate().balance_cents;
    println!("alice's balance: {balance} cents");
    let snapshot = repository.get_snapshot::<BankAccount>("alice").await?;
    if let Some(snapshot) = &snapshot {
        println!(
            "alice's snapshot {} covers her first {} events",
            snapshot.current_snapshot, snapshot.current_sequence
        );
    }

    let mut all = repository.stream_all_events::<BankAccount>().await?;
    let mut replayed = 0;
    while let Some(event) = all.next::<BankAccount>(&[]).await {
        let event = event?;
        println!(
            "  {} #{}: {:?}",
            event.aggregate_id, event.sequence, event.payload
        );
        replayed += 1;
    }
    system.stop().await;
    std::fs::remove_dir_all(&dir)?;

    let ok = balance == 2_800 && refused.is_err() && replayed == 6 && snapshot.is_some();
    println!("self-check: {}", if ok { "ok" } else { "FAILED" });
    if !ok {
        return Err("the bank account example did not end as it should".into());
    }
    Ok(())
}
