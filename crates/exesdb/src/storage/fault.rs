//! The storage fault seam (feature `fault-injection`): fails the Nth batch commit from now with
//! `ENOSPC` or `EIO`, the way fjall fails one, so tests reach the committer's failed-write path
//! without root, a full disk or a broken one.
//!
//! When fjall's journal write or sync fails, it returns `Error::Io` from `commit` and poisons
//! the database: every later write on it fails with `Error::Poisoned` until it is opened again,
//! while reads go on. The seam does the same to the engine it fires on, so the committer's
//! reaction (answer `unavailable`, reopen before the next batch, derive its state again) is the
//! one a real failure gets. The failed batch writes nothing: the seam fires before fjall sees
//! it, as when the journal write fails at its first byte. A batch that reaches the journal and
//! then fails its sync is not modelled; the tmpfs test (`crates/exesdb-cli/tests/disk_full.rs`,
//! feature `root-tests`) covers a real failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::StorageError;

/// A storage failure to inject ([`crate::System::inject_storage_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageFault {
    /// The `nth` batch commit from now (1 = the next one) fails with `kind`, and the engine
    /// refuses every later write until the committer reopens it. Batches that write nothing do
    /// not count. Arming a new fault replaces one that has not fired yet.
    FailCommit {
        /// Which commit from now fails (1 = the next one).
        nth: u64,
        /// The error it fails with.
        kind: IoFault,
    },
}

/// The I/O error a failed commit reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFault {
    /// `ENOSPC`: no space left on the device.
    Enospc,
    /// `EIO`: the device failed the write or the sync.
    Eio,
}

impl IoFault {
    fn error(self) -> std::io::Error {
        let errno = match self {
            IoFault::Enospc => rustix::io::Errno::NOSPC,
            IoFault::Eio => rustix::io::Errno::IO,
        };
        std::io::Error::from(errno)
    }
}

/// The armed fault of one store. It belongs to the `Storage`, so it outlives reopens.
#[derive(Debug, Default)]
pub(crate) struct FaultSeam {
    armed: Mutex<Option<Armed>>,
}

#[derive(Debug, Clone, Copy)]
struct Armed {
    /// Commits still to go before the failing one, that one included.
    remaining: u64,
    kind: IoFault,
}

impl FaultSeam {
    pub(crate) fn arm(&self, fault: StorageFault) {
        let StorageFault::FailCommit { nth, kind } = fault;
        *self.lock() = Some(Armed {
            remaining: nth.max(1),
            kind,
        });
    }

    /// Counts one commit; the error to fail it with when it is the armed one.
    fn count_commit(&self) -> Option<IoFault> {
        let mut armed = self.lock();
        let fault = armed.as_mut()?;
        fault.remaining -= 1;
        if fault.remaining > 0 {
            return None;
        }
        let kind = fault.kind;
        *armed = None;
        Some(kind)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Armed>> {
        self.armed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The seam as one open engine sees it: the store's armed fault, and whether it fired on this
/// engine (which then refuses writes, as a poisoned fjall database does).
#[derive(Debug, Default)]
pub(crate) struct EngineFaults {
    seam: Arc<FaultSeam>,
    poisoned: AtomicBool,
}

impl EngineFaults {
    pub(crate) fn new(seam: Arc<FaultSeam>) -> Self {
        EngineFaults {
            seam,
            poisoned: AtomicBool::new(false),
        }
    }

    /// Called by a non-empty batch just before fjall writes it.
    pub(crate) fn before_commit(&self) -> Result<(), StorageError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Engine(fjall::Error::Poisoned));
        }
        match self.seam.count_commit() {
            None => Ok(()),
            Some(kind) => {
                self.poisoned.store(true, Ordering::Release);
                tracing::warn!(?kind, "storage fault seam: failing this commit");
                Err(StorageError::Engine(fjall::Error::Io(kind.error())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nth_commit_fails_and_poisons_only_its_engine() {
        let seam = Arc::new(FaultSeam::default());
        let engine = EngineFaults::new(seam.clone());
        seam.arm(StorageFault::FailCommit {
            nth: 2,
            kind: IoFault::Enospc,
        });
        assert!(engine.before_commit().is_ok());
        let failed = engine.before_commit().expect_err("the second commit fails");
        assert!(
            matches!(&failed, StorageError::Engine(fjall::Error::Io(io)) if io.raw_os_error() == Some(28)),
            "{failed:?}"
        );
        assert!(matches!(
            engine.before_commit(),
            Err(StorageError::Engine(fjall::Error::Poisoned))
        ));
        // A reopened engine shares the seam, which has fired and is disarmed.
        assert!(EngineFaults::new(seam).before_commit().is_ok());
    }
}
