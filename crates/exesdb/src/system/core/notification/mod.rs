//! `ExESDB.NotificationSystem` [S] (:rest_for_one): `LeaderSystem` → `EmitterSystem`. Emitters
//! are started by the leader's worker, so they restart when leadership machinery does.

pub mod emitter;
pub mod leader;
pub mod persistent;
pub mod subscription;
