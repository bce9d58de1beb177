//! The one supervised run of a physical plan, used by queries, `EXPLAIN ANALYZE` and the input of
//! every write.
//!
//! Contract, the same for every caller:
//! * admission waits inside the query deadline, and the deadline (`--query-timeout-ms`) bounds
//!   admission, planning and every batch; past it the run ends with `DeadlineExceeded` and its
//!   tasks stop on every executor (the plan's streams are dropped);
//! * every attempt is a run of its own on the executors ([`AttemptId`]: its own memory pool,
//!   stage deadlines in its request headers) and records where its tasks were placed
//!   ([`TaskPlacements`]);
//! * the departure watchdog ends an attempt with `Unavailable` as soon as an executor one of its
//!   tasks was placed on leaves the live set; executors it does not use may come and go;
//! * an error a lost executor explains becomes `Unavailable` naming that executor, and the run
//!   starts once more on the remaining executors when nothing was shown yet: for a query
//!   ([`PlanRunner::stream`]) before its first batch reached the client; for a run to its end
//!   ([`PlanRunner::run_to_end`]: a write's input, `EXPLAIN ANALYZE`) before it ended, since
//!   those show nothing before then. One rerun at most; with no executor left, `Unavailable`;
//! * a plan's uncorrelated scalar subqueries worth running first are runs to their end of their
//!   own, under the same deadline and admission slot, before the plan is made with their values
//!   ([`PlanRunner::physical_plan`], [`super::scalar_subqueries`]).
//!
//! A streamed query whose head only concatenates its last stage's streams gets that stage's
//! record batch messages as the executors encoded them ([`ResultPart::Encoded`], see
//! [`crate::cluster::pass_through`]); its first such message is its first row.
//!
//! Execution of a streamed query starts when its stream is first polled, so a client that hangs
//! up before the first row (which gRPC notices only while a response streams) still cancels it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::FlightData;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, SessionState};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, FusedStream, Stream, StreamExt, TryStreamExt};
use tokio::time::Instant;
use url::Url;

use crate::arrow_compat::cast_batch;
use crate::cluster::distributed::{self, TaskPlacements};
use crate::cluster::membership::ExecutorRegistry;
use crate::error::{QuiverError, Result, datafusion_status, to_datafusion};
use crate::ids::AttemptId;
use crate::ops::queries::QueryHandle;
use crate::resources::{Admission, QueryMemory, Slot};

use super::{QueryStream, ResultPart, scalar_subqueries};

/// Runs physical plans on the cluster under the guarantees of the module contract.
pub(crate) struct PlanRunner {
    attempts: Arc<Attempts>,
    /// How long a query may run, from admission to its last batch; `None` is no limit.
    query_timeout: Option<Duration>,
    admission: Admission,
}

/// Starts attempts and judges how they failed; shared with the lazily started query streams.
struct Attempts {
    registry: Arc<ExecutorRegistry>,
    memory: Arc<QueryMemory>,
    /// How long each stage of a query may run on an executor; `None` is no limit.
    stage_timeout: Option<Duration>,
}

/// A run that went to its end: what the caller's consumer returned, and the plan and placements
/// of the attempt that produced it (for `EXPLAIN ANALYZE`).
pub(crate) struct Completed<T> {
    pub(crate) value: T,
    /// Whether an attempt was lost and the run started again (a write then has a dead
    /// attempt's files to remove).
    pub(crate) reran: bool,
    pub(crate) physical: Arc<dyn ExecutionPlan>,
    pub(crate) placements: Arc<TaskPlacements>,
}

/// One run of a plan on the cluster.
struct Attempt {
    physical: Arc<dyn ExecutionPlan>,
    placements: Arc<TaskPlacements>,
    parts: BoxStream<'static, DFResult<ResultPart>>,
}

/// What an attempt's error means for the run.
enum Verdict {
    /// An executor it used is lost and others are live: run it again.
    Rerun,
    /// The run ends with this error.
    Fail(QuiverError),
}

impl PlanRunner {
    pub(crate) fn new(
        registry: Arc<ExecutorRegistry>,
        memory: Arc<QueryMemory>,
        query_timeout: Option<Duration>,
        stage_timeout: Option<Duration>,
        admission: Admission,
    ) -> Self {
        Self {
            attempts: Arc::new(Attempts {
                registry,
                memory,
                stage_timeout,
            }),
            query_timeout,
            admission,
        }
    }

    pub(crate) fn registry(&self) -> &Arc<ExecutorRegistry> {
        &self.attempts.registry
    }

    /// The deadline of a query starting now.
    pub(crate) fn deadline(&self) -> Deadline {
        Deadline::start(self.query_timeout)
    }

    /// Waits for an admission slot inside `deadline`.
    pub(crate) async fn admit(&self, deadline: Deadline) -> Result<Slot> {
        deadline.run(self.admission.admit()).await?
    }

    /// Runs a query whose batches go to a client as `schema` (views cast to plain types).
    /// Planning errors are this call's error; execution starts when the stream is first polled.
    /// `planned` is `plan`'s physical plan when it was made already: the first attempt runs it
    /// (a rerun plans `plan` again).
    pub(crate) async fn stream(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
        schema: SchemaRef,
        planned: Option<Arc<dyn ExecutionPlan>>,
        tracker: Option<QueryHandle>,
    ) -> Result<QueryStream> {
        let deadline = self.deadline();
        if let Some(tracker) = &tracker {
            tracker.queued();
        }
        let slot = self.admit(deadline).await?;
        if let Some(tracker) = &tracker {
            tracker.admitted();
        }
        let physical = match planned {
            Some(physical) => physical,
            None => self.attempts.plan(&ctx.state(), plan, deadline).await?,
        };
        let attempts = Arc::clone(&self.attempts);
        let ctx = ctx.clone();
        let plan = plan.clone();
        let announced = Arc::clone(&schema);
        let supervised = stream::once(async move {
            let mut physical = Some(physical);
            let mut rerun = false;
            loop {
                let state = ctx.state();
                let physical = match physical.take() {
                    Some(p) => p,
                    None => attempts.plan(&state, &plan, deadline).await?,
                };
                let attempt = attempts.start(&state, physical, Some(&announced))?;
                if let Some(tracker) = &tracker {
                    tracker.attempt(&attempt.physical, &attempt.placements);
                }
                let placements = attempt.placements;
                let mut batches = attempt.parts;
                let first = match deadline.run(batches.next()).await? {
                    None => None,
                    Some(Ok(batch)) => Some(batch),
                    Some(Err(e)) => match attempts.judge(e, &placements, "query", !rerun).await {
                        Verdict::Rerun => {
                            rerun = true;
                            continue;
                        }
                        Verdict::Fail(e) => return Err(e),
                    },
                };
                // After the first row nothing reruns: later errors only name lost executors.
                let attempts = Arc::clone(&attempts);
                let rest = batches.then(move |batch| {
                    let attempts = Arc::clone(&attempts);
                    let placements = Arc::clone(&placements);
                    async move {
                        match batch {
                            Ok(batch) => Ok(batch),
                            Err(e) => Err(attempts.failure(e, &placements, "query").await),
                        }
                    }
                });
                return Ok(stream::iter(first.map(Ok)).chain(rest));
            }
        })
        .try_flatten();
        // The query keeps its admission slot until its stream ends or is dropped.
        let held = supervised.map(move |item| {
            let _slot = &slot;
            item
        });
        let target = Arc::clone(&schema);
        let parts = deadline
            .bound(held)
            .map(move |part| match part? {
                ResultPart::Batch(batch) => Ok(ResultPart::Batch(cast_batch(&batch, &target)?)),
                encoded => Ok(encoded),
            })
            .boxed();
        Ok(QueryStream { schema, parts })
    }

    /// Runs `plan` to its end within `deadline`, feeding its batches to `consume` (a write's
    /// file writer, `EXPLAIN ANALYZE`'s counter). If an attempt fails because an executor it used
    /// is lost, `consume`'s work is dropped (its future is; a writer deletes what it wrote) and
    /// the plan runs once more on the remaining executors. The caller holds the admission slot.
    pub(crate) async fn run_to_end<T, F, Fut>(
        &self,
        state: &SessionState,
        plan: &LogicalPlan,
        deadline: Deadline,
        what: &str,
        consume: F,
    ) -> Result<Completed<T>>
    where
        F: FnMut(BoxStream<'static, Result<RecordBatch>>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.attempts
            .run_to_end(state, plan, deadline, what, consume)
            .await
    }

    /// `plan`'s physical plan within `deadline`, the uncorrelated scalar subqueries worth it run
    /// first ([`scalar_subqueries::to_run_first`]): the caller holds the admission slot when
    /// `plan` has some.
    pub(crate) async fn physical_plan(
        &self,
        state: &SessionState,
        plan: &LogicalPlan,
        deadline: Deadline,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.attempts.plan(state, plan, deadline).await
    }
}

impl Attempts {
    /// See [`PlanRunner::physical_plan`]. Each subquery is a run to its end of its own (its own
    /// attempt and memory budget), [`scalar_subqueries::AT_ONCE`] at a time, before the plan
    /// that uses their values; the first to fail ends the others.
    fn plan<'a>(
        &'a self,
        state: &'a SessionState,
        plan: &'a LogicalPlan,
        deadline: Deadline,
    ) -> BoxFuture<'a, Result<Arc<dyn ExecutionPlan>>> {
        Box::pin(async move {
            let first = scalar_subqueries::to_run_first(plan);
            if first.is_empty() {
                return Ok(deadline.run(state.create_physical_plan(plan)).await??);
            }
            let values: Vec<_> = stream::iter(first)
                .map(|subquery| async move {
                    let field = scalar_subqueries::value_field(&subquery)?;
                    let value = self
                        .run_to_end(
                            state,
                            &subquery.subquery,
                            deadline,
                            "scalar subquery",
                            |batches| scalar_subqueries::single_value(&field, batches),
                        )
                        .await?
                        .value;
                    tracing::debug!(subquery = %subquery.subquery.display(), %value, "scalar subquery ran before its query");
                    Ok::<_, QuiverError>((subquery, value))
                })
                .buffered(scalar_subqueries::AT_ONCE)
                .try_collect()
                .await?;
            // Optimized with the values in place, so they push down into scans; correlated
            // subqueries (and uncorrelated ones nested in them) become joins there.
            let substituted = scalar_subqueries::substitute(plan.clone(), &values)?;
            Ok(deadline
                .run(state.create_physical_plan(&substituted))
                .await??)
        })
    }

    /// See [`PlanRunner::run_to_end`].
    async fn run_to_end<T, F, Fut>(
        &self,
        state: &SessionState,
        plan: &LogicalPlan,
        deadline: Deadline,
        what: &str,
        mut consume: F,
    ) -> Result<Completed<T>>
    where
        F: FnMut(BoxStream<'static, Result<RecordBatch>>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut rerun = false;
        loop {
            let physical = self.plan(state, plan, deadline).await?;
            let attempt = self.start(state, physical, None)?;
            let placements = attempt.placements;
            let batches = attempt
                .parts
                .map(|part| match part? {
                    ResultPart::Batch(batch) => Ok(batch),
                    ResultPart::Encoded(_) => Err(QuiverError::Internal(
                        "a run to its end got encoded messages".into(),
                    )),
                })
                .boxed();
            match deadline.run(consume(batches)).await? {
                Ok(value) => {
                    return Ok(Completed {
                        value,
                        reran: rerun,
                        physical: attempt.physical,
                        placements,
                    });
                }
                Err(e) => {
                    let e = to_datafusion(e);
                    match self.judge(e, &placements, what, !rerun).await {
                        Verdict::Rerun => rerun = true,
                        Verdict::Fail(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Starts a run of `physical`. For a client reading `announced`, the executors' messages
    /// go to it as they are when the plan's head only concatenates their streams
    /// ([`distributed::pass_through_stage`]).
    fn start(
        &self,
        state: &SessionState,
        physical: Arc<dyn ExecutionPlan>,
        announced: Option<&SchemaRef>,
    ) -> Result<Attempt> {
        let attempt = AttemptId::random();
        let placements = Arc::new(TaskPlacements::default());
        let (pass_through, forwarded) =
            match announced.and_then(|schema| distributed::pass_through_stage(&physical, schema)) {
                Some((stage, forwarded)) => (Some(stage), Some(forwarded)),
                None => (None, None),
            };
        if forwarded.is_some() {
            tracing::debug!(%attempt, "forwarding the executors' record batch messages to the client");
        }
        let task_ctx = distributed::attempt_task_ctx(
            state,
            &physical,
            self.memory.for_query()?,
            &attempt,
            Arc::clone(&placements),
            self.stage_timeout,
            pass_through,
        )?;
        let stream = execute_stream(Arc::clone(&physical), task_ctx)?;
        // A plan that stays on the coordinator places no task: the watchdog then watches nothing.
        let batches =
            fail_on_departure(stream, Arc::clone(&self.registry), Arc::clone(&placements));
        let parts = match forwarded {
            Some(forwarded) => with_forwarded(batches, forwarded),
            None => batches.map_ok(ResultPart::Batch).boxed(),
        };
        Ok(Attempt {
            physical,
            placements,
            parts,
        })
    }

    /// What `e`, which ended an attempt with `placements`, means for the run of a `what`
    /// ("query", "write") that may still rerun: another attempt when an executor it used is lost
    /// and another is live; `Unavailable` when none is; otherwise [`Attempts::failure`].
    async fn judge(
        &self,
        e: DataFusionError,
        placements: &TaskPlacements,
        what: &str,
        may_rerun: bool,
    ) -> Verdict {
        match self.lost(&e, placements).await {
            Some(lost) if may_rerun => {
                if self.registry.live_worker_urls().is_empty() {
                    return Verdict::Fail(QuiverError::Unavailable(format!(
                        "executor {lost} was lost while the {what} ran and no live executor is left to run it again"
                    )));
                }
                tracing::warn!(executors = %lost, error = %e, "executor lost before anything was shown: running the {what} again");
                Verdict::Rerun
            }
            lost => Verdict::Fail(lost_error(e, lost, what)),
        }
    }

    /// The error a run of a `what` ends with when `e` ended an attempt that may not rerun.
    async fn failure(
        &self,
        e: DataFusionError,
        placements: &TaskPlacements,
        what: &str,
    ) -> QuiverError {
        let lost = self.lost(&e, placements).await;
        lost_error(e, lost, what)
    }

    /// The executors of the attempt that no longer answer (probed once, those that do not answer
    /// evicted), when `e` is an error their loss explains.
    async fn lost(&self, e: &DataFusionError, placements: &TaskPlacements) -> Option<String> {
        if !may_be_lost_executor(e) {
            return None;
        }
        let lost = self.registry.lost_since(&placements.executors()).await;
        (!lost.is_empty()).then(|| display_urls(&lost))
    }
}

/// `e` as the run's error: `Unavailable` naming the `lost` executors (with the transport's own
/// words after them) when there are some, else as it is.
fn lost_error(e: DataFusionError, lost: Option<String>, what: &str) -> QuiverError {
    let Some(lost) = lost else {
        return e.into();
    };
    let status = datafusion_status(&e);
    let cause = if status.message().is_empty() {
        String::new()
    } else {
        format!(" ({})", status.message())
    };
    QuiverError::Unavailable(format!(
        "executor {lost} was lost while the {what} ran; run it again{cause}"
    ))
}

fn display_urls(urls: &[Url]) -> String {
    urls.iter()
        .map(|u| u.as_str().trim_end_matches('/'))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ends an attempt's stream with `Unavailable` as soon as an executor one of its tasks was placed
/// on leaves the live set (missed heartbeats or a failed probe), whatever the data path noticed:
/// a dead executor must never leave a query waiting. Dropping the stream stops the attempt's
/// remaining tasks.
fn fail_on_departure(
    stream: SendableRecordBatchStream,
    registry: Arc<ExecutorRegistry>,
    placements: Arc<TaskPlacements>,
) -> BoxStream<'static, DFResult<RecordBatch>> {
    let departures = registry.departures();
    stream::unfold(Some((stream, departures)), move |state| {
        let registry = Arc::clone(&registry);
        let placements = Arc::clone(&placements);
        async move {
            let (mut stream, mut departures) = state?;
            loop {
                tokio::select! {
                    item = stream.next() => return item.map(|item| (item, Some((stream, departures)))),
                    changed = departures.changed() => {
                        if changed.is_err() {
                            // The registry is gone (shutdown): just run the attempt out.
                            let item = stream.next().await;
                            return item.map(|item| (item, None));
                        }
                        // Draining executors still run the tasks they have.
                        let live = registry.member_worker_urls();
                        let lost: Vec<Url> = placements
                            .executors()
                            .into_iter()
                            .filter(|url| !live.contains(url))
                            .collect();
                        if !lost.is_empty() {
                            let e = QuiverError::Unavailable(format!(
                                "executor {} left the cluster while the query ran",
                                display_urls(&lost)
                            ));
                            return Some((Err(to_datafusion(e)), None));
                        }
                    }
                }
            }
        }
    })
    // The first-row logic polls again after the end.
    .fuse()
    .boxed()
}

/// The parts of a pass-through attempt: the messages its tapped stage forwarded, and whatever
/// rows or error its own plan stream yields (the stream that drives the stage; the tap leaves
/// it no rows, so any it yields are passed on, never dropped). Ends when the plan's stream has ended and
/// every forwarded message is out: the tap hands a message over before its response goes on.
fn with_forwarded(
    batches: BoxStream<'static, DFResult<RecordBatch>>,
    forwarded: tokio::sync::mpsc::Receiver<FlightData>,
) -> BoxStream<'static, DFResult<ResultPart>> {
    stream::unfold(Some((batches.fuse(), forwarded)), |state| async move {
        let (mut batches, mut forwarded) = state?;
        loop {
            if batches.is_terminated() {
                let message = forwarded.try_recv().ok()?;
                return Some((Ok(ResultPart::Encoded(message)), Some((batches, forwarded))));
            }
            tokio::select! {
                biased;
                Some(message) = forwarded.recv() => {
                    return Some((Ok(ResultPart::Encoded(message)), Some((batches, forwarded))));
                }
                batch = batches.next() => match batch {
                    None => continue,
                    Some(Err(e)) => return Some((Err(e), None)),
                    Some(Ok(batch)) if batch.num_rows() == 0 => continue,
                    Some(Ok(batch)) => {
                        return Some((Ok(ResultPart::Batch(batch)), Some((batches, forwarded))));
                    }
                },
            }
        }
    })
    // The first-row logic polls again after the end.
    .fuse()
    .boxed()
}

/// Errors that a vanished executor explains: transport failures surfacing from the network
/// operators. Only a hint: callers act on it only if an executor really stopped answering.
fn may_be_lost_executor(e: &DataFusionError) -> bool {
    matches!(
        datafusion_status(e).code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// A query's deadline, enforced here because gRPC server timeouts do not bound a streaming DoGet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Option<(Instant, Duration)>);

impl Deadline {
    pub(crate) fn start(limit: Option<Duration>) -> Self {
        Self(limit.map(|limit| (Instant::now() + limit, limit)))
    }

    fn exceeded(limit: Duration) -> QuiverError {
        QuiverError::DeadlineExceeded(format!(
            "the query ran longer than its {} ms deadline and was cancelled",
            limit.as_millis()
        ))
    }

    /// Awaits `fut` unless the deadline passes first (then `fut` is dropped).
    pub(crate) async fn run<T>(self, fut: impl Future<Output = T>) -> Result<T> {
        match self.0 {
            None => Ok(fut.await),
            Some((at, limit)) => tokio::time::timeout_at(at, fut)
                .await
                .map_err(|_| Self::exceeded(limit)),
        }
    }

    /// Ends `stream` with a deadline error (dropping it, which cancels the query) once the
    /// deadline passes.
    fn bound<T: Send + 'static>(
        self,
        stream: impl Stream<Item = Result<T>> + Send + 'static,
    ) -> BoxStream<'static, Result<T>> {
        if self.0.is_none() {
            return stream.boxed();
        }
        stream::unfold(Some(stream.boxed()), move |state| async move {
            let mut stream = state?;
            match self.run(stream.next()).await {
                Ok(item) => item.map(|item| (item, Some(stream))),
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deadlines_cut_waits_and_streams() {
        let deadline = Deadline::start(Some(Duration::from_millis(50)));
        let err = deadline
            .run(tokio::time::sleep(Duration::from_secs(10)))
            .await
            .unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::DeadlineExceeded);
        assert!(Deadline::start(None).run(async { 1 }).await.is_ok());

        let endless = stream::pending::<Result<RecordBatch>>();
        let mut bounded = Deadline::start(Some(Duration::from_millis(50))).bound(endless);
        let e = bounded.next().await.unwrap().unwrap_err();
        assert_eq!(e.to_status().code(), tonic::Code::DeadlineExceeded);
        assert!(bounded.next().await.is_none());
    }

    #[test]
    fn quiver_errors_keep_their_code_through_datafusion() {
        let e = to_datafusion(QuiverError::Unavailable("gone".into()));
        assert!(may_be_lost_executor(&e));
        let e = to_datafusion(QuiverError::InvalidArgument("bad".into()));
        assert!(!may_be_lost_executor(&e));
        assert_eq!(datafusion_status(&e).code(), tonic::Code::InvalidArgument);
    }
}
