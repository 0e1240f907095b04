//! The supervision tree as data: the kinds and strategies of the spec's legend, and a
//! point-in-time copy of a live tree that prints in the spec's notation or serialises as
//! `tree --json`.

use std::fmt::Write as _;

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
