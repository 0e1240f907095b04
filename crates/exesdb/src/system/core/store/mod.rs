//! `ExESDB.StoreSystem` [S] (:rest_for_one): `Store` → `StoreCluster` → `StoreRegistry`.
//! Restart limits: the System's intensity (default 3 in 5 s). rest_for_one because the
//! registry advertises the store only while a committer is running behind it.

pub(crate) mod state_machine;
// The folder is `StoreSystem`; `store.rs` is the spec's `ExESDB.Store`, named as the spec names it.
#[allow(clippy::module_inception)]
pub(crate) mod store;
pub(crate) mod store_cluster;
pub(crate) mod store_registry;
