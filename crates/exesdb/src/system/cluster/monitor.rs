//! `ExESDB.NodeMonitor` [GS]: reports each peer's health (when it was last heard from, and on
//! the leader how far its log lags) and the group's term and indexes, as metrics. Advisory
//! only: it never changes membership; only the Raft majority does.

use std::sync::Arc;
use std::time::Duration;

use super::Task;
use crate::supervision::service::Service;
use crate::system::context::StoreContext;

/// How often the gauges are refreshed.
const REPORT_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct NodeMonitor {
    context: Arc<StoreContext>,
    task: Task,
}

impl NodeMonitor {
    pub(crate) fn new(context: Arc<StoreContext>) -> Self {
        NodeMonitor {
            context,
            task: Task::default(),
        }
    }
}

impl Service for NodeMonitor {
    fn start(&self, _context: &StoreContext) -> Result<(), String> {
        let context = self.context.clone();
        let task = tokio::spawn(async move {
            loop {
                report(&context);
                report_disk(&context).await;
                tokio::time::sleep(REPORT_EVERY).await;
            }
        });
        self.task.replace(Some(task.abort_handle()));
        Ok(())
    }

    fn stop(&self, _context: &StoreContext) {
        self.task.replace(None);
    }
}

fn report(context: &StoreContext) {
    let store = context.store_id().to_string();
    for (node_id, seen) in context.cluster_view.peers() {
        metrics::gauge!(
            "exesdb_cluster_peer_last_heard_seconds",
            "store" => store.clone(),
            "peer" => node_id.to_string()
        )
        .set(seen.at.elapsed().as_secs_f64());
    }
    let Some(group) = context.raft_group() else {
        return;
    };
    let metrics = group.metrics();
    let gauge = |name: &'static str, value: f64| {
        metrics::gauge!(name, "store" => store.clone()).set(value);
    };
    gauge("exesdb_raft_term", metrics.current_term as f64);
    gauge(
        "exesdb_raft_applied_index",
        metrics.last_applied.map_or(0, |log_id| log_id.index) as f64,
    );
    gauge(
        "exesdb_raft_purged_index",
        metrics.purged.map_or(0, |log_id| log_id.index) as f64,
    );
    gauge(
        "exesdb_raft_commit_index",
        group.committed_index().unwrap_or(0) as f64,
    );
    gauge(
        "exesdb_raft_last_log_index",
        metrics.last_log_index.unwrap_or(0) as f64,
    );
    let last = metrics.last_log_index.unwrap_or(0);
    if let Some(replication) = &metrics.replication {
        for (peer, matched) in replication.iter() {
            let lag = last.saturating_sub(matched.map_or(0, |log_id| log_id.index));
            metrics::gauge!(
                "exesdb_raft_replication_lag_entries",
                "store" => store.clone(),
                "peer" => peer.to_string()
            )
            .set(lag as f64);
        }
    }
}

/// Bytes on disk of the Raft log, the state machine's data and the snapshot; file sizes are
/// read off the runtime's threads.
async fn report_disk(context: &StoreContext) {
    let Some(group) = context.raft_group() else {
        return;
    };
    let Ok(Ok((log, data, snapshot))) =
        tokio::task::spawn_blocking(move || group.disk_bytes()).await
    else {
        return;
    };
    let store = context.store_id().to_string();
    for (part, bytes) in [
        ("raft_log", log),
        ("state_machine", data),
        ("snapshot", snapshot),
    ] {
        metrics::gauge!("exesdb_store_disk_bytes", "store" => store.clone(), "part" => part)
            .set(bytes as f64);
    }
}
