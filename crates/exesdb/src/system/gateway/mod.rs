//! `ExESDB.GatewaySystem` [S] (:one_for_one), started last: `GatewayWorkers` [PS] and the
//! native `ExESDB.PubSub` [GS]. The gRPC gateway (issue 3) routes requests through the gateway
//! workers; until then the pool has partitions and no workers, and the embedded API calls the
//! core pools directly.

use std::convert::Infallible;

use crate::supervision::pool::KeyedWork;
use crate::supervision::service::Service;
use crate::system::context::StoreContext;

/// The work of gateway workers: none until the gRPC gateway exists.
pub struct GatewayWork;

impl KeyedWork for GatewayWork {
    type Request = Infallible;
    const WORKER_NAME: &'static str = "ExESDB.GatewayWorker";

    async fn handle(&self, _key: &str, request: Infallible) {
        match request {}
    }
}

/// The native PubSub: topics `<store>:$all` and `<store>:<topic>` arrive with issue 4.
pub struct PubSub;

impl Service for PubSub {
    fn start(&self, _context: &StoreContext) -> Result<(), String> {
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {}
}
