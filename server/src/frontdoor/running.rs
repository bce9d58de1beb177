//! Queries being streamed to clients, by query id, so that `CancelFlightInfo` can stop them.
//!
//! Every statement ticket carries a fresh [`QueryId`]. `DoGet` registers it while it streams;
//! cancelling an id stops its stream (which cancels the query on every executor, as a client
//! hang-up does) and remembers the id, so a ticket cancelled before or after its `DoGet` can no
//! longer run. The remembered set is bounded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt, stream};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::{QuiverError, Result};
use crate::ids::QueryId;

const REMEMBERED_CANCELLATIONS: usize = 10_000;

#[derive(Debug, Default)]
struct State {
    running: HashMap<QueryId, CancellationToken>,
    cancelled: HashSet<QueryId>,
    order: VecDeque<QueryId>,
}

#[derive(Debug, Default)]
pub(super) struct RunningQueries {
    state: Arc<Mutex<State>>,
}

impl RunningQueries {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancels `query_id`: stops it if it is streaming, and refuses it later.
    pub(super) fn cancel(&self, query_id: &QueryId) {
        let mut state = self.state();
        if let Some(token) = state.running.get(query_id) {
            token.cancel();
        }
        if state.cancelled.insert(query_id.clone()) {
            state.order.push_back(query_id.clone());
            while state.order.len() > REMEMBERED_CANCELLATIONS {
                if let Some(old) = state.order.pop_front() {
                    state.cancelled.remove(&old);
                }
            }
        }
    }

    /// Wraps a result stream so that cancelling `query_id` ends it with `Cancelled` (dropping
    /// the query's own stream, which stops its work). Fails if the id was cancelled already.
    pub(super) fn track<S>(
        &self,
        query_id: &QueryId,
        results: S,
    ) -> Result<
        impl Stream<Item = std::result::Result<arrow_flight::FlightData, Status>> + Send + use<S>,
    >
    where
        S: Stream<Item = std::result::Result<arrow_flight::FlightData, Status>> + Send + 'static,
    {
        let token = CancellationToken::new();
        {
            let mut state = self.state();
            if state.cancelled.contains(query_id) {
                return Err(was_cancelled(query_id));
            }
            state.running.insert(query_id.clone(), token.clone());
        }
        let registration = Registration {
            state: Arc::clone(&self.state),
            query_id: query_id.clone(),
        };
        let cancelled = token.clone();
        let id = query_id.clone();
        let tail = stream::once(async move {
            let _registration = registration;
            cancelled
                .is_cancelled()
                .then(|| Err(was_cancelled(&id).to_status()))
        })
        .filter_map(|item| async move { item });
        Ok(results.take_until(token.cancelled_owned()).chain(tail))
    }
}

fn was_cancelled(query_id: &QueryId) -> QuiverError {
    QuiverError::Cancelled(format!("query {query_id} was cancelled"))
}

/// Unregisters a query when its stream ends or is dropped.
struct Registration {
    state: Arc<Mutex<State>>,
    query_id: QueryId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.running.remove(&self.query_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_stops_a_stream_and_refuses_the_ticket_later() {
        let running = RunningQueries::default();
        let endless = stream::repeat_with(|| Ok(arrow_flight::FlightData::default()));
        let q1 = QueryId::random();
        let mut tracked = Box::pin(running.track(&q1, endless).unwrap());
        assert!(tracked.next().await.unwrap().is_ok());
        running.cancel(&q1);
        let mut last = None;
        while let Some(item) = tracked.next().await {
            last = Some(item);
        }
        assert_eq!(last.unwrap().unwrap_err().code(), tonic::Code::Cancelled);
        assert!(running.state().running.is_empty());
        let again = running.track(&q1, stream::empty()).err();
        assert!(
            matches!(again, Some(QuiverError::Cancelled(_))),
            "{again:?}"
        );

        // A stream that ends normally is unregistered and ends without an error.
        let done: Vec<_> = running
            .track(
                &QueryId::random(),
                stream::iter(vec![Ok(arrow_flight::FlightData::default())]),
            )
            .unwrap()
            .collect()
            .await;
        assert_eq!(done.len(), 1);
        assert!(running.state().running.is_empty());
    }
}
