//! An async Rust client for `exesdb serve`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), exesdb_client::ClientError> {
//! use exesdb_client::{Client, ExpectedVersion, NewEvent};
//! use tokio_stream::StreamExt;
//!
//! let client = Client::connect("http://127.0.0.1:2113").await?;
//! let result = client
//!     .append("order-1", ExpectedVersion::Any, vec![NewEvent::new("OrderPlaced", "{}")])
//!     .await?;
//! println!("written at version {}", result.last_event_number);
//! let mut events = client.read_stream("order-1", ReadFrom::Start, Some(100), Direction::Forward);
//! while let Some(event) = events.next().await {
//!     println!("{:?}", event?.event_type);
//! }
//! # use exesdb_client::{Direction, ReadFrom};
//! # Ok(()) }
//! ```

mod failover;

use std::sync::Arc;
use std::time::Duration;

use exesdb_proto::convert;
use exesdb_proto::v1 as wire;
use exesdb_proto::v1::event_store_client::EventStoreClient;
use exesdb_proto::v1::system_service_client::SystemServiceClient;
use failover::{Connection, Retries, Servers, worth_moving_on};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub use exesdb_types::{
    ALL_STREAM, AppendResult, CATEGORY_STREAM_PREFIX, ClusterMember, ClusterStatus,
    ConsumerStrategy, Delivery, Direction, EVENT_TYPE_STREAM_PREFIX, ExpectedVersion, NackAction,
    NewEvent, RecordedEvent, Selector, Snapshot, SnapshotVersion, StartFrom, StoreError,
    StreamInfo, SubscriptionDefinition, SubscriptionMessage, TreeSnapshot, category_of,
    reads_by_position,
};

/// Messages (batches of events) a streaming read buffers between the connection and the caller.
const STREAM_BUFFER_MESSAGES: usize = 8;

/// The server most commands talk to unless told otherwise (`exesdb serve`'s default address).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:2113";

/// What can go wrong with a request.
///
/// ```no_run
/// # use exesdb_client::*;
/// # async fn demo(client: Client) {
/// match client.stream_version("$bad").await {
///     Err(ClientError::Store(error)) => eprintln!("refused: {} ({})", error, error.code()),
///     Err(other) => eprintln!("could not ask: {other}"),
///     Ok(version) => println!("{version}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the request; the error has the server's stable code.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The server could not be reached, or the connection broke.
    #[error("connection error: {0}")]
    Connection(String),
    /// The server answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The stable error code: the server's, or `connection_error` / `protocol_error`.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// match client.append("s", ExpectedVersion::Exact(3), vec![NewEvent::new("E", "{}")]).await {
    ///     Err(error) if error.code() == "wrong_expected_version" => println!("someone wrote first"),
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Store(error) => error.code(),
            ClientError::Connection(_) => "connection_error",
            ClientError::Protocol(_) => "protocol_error",
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        if let Some(error) = convert::store_error(&status) {
            return ClientError::Store(error);
        }
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
                ClientError::Connection(status.message().to_string())
            }
            // A connection that breaks under a request (the server killed) comes back as
            // UNKNOWN "transport error", made here with the transport's error as its source; an
            // UNKNOWN the server sent has no source.
            tonic::Code::Unknown if std::error::Error::source(&status).is_some() => {
                ClientError::Connection(status.to_string())
            }
            code => ClientError::Protocol(format!("{code:?}: {}", status.message())),
        }
    }
}

/// Where a stream read starts.
///
/// ```
/// use exesdb_client::ReadFrom;
/// let from_the_top = ReadFrom::Start;
/// let from_event_10 = ReadFrom::At(10);
/// # let _ = (from_the_top, from_event_10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The first event (forward) or the last (backward).
    Start,
    /// This event number (stream reads) or position (`$all` reads).
    At(u64),
}

impl ReadFrom {
    fn value(self) -> Option<u64> {
        match self {
            ReadFrom::Start => None,
            ReadFrom::At(at) => Some(at),
        }
    }
}

/// Connection settings.
///
/// ```
/// use std::time::Duration;
/// use exesdb_client::ClientOptions;
/// let options = ClientOptions {
///     store_id: "orders".into(),
///     request_timeout: Duration::from_secs(5),
///     ..ClientOptions::default()
/// };
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The store requests name.
    pub store_id: String,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one unary request may take (streams are not limited).
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            store_id: "default".to_string(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A connection to one server, for one store. Cloning is cheap and shares the connection
/// (HTTP/2 multiplexes the calls); for the most throughput, spread load over a few clients
/// made with [`Client::connect`].
///
/// Given several comma-separated servers (the members of a cluster), the client talks to the
/// store's leader, learns the other members, and sends a request that failed because its
/// server was unreachable or `unavailable` to another member, with a bounded backoff, within
/// the request's timeout. Appends keep their event ids through retries, so a retry of an
/// attempt whose outcome was unknown is recognised and not written twice. Given one server,
/// it never retries.
///
/// ```no_run
/// # async fn demo() -> Result<(), exesdb_client::ClientError> {
/// let client = exesdb_client::Client::connect(exesdb_client::DEFAULT_SERVER).await?;
/// let same_connection = client.clone();
/// # let _ = same_connection; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    store_id: String,
    servers: Arc<Servers>,
    request_timeout: Duration,
}

impl Client {
    /// Connects with the default options (store `default`).
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let client = Client::connect("http://127.0.0.1:2113").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with the given options.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let options = ClientOptions { store_id: "orders".into(), ..ClientOptions::default() };
    /// let client = Client::connect_with("http://127.0.0.1:2113", options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let servers = Servers::connect(url, &options.store_id, options.connect_timeout).await?;
        Ok(Client {
            store_id: options.store_id,
            servers: Arc::new(servers),
            request_timeout: options.request_timeout,
        })
    }

    /// The address of the server requests go to now.
    pub fn server(&self) -> String {
        self.servers.current().url
    }

    fn events(&self) -> EventStoreClient<Channel> {
        self.servers.current().events
    }

    fn system(&self) -> SystemServiceClient<Channel> {
        self.servers.current().system
    }

    /// Sends a unary request; with several servers, sends it again to another after a failure
    /// that another may not have (see [`Client`]).
    async fn unary<R, T, F, Fut>(&self, request: R, call: F) -> Result<T, ClientError>
    where
        R: Clone,
        F: Fn(Connection, tonic::Request<R>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if !self.servers.several() {
            let answer = call(self.servers.current(), self.request(request)).await?;
            return Ok(answer.into_inner());
        }
        let mut retries = Retries::within(self.request_timeout);
        let mut redirected = false;
        loop {
            let connection = self.servers.current();
            let mut attempt = self.request(request.clone());
            attempt.metadata_mut().insert(
                convert::NOT_LEADER_METADATA,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            let answer = call(connection.clone(), attempt)
                .await
                .map_err(ClientError::from);
            if let Err(ClientError::Store(StoreError::NotLeader {
                leader_addr: Some(leader),
                ..
            })) = &answer
                && self.servers.move_to(&connection, leader).await
            {
                // The first redirect goes straight to the leader; another one means
                // leadership is moving, and waits like any retry.
                if redirected && !retries.wait().await {
                    return answer.map(tonic::Response::into_inner);
                }
                redirected = true;
                continue;
            }
            match answer {
                Err(error) if worth_moving_on(&error) => {
                    self.servers.move_on(&connection).await;
                    if !retries.wait().await {
                        return Err(error);
                    }
                }
                answer => return answer.map(tonic::Response::into_inner),
            }
        }
    }

    /// The store this client talks to.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// assert_eq!(client.store_id(), "default");
    /// # Ok(()) }
    /// ```
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The same connection, for another store.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let billing = client.with_store("billing");
    /// billing.stream_version("invoice-1").await?;
    /// # Ok(()) }
    /// ```
    pub fn with_store(&self, store_id: &str) -> Client {
        Client {
            store_id: store_id.to_string(),
            ..self.clone()
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.request_timeout);
        request
    }

    /// Appends events atomically if the stream's version is as `expected`; returns once the
    /// server has made them durable.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let result = client
    ///     .append("order-1", ExpectedVersion::NoStream, vec![NewEvent::new("OrderPlaced", "{}")])
    ///     .await?;
    /// assert_eq!(result.first_event_number, 0);
    /// # Ok(()) }
    /// ```
    pub async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, ClientError> {
        let request = wire::AppendEventsRequest {
            store_id: self.store_id.clone(),
            stream_id: stream_id.to_string(),
            expected: Some(convert::expected_version_to_wire(expected)),
            events: events.into_iter().map(convert::new_event_to_wire).collect(),
        };
        let response = self
            .unary(request, |connection, request| async move {
                connection.events.clone().append_events(request).await
            })
            .await?;
        Ok(convert::append_result_from_wire(response))
    }

    /// The stream's version; -1 when it has no events.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let version = client.stream_version("order-1").await?; // -1: no events yet
    /// # Ok(()) }
    /// ```
    pub async fn stream_version(&self, stream_id: &str) -> Result<i64, ClientError> {
        let request = wire::GetVersionRequest {
            store_id: self.store_id.clone(),
            stream_id: stream_id.to_string(),
        };
        let response = self
            .unary(request, |connection, request| async move {
                connection.events.clone().get_version(request).await
            })
            .await?;
        Ok(response.version)
    }

    /// A stream's events, `count` of them at most (`None`: all), paged by the server.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// use tokio_stream::StreamExt;
    /// let mut events = std::pin::pin!(client.read_stream("order-1", ReadFrom::Start, None, Direction::Forward));
    /// while let Some(event) = events.next().await {
    ///     println!("{}", event?.event_number);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn read_stream(
        &self,
        stream_id: &str,
        from: ReadFrom,
        count: Option<u64>,
        direction: Direction,
    ) -> impl Stream<Item = Result<RecordedEvent, ClientError>> + Send + 'static {
        let request = wire::ReadStreamRequest {
            store_id: self.store_id.clone(),
            stream_id: stream_id.to_string(),
            from: from.value(),
            count: count.unwrap_or(0),
            direction: convert::direction_to_wire(direction),
        };
        let mut client = self.events();
        events_stream(async move { client.read_stream(request).await })
    }

    /// Events of `$all` in position order, filtered by stream-id prefix and event types.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// use tokio_stream::StreamExt;
    /// let types = vec!["OrderPlaced".to_string()];
    /// let mut events = std::pin::pin!(client.read_all(ReadFrom::At(0), Some(100), Direction::Forward, Some("order-"), &types));
    /// while let Some(event) = events.next().await {
    ///     println!("{}", event?.position);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn read_all(
        &self,
        from: ReadFrom,
        count: Option<u64>,
        direction: Direction,
        stream_prefix: Option<&str>,
        event_types: &[String],
    ) -> impl Stream<Item = Result<RecordedEvent, ClientError>> + Send + 'static {
        let request = wire::ReadAllRequest {
            store_id: self.store_id.clone(),
            from_position: from.value(),
            count: count.unwrap_or(0),
            direction: convert::direction_to_wire(direction),
            stream_prefix: stream_prefix.unwrap_or_default().to_string(),
            event_types: event_types.to_vec(),
        };
        let mut client = self.events();
        events_stream(async move { client.read_all(request).await })
    }

    /// Streams in id order, after `after`, `count` at most (`None`: all).
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// use tokio_stream::StreamExt;
    /// let mut streams = std::pin::pin!(client.list_streams(None, Some(50)));
    /// while let Some(info) = streams.next().await {
    ///     let info = info?;
    ///     println!("{} at {}", info.stream_id, info.version);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn list_streams(
        &self,
        after: Option<&str>,
        count: Option<u64>,
    ) -> impl Stream<Item = Result<StreamInfo, ClientError>> + Send + 'static {
        let request = wire::ListStreamsRequest {
            store_id: self.store_id.clone(),
            after: after.unwrap_or_default().to_string(),
            count: count.unwrap_or(0),
        };
        let mut client = self.events();
        async_stream(async move { client.list_streams(request).await }, |batch| {
            Ok(batch
                .streams
                .into_iter()
                .map(|info| StreamInfo {
                    stream_id: info.stream_id,
                    version: info.version,
                })
                .collect())
        })
    }

    /// A transient subscription: the stored events `selector` picks from `start`, then
    /// `CaughtUp`, then new events as they commit, in position order. It lasts until the
    /// stream is dropped (or the server stops).
    ///
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// use tokio_stream::StreamExt;
    /// let selector = Selector::ByEventType("OrderPlaced".into());
    /// let mut messages = std::pin::pin!(client.subscribe(selector, StartFrom::Beginning));
    /// while let Some(message) = messages.next().await {
    ///     match message? {
    ///         SubscriptionMessage::Event(event) => println!("{}", event.position),
    ///         SubscriptionMessage::CaughtUp => println!("live from here"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn subscribe(
        &self,
        selector: Selector,
        start: StartFrom,
    ) -> impl Stream<Item = Result<SubscriptionMessage, ClientError>> + Send + 'static {
        let request = wire::SubscribeRequest {
            store_id: self.store_id.clone(),
            selector: Some(convert::selector_to_wire(&selector)),
            start: Some(convert::start_from_to_wire(start)),
        };
        let mut client = self.events();
        async_stream(async move { client.subscribe(request).await }, |response| {
            let mut messages = response
                .events
                .into_iter()
                .map(|event| {
                    convert::recorded_event_from_wire(event)
                        .map(|event| SubscriptionMessage::Event(std::sync::Arc::new(event)))
                        .map_err(ClientError::from)
                })
                .collect::<Result<Vec<_>, _>>()?;
            if response.caught_up {
                messages.push(SubscriptionMessage::CaughtUp);
            }
            Ok(messages)
        })
    }

    /// Stores (or replaces) a persistent subscription.
    ///
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let mut definition = SubscriptionDefinition::new(
    ///     "billing",
    ///     Selector::ByEventType("OrderPlaced".into()),
    ///     StartFrom::Beginning,
    /// );
    /// definition.strategy = ConsumerStrategy::Pinned;
    /// client.save_subscription(&definition).await?;
    /// # Ok(()) }
    /// ```
    pub async fn save_subscription(
        &self,
        definition: &SubscriptionDefinition,
    ) -> Result<(), ClientError> {
        let request = wire::SaveSubscriptionRequest {
            store_id: self.store_id.clone(),
            definition: Some(convert::definition_to_wire(definition)),
        };
        self.unary(request, |connection, request| async move {
            connection.events.clone().save_subscription(request).await
        })
        .await?;
        Ok(())
    }

    /// Removes a persistent subscription, its checkpoint and its parked events.
    ///
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// client.remove_subscription("billing").await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove_subscription(&self, name: &str) -> Result<(), ClientError> {
        let request = wire::RemoveSubscriptionRequest {
            store_id: self.store_id.clone(),
            name: name.to_string(),
        };
        self.events()
            .remove_subscription(self.request(request))
            .await?;
        Ok(())
    }

    /// The stored persistent subscriptions.
    ///
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// for definition in client.list_subscriptions().await? {
    ///     println!("{}", definition.name);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_subscriptions(&self) -> Result<Vec<SubscriptionDefinition>, ClientError> {
        self.stored_subscriptions()
            .await?
            .into_iter()
            .map(|definition| Ok(convert::definition(Some(definition))?))
            .collect()
    }

    /// The stored subscriptions as the server lists them (with their checkpoints).
    async fn stored_subscriptions(&self) -> Result<Vec<wire::SubscriptionDefinition>, ClientError> {
        let request = wire::ListSubscriptionsRequest {
            store_id: self.store_id.clone(),
        };
        let response = self
            .unary(request, |connection, request| async move {
                connection.events.clone().list_subscriptions(request).await
            })
            .await?;
        Ok(response.subscriptions)
    }

    /// A persistent subscription's stored checkpoint (every event before it is done), `None`
    /// before the first one is stored; `invalid_argument` for an unknown name.
    ///
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let done_up_to = client.subscription_checkpoint("billing").await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscription_checkpoint(&self, name: &str) -> Result<Option<u64>, ClientError> {
        self.stored_subscriptions()
            .await?
            .into_iter()
            .find(|definition| definition.name == name)
            .map(|definition| definition.checkpoint)
            .ok_or_else(|| {
                ClientError::Store(StoreError::InvalidArgument(format!(
                    "no persistent subscription named {name:?}"
                )))
            })
    }

    /// A persistent subscription's parked events.
    ///
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let parked = client.parked_events("billing").await?;
    /// # Ok(()) }
    /// ```
    pub async fn parked_events(&self, name: &str) -> Result<Vec<RecordedEvent>, ClientError> {
        let request = wire::ListParkedRequest {
            store_id: self.store_id.clone(),
            name: name.to_string(),
        };
        let response = self
            .unary(request, |connection, request| async move {
                connection.events.clone().list_parked(request).await
            })
            .await?;
        response
            .events
            .into_iter()
            .map(|event| Ok(convert::recorded_event_from_wire(event)?))
            .collect()
    }

    /// Delivers a subscription's parked events again; returns how many.
    ///
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let replayed = client.replay_parked("billing").await?;
    /// # Ok(()) }
    /// ```
    pub async fn replay_parked(&self, name: &str) -> Result<u64, ClientError> {
        let request = wire::ReplayParkedRequest {
            store_id: self.store_id.clone(),
            name: name.to_string(),
        };
        let response = self.events().replay_parked(self.request(request)).await?;
        Ok(response.into_inner().replayed)
    }

    /// Joins a persistent subscription's consumer group.
    ///
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let mut consumer = client.consume("billing").await?;
    /// while let Some(delivery) = consumer.next().await {
    ///     let delivery = delivery?;
    ///     // ... handle the event, then:
    ///     consumer.ack(delivery.event.position).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn consume(&self, name: &str) -> Result<Consumer, ClientError> {
        let (requests, outgoing) = mpsc::channel(STREAM_BUFFER_MESSAGES);
        let start = wire::ConsumeRequest {
            request: Some(wire::consume_request::Request::Start(wire::ConsumeStart {
                store_id: self.store_id.clone(),
                name: name.to_string(),
            })),
        };
        requests
            .send(start)
            .await
            .map_err(|_| ClientError::Connection("the request stream closed".into()))?;
        let response = self.events().consume(ReceiverStream::new(outgoing)).await?;
        let mut stream = response.into_inner();
        let (sender, deliveries) = mpsc::channel(STREAM_BUFFER_MESSAGES);
        tokio::spawn(async move {
            loop {
                let batch: Result<Vec<Delivery>, ClientError> = match stream.message().await {
                    Ok(Some(message)) => message
                        .deliveries
                        .into_iter()
                        .map(|delivery| {
                            let event = delivery.event.ok_or_else(|| {
                                ClientError::Protocol("a delivery without an event".into())
                            })?;
                            Ok(Delivery {
                                event: convert::recorded_event_from_wire(event)?,
                                attempt: delivery.attempt,
                            })
                        })
                        .collect(),
                    Ok(None) => return,
                    Err(status) => Err(ClientError::from(status)),
                };
                let failed = batch.is_err();
                if sender.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Consumer {
            requests,
            deliveries,
            pending: std::collections::VecDeque::new(),
        })
    }

    /// Records (or replaces) a snapshot.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// client.record_snapshot("order", "order-1", 7, b"{}".to_vec(), vec![]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn record_snapshot(
        &self,
        source_uuid: &str,
        stream_uuid: &str,
        version: u64,
        data: Vec<u8>,
        metadata: Vec<u8>,
    ) -> Result<(), ClientError> {
        let request = wire::RecordSnapshotRequest {
            store_id: self.store_id.clone(),
            source_uuid: source_uuid.to_string(),
            stream_uuid: stream_uuid.to_string(),
            version,
            data,
            metadata,
        };
        self.unary(request, |connection, request| async move {
            connection.events.clone().record_snapshot(request).await
        })
        .await?;
        Ok(())
    }

    /// Reads a snapshot; `snapshot_not_found` when none matches.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let snapshot = client.read_snapshot("order", "order-1", SnapshotVersion::AtOrBelow(10)).await?;
    /// println!("state as of version {}", snapshot.version);
    /// # Ok(()) }
    /// ```
    pub async fn read_snapshot(
        &self,
        source_uuid: &str,
        stream_uuid: &str,
        version: SnapshotVersion,
    ) -> Result<Snapshot, ClientError> {
        let request = wire::ReadSnapshotRequest {
            store_id: self.store_id.clone(),
            source_uuid: source_uuid.to_string(),
            stream_uuid: stream_uuid.to_string(),
            version: Some(convert::snapshot_version_to_wire(version)),
        };
        let response = self
            .unary(request, |connection, request| async move {
                connection.events.clone().read_snapshot(request).await
            })
            .await?;
        Ok(convert::snapshot_from_wire(response))
    }

    /// Deletes a snapshot (no error if there is none).
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// client.delete_snapshot("order", "order-1", 7).await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_snapshot(
        &self,
        source_uuid: &str,
        stream_uuid: &str,
        version: u64,
    ) -> Result<(), ClientError> {
        let request = wire::DeleteSnapshotRequest {
            store_id: self.store_id.clone(),
            source_uuid: source_uuid.to_string(),
            stream_uuid: stream_uuid.to_string(),
            version,
        };
        self.unary(request, |connection, request| async move {
            connection.events.clone().delete_snapshot(request).await
        })
        .await?;
        Ok(())
    }

    /// Snapshots of a source (and stream), or all, `count` at most (0: the server's page size).
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// for snapshot in client.list_snapshots(Some("order"), None, 0).await? {
    ///     println!("{} {}", snapshot.stream_uuid, snapshot.version);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_snapshots(
        &self,
        source_uuid: Option<&str>,
        stream_uuid: Option<&str>,
        count: u64,
    ) -> Result<Vec<Snapshot>, ClientError> {
        let request = wire::ListSnapshotsRequest {
            store_id: self.store_id.clone(),
            source_uuid: source_uuid.unwrap_or_default().to_string(),
            stream_uuid: stream_uuid.unwrap_or_default().to_string(),
            count,
        };
        let response = self
            .unary(request, |connection, request| async move {
                connection.events.clone().list_snapshots(request).await
            })
            .await?;
        Ok(response
            .snapshots
            .into_iter()
            .map(convert::snapshot_from_wire)
            .collect())
    }

    /// The stores the server hosts.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// let stores = client.list_stores().await?;
    /// # Ok(()) }
    /// ```
    pub async fn list_stores(&self) -> Result<Vec<String>, ClientError> {
        let response = self
            .events()
            .list_stores(self.request(wire::ListStoresRequest {}))
            .await?;
        Ok(response.into_inner().store_ids)
    }

    /// The live supervision tree of this client's store.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// print!("{}", client.tree().await?.render());
    /// # Ok(()) }
    /// ```
    pub async fn tree(&self) -> Result<TreeSnapshot, ClientError> {
        let request = wire::GetTreeRequest {
            store_id: self.store_id.clone(),
        };
        let response = self.system().get_tree(self.request(request)).await?;
        Ok(convert::tree_from_wire(response.into_inner())?)
    }

    /// Cluster mode: each store's place in its cluster, as the server's node sees it;
    /// `invalid_argument` from a node in single mode.
    pub async fn cluster_status(&self) -> Result<Vec<ClusterStatus>, ClientError> {
        let response = self
            .system()
            .cluster_status(self.request(wire::ClusterStatusRequest {}))
            .await?;
        Ok(response
            .into_inner()
            .stores
            .into_iter()
            .map(convert::cluster_status_from_wire)
            .collect())
    }

    /// Cluster mode: adds the node whose peer address is `peer_addr` to every store's group,
    /// as a learner and, once it has caught up, as a voter. Answers what was done, per store.
    pub async fn cluster_add(&self, peer_addr: &str) -> Result<Vec<(String, String)>, ClientError> {
        self.change_membership(wire::change_membership_request::Change::AddPeerAddr(
            peer_addr.to_string(),
        ))
        .await
    }

    /// Cluster mode: removes node `node_id` from every store's group.
    pub async fn cluster_remove(&self, node_id: u64) -> Result<Vec<(String, String)>, ClientError> {
        self.change_membership(wire::change_membership_request::Change::RemoveNodeId(
            node_id,
        ))
        .await
    }

    /// Cluster mode: hands this client's store's leadership to node `to`.
    pub async fn cluster_transfer_leader(
        &self,
        to: u64,
    ) -> Result<Vec<(String, String)>, ClientError> {
        self.change_membership(wire::change_membership_request::Change::TransferLeader(
            wire::TransferLeader {
                store_id: self.store_id.clone(),
                to_node_id: to,
            },
        ))
        .await
    }

    async fn change_membership(
        &self,
        change: wire::change_membership_request::Change,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let mut request = self.request(wire::ChangeMembershipRequest {
            change: Some(change),
        });
        // A new member catches up before it votes, which can take longer than a request.
        request.set_timeout(self.request_timeout.max(MEMBERSHIP_CHANGE_TIMEOUT));
        let response = self.system().change_membership(request).await?;
        Ok(response
            .into_inner()
            .stores
            .into_iter()
            .map(|store| (store.store_id, store.outcome))
            .collect())
    }

    /// Whether the server's stores accept writes.
    /// ```no_run
    /// # use exesdb_client::*;
    /// # async fn demo(client: Client) -> Result<(), ClientError> {
    /// assert!(client.healthy().await?);
    /// # Ok(()) }
    /// ```
    pub async fn healthy(&self) -> Result<bool, ClientError> {
        let response = self
            .system()
            .health(self.request(wire::HealthRequest {}))
            .await?;
        Ok(response.into_inner().healthy)
    }
}

/// How long a membership change may take: the server lets a new learner catch up for two
/// minutes before it answers.
const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(150);

fn events_stream<F>(
    open: F,
) -> impl Stream<Item = Result<RecordedEvent, ClientError>> + Send + 'static
where
    F: std::future::Future<
            Output = Result<tonic::Response<tonic::Streaming<wire::ReadResponse>>, tonic::Status>,
        > + Send
        + 'static,
{
    async_stream(open, |batch| {
        batch
            .events
            .into_iter()
            .map(|event| convert::recorded_event_from_wire(event).map_err(ClientError::from))
            .collect()
    })
}

/// Opens a server stream and forwards the items of its messages (each message a batch, which
/// `map` unpacks) through a small bounded channel; an error is yielded and ends the stream.
/// Dropping the returned stream cancels the read.
fn async_stream<W, T, F, M>(
    open: F,
    map: M,
) -> impl Stream<Item = Result<T, ClientError>> + Send + 'static
where
    W: Send + 'static,
    T: Send + 'static,
    F: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<W>>, tonic::Status>>
        + Send
        + 'static,
    M: Fn(W) -> Result<Vec<T>, ClientError> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER_MESSAGES);
    tokio::spawn(async move {
        let mut stream = match open.await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                let _ = sender.send(Err(ClientError::from(status))).await;
                return;
            }
        };
        loop {
            // Dropping the returned stream drops `receiver`; the call is cancelled then (the
            // server releases an idle subscription at once), not when its next message comes.
            let message = tokio::select! {
                message = stream.message() => message,
                () = sender.closed() => return,
            };
            let items = match message {
                Ok(Some(message)) => map(message),
                Ok(None) => return,
                Err(status) => Err(status.into()),
            };
            let failed = items.is_err();
            if sender.send(items).await.is_err() || failed {
                return;
            }
        }
    });
    // Batches cross the channel whole (one send per message, not per event).
    futures_util::StreamExt::flat_map(ReceiverStream::new(receiver), |batch| {
        let items: Vec<Result<T, ClientError>> = match batch {
            Ok(items) => items.into_iter().map(Ok).collect(),
            Err(error) => vec![Err(error)],
        };
        futures_util::stream::iter(items)
    })
}

/// A consumer in a persistent subscription's group, over one `Consume` call. Dropping it leaves
/// the group; unacknowledged events go to the other consumers.
pub struct Consumer {
    requests: mpsc::Sender<wire::ConsumeRequest>,
    deliveries: mpsc::Receiver<Result<Vec<Delivery>, ClientError>>,
    pending: std::collections::VecDeque<Delivery>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Consumer {
    /// The next delivery; `None` when the subscription or the connection ended.
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: exesdb_client::Consumer) {
    /// while let Some(Ok(delivery)) = consumer.next().await {
    ///     println!("{} (attempt {})", delivery.event.position, delivery.attempt);
    /// }
    /// # }
    /// ```
    pub async fn next(&mut self) -> Option<Result<Delivery, ClientError>> {
        if let Some(delivery) = self.pending.pop_front() {
            return Some(Ok(delivery));
        }
        match self.deliveries.recv().await? {
            Ok(batch) => {
                self.pending.extend(batch);
                self.pending.pop_front().map(Ok)
            }
            Err(error) => Some(Err(error)),
        }
    }

    /// Marks an event done.
    ///
    /// ```no_run
    /// # async fn demo(consumer: exesdb_client::Consumer) -> Result<(), exesdb_client::ClientError> {
    /// consumer.ack(42).await?;
    /// # Ok(()) }
    /// ```
    pub async fn ack(&self, position: u64) -> Result<(), ClientError> {
        self.send(wire::consume_request::Request::Ack(wire::Ack {
            positions: vec![position],
        }))
        .await
    }

    /// Reports an event this consumer could not handle: retry it, park it, or skip it.
    ///
    /// ```no_run
    /// # async fn demo(consumer: exesdb_client::Consumer) -> Result<(), exesdb_client::ClientError> {
    /// consumer.nack(42, exesdb_client::NackAction::Retry).await?;
    /// # Ok(()) }
    /// ```
    pub async fn nack(&self, position: u64, action: NackAction) -> Result<(), ClientError> {
        self.send(wire::consume_request::Request::Nack(wire::Nack {
            position,
            action: convert::nack_action_to_wire(action),
        }))
        .await
    }

    async fn send(&self, request: wire::consume_request::Request) -> Result<(), ClientError> {
        self.requests
            .send(wire::ConsumeRequest {
                request: Some(request),
            })
            .await
            .map_err(|_| ClientError::Connection("the subscription's call has ended".into()))
    }
}
