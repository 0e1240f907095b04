//! A node: the stores it hosts (one [`System`] each) and the one port that serves them, gRPC
//! and HTTP together (`/health`, `/metrics`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use exesdb_proto::v1::event_store_server::EventStoreServer;
use exesdb_proto::v1::system_service_server::SystemServiceServer;

use exesdb::{NodeStores, StartError, System, SystemConfig};
use exesdb_types::StoreError;

use crate::grpc::GrpcServices;
use crate::oversized::{MessageLimits, refuse_oversized_messages};

/// Renders metrics in Prometheus text; supplied by whoever installed the metrics recorder.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// The stores of one node.
pub struct Node {
    systems: BTreeMap<String, System>,
}

/// What `/health` and the `Health` call report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// Whether every store accepts writes.
    pub healthy: bool,
    /// `single` or `cluster`.
    pub mode: &'static str,
    /// This build's version.
    pub version: &'static str,
    /// Each store's part.
    pub stores: Vec<StoreHealth>,
}

/// One store's part of the health report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// The store.
    pub store_id: String,
    /// Whether it takes appends now.
    pub accepts_writes: bool,
    /// Whether this node leads it.
    pub leader: bool,
    /// Cluster mode: the leader this node knows of, and where clients reach it.
    pub cluster_leader: Option<(u64, String)>,
}

impl Node {
    /// Starts one System per store id, each from `template` with its store id set. Stops the
    /// ones already started if one fails.
    pub async fn start(template: SystemConfig, store_ids: &[String]) -> Result<Node, StartError> {
        let node_stores = NodeStores::default();
        let mut systems = BTreeMap::new();
        for store_id in store_ids {
            let mut config = template.clone();
            config.store_id = store_id.clone();
            config.node_stores = node_stores.clone();
            match System::start(config).await {
                Ok(system) => {
                    systems.insert(store_id.clone(), system);
                }
                Err(error) => {
                    for system in systems.into_values() {
                        system.stop().await;
                    }
                    return Err(StartError::Store {
                        store_id: store_id.clone(),
                        source: Box::new(error),
                    });
                }
            }
        }
        Ok(Node { systems })
    }

    /// The System of a store, or `store_not_found`.
    pub fn system(&self, store_id: &str) -> Result<&System, StoreError> {
        self.systems
            .get(store_id)
            .ok_or_else(|| StoreError::StoreNotFound(store_id.to_string()))
    }

    /// The cluster status of every store (cluster mode; empty in single mode).
    pub fn cluster_status(&self) -> Vec<(String, exesdb::ClusterStatus)> {
        self.systems
            .iter()
            .filter_map(|(store_id, system)| Some((store_id.clone(), system.cluster_status()?)))
            .collect()
    }

    /// The hosted store ids, sorted.
    pub fn store_ids(&self) -> Vec<String> {
        self.systems.keys().cloned().collect()
    }

    /// The health of every store.
    pub fn health(&self) -> NodeHealth {
        let stores: Vec<StoreHealth> = self
            .systems
            .values()
            .map(|system| match system.cluster_status() {
                // In cluster mode a follower takes writes too (it forwards them), once the
                // store has a leader and this node is one of its members.
                Some(status) => StoreHealth {
                    store_id: system.api().store_id().to_string(),
                    accepts_writes: status.leader.is_some()
                        && status.members.iter().any(|m| m.node_id == status.node_id),
                    leader: status.leader == Some(status.node_id),
                    cluster_leader: status
                        .leader
                        .map(|id| (id, status.leader_client_addr.clone().unwrap_or_default())),
                },
                None => StoreHealth {
                    store_id: system.api().store_id().to_string(),
                    accepts_writes: system.accepts_writes(),
                    leader: system.api().is_leader(),
                    cluster_leader: None,
                },
            })
            .collect();
        let cluster = self
            .systems
            .values()
            .any(|system| system.api().config().cluster.is_some());
        NodeHealth {
            healthy: !stores.is_empty() && stores.iter().all(|s| s.accepts_writes),
            mode: if cluster { "cluster" } else { "single" },
            version: env!("CARGO_PKG_VERSION"),
            stores,
        }
    }

    pub(crate) fn read_page_events_max(&self, store_id: &str) -> u64 {
        self.systems
            .get(store_id)
            .map_or(1, |s| s.api().config().limits.read_events_max)
    }

    pub(crate) fn read_page_bytes_max(&self, store_id: &str) -> u64 {
        self.systems
            .get(store_id)
            .map_or(1, |s| s.api().config().limits.read_page_bytes_max)
    }

    pub(crate) fn read_stream_buffer_events(&self, store_id: &str) -> usize {
        self.systems
            .get(store_id)
            .map_or(1, |s| s.api().config().pools.read_stream_buffer_events)
    }

    /// The largest request the node accepts: the largest append of any store, plus room for
    /// the envelope. Bigger messages are refused before they are decoded.
    pub fn message_bytes_max(&self) -> usize {
        let largest = self
            .systems
            .values()
            .map(|s| {
                s.api()
                    .config()
                    .limits
                    .append_bytes_max
                    .max(s.api().config().limits.snapshot_bytes_max)
            })
            .max()
            .unwrap_or(0);
        usize::try_from(largest)
            .unwrap_or(usize::MAX)
            .saturating_add(1024 * 1024)
    }

    /// The largest append and snapshot any store takes, for answering a message over the
    /// node's limit.
    fn message_limits(&self) -> MessageLimits {
        let largest = |limit: fn(&System) -> u64| self.systems.values().map(limit).max();
        MessageLimits {
            append_bytes_max: largest(|s| s.api().config().limits.append_bytes_max).unwrap_or(0),
            snapshot_bytes_max: largest(|s| s.api().config().limits.snapshot_bytes_max)
                .unwrap_or(0),
        }
    }

    /// gRPC (with reflection) and HTTP routes for this node, on one router.
    pub fn router(self: &Arc<Self>, metrics: Option<MetricsRenderer>) -> Result<Router, String> {
        let services = GrpcServices::new(self.clone());
        let limit = self.message_bytes_max();
        // Both versions of the reflection protocol: v1 for current tools, v1alpha for the
        // Python grpcio-reflection client and older grpcurl releases, which speak only that.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(exesdb_proto::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|error| format!("cannot build gRPC reflection: {error}"))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|error| format!("cannot build gRPC reflection (v1alpha): {error}"))?;
        let grpc = tonic::service::Routes::new(
            EventStoreServer::new(services.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(SystemServiceServer::new(services))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(self.message_limits()),
            refuse_oversized_messages,
        ));
        let http = Router::new()
            .route("/health", get(health))
            .route("/metrics", get(render_metrics))
            .with_state(HttpState {
                node: self.clone(),
                metrics,
            });
        Ok(grpc.merge(http))
    }

    /// The longest shutdown timeout of the node's stores, ms: how long a stop waits for calls
    /// in flight.
    pub fn shutdown_timeout_ms(&self) -> u64 {
        self.systems
            .values()
            .map(|system| system.api().config().shutdown_timeout_ms)
            .max()
            .unwrap_or(10_000)
    }

    /// Ends every subscription stream on the node, so that long-lived calls finish and the
    /// server can close its connections (the first step of a shutdown).
    pub fn end_subscriptions(&self) {
        for system in self.systems.values() {
            system.api().end_subscriptions();
        }
    }

    /// Stops every store (see [`System::stop`]); calls still arriving answer `unavailable`.
    pub async fn stop(&self) {
        for system in self.systems.values() {
            system.shutdown().await;
        }
    }
}

#[derive(Clone)]
struct HttpState {
    node: Arc<Node>,
    metrics: Option<MetricsRenderer>,
}

async fn health(State(state): State<HttpState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let health = state.node.health();
    let stores: Vec<serde_json::Value> = health
        .stores
        .iter()
        .map(|store| {
            let mut entry = serde_json::json!({
                "store": store.store_id,
                "accepts_writes": store.accepts_writes,
                "leader": store.leader,
            });
            if let Some((node_id, client_addr)) = &store.cluster_leader {
                entry["leader_node"] = serde_json::json!(node_id);
                entry["leader_client_addr"] = serde_json::json!(client_addr);
            }
            entry
        })
        .collect();
    let status = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if health.healthy { "ok" } else { "unavailable" },
        "mode": health.mode,
        "version": health.version,
        "stores": stores,
    });
    (status, axum::Json(body))
}

async fn render_metrics(State(state): State<HttpState>) -> (StatusCode, String) {
    for system in state.node.systems.values() {
        system.publish_gauges();
    }
    match &state.metrics {
        Some(render) => (StatusCode::OK, render()),
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not enabled in this process\n".to_string(),
        ),
    }
}
