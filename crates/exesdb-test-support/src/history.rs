//! A checker of histories, for the cluster tests: what each client asked of which node, when it
//! began and ended, and what it was told (ok, fail, or unknown: a timeout or a lost
//! connection), checked against what every node holds once the faults have healed.
//!
//! It checks:
//! - **agreement**: every node holds the same `$all`, gapless from position 0;
//! - **uniqueness**: never two events at one position or one (stream, version), never one event
//!   id twice, and each stream's versions gapless in the order of `$all`;
//! - **no phantoms**: every stored event was sent by a client;
//! - **durability**: every event of an ok append is on every node, at the position and version
//!   its acknowledgement gave; an append told "fail" stored nothing;
//! - **expected versions**: an ok append with an exact expected version `v` starts at `v + 1`
//!   (with "no stream", at 0);
//! - **linearizable reads**: a read of `$all` that began after an ok append ended holds that
//!   append, and every read is a prefix of the final `$all`;
//! - **subscriptions**: a gapless one delivered consecutive positions in order, each as stored;
//!   an at-least-once one (a persistent group) delivered every stored event of its range.
//!
//! It knows nothing of the client or the wire: tests translate into these plain types, so the
//! same checker reads histories from processes, from an embedded store or from a simulation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An event's id (a UUID's 128 bits).
pub type EventId = u128;

/// An event as a node stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its stream.
    pub stream: String,
    /// Its version in the stream.
    pub version: u64,
    /// Its position in `$all`.
    pub position: u64,
    /// Its id.
    pub id: EventId,
}

/// What an append expected of its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Whatever the stream holds.
    Any,
    /// The stream does not exist yet.
    NoStream,
    /// The stream's last version.
    Exact(u64),
}

/// What a client was told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// It took effect, with this answer.
    Ok(T),
    /// The operation certainly did nothing (a wrong expected version, for example).
    Fail(String),
    /// It may or may not have taken effect: a timeout, a lost connection, `unavailable`.
    Unknown(String),
}

/// Where an ok append placed its first event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The stream version of the append's first event.
    pub first_version: u64,
    /// The `$all` position of the append's first event.
    pub first_position: u64,
}

/// How a subscription promises to deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Every event once, in order, none skipped (a transient subscription).
    Gapless,
    /// Every event at least once (a persistent group, which redelivers after a failover).
    AtLeastOnce,
}

/// One client operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// An append of events with these ids (a retry sends the same ids again).
    Append {
        /// The stream appended to.
        stream: String,
        /// What it expected of the stream.
        expected: Expected,
        /// Its events' ids, in order.
        ids: Vec<EventId>,
        /// What the client was told.
        outcome: Outcome<Appended>,
    },
    /// A read of `$all` from the start.
    ReadAll {
        /// The events read, or why not.
        outcome: Outcome<Vec<StoredEvent>>,
    },
    /// A subscription to `$all` from `from`, checked over `from..=through`.
    Subscribe {
        /// What it promises.
        delivery: Delivery,
        /// The first position it should deliver.
        from: u64,
        /// The last position the test waited for.
        through: u64,
        /// What it delivered, in order.
        delivered: Vec<StoredEvent>,
    },
}

/// An operation with who did it, where, and when (since the history began).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Which client (the test's numbering).
    pub client: usize,
    /// Which node it asked.
    pub node: usize,
    /// When it began, since the history began.
    pub start: Duration,
    /// When its answer came.
    pub end: Duration,
    /// What it was.
    pub operation: Operation,
}

/// A history being recorded; tasks share it by reference.
pub struct History {
    clock: Clock,
    records: Mutex<Vec<Record>>,
}

/// Where a history's times come from.
enum Clock {
    /// The machine's clock, from when the history began.
    Real(Instant),
    /// A simulation's clock.
    Given(fn() -> Duration),
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty history, beginning now.
    pub fn new() -> History {
        History {
            clock: Clock::Real(Instant::now()),
            records: Mutex::new(Vec::new()),
        }
    }

    /// An empty history whose times are `clock`'s: a simulation's, whose time is not the
    /// machine's.
    pub fn on_clock(clock: fn() -> Duration) -> History {
        History {
            clock: Clock::Given(clock),
            records: Mutex::new(Vec::new()),
        }
    }

    /// The time to give `record` as the operation's start: take it before the call.
    pub fn now(&self) -> Duration {
        match &self.clock {
            Clock::Real(origin) => origin.elapsed(),
            Clock::Given(clock) => clock(),
        }
    }

    /// Records an operation that began at `start` and ends now.
    pub fn record(&self, client: usize, node: usize, start: Duration, operation: Operation) {
        let end = self.now();
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Record {
                client,
                node,
                start,
                end,
                operation,
            });
    }

    /// What has been recorded so far.
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Checks the history against each node's `$all` after healing; panics naming every
    /// violation found.
    pub fn assert_valid(&self, nodes: &[Vec<StoredEvent>]) {
        let violations = check(&self.records(), nodes);
        assert!(
            violations.is_empty(),
            "the history has {} violation(s):\n{}",
            violations.len(),
            violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// What the checker found wrong. (Each variant's fields name what they hold.)
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Violation {
    /// A node's `$all` differs from the first node's.
    Disagreement { node: usize, detail: String },
    /// A node's `$all` skips or repeats a position.
    PositionGap {
        node: usize,
        index: usize,
        position: u64,
    },
    /// Two events at one (stream, version), or one event id twice.
    Duplicate { detail: String },
    /// A stream's versions are not 0, 1, 2, … in the order of `$all`.
    StreamGap {
        stream: String,
        version: u64,
        expected: u64,
    },
    /// A stored event no client sent.
    Phantom { id: EventId, position: u64 },
    /// An acknowledged event missing, or not where its acknowledgement said.
    Lost {
        node: usize,
        id: EventId,
        detail: String,
    },
    /// An append told "fail" whose events are stored.
    FailedButStored { id: EventId, position: u64 },
    /// An ok append that did not start at its expected version + 1.
    WrongVersionAccepted {
        stream: String,
        expected: Expected,
        first_version: u64,
    },
    /// A read missing an append acknowledged before the read began.
    StaleRead {
        client: usize,
        node: usize,
        missing: EventId,
    },
    /// A read that is not a prefix of the final `$all`.
    ReadDiverges {
        client: usize,
        node: usize,
        detail: String,
    },
    /// A subscription that skipped, repeated, reordered or altered an event.
    SubscriptionGap { client: usize, detail: String },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Every violation of the history against the nodes' final `$all` (the first node's is the
/// reference the others must equal).
pub fn check(records: &[Record], nodes: &[Vec<StoredEvent>]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let empty = Vec::new();
    let reference = nodes.first().unwrap_or(&empty);
    check_agreement(nodes, &mut violations);
    check_uniqueness(reference, &mut violations);
    let by_id: HashMap<EventId, &StoredEvent> =
        reference.iter().map(|event| (event.id, event)).collect();
    check_phantoms(records, reference, &mut violations);
    check_appends(records, nodes, &by_id, &mut violations);
    check_reads(records, reference, &mut violations);
    check_subscriptions(records, reference, &mut violations);
    violations
}

fn check_agreement(nodes: &[Vec<StoredEvent>], violations: &mut Vec<Violation>) {
    for (node, events) in nodes.iter().enumerate() {
        for (index, event) in events.iter().enumerate() {
            if event.position != index as u64 {
                violations.push(Violation::PositionGap {
                    node,
                    index,
                    position: event.position,
                });
                break;
            }
        }
        if node > 0 && *events != nodes[0] {
            let first_difference = events
                .iter()
                .zip(&nodes[0])
                .position(|(ours, theirs)| ours != theirs);
            violations.push(Violation::Disagreement {
                node,
                detail: format!(
                    "{} events against {}; first difference at index {first_difference:?}",
                    events.len(),
                    nodes[0].len()
                ),
            });
        }
    }
}

fn check_uniqueness(reference: &[StoredEvent], violations: &mut Vec<Violation>) {
    let mut slots = HashSet::new();
    let mut ids = HashSet::new();
    let mut next_version: HashMap<&str, u64> = HashMap::new();
    for event in reference {
        if !slots.insert((event.stream.as_str(), event.version)) {
            violations.push(Violation::Duplicate {
                detail: format!("two events at {} version {}", event.stream, event.version),
            });
        }
        if !ids.insert(event.id) {
            violations.push(Violation::Duplicate {
                detail: format!(
                    "event {:x} stored twice (again at {})",
                    event.id, event.position
                ),
            });
        }
        let expected = next_version.entry(event.stream.as_str()).or_insert(0);
        if event.version != *expected {
            violations.push(Violation::StreamGap {
                stream: event.stream.clone(),
                version: event.version,
                expected: *expected,
            });
        }
        *expected = event.version + 1;
    }
}

fn check_phantoms(records: &[Record], reference: &[StoredEvent], violations: &mut Vec<Violation>) {
    let sent: HashSet<EventId> = records
        .iter()
        .filter_map(|record| match &record.operation {
            Operation::Append { ids, .. } => Some(ids.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    for event in reference {
        if !sent.contains(&event.id) {
            violations.push(Violation::Phantom {
                id: event.id,
                position: event.position,
            });
        }
    }
}

fn check_appends(
    records: &[Record],
    nodes: &[Vec<StoredEvent>],
    by_id: &HashMap<EventId, &StoredEvent>,
    violations: &mut Vec<Violation>,
) {
    let on_nodes: Vec<HashMap<EventId, &StoredEvent>> = nodes
        .iter()
        .map(|events| events.iter().map(|event| (event.id, event)).collect())
        .collect();
    // An id may be sent again (a retry); an earlier "fail" of it is then no evidence.
    let acknowledged: HashSet<EventId> = records
        .iter()
        .filter_map(|record| match &record.operation {
            Operation::Append {
                ids,
                outcome: Outcome::Ok(_) | Outcome::Unknown(_),
                ..
            } => Some(ids.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    for record in records {
        let Operation::Append {
            stream,
            expected,
            ids,
            outcome,
        } = &record.operation
        else {
            continue;
        };
        match outcome {
            Outcome::Ok(appended) => {
                let starts_at = match expected {
                    Expected::Any => None,
                    Expected::NoStream => Some(0),
                    Expected::Exact(version) => Some(version + 1),
                };
                if starts_at.is_some_and(|first| first != appended.first_version) {
                    violations.push(Violation::WrongVersionAccepted {
                        stream: stream.clone(),
                        expected: *expected,
                        first_version: appended.first_version,
                    });
                }
                for (offset, id) in ids.iter().enumerate() {
                    let want = StoredEvent {
                        stream: stream.clone(),
                        version: appended.first_version + offset as u64,
                        position: appended.first_position + offset as u64,
                        id: *id,
                    };
                    for (node, events) in on_nodes.iter().enumerate() {
                        match events.get(id) {
                            Some(stored) if **stored == want => {}
                            Some(stored) => violations.push(Violation::Lost {
                                node,
                                id: *id,
                                detail: format!("acknowledged as {want:?}, stored as {stored:?}"),
                            }),
                            None => violations.push(Violation::Lost {
                                node,
                                id: *id,
                                detail: format!("acknowledged as {want:?}, not stored"),
                            }),
                        }
                    }
                }
            }
            Outcome::Fail(_) => {
                for id in ids {
                    if let Some(stored) = by_id.get(id)
                        && !acknowledged.contains(id)
                    {
                        violations.push(Violation::FailedButStored {
                            id: *id,
                            position: stored.position,
                        });
                    }
                }
            }
            Outcome::Unknown(_) => {}
        }
    }
}

fn check_reads(records: &[Record], reference: &[StoredEvent], violations: &mut Vec<Violation>) {
    // Each ok append's ids by when it ended, to find those acknowledged before a read began.
    let mut ended: BTreeMap<Duration, Vec<EventId>> = BTreeMap::new();
    for record in records {
        if let Operation::Append {
            ids,
            outcome: Outcome::Ok(_),
            ..
        } = &record.operation
        {
            ended
                .entry(record.end)
                .or_default()
                .extend(ids.iter().copied());
        }
    }
    for record in records {
        let Operation::ReadAll {
            outcome: Outcome::Ok(read),
        } = &record.operation
        else {
            continue;
        };
        if read.len() > reference.len() || read[..] != reference[..read.len()] {
            let at = read
                .iter()
                .zip(reference)
                .position(|(ours, final_one)| ours != final_one);
            violations.push(Violation::ReadDiverges {
                client: record.client,
                node: record.node,
                detail: format!(
                    "read {} events, the final $all has {}; first difference at {at:?}",
                    read.len(),
                    reference.len()
                ),
            });
        }
        let seen: HashSet<EventId> = read.iter().map(|event| event.id).collect();
        let before = ended.range(..record.start).flat_map(|(_, ids)| ids);
        if let Some(missing) = before.into_iter().find(|id| !seen.contains(id)) {
            violations.push(Violation::StaleRead {
                client: record.client,
                node: record.node,
                missing: *missing,
            });
        }
    }
}

fn check_subscriptions(
    records: &[Record],
    reference: &[StoredEvent],
    violations: &mut Vec<Violation>,
) {
    for record in records {
        let Operation::Subscribe {
            delivery,
            from,
            through,
            delivered,
        } = &record.operation
        else {
            continue;
        };
        let mut gap = |detail: String| {
            violations.push(Violation::SubscriptionGap {
                client: record.client,
                detail,
            })
        };
        for event in delivered {
            match reference.get(event.position as usize) {
                Some(stored) if stored == event => {}
                other => gap(format!("delivered {event:?}, stored {other:?}")),
            }
        }
        match delivery {
            Delivery::Gapless => {
                let positions: Vec<u64> = delivered.iter().map(|event| event.position).collect();
                let want: Vec<u64> = (*from..=*through).collect();
                if positions.len() < want.len() || positions[..want.len()] != want[..] {
                    let at = positions
                        .iter()
                        .zip(&want)
                        .position(|(got, want)| got != want);
                    gap(format!(
                        "delivered {} events for positions {from}..={through}, first wrong at \
                         {at:?}",
                        positions.len()
                    ));
                }
            }
            Delivery::AtLeastOnce => {
                let got: HashSet<u64> = delivered.iter().map(|event| event.position).collect();
                if let Some(missing) = (*from..=*through).find(|position| !got.contains(position)) {
                    gap(format!("position {missing} was never delivered"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: &str, version: u64, position: u64, id: EventId) -> StoredEvent {
        StoredEvent {
            stream: stream.to_string(),
            version,
            position,
            id,
        }
    }

    fn at(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn append(
        start: u64,
        end: u64,
        stream: &str,
        expected: Expected,
        ids: &[EventId],
        outcome: Outcome<Appended>,
    ) -> Record {
        Record {
            client: 0,
            node: 0,
            start: at(start),
            end: at(end),
            operation: Operation::Append {
                stream: stream.to_string(),
                expected,
                ids: ids.to_vec(),
                outcome,
            },
        }
    }

    fn ok(first_version: u64, first_position: u64) -> Outcome<Appended> {
        Outcome::Ok(Appended {
            first_version,
            first_position,
        })
    }

    fn read(start: u64, end: u64, events: Vec<StoredEvent>) -> Record {
        Record {
            client: 1,
            node: 1,
            start: at(start),
            end: at(end),
            operation: Operation::ReadAll {
                outcome: Outcome::Ok(events),
            },
        }
    }

    fn subscription(
        delivery: Delivery,
        from: u64,
        through: u64,
        delivered: Vec<StoredEvent>,
    ) -> Record {
        Record {
            client: 2,
            node: 2,
            start: at(0),
            end: at(100),
            operation: Operation::Subscribe {
                delivery,
                from,
                through,
                delivered,
            },
        }
    }

    /// A valid history: two appends to `a` (the second conditional), one to `b`, an unknown
    /// one that did land, a failed one that did not, reads and subscriptions.
    fn valid() -> (Vec<Record>, Vec<Vec<StoredEvent>>) {
        let stored = vec![
            event("a", 0, 0, 1),
            event("a", 1, 1, 2),
            event("b", 0, 2, 3),
            event("a", 2, 3, 4),
            event("c", 0, 4, 5),
        ];
        let records = vec![
            append(0, 10, "a", Expected::NoStream, &[1, 2], ok(0, 0)),
            append(5, 15, "b", Expected::Any, &[3], ok(0, 2)),
            append(20, 30, "a", Expected::Exact(1), &[4], ok(2, 3)),
            append(
                25,
                60,
                "c",
                Expected::Any,
                &[5],
                Outcome::Unknown("timeout".into()),
            ),
            append(
                40,
                45,
                "a",
                Expected::Exact(0),
                &[6],
                Outcome::Fail("wrong version".into()),
            ),
            read(12, 14, stored[..2].to_vec()),
            read(31, 33, stored[..4].to_vec()),
            subscription(Delivery::Gapless, 1, 4, stored[1..].to_vec()),
            subscription(
                Delivery::AtLeastOnce,
                0,
                4,
                [&stored[..3], &stored[1..]].concat(),
            ),
        ];
        (records, vec![stored.clone(), stored.clone(), stored])
    }

    fn kinds(violations: &[Violation]) -> Vec<&'static str> {
        violations
            .iter()
            .map(|violation| match violation {
                Violation::Disagreement { .. } => "disagreement",
                Violation::PositionGap { .. } => "position gap",
                Violation::Duplicate { .. } => "duplicate",
                Violation::StreamGap { .. } => "stream gap",
                Violation::Phantom { .. } => "phantom",
                Violation::Lost { .. } => "lost",
                Violation::FailedButStored { .. } => "failed but stored",
                Violation::WrongVersionAccepted { .. } => "wrong version accepted",
                Violation::StaleRead { .. } => "stale read",
                Violation::ReadDiverges { .. } => "read diverges",
                Violation::SubscriptionGap { .. } => "subscription gap",
            })
            .collect()
    }

    fn found(records: &[Record], nodes: &[Vec<StoredEvent>]) -> Vec<&'static str> {
        kinds(&check(records, nodes))
    }

    #[test]
    fn a_valid_history_has_no_violation() {
        let (records, nodes) = valid();
        assert_eq!(check(&records, &nodes), vec![]);
    }

    #[test]
    fn a_node_that_diverged_or_has_a_hole_is_found() {
        let (records, mut nodes) = valid();
        nodes[1].pop();
        nodes[2].remove(1);
        let kinds = found(&records, &nodes);
        assert!(kinds.contains(&"disagreement"), "{kinds:?}");
        assert!(kinds.contains(&"position gap"), "{kinds:?}");
        // The acknowledged events missing on those nodes are lost there.
        assert!(kinds.contains(&"lost"), "{kinds:?}");
    }

    #[test]
    fn an_event_stored_twice_or_two_at_one_version_are_found() {
        let (records, mut nodes) = valid();
        for node in &mut nodes {
            node.push(event("a", 2, 5, 4));
        }
        let kinds = found(&records, &nodes);
        assert!(kinds.contains(&"duplicate"), "{kinds:?}");
        assert!(kinds.contains(&"stream gap"), "{kinds:?}");
    }

    #[test]
    fn an_event_no_client_sent_is_a_phantom() {
        let (records, mut nodes) = valid();
        for node in &mut nodes {
            node.push(event("z", 0, 5, 99));
        }
        assert_eq!(found(&records, &nodes), vec!["phantom"]);
    }

    #[test]
    fn an_acknowledged_event_missing_or_moved_is_lost() {
        let (mut records, nodes) = valid();
        records[1] = append(5, 15, "b", Expected::Any, &[3], ok(0, 4));
        let kinds = found(&records, &nodes);
        assert!(
            !kinds.is_empty() && kinds.iter().all(|kind| *kind == "lost"),
            "{kinds:?}"
        );
    }

    #[test]
    fn a_failed_append_whose_events_are_stored_is_found() {
        let (mut records, nodes) = valid();
        records[3] = append(
            25,
            60,
            "c",
            Expected::Any,
            &[5],
            Outcome::Fail("refused".into()),
        );
        assert_eq!(found(&records, &nodes), vec!["failed but stored"]);
    }

    #[test]
    fn an_ok_append_that_ignored_its_expected_version_is_found() {
        let (mut records, nodes) = valid();
        records[2] = append(20, 30, "a", Expected::Exact(0), &[4], ok(2, 3));
        assert_eq!(found(&records, &nodes), vec!["wrong version accepted"]);
    }

    #[test]
    fn a_read_missing_an_earlier_acknowledged_append_is_stale() {
        let (mut records, nodes) = valid();
        // Begins after the append to `a` at version 2 ended (30 ms), and misses it.
        records[6] = read(31, 33, nodes[0][..3].to_vec());
        assert_eq!(found(&records, &nodes), vec!["stale read"]);
    }

    #[test]
    fn a_read_that_is_not_a_prefix_of_the_final_log_is_found() {
        let (mut records, nodes) = valid();
        let mut altered = nodes[0][..4].to_vec();
        altered.swap(2, 3);
        records[6] = read(31, 33, altered);
        assert!(found(&records, &nodes).contains(&"read diverges"));
    }

    #[test]
    fn a_subscription_that_skips_repeats_or_misses_is_found() {
        let (mut records, nodes) = valid();
        let mut skipping = nodes[0][1..].to_vec();
        skipping.remove(1);
        records[7] = subscription(Delivery::Gapless, 1, 4, skipping);
        assert_eq!(found(&records, &nodes), vec!["subscription gap"]);

        let (mut records, nodes) = valid();
        let mut repeating = nodes[0][1..].to_vec();
        repeating.insert(1, nodes[0][1].clone());
        records[7] = subscription(Delivery::Gapless, 1, 4, repeating);
        assert_eq!(found(&records, &nodes), vec!["subscription gap"]);

        let (mut records, nodes) = valid();
        records[8] = subscription(Delivery::AtLeastOnce, 0, 4, nodes[0][..4].to_vec());
        assert_eq!(found(&records, &nodes), vec!["subscription gap"]);
    }
}
