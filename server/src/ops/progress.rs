//! The progress poller: while queries run, it asks the executors their tasks run on which tasks
//! they run now, and records that in the [`QueryLog`] (per stage: tasks running and done, rows).
//!
//! It polls only executors that a running query's current attempt placed tasks on, at most every
//! [`POLL_INTERVAL`], each poll under a short deadline; an executor that does not answer is
//! skipped for that round (its queries' progress just does not move). Dropping the task stops it.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::cluster::distributed::ProgressReader;
use crate::cluster::membership::ExecutorRegistry;
use crate::ops::queries::QueryLog;
use crate::security::cluster_auth::ClusterAuth;
use crate::task::AbortOnDrop;

/// How often running queries' progress is read.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Starts the poller.
pub(crate) fn spawn(
    log: Arc<QueryLog>,
    registry: Arc<ExecutorRegistry>,
    auth: ClusterAuth,
) -> AbortOnDrop {
    let reader = ProgressReader::new(auth);
    AbortOnDrop::spawn(async move {
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let attempts = log.polled_attempts();
            if attempts.is_empty() {
                continue;
            }
            let mut executors: Vec<_> = attempts.iter().flat_map(|(_, u)| u.clone()).collect();
            executors.sort();
            executors.dedup();
            let polls = executors.iter().map(|url| reader.running(url));
            let mut reported = Vec::new();
            let mut answered = Vec::new();
            for (url, result) in executors.iter().zip(join_all(polls).await) {
                match result {
                    Ok(tasks) => {
                        answered.push(url.clone());
                        reported.extend(tasks);
                    }
                    Err(e) => tracing::debug!(executor = %url, error = %e, "no task progress"),
                }
            }
            // A query is updated only when every executor it uses answered, so a task is never
            // taken for done because its executor was slow to answer.
            let polled: Vec<Vec<u8>> = attempts
                .into_iter()
                .filter(|(_, urls)| urls.iter().all(|u| answered.contains(u)))
                .map(|(query, _)| query)
                .collect();
            log.observe(&polled, &reported);
            reader.retain(&registry.live_worker_urls());
        }
    })
}
