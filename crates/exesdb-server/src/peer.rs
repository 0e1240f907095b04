//! The peer port (cluster mode): the `exesdb.peer.v1.Peer` service other nodes call, and
//! [`GrpcPeerTransport`], the way this node's Raft groups call theirs. The bodies are the
//! engine's business; this layer carries them, checks the cluster secret, and maps failures to
//! the engine's `PeerCallError`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use exesdb::{
    PeerCall, PeerCallError, PeerCallFuture, PeerCallKind, PeerMessages, PeerStreamFuture,
    PeerTransport,
};
use exesdb_proto::peer::peer_client::PeerClient;
use exesdb_proto::peer::peer_server::{Peer, PeerServer};
use exesdb_proto::peer::{PeerReply, PeerRequest};
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::connections::{self, NetworkSettings};
use crate::node::Node;

/// The metadata key that carries the cluster secret.
const SECRET_KEY: &str = "x-exesdb-cluster-secret";
/// Requests of one peer stream that wait for the connection, at most; a full queue waits
/// (the engine bounds what it sends unanswered too).
const PEER_STREAM_QUEUE: usize = 8;
/// A peer message may carry a snapshot piece (1 MiB) or a batch of log entries.
const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Calls other nodes' peer ports, one HTTP/2 connection per peer shared by every store.
pub struct GrpcPeerTransport {
    clients: Mutex<HashMap<String, PeerClient<Channel>>>,
    secret: Option<Arc<str>>,
    source: Option<IpAddr>,
}

impl GrpcPeerTransport {
    /// A transport that sends `secret` (when the cluster has one) with every call, and calls
    /// from `peer_listen`'s address when that is a specific one: then a node's peer traffic
    /// leaves from the address its peers know it by, and a firewall can tell the nodes apart.
    pub fn new(secret: Option<String>, peer_listen: SocketAddr) -> Self {
        let source = peer_listen.ip();
        GrpcPeerTransport {
            clients: Mutex::new(HashMap::new()),
            secret: secret.map(Arc::from),
            source: (!source.is_unspecified()).then_some(source),
        }
    }

    fn client(&self, peer_addr: &str) -> Result<PeerClient<Channel>, PeerCallError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(peer_addr) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{peer_addr}"))
            .map_err(|error| PeerCallError::Refused(format!("peer address {peer_addr}: {error}")))?
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let connector = PeerConnector {
            source: self.source,
        };
        let client = PeerClient::new(endpoint.connect_with_connector_lazy(connector))
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        clients.insert(peer_addr.to_string(), client.clone());
        Ok(client)
    }
}

/// Opens the connections to one peer: from this node's own address when it has one that can
/// reach the peer, with Nagle off (peer messages are small and waited for).
#[derive(Clone)]
struct PeerConnector {
    source: Option<IpAddr>,
}

impl tower_service::Service<Uri> for PeerConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let source = self.source;
        Box::pin(async move {
            let host = uri
                .host()
                .map(|host| {
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string()
                })
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?;
            let port = uri.port_u16().unwrap_or(80);
            let mut failed = None;
            for address in tokio::net::lookup_host((host.as_str(), port)).await? {
                match connect_from(source_for(source, address), address).await {
                    Ok(stream) => return Ok(TokioIo::new(stream)),
                    Err(error) => failed = Some(error),
                }
            }
            Err(failed.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
            }))
        })
    }
}

/// The local address to call `peer` from: this node's own, unless the peer is on the other
/// side of loopback (a loopback address cannot reach another host, nor the reverse) or of
/// another IP version.
fn source_for(source: Option<IpAddr>, peer: SocketAddr) -> Option<IpAddr> {
    source.filter(|source| {
        peer.ip().is_loopback() == source.is_loopback() && peer.is_ipv4() == source.is_ipv4()
    })
}

async fn connect_from(source: Option<IpAddr>, peer: SocketAddr) -> io::Result<TcpStream> {
    let socket = if peer.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        leave_the_port_to_connect(&socket)?;
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(peer).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Bound before it connects, a socket would take its port from the ones bind(2) hands out,
/// among which a restarting node's listening port may be; with IP_BIND_ADDRESS_NO_PORT the
/// port is chosen by connect(2), as for any unbound call.
#[cfg(target_os = "linux")]
fn leave_the_port_to_connect(socket: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the socket's, open for the call; the option's value is a
    // c_int that lives across it, and its size is given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn leave_the_port_to_connect(_socket: &TcpSocket) -> io::Result<()> {
    Ok(())
}

impl GrpcPeerTransport {
    fn with_secret<T>(&self, message: T) -> Result<Request<T>, PeerCallError> {
        let mut request = Request::new(message);
        if let Some(secret) = &self.secret {
            let value = secret.parse().map_err(|_| {
                PeerCallError::Refused("the cluster secret is not valid text".into())
            })?;
            request.metadata_mut().insert(SECRET_KEY, value);
        }
        Ok(request)
    }
}

/// Opens a peer stream. The requests come from a channel, not the engine's boxed stream:
/// with a `dyn Stream` inside, the compiler cannot prove tonic's call future `Send`.
async fn open_peer_stream(
    mut client: PeerClient<Channel>,
    request: Request<ReceiverStream<PeerRequest>>,
    peer: String,
) -> Result<exesdb::PeerAnswers, PeerCallError> {
    let replies = client
        .stream(request)
        .await
        .map_err(|status| call_error(&peer, &status))?
        .into_inner();
    Ok(Box::pin(replies.map(move |reply| {
        reply
            .map(|reply| reply.body)
            .map_err(|status| call_error(&peer, &status))
    })))
}

/// A failed peer call or stream in the engine's terms.
fn call_error(peer: &str, status: &Status) -> PeerCallError {
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            PeerCallError::Timeout(peer.to_string())
        }
        tonic::Code::Unauthenticated
        | tonic::Code::PermissionDenied
        | tonic::Code::NotFound
        | tonic::Code::InvalidArgument => {
            PeerCallError::Refused(format!("{peer}: {}", status.message()))
        }
        _ => PeerCallError::Unreachable(format!("{peer} ({})", status.message())),
    }
}

fn peer_request(call: PeerCall) -> PeerRequest {
    PeerRequest {
        store_id: call.store_id,
        kind: call.kind.code(),
        body: call.body,
        cluster_id: call.cluster_id,
        target_node: call.target_node,
    }
}

impl PeerTransport for GrpcPeerTransport {
    fn call(&self, peer_addr: &str, call: PeerCall, deadline: Duration) -> PeerCallFuture {
        let client = self.client(peer_addr);
        let request = self.with_secret(peer_request(call));
        let peer = peer_addr.to_string();
        Box::pin(async move {
            let mut client = client?;
            let mut request = request?;
            request.set_timeout(deadline);
            match client.call(request).await {
                Ok(reply) => Ok(reply.into_inner().body),
                Err(status) => Err(call_error(&peer, &status)),
            }
        })
    }

    fn stream(&self, peer_addr: &str, call: PeerCall, messages: PeerMessages) -> PeerStreamFuture {
        let client = self.client(peer_addr);
        // The header rides on the first request; the rest carry their body alone.
        let (sender, receiver) = tokio::sync::mpsc::channel(PEER_STREAM_QUEUE);
        let mut header = Some(call);
        let mut messages = messages;
        // Ends when the messages do, or when the call is gone and nobody reads the channel.
        tokio::spawn(async move {
            loop {
                let body = tokio::select! {
                    body = messages.next() => body,
                    () = sender.closed() => None,
                };
                let Some(body) = body else { break };
                let request = match header.take() {
                    Some(call) => peer_request(PeerCall { body, ..call }),
                    None => PeerRequest {
                        body,
                        ..PeerRequest::default()
                    },
                };
                if sender.send(request).await.is_err() {
                    break;
                }
            }
        });
        let request = self.with_secret(ReceiverStream::new(receiver));
        let peer = peer_addr.to_string();
        Box::pin(async move { open_peer_stream(client?, request?, peer).await })
    }
}

/// The service other nodes call. It answers `unavailable` until the node has started.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<OnceLock<Arc<Node>>>,
    secret: Option<Arc<str>>,
    /// Set when the peer port stops: open streams end then, since a connection's graceful
    /// close waits for its streams, and a leader keeps its AppendEntries stream open.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl PeerService {
    /// A service that refuses calls without `secret` (when the cluster has one).
    pub fn new(secret: Option<String>) -> Self {
        PeerService {
            node: Arc::new(OnceLock::new()),
            secret: secret.map(Arc::from),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Hands the started node to the service; calls before this answer `unavailable`.
    pub fn attach(&self, node: Arc<Node>) {
        let _ = self.node.set(node);
    }

    fn check_secret<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = &self.secret else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get(SECRET_KEY)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        if constant_time_equal(given, expected.as_bytes()) {
            return Ok(());
        }
        let remote = request
            .remote_addr()
            .map_or_else(|| "an unknown address".to_string(), |addr| addr.to_string());
        metrics::counter!("exesdb_peer_refused_total", "reason" => "cluster_secret").increment(1);
        tracing::warn!(
            remote,
            "refused a peer call: wrong or missing cluster secret"
        );
        Err(Status::unauthenticated(
            "wrong or missing cluster secret (--cluster-secret-file)",
        ))
    }
}

/// Compares without stopping at the first difference, so timing tells nothing of the secret.
fn constant_time_equal(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (index, byte) in expected.iter().enumerate() {
        difference |= byte ^ given.get(index).copied().unwrap_or(0);
    }
    difference == 0
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn call(&self, request: Request<PeerRequest>) -> Result<Response<PeerReply>, Status> {
        self.check_secret(&request)?;
        let Some(node) = self.node.get() else {
            return Err(Status::unavailable("this node is still starting"));
        };
        let request = request.into_inner();
        let kind = PeerCallKind::from_code(request.kind).ok_or_else(|| {
            Status::invalid_argument(format!("unknown peer call kind {}", request.kind))
        })?;
        let system = node.system(&request.store_id).map_err(|_| {
            Status::not_found(format!("store {} is not hosted here", request.store_id))
        })?;
        let call = PeerCall {
            store_id: request.store_id,
            kind,
            body: request.body,
            cluster_id: request.cluster_id,
            target_node: request.target_node,
        };
        let body = system.handle_peer_call(&call).await;
        Ok(Response::new(PeerReply { body }))
    }

    type StreamStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<PeerReply, Status>> + Send>>;

    /// Answers at once, before the first request arrives: a leader with nothing to send yet
    /// must still see its stream open. The header is read from the first request.
    async fn stream(
        &self,
        request: Request<Streaming<PeerRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        self.check_secret(&request)?;
        let Some(node) = self.node.get().cloned() else {
            return Err(Status::unavailable("this node is still starting"));
        };
        let incoming = request.into_inner();
        let mut stopping = self.stopping.subscribe();
        let stopped = async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        };
        let replies = futures_util::stream::once(open_stream(node, incoming))
            .flat_map(|opened| match opened {
                Ok(answers) => answers.map(|body| Ok(PeerReply { body })).boxed(),
                Err(status) => futures_util::stream::once(std::future::ready(Err(status))).boxed(),
            })
            .take_until(stopped);
        Ok(Response::new(Box::pin(replies)))
    }
}

/// Reads a peer stream's header from its first request and hands the stream to the store.
async fn open_stream(
    node: Arc<Node>,
    mut incoming: Streaming<PeerRequest>,
) -> Result<PeerMessages, Status> {
    let Some(first) = incoming.message().await? else {
        return Err(Status::invalid_argument(
            "a peer stream ended before its first request",
        ));
    };
    let kind = PeerCallKind::from_code(first.kind).ok_or_else(|| {
        Status::invalid_argument(format!("unknown peer call kind {}", first.kind))
    })?;
    let system = node
        .system(&first.store_id)
        .map_err(|_| Status::not_found(format!("store {} is not hosted here", first.store_id)))?;
    let call = PeerCall {
        store_id: first.store_id,
        kind,
        body: Vec::new(),
        cluster_id: first.cluster_id,
        target_node: first.target_node,
    };
    // A broken connection ends the requests; the answers end after the last one's.
    let rest = incoming.scan((), |(), request| {
        std::future::ready(request.ok().map(|request| request.body))
    });
    let messages = futures_util::stream::once(std::future::ready(first.body)).chain(rest);
    Ok(system.handle_peer_stream(&call, Box::pin(messages)))
}

/// Serves the peer port on `listener` until `shutdown` completes.
pub async fn serve_peers(
    service: PeerService,
    listener: TcpListener,
    network: NetworkSettings,
    shutdown: impl Future<Output = ()>,
) {
    let stopping = service.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    let router = tonic::service::Routes::new(
        PeerServer::new(service)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
    )
    .into_axum_router();
    connections::serve(listener, router, network, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(listen: &str, peer: &str) -> Option<IpAddr> {
        let listen: SocketAddr = listen.parse().expect("a socket address");
        let transport = GrpcPeerTransport::new(None, listen);
        source_for(transport.source, peer.parse().expect("a socket address"))
    }

    #[test]
    fn peer_calls_leave_from_the_peer_listen_address_when_it_can_reach_the_peer() {
        let own: IpAddr = "127.0.0.11".parse().expect("an address");
        assert_eq!(source("127.0.0.11:7000", "127.0.0.12:7000"), Some(own));
        let own: IpAddr = "10.0.0.5".parse().expect("an address");
        assert_eq!(source("10.0.0.5:7000", "10.0.0.6:7000"), Some(own));
        // Every address: the kernel picks, as it must for a host with several.
        assert_eq!(source("0.0.0.0:7000", "10.0.0.6:7000"), None);
        assert_eq!(source("[::]:7000", "[::1]:7000"), None);
        // A loopback address cannot reach another host, nor IPv4 an IPv6 peer.
        assert_eq!(source("127.0.0.1:7000", "10.0.0.6:7000"), None);
        assert_eq!(source("10.0.0.5:7000", "127.0.0.1:7000"), None);
        assert_eq!(source("10.0.0.5:7000", "[fd00::6]:7000"), None);
    }

    #[tokio::test]
    async fn a_call_from_an_own_address_takes_its_port_from_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a listener");
        let peer = listener.local_addr().expect("its address");
        let own: IpAddr = "127.0.0.1".parse().expect("an address");
        let stream = connect_from(Some(own), peer).await.expect("connects");
        let local = stream.local_addr().expect("the local address");
        assert_eq!(local.ip(), own);
        // connect(2) prefers even ports, bind(2) odd ones: a port left to connect is even
        // while the range has even ones free.
        assert_eq!(
            local.port() % 2,
            0,
            "the calling port {local} came from bind"
        );
    }
}
