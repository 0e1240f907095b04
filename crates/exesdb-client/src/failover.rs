//! Several servers for one client: the connection in use, the other members' addresses, and
//! the move to another member (the store's leader when one is known) after a failure.
//!
//! Given one address, a client talks to that server alone and never retries (a follower
//! forwards writes to its leader). Given several (`a,b,c`), it connects to the first that
//! answers, learns the cluster's members and the store's leader from it, and talks to the
//! leader. Its requests ask not to be forwarded: a member that does not lead the store
//! answers `not_leader` with the leader's address, and the client moves there and sends the
//! request again at once. A request that fails because its server is unreachable or answers `unavailable`
//! goes to the next server after a bounded backoff, within the request's timeout. A retried
//! append keeps its event ids, so an attempt whose outcome was unknown is recognised, not
//! written twice.

use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use exesdb_proto::v1 as wire;
use exesdb_proto::v1::event_store_client::EventStoreClient;
use exesdb_proto::v1::system_service_client::SystemServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::{ClientError, StoreError};

/// The first wait before a retry; each next one doubles, up to [`LAST_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(50);
const LAST_RETRY_WAIT: Duration = Duration::from_secs(1);
/// How long asking a member who leads may take while moving on.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// Members learned from the cluster beyond those given; a cluster is a handful of nodes.
const MEMBERS_MAX: usize = 64;

/// One server's connection.
#[derive(Clone)]
pub(crate) struct Connection {
    pub url: String,
    pub events: EventStoreClient<Channel>,
    pub system: SystemServiceClient<Channel>,
}

/// The servers a client may use, shared by its clones.
pub(crate) struct Servers {
    urls: Mutex<Vec<String>>,
    current: RwLock<Connection>,
    /// Held while moving to another server, so that many failing requests move once.
    moving: tokio::sync::Mutex<()>,
    connect_timeout: Duration,
    store_id: String,
    several: bool,
}

impl Servers {
    /// Connects to the first of the comma-separated `urls` that answers; with several, to the
    /// store's leader if that server names one.
    pub(crate) async fn connect(
        urls: &str,
        store_id: &str,
        connect_timeout: Duration,
    ) -> Result<Servers, ClientError> {
        let given: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_string)
            .collect();
        if given.is_empty() {
            return Err(ClientError::Connection(format!(
                "no server address in {urls:?}"
            )));
        }
        let mut last_error = None;
        for url in &given {
            match open(url, connect_timeout).await {
                Ok(connection) => {
                    let servers = Servers {
                        several: given.len() > 1,
                        urls: Mutex::new(given.clone()),
                        current: RwLock::new(connection),
                        moving: tokio::sync::Mutex::new(()),
                        connect_timeout,
                        store_id: store_id.to_string(),
                    };
                    if servers.several {
                        let current = servers.current();
                        servers.follow_leader(&current).await;
                    }
                    return Ok(servers);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::Connection("no server".into())))
    }

    /// The connection in use.
    pub(crate) fn current(&self) -> Connection {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether a failed request may go to another server.
    pub(crate) fn several(&self) -> bool {
        self.several
    }

    fn set_current(&self, connection: Connection) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = connection;
    }

    /// After `failed` failed a request: moves to the leader another member names, or else to
    /// the next server that answers. Does nothing if another request moved already.
    pub(crate) async fn move_on(&self, failed: &Connection) {
        let _moving = self.moving.lock().await;
        if self.current().url != failed.url {
            return;
        }
        let urls = self
            .urls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let start = urls
            .iter()
            .position(|url| *url == failed.url)
            .map_or(0, |at| at + 1);
        for offset in 0..urls.len() {
            let url = &urls[(start + offset) % urls.len()];
            if let Ok(Ok(connection)) =
                tokio::time::timeout(ASK_TIMEOUT, open(url, self.connect_timeout)).await
            {
                self.set_current(connection.clone());
                self.follow_leader(&connection).await;
                return;
            }
        }
    }

    /// After `answered` said `not_leader`: moves to the leader it named (`host:port`).
    /// `false` when the leader cannot be reached; another request moving first counts as
    /// moved.
    pub(crate) async fn move_to(&self, answered: &Connection, leader: &str) -> bool {
        let _moving = self.moving.lock().await;
        if self.current().url != answered.url {
            return true;
        }
        let leader_url = format!("http://{leader}");
        match tokio::time::timeout(ASK_TIMEOUT, open(&leader_url, self.connect_timeout)).await {
            Ok(Ok(connection)) => {
                self.remember(&leader_url);
                self.set_current(connection);
                true
            }
            _ => false,
        }
    }

    fn remember(&self, url: &str) {
        let mut urls = self
            .urls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !urls.iter().any(|known| same_server(known, url)) && urls.len() < MEMBERS_MAX {
            urls.push(url.to_string());
        }
    }

    /// Asks `connection`'s server for the members and the store's leader: remembers the
    /// members, and moves to the leader when it is another server.
    async fn follow_leader(&self, connection: &Connection) {
        let mut request = tonic::Request::new(wire::ClusterStatusRequest {});
        request.set_timeout(ASK_TIMEOUT);
        let Ok(response) = connection.system.clone().cluster_status(request).await else {
            return; // a single node, or a node not ready: stay
        };
        let stores = response.into_inner().stores;
        let Some(store) = stores.iter().find(|store| store.store_id == self.store_id) else {
            return;
        };
        for member in &store.members {
            self.remember(&format!("http://{}", member.client_addr));
        }
        let Some(leader) = store.leader_client_addr.as_deref() else {
            return;
        };
        let leader_url = format!("http://{leader}");
        if same_server(&leader_url, &connection.url) {
            return;
        }
        if let Ok(Ok(leading)) =
            tokio::time::timeout(ASK_TIMEOUT, open(&leader_url, self.connect_timeout)).await
        {
            self.set_current(leading);
        }
    }
}

/// Whether a failed request is worth sending to another server: the server could not be
/// reached, or it could not serve now (no leader, no quorum, stopping, outcome unknown, or
/// not the leader and its leader unreachable).
pub(crate) fn worth_moving_on(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Connection(_)
            | ClientError::Store(StoreError::Unavailable(_) | StoreError::NotLeader { .. })
    )
}

/// Retries of one request: the backoff, within the request's deadline.
pub(crate) struct Retries {
    deadline: Instant,
    wait: Duration,
}

impl Retries {
    pub(crate) fn within(timeout: Duration) -> Retries {
        Retries {
            deadline: Instant::now() + timeout,
            wait: FIRST_RETRY_WAIT,
        }
    }

    /// Waits before the next attempt; `false` when the deadline leaves no time for one.
    pub(crate) async fn wait(&mut self) -> bool {
        match self.next_wait(Instant::now()) {
            Some(wait) => {
                tokio::time::sleep(wait).await;
                true
            }
            None => false,
        }
    }

    /// The wait before the next attempt made at `now`, if the deadline leaves time for one.
    fn next_wait(&mut self, now: Instant) -> Option<Duration> {
        if now + self.wait >= self.deadline {
            return None;
        }
        let wait = self.wait;
        self.wait = (self.wait * 2).min(LAST_RETRY_WAIT);
        Some(wait)
    }
}

fn same_server(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

async fn open(url: &str, connect_timeout: Duration) -> Result<Connection, ClientError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|error| ClientError::Connection(format!("bad server address {url:?}: {error}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| ClientError::Connection(format!("cannot reach {url}: {error}")))?;
    Ok(Connection {
        url: url.to_string(),
        events: EventStoreClient::new(channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX),
        system: SystemServiceClient::new(channel),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_stops_at_the_deadline() {
        let start = Instant::now();
        let mut retries = Retries {
            deadline: start + Duration::from_millis(3_500),
            wait: FIRST_RETRY_WAIT,
        };
        let mut now = start;
        let mut waits = Vec::new();
        while let Some(wait) = retries.next_wait(now) {
            waits.push(wait.as_millis());
            now += wait;
        }
        // 50 + 100 + 200 + 400 + 800 + 1000 = 2550; one more second would pass the deadline.
        assert_eq!(waits, vec![50, 100, 200, 400, 800, 1000]);
    }

    #[test]
    fn only_unreachable_and_unavailable_move_on() {
        assert!(worth_moving_on(&ClientError::Connection("reset".into())));
        assert!(worth_moving_on(&ClientError::Store(
            StoreError::unavailable("no leader")
        )));
        assert!(!worth_moving_on(&ClientError::Store(StoreError::invalid(
            "bad"
        ))));
    }
}
