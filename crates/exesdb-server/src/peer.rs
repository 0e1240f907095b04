//! The peer port (cluster mode): the `exesdb.peer.v1.Peer` service other nodes call, and
//! [`GrpcPeerTransport`], the way this node's Raft groups call theirs. The bodies are the
//! engine's business; this layer carries them, checks the cluster secret, and maps failures to
//! the engine's `PeerCallError`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use exesdb::{PeerCall, PeerCallError, PeerCallFuture, PeerCallKind, PeerTransport};
use exesdb_proto::peer::peer_client::PeerClient;
use exesdb_proto::peer::peer_server::{Peer, PeerServer};
use exesdb_proto::peer::{PeerReply, PeerRequest};
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::connections::{self, NetworkSettings};
use crate::node::Node;

/// The metadata key that carries the cluster secret.
const SECRET_KEY: &str = "x-exesdb-cluster-secret";
/// A peer message may carry a snapshot piece (1 MiB) or a batch of log entries.
const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Calls other nodes' peer ports, one HTTP/2 connection per peer shared by every store.
pub struct GrpcPeerTransport {
    clients: Mutex<HashMap<String, PeerClient<Channel>>>,
    secret: Option<Arc<str>>,
}

impl GrpcPeerTransport {
    /// A transport that sends `secret` (when the cluster has one) with every call.
    pub fn new(secret: Option<String>) -> Self {
        GrpcPeerTransport {
            clients: Mutex::new(HashMap::new()),
            secret: secret.map(Arc::from),
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
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let client = PeerClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        clients.insert(peer_addr.to_string(), client.clone());
        Ok(client)
    }
}

impl PeerTransport for GrpcPeerTransport {
    fn call(&self, peer_addr: &str, call: PeerCall, deadline: Duration) -> PeerCallFuture {
        let client = self.client(peer_addr);
        let secret = self.secret.clone();
        let peer = peer_addr.to_string();
        Box::pin(async move {
            let mut client = client?;
            let mut request = Request::new(PeerRequest {
                store_id: call.store_id,
                kind: call.kind.code(),
                body: call.body,
                cluster_id: call.cluster_id,
                target_node: call.target_node,
            });
            request.set_timeout(deadline);
            if let Some(secret) = secret {
                let value = secret.parse().map_err(|_| {
                    PeerCallError::Refused("the cluster secret is not valid text".into())
                })?;
                request.metadata_mut().insert(SECRET_KEY, value);
            }
            match client.call(request).await {
                Ok(reply) => Ok(reply.into_inner().body),
                Err(status) => Err(match status.code() {
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                        PeerCallError::Timeout(peer)
                    }
                    tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::NotFound
                    | tonic::Code::InvalidArgument => {
                        PeerCallError::Refused(format!("{peer}: {}", status.message()))
                    }
                    _ => PeerCallError::Unreachable(format!("{peer} ({})", status.message())),
                }),
            }
        })
    }
}

/// The service other nodes call. It answers `unavailable` until the node has started.
#[derive(Clone)]
pub struct PeerService {
    node: Arc<OnceLock<Arc<Node>>>,
    secret: Option<Arc<str>>,
}

impl PeerService {
    /// A service that refuses calls without `secret` (when the cluster has one).
    pub fn new(secret: Option<String>) -> Self {
        PeerService {
            node: Arc::new(OnceLock::new()),
            secret: secret.map(Arc::from),
        }
    }

    /// Hands the started node to the service; calls before this answer `unavailable`.
    pub fn attach(&self, node: Arc<Node>) {
        let _ = self.node.set(node);
    }

    fn check_secret(&self, request: &Request<PeerRequest>) -> Result<(), Status> {
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
}

/// Serves the peer port on `listener` until `shutdown` completes.
pub async fn serve_peers(
    service: PeerService,
    listener: TcpListener,
    network: NetworkSettings,
    shutdown: impl Future<Output = ()>,
) {
    let router = tonic::service::Routes::new(
        PeerServer::new(service)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
    )
    .into_axum_router();
    connections::serve(listener, router, network, shutdown).await;
}
