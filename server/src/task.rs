//! Owned background tasks.
//!
//! Every task Quiver spawns is held by an [`AbortOnDrop`], so dropping the owner (a server, a
//! query, a test cluster) stops the task; nothing outlives the thing it works for.

use std::future::Future;

use tokio::task::JoinHandle;

#[derive(Debug)]
pub struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    pub fn spawn(fut: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(fut))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `fut` to its end in a task of its own and awaits it. Dropping the returned future does
/// not stop the task: this is the one deliberate exception to ownership, for a write's commit,
/// which must not be cut in half by a client hanging up or a deadline firing.
pub(crate) async fn uninterruptible<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> crate::error::Result<T> {
    tokio::spawn(fut)
        .await
        .map_err(|e| crate::error::QuiverError::Internal(format!("commit task: {e}")))
}
