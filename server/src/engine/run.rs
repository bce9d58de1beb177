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
//!   those show nothing before then. One rerun at most; with no executor left, `Unavailable`.
//!
//! Execution of a streamed query starts when its stream is first polled, so a client that hangs
//! up before the first row (which gRPC notices only while a response streams) still cancels it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, SessionState};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::SessionContext;
use futures::stream::{self, BoxStream, Stream, StreamExt, TryStreamExt};
use tokio::time::Instant;
use url::Url;

use crate::arrow_compat::cast_batch;
use crate::cluster::distributed::{self, TaskPlacements};
use crate::cluster::membership::ExecutorRegistry;
use crate::error::{QuiverError, Result, datafusion_status};
use crate::ids::AttemptId;
use crate::resources::{Admission, QueryMemory, Slot};

use super::QueryStream;

/// Runs physical plans on the cluster under the guarantees of the module contract.
pub(crate) struct PlanRunner {
    registry: Arc<ExecutorRegistry>,
    memory: Arc<QueryMemory>,
    /// How long a query may run, from admission to its last batch; `None` is no limit.
    query_timeout: Option<Duration>,
    /// How long each stage of a query may run on an executor; `None` is no limit.
    stage_timeout: Option<Duration>,
    admission: Admission,
}

/// A run that went to its end: what the caller's consumer returned, and the plan and placements
/// of the attempt that produced it (for `EXPLAIN ANALYZE`).
pub(crate) struct Completed<T> {
    pub(crate) value: T,
    pub(crate) physical: Arc<dyn ExecutionPlan>,
    pub(crate) placements: Arc<TaskPlacements>,
}

/// One run of a plan on the cluster.
struct Attempt {
    physical: Arc<dyn ExecutionPlan>,
    placements: Arc<TaskPlacements>,
    batches: BoxStream<'static, DFResult<RecordBatch>>,
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
            registry,
            memory,
            query_timeout,
            stage_timeout,
            admission,
        }
    }

    pub(crate) fn registry(&self) -> &Arc<ExecutorRegistry> {
        &self.registry
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
    pub(crate) async fn stream(
        &self,
        ctx: &SessionContext,
        plan: &LogicalPlan,
        schema: SchemaRef,
    ) -> Result<QueryStream> {
        let deadline = self.deadline();
        let slot = self.admit(deadline).await?;
        let state = ctx.state();
        let physical = deadline.run(state.create_physical_plan(plan)).await??;
        let current = Arc::new(Mutex::new(Arc::new(TaskPlacements::default())));
        let supervised = {
            let runner = self.handle();
            let current = Arc::clone(&current);
            let ctx = ctx.clone();
            let plan = plan.clone();
            stream::once(async move {
                let mut physical = Some(physical);
                let mut rerun = false;
                loop {
                    let state = ctx.state();
                    let physical = match physical.take() {
                        Some(p) => p,
                        None => state.create_physical_plan(&plan).await?,
                    };
                    let attempt = runner.start(&state, physical).map_err(to_datafusion)?;
                    *current.lock().unwrap_or_else(|e| e.into_inner()) =
                        Arc::clone(&attempt.placements);
                    let mut batches = attempt.batches;
                    let first = deadline.run(batches.next()).await.map_err(to_datafusion)?;
                    if let Some(Err(e)) = &first
                        && !rerun
                        && runner.may_rerun(e, &attempt.placements, "query").await?
                    {
                        rerun = true;
                        continue;
                    }
                    return Ok::<_, DataFusionError>(stream::iter(first).chain(batches));
                }
            })
            .try_flatten()
        };
        // The query keeps its admission slot until its stream ends or is dropped.
        let held = supervised.map(move |item| {
            let _slot = &slot;
            item
        });
        let registry = Arc::clone(&self.registry);
        let target = Arc::clone(&schema);
        let batches = deadline
            .bound(held)
            .then(move |batch| {
                let target = Arc::clone(&target);
                let registry = Arc::clone(&registry);
                let placements = Arc::clone(&current.lock().unwrap_or_else(|e| e.into_inner()));
                async move {
                    match batch {
                        Ok(batch) => Ok(cast_batch(&batch, &target)?),
                        Err(e) => Err(name_lost_executors(e, &registry, &placements).await),
                    }
                }
            })
            .boxed();
        Ok(QueryStream { schema, batches })
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
        mut consume: F,
    ) -> Result<Completed<T>>
    where
        F: FnMut(BoxStream<'static, Result<RecordBatch>>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut rerun = false;
        loop {
            let physical = deadline.run(state.create_physical_plan(plan)).await??;
            let attempt = self.start(state, physical)?;
            let placements = Arc::clone(&attempt.placements);
            let physical = Arc::clone(&attempt.physical);
            let batches = attempt.batches.map_err(QuiverError::from).boxed();
            let outcome = deadline.run(consume(batches)).await?;
            match outcome {
                Ok(value) => {
                    return Ok(Completed {
                        value,
                        physical,
                        placements,
                    });
                }
                Err(e) => {
                    let e = to_datafusion(e);
                    if !rerun && self.may_rerun(&e, &placements, what).await? {
                        rerun = true;
                        continue;
                    }
                    return Err(name_lost_executors(e, &self.registry, &placements).await);
                }
            }
        }
    }

    /// A handle the lazily started query stream owns (the runner itself is borrowed).
    fn handle(&self) -> RunnerHandle {
        RunnerHandle {
            registry: Arc::clone(&self.registry),
            memory: Arc::clone(&self.memory),
            stage_timeout: self.stage_timeout,
        }
    }

    fn start(&self, state: &SessionState, physical: Arc<dyn ExecutionPlan>) -> Result<Attempt> {
        self.handle().start(state, physical)
    }

    async fn may_rerun(
        &self,
        e: &DataFusionError,
        placements: &TaskPlacements,
        what: &str,
    ) -> Result<bool, DataFusionError> {
        self.handle().may_rerun(e, placements, what).await
    }
}

/// What starting and judging an attempt needs, owned.
struct RunnerHandle {
    registry: Arc<ExecutorRegistry>,
    memory: Arc<QueryMemory>,
    stage_timeout: Option<Duration>,
}

impl RunnerHandle {
    fn start(&self, state: &SessionState, physical: Arc<dyn ExecutionPlan>) -> Result<Attempt> {
        let attempt = AttemptId::random();
        let placements = Arc::new(TaskPlacements::default());
        let task_ctx = distributed::attempt_task_ctx(
            state,
            self.memory.for_query()?,
            &attempt,
            Arc::clone(&placements),
            self.stage_timeout,
        )?;
        let stream = execute_stream(Arc::clone(&physical), task_ctx)?;
        // A plan that stays on the coordinator places no task: the watchdog then watches nothing.
        let batches =
            fail_on_departure(stream, Arc::clone(&self.registry), Arc::clone(&placements));
        Ok(Attempt {
            physical,
            placements,
            batches,
        })
    }

    /// Whether `e` ended an attempt because an executor it used is gone and another attempt can
    /// run: probes the executors (evicting those that do not answer), then checks the placed ones.
    /// With none left to run on, the run fails `Unavailable`.
    async fn may_rerun(
        &self,
        e: &DataFusionError,
        placements: &TaskPlacements,
        what: &str,
    ) -> Result<bool, DataFusionError> {
        let Some(lost) = lost_executors(e, &self.registry, placements).await else {
            return Ok(false);
        };
        let lost = display_urls(&lost);
        if self.registry.live_worker_urls().is_empty() {
            return Err(to_datafusion(QuiverError::Unavailable(format!(
                "executor {lost} was lost while the {what} ran and no live executor is left to run it again"
            ))));
        }
        tracing::warn!(executors = %lost, error = %e, "executor lost before anything was shown: running the {what} again");
        Ok(true)
    }
}

/// An error a lost executor explains becomes `Unavailable` naming the executors of the attempt
/// that no longer answer (with the transport's own words after them); other errors pass.
async fn name_lost_executors(
    e: DataFusionError,
    registry: &ExecutorRegistry,
    placements: &TaskPlacements,
) -> QuiverError {
    let Some(lost) = lost_executors(&e, registry, placements).await else {
        return e.into();
    };
    let status = datafusion_status(&e);
    let cause = if status.message().is_empty() {
        String::new()
    } else {
        format!(" ({})", status.message())
    };
    QuiverError::Unavailable(format!(
        "executor {} was lost while the query ran; run it again{cause}",
        display_urls(&lost)
    ))
}

/// The executors of the attempt that no longer answer, when `e` is an error their loss explains.
async fn lost_executors(
    e: &DataFusionError,
    registry: &ExecutorRegistry,
    placements: &TaskPlacements,
) -> Option<Vec<Url>> {
    if !may_be_lost_executor(e) {
        return None;
    }
    let lost = registry.lost_since(&placements.executors()).await;
    (!lost.is_empty()).then_some(lost)
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
                        let live = registry.live_worker_urls();
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

/// Carries a Quiver error (with its status code) through DataFusion's error type.
pub(crate) fn to_datafusion(e: QuiverError) -> DataFusionError {
    match e {
        QuiverError::DataFusion(e) => e,
        e => DataFusionError::External(Box::new(e.to_status())),
    }
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
    fn bound(
        self,
        stream: impl Stream<Item = DFResult<RecordBatch>> + Send + 'static,
    ) -> BoxStream<'static, DFResult<RecordBatch>> {
        if self.0.is_none() {
            return stream.boxed();
        }
        stream::unfold(Some(stream.boxed()), move |state| async move {
            let mut stream = state?;
            match self.run(stream.next()).await {
                Ok(item) => item.map(|item| (item, Some(stream))),
                Err(e) => Some((Err(to_datafusion(e)), None)),
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

        let endless = stream::pending::<DFResult<RecordBatch>>();
        let mut bounded = Deadline::start(Some(Duration::from_millis(50))).bound(endless);
        let e = bounded.next().await.unwrap().unwrap_err();
        assert_eq!(datafusion_status(&e).code(), tonic::Code::DeadlineExceeded);
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
