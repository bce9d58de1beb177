//! Owned background tasks.
//!
//! Every task Quiver spawns is held by an [`AbortOnDrop`], so dropping the owner (a server, a
//! query, a test cluster) stops the task; nothing outlives the thing it works for. The linter
//! holds this by construction: `server/clippy.toml` disallows `tokio::spawn` and
//! `spawn_blocking` everywhere else, so this module is the only place that calls them.
//!
//! The one deliberate exception is [`uninterruptible`]: a write's commit, once it has started
//! writing the catalog, must run to its end even if the client hangs up or a deadline fires;
//! cutting it in half would leave a table committed on disk but not in memory, or files that
//! nothing references. That task is owned by the work itself, not by the request.
//!
//! A blocking closure ([`spawn_blocking`]) is only stopped by the abort if it has not started
//! yet: a thread cannot be interrupted. Keep such closures short (a file sync, a generator run
//! whose output is written atomically), so that one finishing after its owner is gone is harmless.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

use crate::error::{QuiverError, Result};

/// A spawned task, aborted when this handle drops. Awaiting the handle gives the task's output,
/// or [`QuiverError::Internal`] if it panicked (or the runtime shut down under it).
#[derive(Debug)]
#[must_use = "dropping the handle aborts the task"]
pub(crate) struct AbortOnDrop<T = ()> {
    handle: JoinHandle<T>,
    /// What the task does, for the error a panic gives.
    what: &'static str,
}

impl<T: Send + 'static> AbortOnDrop<T> {
    /// Spawns `fut` on the current runtime.
    pub(crate) fn spawn(fut: impl Future<Output = T> + Send + 'static) -> Self {
        Self::spawn_named("a background task", fut)
    }

    /// Spawns `fut`; `what` names it in the error a panic gives (`"the coordinator server"`).
    pub(crate) fn spawn_named(
        what: &'static str,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Self {
        // The owned spawn every other one goes through.
        #[allow(clippy::disallowed_methods)]
        let handle = tokio::spawn(fut);
        Self { handle, what }
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let what = self.what;
        Pin::new(&mut self.handle)
            .poll(cx)
            .map(|joined| joined.map_err(|e| join_error(what, e)))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Runs the blocking `f` on tokio's blocking pool; `what` names it in the error a panic gives.
/// Dropping the handle abandons the result, and stops `f` only if it has not started (see the
/// module doc).
pub(crate) fn spawn_blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> AbortOnDrop<T> {
    // The owned blocking spawn every other one goes through.
    #[allow(clippy::disallowed_methods)]
    let handle = tokio::task::spawn_blocking(f);
    AbortOnDrop { handle, what }
}

/// Runs `fut` in a task of its own and awaits it. Dropping the returned future does NOT stop
/// the task: it runs to its end, and its output is dropped.
///
/// The one deliberate exception to task ownership (module doc): for a write's commit, which
/// must not stop halfway because the client hung up or a deadline fired. Everything that may
/// fail or wait for long belongs before it; what runs here should be short and bounded.
pub(crate) async fn uninterruptible<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    // Deliberately unowned: the JoinHandle detaches the task when dropped instead of aborting it.
    #[allow(clippy::disallowed_methods)]
    let handle = tokio::spawn(fut);
    handle
        .await
        .map_err(|e| join_error("an uninterruptible task", e))
}

/// Runs `fut` in a task of its own that nothing awaits, if a runtime is there to run it: the
/// cleanup of something whose owner went away (a write whose client hung up), from a `Drop`.
/// Like [`uninterruptible`], a deliberate exception to task ownership; it must be short.
pub(crate) fn detach(what: &'static str, fut: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        // The one detached spawn.
        #[allow(clippy::disallowed_methods)]
        Ok(runtime) => drop(runtime.spawn(fut)),
        Err(_) => tracing::debug!(what, "no runtime to run a cleanup on: left to the next one"),
    }
}

fn join_error(what: &str, e: JoinError) -> QuiverError {
    QuiverError::Internal(format!("{what} failed: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    /// Set when dropped: a task's future is dropped when the task is aborted or ends.
    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn dropping_the_handle_aborts_the_task() {
        let stopped = Arc::new(AtomicBool::new(false));
        let (started_tx, started) = oneshot::channel();
        let guard = SetOnDrop(Arc::clone(&stopped));
        let task = AbortOnDrop::spawn(async move {
            let _guard = guard;
            let _ = started_tx.send(());
            std::future::pending::<()>().await;
        });
        started.await.unwrap();
        assert!(!stopped.load(Ordering::SeqCst));
        drop(task);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !stopped.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the task was aborted");
    }

    #[tokio::test]
    async fn awaiting_gives_the_output_or_internal_on_panic() {
        assert_eq!(AbortOnDrop::spawn(async { 7 }).await.unwrap(), 7);
        assert_eq!(spawn_blocking("adding", || 1 + 1).await.unwrap(), 2);
        let err = spawn_blocking::<()>("a doomed step", || panic!("boom"))
            .await
            .unwrap_err();
        assert!(matches!(err, QuiverError::Internal(_)), "{err:?}");
        assert!(err.to_string().contains("a doomed step"), "{err}");
    }

    #[tokio::test]
    async fn uninterruptible_runs_on_after_its_future_is_dropped() {
        let (release_tx, release) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        let (started_tx, started) = oneshot::channel();
        let run = uninterruptible(async move {
            let _ = started_tx.send(());
            let _ = release.await;
            let _ = done_tx.send("finished");
        });
        // Start it, then drop it mid-way, as a request future is when its client hangs up.
        let waiter = AbortOnDrop::spawn(run);
        started.await.unwrap();
        drop(waiter);
        release_tx.send(()).unwrap();
        let finished = tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("the task ran to its end")
            .expect("the task was not dropped");
        assert_eq!(finished, "finished");
        assert_eq!(uninterruptible(async { 3 }).await.unwrap(), 3);
    }
}
