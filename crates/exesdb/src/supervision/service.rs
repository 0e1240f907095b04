//! The GenServers whose whole job is to hold a piece of the store's state while they run
//! (`StoreRegistry`, `LeaderTracker`, ...): one actor type driven by a [`Service`]'s hooks.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::system::context::StoreContext;

/// What a GenServer does when it starts and when it stops.
pub(crate) trait Service: Send + Sync + 'static {
    /// Runs at every (re)start; an error fails the start.
    fn start(&self, context: &StoreContext) -> Result<(), String>;
    /// Runs on a graceful stop (not after a kill: `start` must tolerate leftovers).
    fn stop(&self, context: &StoreContext);
}

/// The actor running a [`Service`].
pub(crate) struct ServiceActor;

/// Its arguments.
pub(crate) struct ServiceArgs {
    pub service: Arc<dyn Service>,
    pub context: Arc<StoreContext>,
}

impl Actor for ServiceActor {
    type Msg = ();
    type State = ServiceArgs;
    type Arguments = ServiceArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        args: ServiceArgs,
    ) -> Result<ServiceArgs, ActorProcessingErr> {
        args.service.start(&args.context)?;
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<()>,
        _message: (),
        _state: &mut ServiceArgs,
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<()>,
        state: &mut ServiceArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.service.stop(&state.context);
        Ok(())
    }
}
