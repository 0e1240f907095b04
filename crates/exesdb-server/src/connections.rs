//! The accept loop of `exesdb serve`: every TCP connection on the port, HTTP/1.1 or HTTP/2 on
//! each, within named limits. At most `connections_max` connections are open at once; one more
//! is closed as soon as it is accepted (a client sees its connection reset and can retry
//! later), with a warning logged at most every few seconds. A connection must send its first
//! bytes within `connection_first_bytes_ms`, so silent sockets cannot hold the slots. An HTTP/2
//! connection carries at most `http2_concurrent_streams_max` calls at once (the client queues
//! the rest), and a peer that stops answering keep-alive pings is dropped.
//!
//! axum's own `serve` takes no settings, so this loop does what it did (HTTP/1.1 and HTTP/2
//! on one port, `TCP_NODELAY`, graceful shutdown) with the limits added.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Limits on the network side of a node; `exesdb serve` reads them like the store settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// TCP connections open at once; one more is closed at once.
    pub connections_max: usize,
    /// How long a new connection may stay silent before it is closed, ms.
    pub connection_first_bytes_ms: u64,
    /// Calls in flight at once on one HTTP/2 connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub http2_concurrent_streams_max: u32,
    /// Silence on an HTTP/2 connection after which the server pings, and how long it then
    /// waits for the answer before closing it, ms; 0 turns pings off.
    pub http2_keepalive_interval_ms: u64,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            // Below the usual soft limit of 1024 open files once the stores' files are
            // counted would be tighter; clients multiplex calls over few connections, so
            // this is generous, and an operator raising it raises `ulimit -n` too.
            connections_max: 1_024,
            connection_first_bytes_ms: 10_000,
            // hyper's default, kept so that the figures measured before stay comparable.
            http2_concurrent_streams_max: 200,
            http2_keepalive_interval_ms: 30_000,
        }
    }
}

impl NetworkSettings {
    /// Refuses settings that would make the server refuse everything.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections_max == 0 {
            return Err("connections_max must be at least 1".into());
        }
        if self.http2_concurrent_streams_max == 0 {
            return Err("http2_concurrent_streams_max must be at least 1".into());
        }
        if self.connection_first_bytes_ms == 0 {
            return Err("connection_first_bytes_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// How often a refused connection is logged, at most; a flood would otherwise flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// After an accept error that is not about one connection (out of file descriptors, most
/// often), wait this long before accepting again: retrying at once would spin, and the error
/// usually passes when connections close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(200);

/// Serves `router` on `listener` until `stop` completes, then lets open connections finish
/// their calls and returns when the last one has closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    settings: NetworkSettings,
    stop: impl Future<Output = ()>,
) {
    let builder = http_builder(&settings);
    let slots = Arc::new(Semaphore::new(settings.connections_max));
    let first_bytes = Duration::from_millis(settings.connection_first_bytes_ms);
    let (stopping, stopping_seen) = watch::channel(false);
    let mut refusals = RefusalLog::default();
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Dropping the stream closes it; the kernel answers the client's next packet
            // with a reset.
            drop(stream);
            metrics::counter!("exesdb_connections_refused_total").increment(1);
            refusals.refused(settings.connections_max);
            continue;
        };
        let connection = Connection {
            stream,
            slot,
            builder: builder.clone(),
            router: router.clone(),
            first_bytes,
            stopping: stopping_seen.clone(),
        };
        tokio::spawn(connection.run());
    }
    drop(listener);
    drop(stopping_seen);
    let _ = stopping.send(true);
    // Each connection holds a receiver until it has closed.
    stopping.closed().await;
}

fn http_builder(settings: &NetworkSettings) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    // The timer turns on hyper's HTTP/1.1 header read timeout (30 s) as well.
    builder.http1().timer(TokioTimer::new());
    let mut http2 = builder.http2();
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.http2_concurrent_streams_max);
    if settings.http2_keepalive_interval_ms > 0 {
        let interval = Duration::from_millis(settings.http2_keepalive_interval_ms);
        http2
            .keep_alive_interval(interval)
            .keep_alive_timeout(interval);
    }
    builder
}

/// One accepted connection and the slot it holds until it closes.
struct Connection {
    stream: TcpStream,
    slot: OwnedSemaphorePermit,
    builder: Builder<TokioExecutor>,
    router: Router,
    first_bytes: Duration,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    async fn run(self) {
        let Connection {
            stream,
            slot,
            builder,
            router,
            first_bytes,
            mut stopping,
        } = self;
        metrics::gauge!("exesdb_connections_open").increment(1.0);
        // Small gRPC replies must not wait for Nagle's algorithm (a 40 ms tail otherwise).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
        // `peek` returns once a byte has arrived (or the peer has closed, with 0), and
        // leaves the byte for hyper; readiness alone can be reported early.
        let mut first = [0u8; 1];
        let spoke = tokio::select! {
            peeked = tokio::time::timeout(first_bytes, stream.peek(&mut first)) => {
                matches!(peeked, Ok(Ok(read)) if read > 0)
            }
            _ = stopping.wait_for(|stopping| *stopping) => false,
        };
        if spoke {
            let service = TowerToHyperService::new(router);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let mut asked_to_stop = false;
            loop {
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(error) = served {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stopping.wait_for(|stopping| *stopping), if !asked_to_stop => {
                        // Finish the calls in flight, take no new ones.
                        connection.as_mut().graceful_shutdown();
                        asked_to_stop = true;
                    }
                }
            }
        } else {
            tracing::debug!("connection closed: nothing received in connection_first_bytes_ms");
        }
        metrics::gauge!("exesdb_connections_open").decrement(1.0);
        drop(slot);
        drop(stopping);
    }
}

/// Errors about one connection (it was reset before we took it) are no news; anything else,
/// such as running out of file descriptors, is logged, and accepting pauses briefly.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection; pausing");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// Counts refused connections and logs them at most every `REFUSAL_LOG_INTERVAL`.
#[derive(Default)]
struct RefusalLog {
    last_logged: Option<Instant>,
    not_logged: u64,
}

impl RefusalLog {
    fn refused(&mut self, connections_max: usize) {
        self.not_logged += 1;
        let due = self
            .last_logged
            .is_none_or(|last| last.elapsed() >= REFUSAL_LOG_INTERVAL);
        if due {
            tracing::warn!(
                refused = self.not_logged,
                connections_max,
                "connections refused: connections_max connections are open"
            );
            self.last_logged = Some(Instant::now());
            self.not_logged = 0;
        }
    }
}
