//! `ExESDB.Subscriptions` [S] (:one_for_one): `SubscriptionsReader` and `SubscriptionsWriter`,
//! independent GenServers over the `subscriptions` keyspace. Definitions and their API arrive
//! with issue 4; today the reader reports how many are stored and the writer holds its place.

use crate::supervision::service::Service;
use crate::system::context::StoreContext;

/// Reads subscription definitions.
pub struct SubscriptionsReader;

impl Service for SubscriptionsReader {
    fn start(&self, context: &StoreContext) -> Result<(), String> {
        let stored = context.storage.subscriptions.approximate_len();
        tracing::debug!(
            store = context.store_id(),
            stored,
            "subscription definitions found"
        );
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {}
}

/// Writes subscription definitions (through the Store's committer, from issue 4 on).
pub struct SubscriptionsWriter;

impl Service for SubscriptionsWriter {
    fn start(&self, _context: &StoreContext) -> Result<(), String> {
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {}
}
