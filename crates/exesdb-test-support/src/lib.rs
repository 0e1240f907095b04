//! Waiting on conditions, shared by the integration tests of the engine and the command: a
//! test waits for what it needs to see, never for a fixed time.

use std::future::Future;
use std::time::Duration;

/// How long a test waits for a condition before it fails. Generous: the wait ends as soon as
/// the condition holds, so only a failing test ever waits this long.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often a wait looks at its condition again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Waits until `condition` holds, looking every few milliseconds; fails the test, naming
/// `what` was awaited, if it does not hold within `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(timeout, || {
        std::future::ready(if condition() {
            Ok(())
        } else {
            Err(what.to_string())
        })
    })
    .await;
}

/// Tries `attempt` every few milliseconds until it gives a value; fails the test with the last
/// `Err` (which says what was awaited and what was seen instead) once `timeout` has passed.
pub async fn wait_for<T, F>(timeout: Duration, mut attempt: impl FnMut() -> F) -> T
where
    F: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = match attempt().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached within {timeout:?}: {seen}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
