//! The gRPC services (`exesdb.v1.EventStore`, `exesdb.v1.SystemService`): wire requests become
//! calls through the named store's [`Gateway`]; streaming reads page under the
//! hood into a bounded channel, so a slow client holds its read, not the server's memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use exesdb_proto::v1 as wire;
use exesdb_proto::v1::event_store_server::EventStore;
use exesdb_proto::v1::system_service_server::SystemService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use exesdb::{Gateway, PersistentConsumer, Subscription};
use exesdb_proto::convert;
use exesdb_types::{
    ALL_STREAM, Direction, ReadAllRequest, RecordedEvent, StoreError, StreamInfo,
    SubscriptionMessage, reads_by_position,
};

use crate::node::Node;

type WireStream<T> = ReceiverStream<Result<T, Status>>;

/// Both services, over one node's stores.
#[derive(Clone)]
pub(crate) struct GrpcServices {
    node: Arc<Node>,
}

impl GrpcServices {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        GrpcServices { node }
    }

    fn gateway(&self, store_id: &str) -> Result<Gateway, Status> {
        self.node
            .system(store_id)
            .map(|system| system.gateway().clone())
            .map_err(|error| convert::status(&error))
    }

    /// The gateway for a write; with `redirect`, a cluster node that does not lead the store
    /// answers `not_leader` instead of forwarding. Leadership can move right after this check,
    /// and then the write is forwarded after all: the answer is an optimisation, never a
    /// guarantee about where the write ran.
    fn write_gateway(&self, store_id: &str, redirect: bool) -> Result<Gateway, Status> {
        let system = self
            .node
            .system(store_id)
            .map_err(|error| convert::status(&error))?;
        if redirect && let Some(not_leader) = system.not_leader() {
            return Err(convert::status(&not_leader));
        }
        Ok(system.gateway().clone())
    }
}

/// Whether the client asked to be told `not_leader` rather than have its write forwarded.
fn refuses_forwarding<T>(request: &Request<T>) -> bool {
    request
        .metadata()
        .contains_key(convert::NOT_LEADER_METADATA)
}

fn reply<T>(result: Result<T, StoreError>) -> Result<Response<T>, Status> {
    result
        .map(Response::new)
        .map_err(|error| convert::status(&error))
}

#[tonic::async_trait]
impl EventStore for GrpcServices {
    async fn append_events(
        &self,
        request: Request<wire::AppendEventsRequest>,
    ) -> Result<Response<wire::AppendEventsResponse>, Status> {
        let redirect = refuses_forwarding(&request);
        let request = request.into_inner();
        let gateway = self.write_gateway(&request.store_id, redirect)?;
        let expected = convert::expected_version(request.expected);
        let events = request
            .events
            .into_iter()
            .map(convert::new_event)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| convert::status(&error))?;
        let stream_id = request.stream_id;
        let route = stream_id.clone();
        let result = gateway
            .call(&route, move |api| async move {
                api.append(&stream_id, expected, events).await
            })
            .await;
        reply(result.map(convert::append_result))
    }

    async fn get_version(
        &self,
        request: Request<wire::GetVersionRequest>,
    ) -> Result<Response<wire::GetVersionResponse>, Status> {
        let request = request.into_inner();
        let gateway = self.gateway(&request.store_id)?;
        let stream_id = request.stream_id;
        let route = stream_id.clone();
        let result = gateway
            .call(&route, move |api| async move {
                api.stream_version(&stream_id).await
            })
            .await;
        reply(result.map(|version| wire::GetVersionResponse { version }))
    }

    type ReadStreamStream = WireStream<wire::ReadResponse>;

    async fn read_stream(
        &self,
        request: Request<wire::ReadStreamRequest>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        let request = request.into_inner();
        let gateway = self.gateway(&request.store_id)?;
        let direction = convert::direction(request.direction).map_err(|e| convert::status(&e))?;
        let stream_id = request.stream_id;
        let by_position = reads_by_position(&stream_id);
        let total = request.count;
        let page_max = self.node.read_page_events_max(&request.store_id);
        let page_bytes_max = self.node.read_page_bytes_max(&request.store_id);
        let buffer = self.node.read_stream_buffer_events(&request.store_id);
        let stream = paged(
            buffer,
            total,
            page_max,
            request.from,
            event_batches,
            move |from, count| {
                let gateway = gateway.clone();
                let stream_id = stream_id.clone();
                async move {
                    let route = stream_id.clone();
                    let events = gateway
                        .call(&route, move |api| async move {
                            api.read_stream_page(
                                &stream_id,
                                from,
                                count,
                                direction,
                                Some(page_bytes_max),
                            )
                            .await
                        })
                        .await?;
                    let next = events
                        .last()
                        .filter(|_| {
                            let bytes = events.iter().map(RecordedEvent::size_bytes).sum();
                            page_may_continue(events.len() as u64, bytes, count, page_bytes_max)
                        })
                        .and_then(|last| {
                            let at = match by_position {
                                true => last.position,
                                false => last.event_number,
                            };
                            match direction {
                                Direction::Forward => at.checked_add(1),
                                Direction::Backward => at.checked_sub(1),
                            }
                        });
                    Ok((
                        events.into_iter().map(convert::recorded_event).collect(),
                        next,
                    ))
                }
            },
        );
        Ok(Response::new(stream))
    }

    type ReadAllStream = WireStream<wire::ReadResponse>;

    async fn read_all(
        &self,
        request: Request<wire::ReadAllRequest>,
    ) -> Result<Response<Self::ReadAllStream>, Status> {
        let request = request.into_inner();
        let gateway = self.gateway(&request.store_id)?;
        let direction = convert::direction(request.direction).map_err(|e| convert::status(&e))?;
        let page_max = self.node.read_page_events_max(&request.store_id);
        let page_bytes_max = self.node.read_page_bytes_max(&request.store_id);
        let buffer = self.node.read_stream_buffer_events(&request.store_id);
        let prefix = (!request.stream_prefix.is_empty()).then_some(request.stream_prefix);
        let event_types = request.event_types;
        let stream = paged(
            buffer,
            request.count,
            page_max,
            request.from_position,
            event_batches,
            move |from, count| {
                let gateway = gateway.clone();
                let read = ReadAllRequest {
                    from_position: from,
                    count,
                    direction,
                    stream_prefix: prefix.clone(),
                    event_types: event_types.clone(),
                    bytes_max: Some(page_bytes_max),
                };
                async move {
                    let page = gateway
                        .call(ALL_STREAM, move |api| async move {
                            api.read_all_page(read).await
                        })
                        .await?;
                    let bytes = page.iter().map(|event| event.size_bytes()).sum();
                    let next = page
                        .last()
                        .filter(|_| {
                            page_may_continue(page.len() as u64, bytes, count, page_bytes_max)
                        })
                        .and_then(|last| match direction {
                            Direction::Forward => last.position.checked_add(1),
                            Direction::Backward => last.position.checked_sub(1),
                        });
                    Ok((page.iter().map(convert::lent_event).collect(), next))
                }
            },
        );
        Ok(Response::new(stream))
    }

    type ListStreamsStream = WireStream<wire::ListStreamsResponse>;

    async fn list_streams(
        &self,
        request: Request<wire::ListStreamsRequest>,
    ) -> Result<Response<Self::ListStreamsStream>, Status> {
        let request = request.into_inner();
        let gateway = self.gateway(&request.store_id)?;
        let page_max = self.node.read_page_events_max(&request.store_id);
        let buffer = self.node.read_stream_buffer_events(&request.store_id);
        let first = (!request.after.is_empty()).then_some(request.after);
        let stream = paged(
            buffer,
            request.count,
            page_max,
            first,
            stream_batches,
            move |after: Option<String>, count| {
                let gateway = gateway.clone();
                async move {
                    let streams: Vec<StreamInfo> = gateway
                        .call(ALL_STREAM, move |api| async move {
                            api.list_streams(after.as_deref(), count).await
                        })
                        .await?;
                    let next = streams
                        .last()
                        .filter(|_| streams.len() as u64 == count)
                        .map(|last| last.stream_id.clone());
                    Ok((
                        streams.into_iter().map(convert::stream_info).collect(),
                        next,
                    ))
                }
            },
        );
        Ok(Response::new(stream))
    }

    async fn record_snapshot(
        &self,
        request: Request<wire::RecordSnapshotRequest>,
    ) -> Result<Response<wire::RecordSnapshotResponse>, Status> {
        let redirect = refuses_forwarding(&request);
        let r = request.into_inner();
        let gateway = self.write_gateway(&r.store_id, redirect)?;
        let route = r.stream_uuid.clone();
        let result = gateway
            .call(&route, move |api| async move {
                api.record_snapshot(
                    &r.source_uuid,
                    &r.stream_uuid,
                    r.version,
                    r.data,
                    r.metadata,
                )
                .await
            })
            .await;
        reply(result.map(|()| wire::RecordSnapshotResponse {}))
    }

    async fn read_snapshot(
        &self,
        request: Request<wire::ReadSnapshotRequest>,
    ) -> Result<Response<wire::Snapshot>, Status> {
        let r = request.into_inner();
        let gateway = self.gateway(&r.store_id)?;
        let version = convert::snapshot_version(r.version);
        let route = r.stream_uuid.clone();
        let result = gateway
            .call(&route, move |api| async move {
                api.read_snapshot(&r.source_uuid, &r.stream_uuid, version)
                    .await
            })
            .await;
        reply(result.map(convert::snapshot))
    }

    async fn delete_snapshot(
        &self,
        request: Request<wire::DeleteSnapshotRequest>,
    ) -> Result<Response<wire::DeleteSnapshotResponse>, Status> {
        let redirect = refuses_forwarding(&request);
        let r = request.into_inner();
        let gateway = self.write_gateway(&r.store_id, redirect)?;
        let route = r.stream_uuid.clone();
        let result = gateway
            .call(&route, move |api| async move {
                api.delete_snapshot(&r.source_uuid, &r.stream_uuid, r.version)
                    .await
            })
            .await;
        reply(result.map(|()| wire::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<wire::ListSnapshotsRequest>,
    ) -> Result<Response<wire::ListSnapshotsResponse>, Status> {
        let r = request.into_inner();
        let gateway = self.gateway(&r.store_id)?;
        let count = if r.count == 0 {
            self.node.read_page_events_max(&r.store_id)
        } else {
            r.count
        };
        let route = r.stream_uuid.clone();
        let result = gateway
            .call(&route, move |api| async move {
                let source = (!r.source_uuid.is_empty()).then_some(r.source_uuid);
                let stream = (!r.stream_uuid.is_empty()).then_some(r.stream_uuid);
                api.list_snapshots(source.as_deref(), stream.as_deref(), count)
                    .await
            })
            .await;
        reply(result.map(|snapshots| wire::ListSnapshotsResponse {
            snapshots: snapshots.into_iter().map(convert::snapshot).collect(),
        }))
    }

    type SubscribeStream = WireStream<wire::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<wire::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let system = self
            .node
            .system(&request.store_id)
            .map_err(|error| convert::status(&error))?;
        let selector = convert::selector(request.selector).map_err(|e| convert::status(&e))?;
        let start = convert::start_from(request.start);
        // Subscriptions are long-lived: they count against subscriptions_max, not against the
        // gateway's in-flight requests.
        let subscription = system
            .api()
            .subscribe(selector, start)
            .await
            .map_err(|error| convert::status(&error))?;
        Ok(Response::new(forward_subscription(subscription)))
    }

    async fn save_subscription(
        &self,
        request: Request<wire::SaveSubscriptionRequest>,
    ) -> Result<Response<wire::SaveSubscriptionResponse>, Status> {
        let redirect = refuses_forwarding(&request);
        let request = request.into_inner();
        let gateway = self.write_gateway(&request.store_id, redirect)?;
        let definition =
            convert::definition(request.definition).map_err(|e| convert::status(&e))?;
        let route = definition.name.clone();
        let result = gateway
            .call(&route, move |api| async move {
                api.save_subscription(definition).await
            })
            .await;
        reply(result.map(|()| wire::SaveSubscriptionResponse {}))
    }

    async fn remove_subscription(
        &self,
        request: Request<wire::RemoveSubscriptionRequest>,
    ) -> Result<Response<wire::RemoveSubscriptionResponse>, Status> {
        let redirect = refuses_forwarding(&request);
        let request = request.into_inner();
        let gateway = self.write_gateway(&request.store_id, redirect)?;
        let name = request.name;
        let route = name.clone();
        let result = gateway
            .call(&route, move |api| async move {
                api.remove_subscription(&name).await
            })
            .await;
        reply(result.map(|()| wire::RemoveSubscriptionResponse {}))
    }

    async fn list_subscriptions(
        &self,
        request: Request<wire::ListSubscriptionsRequest>,
    ) -> Result<Response<wire::ListSubscriptionsResponse>, Status> {
        let request = request.into_inner();
        let gateway = self.gateway(&request.store_id)?;
        let result = gateway
            .call("$subscriptions", |api| async move {
                let mut listed = Vec::new();
                for definition in api.list_subscriptions().await? {
                    let mut wire_definition = convert::definition_to_wire(&definition);
                    wire_definition.checkpoint = api.subscription_checkpoint(&definition.name)?;
                    listed.push(wire_definition);
                }
                Ok(listed)
            })
            .await;
        reply(result.map(|subscriptions| wire::ListSubscriptionsResponse { subscriptions }))
    }

    async fn list_parked(
        &self,
        request: Request<wire::ListParkedRequest>,
    ) -> Result<Response<wire::ReadResponse>, Status> {
        let request = request.into_inner();
        let gateway = self.gateway(&request.store_id)?;
        let name = request.name;
        let route = name.clone();
        let result = gateway
            .call(&route, move |api| async move { api.parked_events(&name) })
            .await;
        reply(result.map(|events| wire::ReadResponse {
            events: events.into_iter().map(convert::recorded_event).collect(),
        }))
    }

    async fn replay_parked(
        &self,
        request: Request<wire::ReplayParkedRequest>,
    ) -> Result<Response<wire::ReplayParkedResponse>, Status> {
        let redirect = refuses_forwarding(&request);
        let request = request.into_inner();
        let gateway = self.write_gateway(&request.store_id, redirect)?;
        let name = request.name;
        let route = name.clone();
        let result = gateway
            .call(
                &route,
                move |api| async move { api.replay_parked(&name).await },
            )
            .await;
        reply(result.map(|replayed| wire::ReplayParkedResponse {
            replayed: replayed as u64,
        }))
    }

    type ConsumeStream = WireStream<wire::ConsumeResponse>;

    async fn consume(
        &self,
        request: Request<tonic::Streaming<wire::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.and_then(|message| message.request);
        let Some(wire::consume_request::Request::Start(start)) = first else {
            return Err(convert::status(&StoreError::invalid(
                "the first message of Consume must name the subscription (start)",
            )));
        };
        let system = self
            .node
            .system(&start.store_id)
            .map_err(|error| convert::status(&error))?;
        let consumer = system
            .api()
            .connect_subscription(&start.name)
            .await
            .map_err(|error| convert::status(&error))?;
        Ok(Response::new(serve_consumer(consumer, inbound)))
    }

    async fn list_stores(
        &self,
        _request: Request<wire::ListStoresRequest>,
    ) -> Result<Response<wire::ListStoresResponse>, Status> {
        Ok(Response::new(wire::ListStoresResponse {
            store_ids: self.node.store_ids(),
        }))
    }
}

#[tonic::async_trait]
impl SystemService for GrpcServices {
    async fn health(
        &self,
        _request: Request<wire::HealthRequest>,
    ) -> Result<Response<wire::HealthResponse>, Status> {
        let health = self.node.health();
        Ok(Response::new(wire::HealthResponse {
            healthy: health.healthy,
            mode: health.mode.to_string(),
            version: health.version.to_string(),
            stores: health
                .stores
                .into_iter()
                .map(|store| wire::StoreHealth {
                    store_id: store.store_id,
                    accepts_writes: store.accepts_writes,
                    leader: store.leader,
                })
                .collect(),
        }))
    }

    async fn cluster_status(
        &self,
        _request: Request<wire::ClusterStatusRequest>,
    ) -> Result<Response<wire::ClusterStatusResponse>, Status> {
        let stores = self.node.cluster_status();
        if stores.is_empty() {
            return Err(convert::status(&StoreError::invalid(
                "this node runs in single mode: it has no cluster",
            )));
        }
        Ok(Response::new(wire::ClusterStatusResponse {
            stores: stores
                .into_iter()
                .map(|(_, status)| convert::cluster_status(status))
                .collect(),
        }))
    }

    async fn change_membership(
        &self,
        request: Request<wire::ChangeMembershipRequest>,
    ) -> Result<Response<wire::ChangeMembershipResponse>, Status> {
        use wire::change_membership_request::Change;
        let change = request.into_inner().change.ok_or_else(|| {
            convert::status(&StoreError::invalid(
                "say which change: add a peer address, remove a node id, or transfer a leader",
            ))
        })?;
        let mut stores = Vec::new();
        // A node's membership is the same in every store's group: an add or a remove is made
        // in each, in order, and stops at the first that fails, naming it.
        let targets = match &change {
            Change::TransferLeader(transfer) => vec![transfer.store_id.clone()],
            _ => self.node.store_ids(),
        };
        for store_id in targets {
            let system = self
                .node
                .system(&store_id)
                .map_err(|error| convert::status(&error))?;
            let outcome = match &change {
                Change::AddPeerAddr(peer_addr) => system.cluster_add(peer_addr).await,
                Change::RemoveNodeId(node_id) => system.cluster_remove(*node_id).await,
                Change::TransferLeader(transfer) => {
                    system.cluster_transfer_leader(transfer.to_node_id).await
                }
            }
            .map_err(|error| convert::status(&in_store(error, &store_id)))?;
            stores.push(wire::StoreChangeOutcome { store_id, outcome });
        }
        Ok(Response::new(wire::ChangeMembershipResponse { stores }))
    }

    async fn get_tree(
        &self,
        request: Request<wire::GetTreeRequest>,
    ) -> Result<Response<wire::TreeNode>, Status> {
        let request = request.into_inner();
        let system = self
            .node
            .system(&request.store_id)
            .map_err(|error| convert::status(&error))?;
        Ok(Response::new(convert::tree(&system.tree())))
    }
}

/// Names the store in a membership change's refusal: the change runs store by store.
fn in_store(error: StoreError, store_id: &str) -> StoreError {
    match error {
        StoreError::InvalidArgument(why) => {
            StoreError::InvalidArgument(format!("store {store_id}: {why}"))
        }
        StoreError::Unavailable(why) => StoreError::Unavailable(format!("store {store_id}: {why}")),
        other => other,
    }
}

/// Messages of a subscription waiting for the network; the subscription's own buffer is the
/// real bound, this only smooths the hand-over.
const SUBSCRIPTION_MESSAGES_BUFFERED: usize = 4;

/// Forwards a subscription to the wire, packing consecutive events into messages. The
/// subscription ends when the client goes away (the forwarder's send fails and it drops it).
fn forward_subscription(mut subscription: Subscription) -> WireStream<wire::SubscribeResponse> {
    let (sender, receiver) = mpsc::channel(SUBSCRIPTION_MESSAGES_BUFFERED);
    tokio::spawn(async move {
        loop {
            // The client going away drops the response stream, and with it `receiver`: the
            // subscription ends then, not when its next event would have found no one.
            let first = tokio::select! {
                message = subscription.next() => message,
                () = sender.closed() => None,
            };
            let Some(first) = first else { return };
            let mut response = wire::SubscribeResponse::default();
            let mut bytes = 0;
            let mut message = Some(first);
            while let Some(next) = message.take() {
                match next {
                    SubscriptionMessage::Event(event) => {
                        bytes += event.data.len() + event.metadata.len() + 128;
                        response.events.push(convert::recorded_event(
                            std::sync::Arc::unwrap_or_clone(event),
                        ));
                    }
                    SubscriptionMessage::CaughtUp => {
                        response.caught_up = true;
                        break;
                    }
                }
                if bytes >= MESSAGE_BYTES_TARGET || response.events.len() >= MESSAGE_ITEMS_MAX {
                    break;
                }
                message = subscription.try_next();
            }
            if sender.send(Ok(response)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// Runs one consumer of a persistent subscription for a `Consume` call: deliveries out (packed
/// into messages), acks and nacks in. It ends when the client or the subscription does.
fn serve_consumer(
    mut consumer: PersistentConsumer,
    mut inbound: tonic::Streaming<wire::ConsumeRequest>,
) -> WireStream<wire::ConsumeResponse> {
    use wire::consume_request::Request as In;
    let (sender, receiver) = mpsc::channel(SUBSCRIPTION_MESSAGES_BUFFERED);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                delivery = consumer.next() => {
                    let Some(first) = delivery else { return };
                    let mut response = wire::ConsumeResponse::default();
                    let mut bytes = 0;
                    let mut next = Some(first);
                    while let Some(delivery) = next.take() {
                        bytes += delivery.event.data.len() + delivery.event.metadata.len() + 128;
                        response.deliveries.push(wire::Delivery {
                            event: Some(convert::recorded_event(delivery.event)),
                            attempt: delivery.attempt,
                        });
                        if response.deliveries.len() < MESSAGE_ITEMS_MAX
                            && bytes < MESSAGE_BYTES_TARGET
                        {
                            next = consumer.try_next();
                        }
                    }
                    if sender.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                message = inbound.message() => {
                    let request = match message {
                        Ok(Some(message)) => message.request,
                        Ok(None) | Err(_) => return, // the client is done
                    };
                    let outcome = match request {
                        Some(In::Ack(ack)) => {
                            for position in ack.positions {
                                consumer.ack(position);
                            }
                            Ok(())
                        }
                        Some(In::Nack(nack)) => match convert::nack_action(nack.action) {
                            Ok(action) => consumer.nack(nack.position, action).await,
                            Err(error) => Err(error),
                        },
                        Some(In::Start(_)) | None => Err(StoreError::invalid(
                            "Consume was already started; send acks and nacks",
                        )),
                    };
                    if let Err(error) = outcome {
                        let _ = sender.send(Err(convert::status(&error))).await;
                        return;
                    }
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}

type PageFuture<T, C> =
    Pin<Box<dyn Future<Output = Result<(Vec<T>, Option<C>), StoreError>> + Send>>;

/// How much one streamed message carries, so that messages stay well under the size limits
/// and a reader gets its first events before the whole page is encoded.
const MESSAGE_BYTES_TARGET: usize = 1024 * 1024;
const MESSAGE_ITEMS_MAX: usize = 512;

/// Splits a page of events into messages of about `MESSAGE_BYTES_TARGET` (one event at least).
fn event_batches(events: Vec<wire::RecordedEvent>) -> Vec<wire::ReadResponse> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for event in events {
        let size = event.data.len() + event.metadata.len() + event.stream_id.len() + 128;
        if !current.is_empty()
            && (bytes + size > MESSAGE_BYTES_TARGET || current.len() >= MESSAGE_ITEMS_MAX)
        {
            batches.push(wire::ReadResponse {
                events: std::mem::take(&mut current),
            });
            bytes = 0;
        }
        bytes += size;
        current.push(event);
    }
    if !current.is_empty() {
        batches.push(wire::ReadResponse { events: current });
    }
    batches
}

fn stream_batches(streams: Vec<wire::StreamInfo>) -> Vec<wire::ListStreamsResponse> {
    streams
        .chunks(MESSAGE_ITEMS_MAX)
        .map(|chunk| wire::ListStreamsResponse {
            streams: chunk.to_vec(),
        })
        .collect()
}

/// Whether a page of events may be followed by more: it is full, or it stopped at the byte
/// limit (then it is short without being the end).
fn page_may_continue(events: u64, bytes: u64, asked: u64, bytes_max: u64) -> bool {
    events == asked || bytes >= bytes_max
}

/// Streams up to `total` items (0: all) by asking `read_page(cursor, count)` for pages of at
/// most `page_max`, packed into messages by `batch`, through a channel of about `buffer` items.
/// `read_page` returns the cursor of the next page, or `None` when there is none: the end.
fn paged<T, M, C, F, Fut>(
    buffer: usize,
    total: u64,
    page_max: u64,
    first: Option<C>,
    batch: fn(Vec<T>) -> Vec<M>,
    read_page: F,
) -> WireStream<M>
where
    T: Send + 'static,
    M: Send + 'static,
    C: Send + 'static,
    F: Fn(Option<C>, u64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(Vec<T>, Option<C>), StoreError>> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel((buffer / MESSAGE_ITEMS_MAX).max(2));
    let read_page = move |cursor, count| -> PageFuture<T, C> { Box::pin(read_page(cursor, count)) };
    tokio::spawn(async move {
        let mut sent = 0u64;
        let mut cursor = first;
        loop {
            let want = if total == 0 {
                page_max
            } else {
                (total - sent).min(page_max)
            };
            if want == 0 {
                return;
            }
            match read_page(cursor, want).await {
                Ok((items, next)) => {
                    let count = items.len() as u64;
                    for message in batch(items) {
                        if sender.send(Ok(message)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    sent += count;
                    match next {
                        Some(next) => cursor = Some(next),
                        None => return,
                    }
                }
                Err(error) => {
                    let _ = sender.send(Err(convert::status(&error))).await;
                    return;
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}
