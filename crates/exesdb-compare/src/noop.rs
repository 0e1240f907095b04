//! The no-op gRPC server: exesdb's `SystemService` answering at once, served the way `exesdb
//! serve` serves (tonic routes in axum, `TCP_NODELAY`), so that calling it measures the RPC
//! layer alone.

use anyhow::{Context, Result};
use exesdb_proto::v1::system_service_server::{SystemService, SystemServiceServer};
use exesdb_proto::v1::{
    ChangeMembershipRequest, ChangeMembershipResponse, ClusterStatusRequest, ClusterStatusResponse,
    GetTreeRequest, HealthRequest, HealthResponse, TreeNode,
};
use tonic::{Request, Response, Status};

struct Noop;

#[tonic::async_trait]
impl SystemService for Noop {
    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            healthy: true,
            ..HealthResponse::default()
        }))
    }

    async fn get_tree(&self, _: Request<GetTreeRequest>) -> Result<Response<TreeNode>, Status> {
        Ok(Response::new(TreeNode::default()))
    }

    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        Ok(Response::new(ClusterStatusResponse::default()))
    }

    async fn change_membership(
        &self,
        _: Request<ChangeMembershipRequest>,
    ) -> Result<Response<ChangeMembershipResponse>, Status> {
        Ok(Response::new(ChangeMembershipResponse::default()))
    }
}

/// Serves on a free loopback port until killed; logs `listen=ADDRESS` on standard error once
/// it accepts connections.
pub(crate) async fn serve() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let router = tonic::service::Routes::new(SystemServiceServer::new(Noop)).into_axum_router();
    let listener =
        axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
            let _ = stream.set_nodelay(true);
        });
    eprintln!("no-op gRPC server listen={local}");
    axum::serve(listener, router)
        .await
        .context("the no-op server failed")
}
