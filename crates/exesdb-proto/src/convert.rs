//! Conversions between the wire types (prost) and the shared types of `exesdb-types`: the one
//! place for each type, used by the server and the client alike, so that wire types stop at
//! the edge of both.

use exesdb_types::{
    AppendResult, ClusterMember, ClusterStatus, ConsumerStrategy, DEFAULT_CONTENT_TYPE, Direction,
    EventRef, ExpectedVersion, Kind, NackAction, NewEvent, RecordedEvent, Selector, Snapshot,
    SnapshotVersion, StartFrom, StoreError, Strategy, StreamInfo, SubscriptionDefinition,
    TreeSnapshot,
};
use prost::Message;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::v1 as wire;

/// Response metadata key carrying the error code.
pub const ERROR_CODE_METADATA: &str = "exesdb-error-code";

/// Request metadata key: present, a cluster node that does not lead the store answers a write
/// with `not_leader` and the leader's address, instead of forwarding it to the leader.
pub const NOT_LEADER_METADATA: &str = "exesdb-refuse-forwarding";

/// A store error as a gRPC status: a code that fits, the message, the `Error` detail, and the
/// code in the metadata.
pub fn status(error: &StoreError) -> Status {
    let code = match error {
        // Both refuse because of the state a request found, and retrying the same request on
        // the same node does not help (gRPC's table: FAILED_PRECONDITION, not UNAVAILABLE).
        StoreError::WrongExpectedVersion { .. } | StoreError::NotLeader { .. } => {
            Code::FailedPrecondition
        }
        StoreError::StreamNotFound { .. }
        | StoreError::SnapshotNotFound(_)
        | StoreError::SubscriptionNotFound(_)
        | StoreError::StoreNotFound(_) => Code::NotFound,
        StoreError::IdempotencyConflict(_) => Code::AlreadyExists,
        StoreError::InvalidArgument(_) => Code::InvalidArgument,
        StoreError::LimitExceeded { .. } => Code::ResourceExhausted,
        StoreError::Unavailable(_) => Code::Unavailable,
        // A code added to the contract later and not yet given its own status.
        _ => Code::Unknown,
    };
    // The detail's message is the variant's own text (a stream id, a reason), so the client
    // rebuilds the same error; the status message is the sentence for people.
    let payload = match error {
        StoreError::StreamNotFound { stream_id } => stream_id.clone(),
        StoreError::SnapshotNotFound(text)
        | StoreError::SubscriptionNotFound(text)
        | StoreError::IdempotencyConflict(text)
        | StoreError::InvalidArgument(text)
        | StoreError::StoreNotFound(text)
        | StoreError::Unavailable(text) => text.clone(),
        StoreError::WrongExpectedVersion { .. }
        | StoreError::LimitExceeded { .. }
        | StoreError::NotLeader { .. } => String::new(),
        _ => error.to_string(),
    };
    let mut detail = wire::Error {
        code: error.code().to_string(),
        message: payload,
        ..Default::default()
    };
    match error {
        StoreError::WrongExpectedVersion { expected, current } => {
            detail.expected = expected.clone();
            detail.current = *current;
        }
        StoreError::LimitExceeded { limit, max, actual } => {
            detail.limit = limit.clone();
            detail.max = *max;
            detail.actual = *actual;
        }
        StoreError::NotLeader {
            leader_node_id,
            leader_addr,
        } => {
            detail.leader_node_id = *leader_node_id;
            detail.leader_addr = leader_addr.clone().unwrap_or_default();
        }
        _ => {}
    }
    let mut status = Status::with_details(code, error.to_string(), detail.encode_to_vec().into());
    if let Ok(value) = error.code().parse() {
        status.metadata_mut().insert(ERROR_CODE_METADATA, value);
    }
    status
}

/// The store error a status carries, if the server put one there.
pub fn store_error(status: &Status) -> Option<StoreError> {
    let detail = wire::Error::decode(status.details()).ok()?;
    let text = detail.message;
    Some(match detail.code.as_str() {
        "wrong_expected_version" => StoreError::WrongExpectedVersion {
            expected: detail.expected,
            current: detail.current,
        },
        "stream_not_found" => StoreError::StreamNotFound { stream_id: text },
        "snapshot_not_found" => StoreError::SnapshotNotFound(text),
        "subscription_not_found" => StoreError::SubscriptionNotFound(text),
        "idempotency_conflict" => StoreError::IdempotencyConflict(text),
        "invalid_argument" => StoreError::InvalidArgument(text),
        "limit_exceeded" => StoreError::LimitExceeded {
            limit: detail.limit,
            max: detail.max,
            actual: detail.actual,
        },
        "store_not_found" => StoreError::StoreNotFound(text),
        "unavailable" => StoreError::Unavailable(text),
        "not_leader" => StoreError::NotLeader {
            leader_node_id: detail.leader_node_id,
            leader_addr: Some(detail.leader_addr).filter(|addr| !addr.is_empty()),
        },
        _ => return None,
    })
}

/// An expected version from the wire; none given means `any`.
pub fn expected_version(expected: Option<wire::ExpectedVersion>) -> ExpectedVersion {
    use wire::expected_version::Kind;
    match expected.and_then(|e| e.kind) {
        None | Some(Kind::Any(_)) => ExpectedVersion::Any,
        Some(Kind::NoStream(_)) => ExpectedVersion::NoStream,
        Some(Kind::StreamExists(_)) => ExpectedVersion::StreamExists,
        Some(Kind::Exact(version)) => ExpectedVersion::Exact(version),
    }
}

/// An expected version for the wire.
pub fn expected_version_to_wire(expected: ExpectedVersion) -> wire::ExpectedVersion {
    use wire::expected_version::Kind;
    let kind = match expected {
        ExpectedVersion::Any => Kind::Any(wire::Empty {}),
        ExpectedVersion::NoStream => Kind::NoStream(wire::Empty {}),
        ExpectedVersion::StreamExists => Kind::StreamExists(wire::Empty {}),
        ExpectedVersion::Exact(version) => Kind::Exact(version),
    };
    wire::ExpectedVersion { kind: Some(kind) }
}

/// An event to write, from the wire: an empty id means "generate one", an empty content type
/// the default.
pub fn new_event(event: wire::NewEvent) -> Result<NewEvent, StoreError> {
    let event_id = if event.event_id.is_empty() {
        None
    } else {
        Some(Uuid::parse_str(&event.event_id).map_err(|_| {
            StoreError::invalid(format!("event id {:?} is not a UUID", event.event_id))
        })?)
    };
    let default_type = |t: String| {
        if t.is_empty() {
            DEFAULT_CONTENT_TYPE.to_string()
        } else {
            t
        }
    };
    Ok(NewEvent {
        event_id,
        event_type: event.event_type,
        data: event.data,
        metadata: event.metadata,
        data_content_type: default_type(event.data_content_type),
        metadata_content_type: default_type(event.metadata_content_type),
    })
}

/// An event to write, for the wire.
pub fn new_event_to_wire(event: NewEvent) -> wire::NewEvent {
    wire::NewEvent {
        event_id: event.event_id.map(|id| id.to_string()).unwrap_or_default(),
        event_type: event.event_type,
        data: event.data,
        metadata: event.metadata,
        data_content_type: event.data_content_type,
        metadata_content_type: event.metadata_content_type,
    }
}

/// A recorded event, for the wire.
pub fn recorded_event(event: RecordedEvent) -> wire::RecordedEvent {
    wire::RecordedEvent {
        stream_id: event.stream_id,
        event_number: event.event_number,
        position: event.position,
        event_id: event.event_id.to_string(),
        event_type: event.event_type,
        data: event.data,
        metadata: event.metadata,
        data_content_type: event.data_content_type,
        metadata_content_type: event.metadata_content_type,
        created_micros: event.created_micros,
    }
}

/// An event lent by a read's page, for the wire: its fields copied into the message once,
/// where an owned event would have been copied out of the page first.
pub fn lent_event(event: EventRef<'_>) -> wire::RecordedEvent {
    wire::RecordedEvent {
        stream_id: event.stream_id.to_string(),
        event_number: event.event_number,
        position: event.position,
        event_id: event.event_id.to_string(),
        event_type: event.event_type.to_string(),
        data: event.data.to_vec(),
        metadata: event.metadata.to_vec(),
        data_content_type: event.data_content_type.to_string(),
        metadata_content_type: event.metadata_content_type.to_string(),
        created_micros: event.created_micros,
    }
}

/// A recorded event from the wire; its id must be a UUID.
pub fn recorded_event_from_wire(event: wire::RecordedEvent) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        event_id: Uuid::parse_str(&event.event_id)
            .map_err(|_| StoreError::invalid("the server sent an event id that is not a UUID"))?,
        stream_id: event.stream_id,
        event_number: event.event_number,
        position: event.position,
        event_type: event.event_type,
        data: event.data,
        metadata: event.metadata,
        data_content_type: event.data_content_type,
        metadata_content_type: event.metadata_content_type,
        created_micros: event.created_micros,
    })
}

/// Where an append landed, for the wire.
pub fn append_result(result: AppendResult) -> wire::AppendEventsResponse {
    wire::AppendEventsResponse {
        first_event_number: result.first_event_number,
        last_event_number: result.last_event_number,
        first_position: result.first_position,
        last_position: result.last_position,
    }
}

/// Where an append landed, from the wire.
pub fn append_result_from_wire(result: wire::AppendEventsResponse) -> AppendResult {
    AppendResult {
        first_event_number: result.first_event_number,
        last_event_number: result.last_event_number,
        first_position: result.first_position,
        last_position: result.last_position,
    }
}

/// A read direction from the wire.
pub fn direction(direction: i32) -> Result<Direction, StoreError> {
    match wire::Direction::try_from(direction) {
        Ok(wire::Direction::Forward) => Ok(Direction::Forward),
        Ok(wire::Direction::Backward) => Ok(Direction::Backward),
        Err(_) => Err(StoreError::invalid(format!(
            "unknown direction {direction}"
        ))),
    }
}

/// A read direction for the wire.
pub fn direction_to_wire(direction: Direction) -> i32 {
    match direction {
        Direction::Forward => wire::Direction::Forward as i32,
        Direction::Backward => wire::Direction::Backward as i32,
    }
}

/// A listed stream, for the wire.
pub fn stream_info(info: StreamInfo) -> wire::StreamInfo {
    wire::StreamInfo {
        stream_id: info.stream_id,
        version: info.version,
    }
}

/// A snapshot, for the wire.
pub fn snapshot(snapshot: Snapshot) -> wire::Snapshot {
    wire::Snapshot {
        source_uuid: snapshot.source_uuid,
        stream_uuid: snapshot.stream_uuid,
        version: snapshot.version,
        data: snapshot.data,
        metadata: snapshot.metadata,
        created_micros: snapshot.created_micros,
    }
}

/// A snapshot from the wire.
pub fn snapshot_from_wire(snapshot: wire::Snapshot) -> Snapshot {
    Snapshot {
        source_uuid: snapshot.source_uuid,
        stream_uuid: snapshot.stream_uuid,
        version: snapshot.version,
        data: snapshot.data,
        metadata: snapshot.metadata,
        created_micros: snapshot.created_micros,
    }
}

/// Which snapshot a read wants, from the wire; none given means the latest.
pub fn snapshot_version(version: Option<wire::read_snapshot_request::Version>) -> SnapshotVersion {
    use wire::read_snapshot_request::Version;
    match version {
        Some(Version::Exact(v)) => SnapshotVersion::Exact(v),
        Some(Version::AtOrBelow(v)) => SnapshotVersion::AtOrBelow(v),
        Some(Version::Latest(_)) | None => SnapshotVersion::Latest,
    }
}

/// Which snapshot a read wants, for the wire.
pub fn snapshot_version_to_wire(version: SnapshotVersion) -> wire::read_snapshot_request::Version {
    use wire::read_snapshot_request::Version;
    match version {
        SnapshotVersion::Exact(v) => Version::Exact(v),
        SnapshotVersion::AtOrBelow(v) => Version::AtOrBelow(v),
        SnapshotVersion::Latest => Version::Latest(wire::Empty {}),
    }
}

/// A supervision tree from the wire; unknown kinds and strategies are errors.
pub fn tree_from_wire(node: wire::TreeNode) -> Result<TreeSnapshot, StoreError> {
    let kind = match node.kind.as_str() {
        "S" => Kind::Supervisor,
        "GS" => Kind::GenServer,
        "PS" => Kind::PartitionSupervisor,
        "DS" => Kind::DynamicSupervisor,
        "W" => Kind::Worker,
        other => {
            return Err(StoreError::invalid(format!(
                "unknown process kind {other:?}"
            )));
        }
    };
    let strategy = match node.strategy.as_str() {
        "" => None,
        "one_for_one" => Some(Strategy::OneForOne),
        "one_for_all" => Some(Strategy::OneForAll),
        "rest_for_one" => Some(Strategy::RestForOne),
        other => return Err(StoreError::invalid(format!("unknown strategy {other:?}"))),
    };
    Ok(TreeSnapshot {
        name: node.name,
        kind,
        strategy,
        restarts: node.restarts,
        children: node
            .children
            .into_iter()
            .map(tree_from_wire)
            .collect::<Result<_, _>>()?,
    })
}

/// A supervision tree, for the wire.
pub fn tree(node: &TreeSnapshot) -> wire::TreeNode {
    wire::TreeNode {
        name: node.name.clone(),
        kind: node.kind.abbreviation().to_string(),
        strategy: node
            .strategy
            .map(|s| s.name().to_string())
            .unwrap_or_default(),
        restarts: node.restarts,
        children: node.children.iter().map(tree).collect(),
    }
}

fn json_pattern(text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|error| StoreError::invalid(format!("the pattern is not JSON: {error}")))
}

/// A subscription selector from the wire; patterns must be JSON text.
pub fn selector(selector: Option<wire::Selector>) -> Result<Selector, StoreError> {
    use wire::selector::Kind;
    match selector.and_then(|s| s.kind) {
        None => Err(StoreError::invalid("a subscription needs a selector")),
        Some(Kind::ByStream(stream)) => Ok(Selector::ByStream(stream)),
        Some(Kind::ByEventType(event_type)) => Ok(Selector::ByEventType(event_type)),
        Some(Kind::ByEventPattern(text)) => Ok(Selector::ByEventPattern(json_pattern(&text)?)),
        Some(Kind::ByEventPayload(text)) => Ok(Selector::ByEventPayload(json_pattern(&text)?)),
    }
}

/// A subscription selector, for the wire.
pub fn selector_to_wire(selector: &Selector) -> wire::Selector {
    use wire::selector::Kind;
    let kind = match selector {
        Selector::ByStream(stream) => Kind::ByStream(stream.clone()),
        Selector::ByEventType(event_type) => Kind::ByEventType(event_type.clone()),
        Selector::ByEventPattern(pattern) => Kind::ByEventPattern(pattern.to_string()),
        Selector::ByEventPayload(pattern) => Kind::ByEventPayload(pattern.to_string()),
    };
    wire::Selector { kind: Some(kind) }
}

/// Where a subscription starts, from the wire; none given means the beginning.
pub fn start_from(start: Option<wire::Start>) -> StartFrom {
    use wire::start::From;
    match start.and_then(|s| s.from) {
        None | Some(From::Beginning(_)) => StartFrom::Beginning,
        Some(From::End(_)) => StartFrom::End,
        Some(From::Position(position)) => StartFrom::Position(position),
        Some(From::EventNumber(number)) => StartFrom::EventNumber(number),
    }
}

/// Where a subscription starts, for the wire.
pub fn start_from_to_wire(start: StartFrom) -> wire::Start {
    use wire::start::From;
    let from = match start {
        StartFrom::Beginning => From::Beginning(wire::Empty {}),
        StartFrom::End => From::End(wire::Empty {}),
        StartFrom::Position(position) => From::Position(position),
        StartFrom::EventNumber(number) => From::EventNumber(number),
    };
    wire::Start { from: Some(from) }
}

/// A definition from the wire; zeros take the defaults.
pub fn definition(
    definition: Option<wire::SubscriptionDefinition>,
) -> Result<SubscriptionDefinition, StoreError> {
    let definition = definition.ok_or_else(|| StoreError::invalid("no subscription definition"))?;
    let strategy = match wire::ConsumerStrategy::try_from(definition.strategy) {
        Ok(wire::ConsumerStrategy::RoundRobin) => ConsumerStrategy::RoundRobin,
        Ok(wire::ConsumerStrategy::Pinned) => ConsumerStrategy::Pinned,
        Err(_) => {
            return Err(StoreError::invalid(format!(
                "unknown strategy {}",
                definition.strategy
            )));
        }
    };
    let mut result = SubscriptionDefinition::new(
        definition.name,
        selector(definition.selector)?,
        start_from(definition.start),
    );
    result.strategy = strategy;
    if definition.ack_timeout_ms > 0 {
        result.ack_timeout_ms = definition.ack_timeout_ms;
    }
    if definition.max_retries > 0 {
        result.retries_max = definition.max_retries;
    }
    if definition.max_in_flight > 0 {
        result.in_flight_max = usize::try_from(definition.max_in_flight).unwrap_or(usize::MAX);
    }
    Ok(result)
}

/// A persistent subscription definition, for the wire.
pub fn definition_to_wire(definition: &SubscriptionDefinition) -> wire::SubscriptionDefinition {
    wire::SubscriptionDefinition {
        name: definition.name.clone(),
        selector: Some(selector_to_wire(&definition.selector)),
        start: Some(start_from_to_wire(definition.start)),
        strategy: match definition.strategy {
            ConsumerStrategy::RoundRobin => wire::ConsumerStrategy::RoundRobin as i32,
            ConsumerStrategy::Pinned => wire::ConsumerStrategy::Pinned as i32,
        },
        ack_timeout_ms: definition.ack_timeout_ms,
        max_retries: definition.retries_max,
        max_in_flight: definition.in_flight_max as u64,
        checkpoint: None,
    }
}

/// What a consumer does with an event it could not handle, from the wire.
pub fn nack_action(action: i32) -> Result<NackAction, StoreError> {
    match wire::NackAction::try_from(action) {
        Ok(wire::NackAction::Retry) => Ok(NackAction::Retry),
        Ok(wire::NackAction::Park) => Ok(NackAction::Park),
        Ok(wire::NackAction::Skip) => Ok(NackAction::Skip),
        Err(_) => Err(StoreError::invalid(format!("unknown nack action {action}"))),
    }
}

/// What a consumer does with an event it could not handle, for the wire.
pub fn nack_action_to_wire(action: NackAction) -> i32 {
    match action {
        NackAction::Retry => wire::NackAction::Retry as i32,
        NackAction::Park => wire::NackAction::Park as i32,
        NackAction::Skip => wire::NackAction::Skip as i32,
    }
}

/// A store's cluster status for the wire.
pub fn cluster_status(status: ClusterStatus) -> wire::StoreClusterStatus {
    wire::StoreClusterStatus {
        store_id: status.store_id,
        node_id: status.node_id,
        cluster_id: status.cluster_id,
        leader: status.leader,
        leader_client_addr: status.leader_client_addr,
        term: status.term,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        members: status
            .members
            .into_iter()
            .map(|member| wire::ClusterMember {
                node_id: member.node_id,
                peer_addr: member.peer_addr,
                client_addr: member.client_addr,
                state: member.state,
            })
            .collect(),
    }
}

/// A store's cluster status from the wire.
pub fn cluster_status_from_wire(status: wire::StoreClusterStatus) -> ClusterStatus {
    ClusterStatus {
        store_id: status.store_id,
        node_id: status.node_id,
        cluster_id: status.cluster_id,
        leader: status.leader,
        leader_client_addr: status.leader_client_addr,
        term: status.term,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        members: status
            .members
            .into_iter()
            .map(|member| ClusterMember {
                node_id: member.node_id,
                peer_addr: member.peer_addr,
                client_addr: member.client_addr,
                state: member.state,
            })
            .collect(),
    }
}
