//! The live supervision tree as data: every process has a [`TreeNode`] that names it, gives
//! its kind and strategy, counts its restarts and holds its current actor, so the running
//! tree can be printed in the spec's notation or serialised as `tree --json`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use exesdb_types::{Kind, Strategy, TreeSnapshot};
use ractor::ActorCell;

/// One process of the tree. Nodes of static children outlive restarts of their process;
/// nodes of dynamic children come and go with them.
#[derive(Debug)]
pub(crate) struct TreeNode {
    name: String,
    kind: Kind,
    strategy: Option<Strategy>,
    restarts: AtomicU64,
    children: Mutex<Vec<Arc<TreeNode>>>,
    cell: Mutex<Option<ActorCell>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-changed (each
    // critical section is a single push, retain or assignment), so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TreeNode {
    /// A node without children.
    pub(crate) fn new(
        name: impl Into<String>,
        kind: Kind,
        strategy: Option<Strategy>,
    ) -> Arc<Self> {
        Arc::new(TreeNode {
            name: name.into(),
            kind,
            strategy,
            restarts: AtomicU64::new(0),
            children: Mutex::new(Vec::new()),
            cell: Mutex::new(None),
        })
    }

    /// The process's name, as in the spec.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// How many times its supervisor restarted it.
    pub(crate) fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub(crate) fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// The actor running this node now, if any (what fault injection kills).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn cell(&self) -> Option<ActorCell> {
        lock(&self.cell).clone()
    }

    pub(crate) fn set_cell(&self, cell: Option<ActorCell>) {
        *lock(&self.cell) = cell;
    }

    pub(crate) fn add_child(&self, child: Arc<TreeNode>) {
        lock(&self.children).push(child);
    }

    pub(crate) fn remove_child(&self, child: &Arc<TreeNode>) {
        lock(&self.children).retain(|c| !Arc::ptr_eq(c, child));
    }

    pub(crate) fn clear_children(&self) {
        lock(&self.children).clear();
    }

    /// The children, in start order.
    pub(crate) fn children(&self) -> Vec<Arc<TreeNode>> {
        lock(&self.children).clone()
    }

    /// The first node named `name` in this subtree, depth first.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn find(self: &Arc<Self>, name: &str) -> Option<Arc<TreeNode>> {
        if self.name == name {
            return Some(self.clone());
        }
        self.children().iter().find_map(|child| child.find(name))
    }

    /// A copy of the subtree as it is now.
    pub(crate) fn snapshot(&self) -> TreeSnapshot {
        TreeSnapshot {
            name: self.name.clone(),
            kind: self.kind,
            strategy: self.strategy,
            restarts: self.restarts(),
            children: self.children().iter().map(|c| c.snapshot()).collect(),
        }
    }
}
