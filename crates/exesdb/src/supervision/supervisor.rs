//! A static supervisor on ractor's supervision events: `one_for_one`, `one_for_all` and
//! `rest_for_one`, restart intensity with escalation, and ordered shutdown.
//!
//! Why not ractor-supervisor: it restarts siblings with `kill` followed by a fixed 10 ms sleep
//! so that registry names free up, and it has no ordered, graceful stop; our shutdown contract
//! (stop in reverse start order, let the committer finish in-flight appends) needs both. See
//! `docs/DECISIONS.md`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

use super::tree::TreeNode;
use crate::config::Intensity;
use exesdb_types::{Kind, Strategy};

/// Starts a child linked to the given supervisor and returns its actor.
pub(crate) type StartFn = Arc<
    dyn Fn(ActorCell) -> Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>
        + Send
        + Sync,
>;

/// How to start one child, and the node it shows as in the tree.
#[derive(Clone)]
pub(crate) struct ChildSpec {
    pub node: Arc<TreeNode>,
    pub start: StartFn,
}

impl ChildSpec {
    /// A child that is an actor made fresh by `make` at every (re)start.
    pub(crate) fn actor<A, F>(node: Arc<TreeNode>, make: F) -> ChildSpec
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let spec_node = node.clone();
        let start: StartFn = Arc::new(move |supervisor: ActorCell| {
            let make = make.clone();
            let node = spec_node.clone();
            Box::pin(async move {
                let (actor, args) = make();
                let (actor_ref, _) = Actor::spawn_linked(None, actor, args, supervisor).await?;
                let cell = actor_ref.get_cell();
                node.set_cell(Some(cell.clone()));
                Ok(cell)
            })
        });
        ChildSpec { node, start }
    }

    /// A child that is itself a supervisor of `children`.
    pub(crate) fn supervisor(
        name: &str,
        kind: Kind,
        strategy: Strategy,
        settings: SupervisorSettings,
        children: Vec<ChildSpec>,
    ) -> ChildSpec {
        let node = TreeNode::new(name, kind, Some(strategy));
        for child in &children {
            node.add_child(child.node.clone());
        }
        let args_node = node.clone();
        ChildSpec::actor(node, move || {
            (
                Supervisor,
                SupervisorArgs {
                    node: args_node.clone(),
                    strategy,
                    settings,
                    children: children.clone(),
                },
            )
        })
    }
}

/// Restart intensity and shutdown patience of a supervisor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SupervisorSettings {
    pub intensity: Intensity,
    pub shutdown_timeout: Duration,
}

/// The supervisor actor.
pub(crate) struct Supervisor;

/// What a supervisor starts with.
pub(crate) struct SupervisorArgs {
    pub node: Arc<TreeNode>,
    pub strategy: Strategy,
    pub settings: SupervisorSettings,
    pub children: Vec<ChildSpec>,
}

/// A supervisor's state: its children's current actors and its recent restarts.
pub(crate) struct SupervisorState {
    args: SupervisorArgs,
    running: Vec<Option<ActorCell>>,
    restart_times: VecDeque<Instant>,
}

impl Actor for Supervisor {
    type Msg = ();
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    /// Children start here, not in `post_start`, so that spawning a supervisor returns only
    /// once its whole subtree runs: `System::start` then hands out a ready store.
    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let running = vec![None; args.children.len()];
        let mut state = SupervisorState {
            args,
            running,
            restart_times: VecDeque::new(),
        };
        for index in 0..state.running.len() {
            if let Err(error) = state.start_child(&myself, index).await {
                state.stop_children(&myself, 0..index).await;
                return Err(error);
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<()>,
        _message: (),
        _state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorTerminated(cell, final_state, reason) => {
                // The final state may own resources (the Store's committer guard): release
                // them now, before restarting anything that waits for them.
                drop(final_state);
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            _ => return Ok(()),
        };
        let Some(index) = state.index_of(&cell) else {
            return Ok(());
        };
        state.running[index] = None;
        let name = state.args.children[index].node.name().to_string();
        tracing::warn!(supervisor = state.args.node.name(), child = %name, %reason, "child exited; restarting");
        state.restart_scope(&myself, index, &name).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<()>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let all = 0..state.running.len();
        state.stop_children(&myself, all).await;
        state.args.node.set_cell(None);
        Ok(())
    }
}

impl SupervisorState {
    fn index_of(&self, cell: &ActorCell) -> Option<usize> {
        self.running
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
    }

    async fn start_child(
        &mut self,
        myself: &ActorRef<()>,
        index: usize,
    ) -> Result<(), ActorProcessingErr> {
        let spec = &self.args.children[index];
        let cell = (spec.start)(myself.get_cell()).await.map_err(|error| {
            format!(
                "{} could not start {}: {error}",
                self.args.node.name(),
                spec.node.name()
            )
        })?;
        self.running[index] = Some(cell);
        Ok(())
    }

    /// Stops the children in `range` in reverse start order, each unlinked first so that its
    /// exit is not mistaken for a failure.
    async fn stop_children(&mut self, myself: &ActorRef<()>, range: std::ops::Range<usize>) {
        for index in range.rev() {
            if let Some(cell) = self.running[index].take() {
                cell.unlink(myself.get_cell());
                stop_gracefully(&cell, self.args.settings.shutdown_timeout).await;
            }
        }
    }

    /// Records a restart; false when the intensity is exceeded.
    fn allow_restart(&mut self) -> bool {
        let now = Instant::now();
        let period = self.args.settings.intensity.period();
        self.restart_times
            .retain(|at| now.saturating_duration_since(*at) < period);
        self.restart_times.push_back(now);
        self.restart_times.len() <= self.args.settings.intensity.restarts_max as usize
    }

    async fn restart_scope(
        &mut self,
        myself: &ActorRef<()>,
        failed: usize,
        failed_name: &str,
    ) -> Result<(), ActorProcessingErr> {
        let count = self.running.len();
        let scope = match self.args.strategy {
            Strategy::OneForOne => failed..failed + 1,
            Strategy::OneForAll => 0..count,
            Strategy::RestForOne => failed..count,
        };
        loop {
            if !self.allow_restart() {
                let intensity = self.args.settings.intensity;
                self.stop_children(myself, 0..count).await;
                return Err(format!(
                    "{}: more than {} restarts within {} ms (last: {failed_name}); giving up",
                    self.args.node.name(),
                    intensity.restarts_max,
                    intensity.period_ms
                )
                .into());
            }
            self.stop_children(myself, scope.clone()).await;
            let mut started = true;
            for index in scope.clone() {
                self.args.children[index].node.count_restart();
                if let Err(error) = self.start_child(myself, index).await {
                    tracing::error!(supervisor = self.args.node.name(), %error, "restart failed");
                    started = false;
                    break;
                }
            }
            if started {
                return Ok(());
            }
        }
    }
}

/// Asks an actor to stop and waits; kills it if it does not stop in time.
pub(crate) async fn stop_gracefully(cell: &ActorCell, timeout: Duration) {
    if cell
        .stop_and_wait(Some("shutdown".into()), Some(timeout))
        .await
        .is_err()
    {
        tracing::warn!(actor = ?cell.get_id(), "did not stop in time; killing it");
        let _ = cell.kill_and_wait(Some(timeout)).await;
    }
}
