//! What each supervisor's module needs to build its part of the tree: the store's shared state,
//! the restart settings every supervisor of a System shares, and one constructor per kind of
//! the spec's legend. Each `*System`/supervisor module builds its own children with these, so
//! a node's strategy sits next to the header that explains it.

use std::sync::Arc;
use std::time::Duration;

use exesdb_types::{Kind, Strategy};
use ractor::Actor;

use super::context::StoreContext;
use super::core::notification::subscription::SubscriptionRegistry;
use super::gateway::pubsub::PubSubShared;
use crate::supervision::pool::{KeyedWork, PoolSettings, WorkerPool};
use crate::supervision::service::{Service, ServiceActor, ServiceArgs};
use crate::supervision::{ChildSpec, SupervisorSettings, TreeNode};

/// The shared parts a System's tree is built from.
pub(crate) struct Wiring {
    pub(crate) context: Arc<StoreContext>,
    pub(crate) subscriptions: Arc<SubscriptionRegistry>,
    pub(crate) pubsub: Arc<PubSubShared>,
    /// Restart intensity (`restarts_max` within `restart_period_ms`) and shutdown patience:
    /// the same for every supervisor of the System, so an operator tunes one pair of numbers.
    pub(crate) settings: SupervisorSettings,
}

impl Wiring {
    /// A static supervisor [S] of `children`, started in order, stopped in reverse.
    pub(crate) fn supervisor(
        &self,
        name: &str,
        strategy: Strategy,
        children: Vec<ChildSpec>,
    ) -> ChildSpec {
        ChildSpec::supervisor(name, Kind::Supervisor, strategy, self.settings, children)
    }

    /// A GenServer [GS] whose actor takes the store's context as its arguments.
    pub(crate) fn gen_server<A>(&self, name: &str, actor: A) -> ChildSpec
    where
        A: Actor<Arguments = Arc<StoreContext>> + Clone,
    {
        let context = self.context.clone();
        ChildSpec::actor(TreeNode::new(name, Kind::GenServer, None), move || {
            (actor.clone(), context.clone())
        })
    }

    /// A GenServer [GS] that runs a [`Service`]'s start and stop.
    pub(crate) fn service(&self, name: &str, service: Arc<dyn Service>) -> ChildSpec {
        let context = self.context.clone();
        ChildSpec::actor(TreeNode::new(name, Kind::GenServer, None), move || {
            (
                ServiceActor,
                ServiceArgs {
                    service: service.clone(),
                    context: context.clone(),
                },
            )
        })
    }

    /// A PartitionSupervisor [PS] of `partitions` DynamicSupervisors [DS], whose workers do
    /// `work` and stop after `idle_ms` without any. Workers that keys share are bounded by
    /// `stream_workers_per_partition_max`; workers of their own key by
    /// `workers_per_partition_max`.
    pub(crate) fn pool<W: KeyedWork>(
        &self,
        name: &str,
        work: W,
        partitions: usize,
        idle_ms: u64,
    ) -> (WorkerPool<W>, ChildSpec) {
        let settings = PoolSettings {
            partitions,
            workers_per_partition_max: if W::SHARED_WORKERS {
                self.context.config.pools.stream_workers_per_partition_max
            } else {
                self.context.config.pools.workers_per_partition_max
            },
            idle: Duration::from_millis(idle_ms),
        };
        WorkerPool::new(name, work, settings, self.settings)
    }
}
