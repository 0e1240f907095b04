//! One node on one port until a shutdown signal: the order of a clean stop lives here.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::connections::{self, NetworkSettings};
use crate::node::{MetricsRenderer, Node};

/// Why a node could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The network settings would refuse every connection.
    #[error("invalid network settings: {0}")]
    InvalidSettings(String),
    /// gRPC reflection could not be set up.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(String),
}

/// Serves `node` (gRPC and HTTP) on `listener` until `shutdown` completes, then stops cleanly:
/// subscription streams end (they would hold their connections open), calls in flight finish,
/// connections still open after the stores' shutdown timeout are cut, and the stores stop,
/// each tree in reverse start order.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    network: NetworkSettings,
    metrics: Option<MetricsRenderer>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    network.validate().map_err(ServeError::InvalidSettings)?;
    let app = node.router(metrics).map_err(ServeError::Reflection)?;
    let patience = Duration::from_millis(node.shutdown_timeout_ms());
    let (signalled, mut signal_seen) = tokio::sync::watch::channel(false);
    let shutdown_node = node.clone();
    let serving = connections::serve(listener, app, network, async move {
        shutdown.await;
        shutdown_node.end_subscriptions();
        let _ = signalled.send(true);
    });
    let cut_off = async move {
        let _ = signal_seen.wait_for(|seen| *seen).await;
        tokio::time::sleep(patience).await;
    };
    tokio::select! {
        () = serving => {}
        () = cut_off => {
            tracing::warn!("connections still open after the shutdown timeout; closing them");
        }
    }
    tracing::info!("connections closed; stopping the stores");
    node.stop().await;
    tracing::info!("exesdb stopped");
    Ok(())
}
