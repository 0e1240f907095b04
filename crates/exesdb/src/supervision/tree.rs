//! The live supervision tree as data: every process has a [`TreeNode`] that names it, gives
//! its kind and strategy, counts its restarts and holds its current actor, so the running
//! tree can be printed in the spec's notation or serialised as `tree --json`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ractor::ActorCell;
use serde::Serialize;

/// The kinds of the spec's legend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// Supervisor.
    #[serde(rename = "S")]
    Supervisor,
    /// GenServer: a long-lived process with its own state.
    #[serde(rename = "GS")]
    GenServer,
    /// PartitionSupervisor: a supervisor of N dynamic-supervisor partitions.
    #[serde(rename = "PS")]
    PartitionSupervisor,
    /// DynamicSupervisor: children started and stopped at run time.
    #[serde(rename = "DS")]
    DynamicSupervisor,
    /// Worker.
    #[serde(rename = "W")]
    Worker,
}

impl Kind {
    /// The legend's abbreviation.
    pub fn abbreviation(self) -> &'static str {
        match self {
            Kind::Supervisor => "S",
            Kind::GenServer => "GS",
            Kind::PartitionSupervisor => "PS",
            Kind::DynamicSupervisor => "DS",
            Kind::Worker => "W",
        }
    }
}

/// OTP restart strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the failed child restarts.
    OneForOne,
    /// Every child restarts.
    OneForAll,
    /// The failed child and the children started after it restart.
    RestForOne,
}

impl Strategy {
    /// The name as the spec writes it (without the colon).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::OneForOne => "one_for_one",
            Strategy::OneForAll => "one_for_all",
            Strategy::RestForOne => "rest_for_one",
        }
    }
}

/// One process of the tree. Nodes of static children outlive restarts of their process;
/// nodes of dynamic children come and go with them.
#[derive(Debug)]
pub struct TreeNode {
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
    pub fn new(name: impl Into<String>, kind: Kind, strategy: Option<Strategy>) -> Arc<Self> {
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
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// How many times its supervisor restarted it.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub(crate) fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// The actor running this node now, if any.
    pub fn cell(&self) -> Option<ActorCell> {
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
    pub fn children(&self) -> Vec<Arc<TreeNode>> {
        lock(&self.children).clone()
    }

    /// The first node named `name` in this subtree, depth first.
    pub fn find(self: &Arc<Self>, name: &str) -> Option<Arc<TreeNode>> {
        if self.name == name {
            return Some(self.clone());
        }
        self.children().iter().find_map(|child| child.find(name))
    }

    /// A copy of the subtree as it is now.
    pub fn snapshot(&self) -> TreeSnapshot {
        TreeSnapshot {
            name: self.name.clone(),
            kind: self.kind,
            strategy: self.strategy,
            restarts: self.restarts(),
            children: self.children().iter().map(|c| c.snapshot()).collect(),
        }
    }
}

/// A point-in-time copy of (part of) the tree; serialises to the `tree --json` shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeSnapshot {
    /// The process's name.
    pub name: String,
    /// `S`, `GS`, `PS`, `DS` or `W`.
    pub kind: Kind,
    /// The restart strategy of a supervisor; `null` for other kinds.
    pub strategy: Option<Strategy>,
    /// How many times it was restarted.
    pub restarts: u64,
    /// Its children, in start order.
    pub children: Vec<TreeSnapshot>,
}

impl TreeSnapshot {
    /// The tree in the spec's notation (`├──`, `[S]`, `(:rest_for_one)`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_line(&mut out);
        self.render_children(&mut out, "");
        out
    }

    fn render_line(&self, out: &mut String) {
        let _ = write!(out, "{} [{}]", self.name, self.kind.abbreviation());
        if let Some(strategy) = self.strategy {
            let _ = write!(out, " (:{})", strategy.name());
        }
        if self.restarts > 0 {
            let _ = write!(out, " restarts={}", self.restarts);
        }
        out.push('\n');
    }

    fn render_children(&self, out: &mut String, indent: &str) {
        let last = self.children.len().saturating_sub(1);
        for (i, child) in self.children.iter().enumerate() {
            let (branch, continuation) = if i == last {
                ("└── ", "    ")
            } else {
                ("├── ", "│   ")
            };
            out.push_str(indent);
            out.push_str(branch);
            child.render_line(out);
            child.render_children(out, &format!("{indent}{continuation}"));
        }
    }

    /// The first node named `name`, depth first.
    pub fn find(&self, name: &str) -> Option<&TreeSnapshot> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|child| child.find(name))
    }
}
