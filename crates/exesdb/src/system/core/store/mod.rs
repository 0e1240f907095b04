//! `ExESDB.StoreSystem` [S] (:rest_for_one): `Store` → `StoreCluster` → `StoreRegistry`.
//! Restart limits: the System's intensity (default 3 in 5 s). rest_for_one because the
//! registry advertises the store only while a committer is running behind it.

pub(crate) mod state_machine;
// The folder is `StoreSystem`; `store.rs` is the spec's `ExESDB.Store`, named as the spec names it.
#[allow(clippy::module_inception)]
pub(crate) mod store;
pub(crate) mod store_cluster;
pub(crate) mod store_registry;

use std::sync::Arc;

use exesdb_types::Strategy;

use crate::supervision::ChildSpec;
use crate::system::wiring::Wiring;
use store::Store;
use store_cluster::StoreCluster;
use store_registry::StoreRegistry;

/// The registry advertises the store only while a committer runs behind it: a Store restart
/// restarts what was started after it.
const STRATEGY: Strategy = Strategy::RestForOne;

/// `ExESDB.StoreSystem`.
pub(crate) fn store_system(wiring: &Wiring) -> ChildSpec {
    wiring.supervisor(
        "ExESDB.StoreSystem",
        STRATEGY,
        vec![
            wiring.gen_server("ExESDB.Store", Store),
            wiring.service("ExESDB.StoreCluster", Arc::new(StoreCluster)),
            wiring.service("ExESDB.StoreRegistry", Arc::new(StoreRegistry)),
        ],
    )
}
