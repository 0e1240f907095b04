//! `ExESDB.GatewaySystem` [S] (:one_for_one), started last: `GatewayWorkers` [PS] and the
//! native `ExESDB.PubSub` [GS].
//!
//! Requests from the network pass through [`Gateway::call`]: admission control first (at most
//! `gateway_requests_in_flight_max` requests at once; one more is answered `unavailable`
//! immediately rather than queued), then a gateway worker, chosen by hashing the request's
//! stream to spread the load, runs the call against the store's API as its own task. Calls in
//! flight together run concurrently: a client that needs one append after another waits for
//! the first one's answer, as with any network API. Subscriptions do not pass here (they are
//! long-lived and count against `subscriptions_max`), nor do health, tree and store listings.
//! Restart intensity: the System's (`restarts_max` within `restart_period_ms`).

pub(crate) mod pubsub;

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use exesdb_types::{Kind, Strategy};

use crate::supervision::pool::{KeyedWork, WorkerPool};
use crate::supervision::{ChildSpec, TreeNode};
use crate::system::StoreApi;
use crate::system::hops::Hop;
use crate::system::wiring::Wiring;
use exesdb_types::StoreError;
use pubsub::PubSub;

/// A call admitted by the gateway, with the permit that counts it in flight.
pub(crate) struct GatewayCall {
    permit: OwnedSemaphorePermit,
    task: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// What gateway workers do: run each admitted call as its own task, so one slow request never
/// holds up the others routed to the same worker.
pub(crate) struct GatewayWork;

impl KeyedWork for GatewayWork {
    type Request = GatewayCall;
    const WORKER_NAME: &'static str = "ExESDB.GatewayWorker";

    async fn handle(&self, _key: &str, call: GatewayCall) {
        let GatewayCall { permit, task } = call;
        tokio::spawn(async move {
            task.await;
            drop(permit);
        });
    }
}

/// The way in for network requests to one store.
#[derive(Clone)]
pub struct Gateway {
    api: StoreApi,
    workers: WorkerPool<GatewayWork>,
    worker_count: usize,
    in_flight: Arc<Semaphore>,
    in_flight_max: usize,
}

impl Gateway {
    pub(crate) fn new(
        api: StoreApi,
        workers: WorkerPool<GatewayWork>,
        worker_count: usize,
        in_flight_max: usize,
    ) -> Self {
        Gateway {
            api,
            workers,
            worker_count,
            in_flight: Arc::new(Semaphore::new(in_flight_max)),
            in_flight_max,
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight_max - self.in_flight.available_permits()
    }

    /// Runs `call` on the store's API through a gateway worker; `route` (a stream id, usually)
    /// picks the worker. `unavailable` at once when the gateway is full.
    pub async fn call<T, F, Fut>(&self, route: &str, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(StoreApi) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            StoreError::unavailable(format!(
                "the gateway is full: {} requests in flight (gateway_requests_in_flight_max)",
                self.in_flight_max
            ))
        })?;
        let called = Instant::now();
        let (reply, answer) = oneshot::channel();
        let api = self.api.clone();
        let task = Box::pin(async move {
            api.hops().add(Hop::GatewayIn, called, Instant::now());
            let result = call(api).await;
            let _ = reply.send((result, Instant::now()));
        });
        let key = format!("{}", worker_index(route, self.worker_count));
        self.workers
            .dispatch(&key, GatewayCall { permit, task })
            .await?;
        let (result, returned) = answer
            .await
            .map_err(|_| StoreError::unavailable("the gateway worker stopped before answering"))?;
        let hops = self.api.hops();
        hops.add(Hop::GatewayOut, returned, Instant::now());
        hops.count_gateway_call();
        result
    }
}

fn worker_index(route: &str, workers: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    route.hash(&mut hasher);
    (hasher.finish() % workers.max(1) as u64) as usize
}

/// The workers and the PubSub are independent: one failing never restarts the other.
const STRATEGY: Strategy = Strategy::OneForOne;

/// `ExESDB.GatewaySystem` and the handle of its workers' pool.
pub(crate) fn gateway_system(wiring: &Wiring) -> (WorkerPool<GatewayWork>, ChildSpec) {
    let pools = &wiring.context.config.pools;
    let (workers, workers_spec) = wiring.pool(
        "ExESDB.GatewayWorkers",
        GatewayWork,
        pools.gateway_partitions,
        pools.reader_idle_ms,
    );
    let pubsub = wiring.pubsub.clone();
    let pubsub_spec = ChildSpec::actor(
        TreeNode::new("ExESDB.PubSub", Kind::GenServer, None),
        move || (PubSub, pubsub.clone()),
    );
    let spec = wiring.supervisor(
        "ExESDB.GatewaySystem",
        STRATEGY,
        vec![workers_spec, pubsub_spec],
    );
    (workers, spec)
}
