//! `ExESDB.NotificationSystem` [S] (:rest_for_one): `LeaderSystem` → `EmitterSystem`. Emitters
//! are started by the leader's worker, so they restart when leadership machinery does.

pub(crate) mod emitter;
pub(crate) mod leader;
pub(crate) mod persistent;
pub(crate) mod subscription;
