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
