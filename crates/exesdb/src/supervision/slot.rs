//! Where a process of the tree can be found by callers while it runs: its supervisor restarts
//! it as a new actor, so callers look it up at each call rather than keep a reference.

use std::sync::RwLock;

use ractor::{ActorRef, Message};

/// The current actor of one named process, if it runs.
pub(crate) struct ProcessSlot<M: Message>(RwLock<Option<ActorRef<M>>>);

impl<M: Message> Default for ProcessSlot<M> {
    fn default() -> Self {
        ProcessSlot(RwLock::new(None))
    }
}

impl<M: Message> ProcessSlot<M> {
    /// The running actor.
    pub(crate) fn get(&self) -> Option<ActorRef<M>> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Records the actor that now runs the process.
    pub(crate) fn set(&self, actor: ActorRef<M>) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(actor);
    }

    /// Forgets `actor` if it is still the one recorded (a newer one may have replaced it).
    pub(crate) fn clear(&self, actor: &ActorRef<M>) {
        let mut slot = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot
            .as_ref()
            .is_some_and(|current| current.get_id() == actor.get_id())
        {
            *slot = None;
        }
    }
}
