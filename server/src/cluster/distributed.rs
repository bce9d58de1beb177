//! The seam to datafusion-distributed: the only module that names its types.
//!
//! Quiver's coordinator plans with a DataFusion session that carries the distributed planner and a
//! worker resolver reading the live executor set; Quiver's executors serve the crate's `Worker`
//! gRPC service with a session builder that applies Quiver's settings. Stage splitting, network
//! shuffle/coalesce/broadcast and the worker protocol are the crate's; task placement on live
//! executors is ours (a route-tasks handler: least loaded first), and so are the channels between
//! nodes, which sign every request with the cluster secret ([`crate::security::cluster_auth`]).
//! A plan the crate leaves in one piece (too small to split) still runs on an executor when it
//! reads table data or writes ([`PlaceOnExecutor`]): the coordinator only plans and forwards. What goes through this module is Quiver's own
//! interface ([`metered_coordinator_state`], [`worker_router`], [`running_tasks`], [`render_plan`],
//! [`render_analyzed_plan`], [`stage_count`], [`TaskPlacements`]), so a new version or a
//! replacement touches this file only.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};
use arrow_flight::FlightData;
use async_trait::async_trait;
use datafusion::arrow::ipc::CompressionType;
use datafusion::catalog::Session;
use datafusion::common::Statistics;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::{DataSource, DataSourceExec};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
use datafusion::physical_plan::{ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions};
use datafusion::prelude::SessionConfig;
use datafusion_distributed::grpc::{
    BoxCloneSyncChannel, GetTaskProgressRequest, ObservabilityServiceClient,
    ObservabilityServiceImpl, ObservabilityServiceServer, create_worker_client,
};
use datafusion_distributed::{
    BroadcastExec, ChannelResolver, CoordinatorToWorkerMsg, DesiredTaskCountEvent,
    DesiredTaskCountEventResponse, DesiredTaskCountHandler, DistributedConfig, DistributedExec,
    DistributedExt, DistributedLeafExec, DistributedMetricsFormat, DistributedTaskContext,
    ExecuteTaskRequest, GetWorkerInfoRequest, GetWorkerInfoResponse, MaybeEncoded, NetworkBoundary,
    NetworkBoundaryExt, NetworkBroadcastExec, NetworkCoalesceExec, RouteTasksEvent,
    RouteTasksEventResponse, RouteTasksHandler, SessionStateBuilderExt, SetPlanRequest, Stage,
    Worker, WorkerChannel, WorkerPlanRewriteEvent, WorkerPlanRewriteEventResponse,
    WorkerQueryContext, WorkerResolver, WorkerSessionBuilder, WorkerToCoordinatorMsg,
};
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint, Server};
use url::Url;

use crate::cluster::filter_relay::{self, FilterRelay, TaskFilters};
use crate::cluster::membership::ExecutorRegistry;
use crate::cluster::pass_through::{PassThroughSink, Tap};
use crate::cluster::stage_deadline::{self, StageDeadlines};
use crate::cluster::traffic::{Counted, Traffic};
use crate::error::{QuiverError, to_datafusion};
use crate::ids::AttemptId;
use crate::logs::{self, QuerySpans};
use crate::planner::cooperative::{self, YieldingJoins};
use crate::planner::settings;
use crate::planner::window_sorts::SortWindowPartitions;
use crate::planner::wire_statistics;
use crate::resources::QueryMemory;
use crate::security::cluster_auth::{ClusterAuth, Signed, Verified};
use crate::sink::{ParallelWriteExec, QuiverCodec, QuiverPlanner, WriteCommitExec};

/// Resolves workers from the live executor set, re-read on every query.
struct LiveExecutors(Arc<ExecutorRegistry>);

impl WorkerResolver for LiveExecutors {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        Ok(self.0.live_worker_urls())
    }
}

/// How large the pieces of a distributed plan are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StageSizes {
    /// Bytes of file input per scan partition: leaf scans get one task per this many bytes per
    /// partition, capped by the number of live executors. Bytes a scan reads ([`bytes_read`]):
    /// of its columns only, where the files' statistics tell.
    pub(crate) scan_bytes_per_partition: usize,
    /// A broadcast whose one-task stage reads at most this many bytes of files runs inside each
    /// task that joins with it instead ([`inline_small_broadcasts`]); 0: never.
    pub(crate) inline_broadcast_bytes: u64,
}

/// [`metered_coordinator_state`] whose worker traffic nobody counts (tests that plan without a
/// node).
#[cfg(test)]
pub(crate) fn coordinator_state(
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    registry: Arc<ExecutorRegistry>,
    sizes: StageSizes,
    shuffle_compression: Option<CompressionType>,
    auth: ClusterAuth,
) -> Result<SessionState> {
    metered_coordinator_state(
        config,
        runtime,
        registry,
        sizes,
        shuffle_compression,
        auth,
        Traffic::unobserved(),
    )
}

/// The coordinator's planning session: DataFusion with the distributed planner, workers resolved
/// from `registry`, split into stages as `sizes` says; smaller inputs stay on fewer tasks. What
/// its channels to workers carry counts into `traffic`.
pub(crate) fn metered_coordinator_state(
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    registry: Arc<ExecutorRegistry>,
    sizes: StageSizes,
    shuffle_compression: Option<CompressionType>,
    auth: ClusterAuth,
    traffic: Traffic,
) -> Result<SessionState> {
    let mut builder = SessionStateBuilder::new()
        .with_default_features()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_distributed_worker_resolver(LiveExecutors(Arc::clone(&registry)))
        .with_distributed_channel_resolver(SignedChannels::new(auth, traffic))
        .with_physical_optimizer_rule(Arc::new(YieldingJoins))
        .with_physical_optimizer_rule(Arc::new(SortWindowPartitions))
        // Quiver's own logical nodes (writes) plan first; the distributed planner splits the result.
        .with_query_planner(Arc::new(QuiverPlanner))
        .with_distributed_planner()
        .with_distributed_user_codec(QuiverCodec)
        .with_distributed_desired_task_count_handler(TaskCounts(Arc::clone(&registry)))
        .with_distributed_route_tasks_handler(TaskRouter {
            registry,
            load: Arc::default(),
            next: AtomicUsize::new(0),
        })
        .with_distributed_file_scan_config_bytes_per_partition(
            sizes.scan_bytes_per_partition.max(1),
        )?
        // Bytes a node buffers per connection to another before it stops pulling: what a slow
        // consumer can make it hold (the crate's 64 MiB put the coordinator near 300 MiB).
        .with_distributed_worker_connection_buffer_budget_bytes(CONNECTION_BUFFER_BYTES)?
        .with_distributed_compression(shuffle_compression)?
        // Per-task metrics travel back only for EXPLAIN ANALYZE ([`with_metrics`]).
        .with_distributed_metrics_collection(false)?;
    // Outermost: what the distributed planner leaves in one piece still goes to an executor.
    let distributed = std::mem::take(builder.query_planner()).ok_or_else(|| {
        DataFusionError::Internal("the distributed planner installed no query planner".into())
    })?;
    Ok(builder
        .with_query_planner(Arc::new(PlaceOnExecutor {
            distributed,
            inline_broadcast_bytes: sizes.inline_broadcast_bytes,
        }))
        .build())
}

/// Plans with the distributed planner, then sends a plan it left in one piece to an executor
/// when the plan reads table data or writes: as one stage of one task, under a head on the
/// coordinator that only forwards its stream (or commits the write). The coordinator then never
/// scans, joins or aggregates, however small the query; plans that read no table (constants,
/// `VALUES`, information_schema) stay on it and need no executor. Small broadcasts of a split
/// plan run in their consumers' stages ([`inline_small_broadcasts`]).
#[derive(Debug)]
struct PlaceOnExecutor {
    distributed: Arc<dyn QueryPlanner + Send + Sync>,
    inline_broadcast_bytes: u64,
}

#[async_trait]
impl QueryPlanner for PlaceOnExecutor {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self
            .distributed
            .create_physical_plan(logical_plan, session)
            .await?;
        let plan = inline_small_broadcasts(plan, self.inline_broadcast_bytes)?;
        place_on_executor(plan, session.config_options())
    }
}

/// `plan` with each small broadcast read where it is used: a `NetworkBroadcastExec` inside an
/// executor's stage whose input stage has one task, crosses no network boundary and reads at
/// most `max_bytes` of files (or only in-memory values) is replaced by that stage's input, so
/// that every task of the consuming stage computes the build side itself. That costs each task a
/// read of a small table and saves the query a stage: its dispatch, its round trip and the
/// encoding of what it sends. A task then sees the whole build side, as with a broadcast.
/// Broadcasts into the coordinator's head stage stay (the coordinator does not scan).
fn inline_small_broadcasts(
    plan: Arc<dyn ExecutionPlan>,
    max_bytes: u64,
) -> Result<Arc<dyn ExecutionPlan>> {
    fn inline(
        node: &Arc<dyn ExecutionPlan>,
        in_stage: bool,
        max_bytes: u64,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        if let Some(boundary) = node.as_network_boundary() {
            let Stage::Local(stage) = boundary.input_stage() else {
                return Ok(None);
            };
            if in_stage
                && stage.tasks == 1
                && let Some(broadcast) = stage.plan.downcast_ref::<BroadcastExec>()
                && node.is::<NetworkBroadcastExec>()
                && let Some(input) = whole_small_input(broadcast.input(), max_bytes)?
            {
                return Ok(Some(input));
            }
            let Some(plan) = inline(&stage.plan, true, max_bytes)? else {
                return Ok(None);
            };
            let mut stage = stage.clone();
            stage.plan = plan;
            let boundary: Arc<dyn ExecutionPlan> =
                boundary.with_input_stage(Stage::Local(stage))?;
            return Ok(Some(boundary));
        }
        let children = node.children();
        let mut changed = false;
        let mut new_children = Vec::with_capacity(children.len());
        for child in children {
            match inline(child, in_stage, max_bytes)? {
                Some(new) => {
                    changed = true;
                    new_children.push(new);
                }
                None => new_children.push(Arc::clone(child)),
            }
        }
        if !changed {
            return Ok(None);
        }
        Ok(Some(Arc::clone(node).replace_children(
            new_children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?))
    }
    if max_bytes == 0 || !plan.is::<DistributedExec>() {
        return Ok(plan);
    }
    Ok(inline(&plan, false, max_bytes)?.unwrap_or(plan))
}

/// The input of a one-task broadcast stage as a plan any task can run whole (its scans' one
/// per-task variant), if it crosses no network boundary, reads at most `max_bytes` of files and
/// has no leaf that needs the coordinator.
fn whole_small_input(
    input: &Arc<dyn ExecutionPlan>,
    max_bytes: u64,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let mut bytes = 0u64;
    let mut inlinable = true;
    input.apply(|node| {
        if node.is_network_boundary() {
            inlinable = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        let leaf = match node.downcast_ref::<DistributedLeafExec>() {
            Some(split) if split.variants().len() == 1 => &split.variants()[0],
            Some(_) => {
                inlinable = false;
                return Ok(TreeNodeRecursion::Stop);
            }
            None if node.children().is_empty() => node,
            None => return Ok(TreeNodeRecursion::Continue),
        };
        match travelling_leaf(leaf) {
            Some(TravellingLeaf::Files(files)) => bytes += bytes_read(files),
            Some(TravellingLeaf::Values) => {}
            None => inlinable = false,
        }
        Ok(if inlinable && bytes <= max_bytes {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    })?;
    if !inlinable || bytes > max_bytes {
        return Ok(None);
    }
    let whole = Arc::clone(input).transform_up(|node| {
        Ok(match node.downcast_ref::<DistributedLeafExec>() {
            Some(split) => Transformed::yes(Arc::clone(&split.variants()[0])),
            None => Transformed::no(node),
        })
    })?;
    Ok(Some(whole.data))
}

/// `plan`, run as one remote stage of one task when it is whole and needs an executor
/// ([`needs_executor`]); otherwise `plan` itself.
fn place_on_executor(
    plan: Arc<dyn ExecutionPlan>,
    options: &datafusion::config::ConfigOptions,
) -> Result<Arc<dyn ExecutionPlan>> {
    if plan.is::<DistributedExec>() || !needs_executor(&plan)? {
        return Ok(plan);
    }
    // A write's commit stays on the coordinator; what feeds it moves.
    let head = match plan.downcast_ref::<WriteCommitExec>() {
        Some(_) => {
            let input = Arc::clone(plan.children()[0]);
            Arc::clone(&plan).replace_children(
                vec![remote_stage(input)?],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
            )?
        }
        None => remote_stage(plan)?,
    };
    let collect_metrics = DistributedConfig::from_config_options(options)?.collect_metrics;
    Ok(Arc::new(
        DistributedExec::new(head).with_metrics_collection(collect_metrics),
    ))
}

/// `plan` as the one task of a stage of its own, read by the coordinator through a coalesce.
fn remote_stage(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let coalesce = NetworkCoalesceExec::try_new(plan, 1, 1)?;
    // The crate names stages while it distributes a plan (and elides one-task-to-one-task
    // boundaries then): this one is named here, as the query's only stage.
    let Stage::Local(mut stage) = coalesce.input_stage().clone() else {
        return Err(DataFusionError::Internal(
            "a new network boundary has a remote input stage".into(),
        ));
    };
    stage.query_id = uuid::Uuid::new_v4();
    stage.num = 1;
    let boundary: Arc<dyn ExecutionPlan> = coalesce.with_input_stage(Stage::Local(stage))?;
    // Also over one partition (where it forwards the stream as it is): the crate renders the
    // stages below a head's children, never a head that is itself a boundary.
    Ok(Arc::new(CoalescePartitionsExec::new(boundary)))
}

/// Whether a whole plan belongs on an executor: it reads files or writes, and every leaf can
/// travel to an executor (files, in-memory values, empty relations; not the coordinator's
/// catalog views).
fn needs_executor(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    let mut reads_or_writes = false;
    let mut travels = true;
    plan.apply(|node| {
        if node.is::<ParallelWriteExec>() {
            reads_or_writes = true;
        }
        if !node.children().is_empty() {
            return Ok(TreeNodeRecursion::Continue);
        }
        match travelling_leaf(node) {
            Some(TravellingLeaf::Files(_)) => reads_or_writes = true,
            Some(TravellingLeaf::Values) => {}
            None => {
                travels = false;
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(reads_or_writes && travels)
}

/// A leaf that can run on an executor.
enum TravellingLeaf<'a> {
    /// A scan of files (what it reads: [`bytes_read`]).
    Files(&'a FileScanConfig),
    /// In-memory values or an empty relation.
    Values,
}

/// What `leaf` is, if it can travel to an executor (not the coordinator's catalog views).
fn travelling_leaf(leaf: &Arc<dyn ExecutionPlan>) -> Option<TravellingLeaf<'_>> {
    match leaf.downcast_ref::<DataSourceExec>() {
        Some(scan) => match scan.data_source().downcast_ref::<FileScanConfig>() {
            Some(files) => Some(TravellingLeaf::Files(files)),
            None if scan.data_source().is::<MemorySourceConfig>() => Some(TravellingLeaf::Values),
            None => None,
        },
        None if leaf.is::<EmptyExec>() || leaf.is::<PlaceholderRowExec>() => {
            Some(TravellingLeaf::Values)
        }
        None => None,
    }
}

/// The bytes of files a scan reads: its files' bytes, scaled down to the columns it projects
/// when the files' statistics size every column (Parquet's do), since a columnar scan reads
/// only those. Without such statistics (CSV, JSON), the whole files.
fn bytes_read(files: &FileScanConfig) -> u64 {
    let file_bytes: u64 = files
        .file_groups
        .iter()
        .flat_map(|group| group.iter())
        .map(|file| file.effective_size())
        .sum();
    let column_bytes = |stats: &Statistics| -> Option<u64> {
        stats
            .column_statistics
            .iter()
            .try_fold(0u64, |sum, column| {
                column
                    .byte_size
                    .get_value()
                    .map(|&bytes| sum.saturating_add(bytes as u64))
            })
    };
    let whole = column_bytes(&files.statistics());
    let projected = files
        .partition_statistics(None)
        .ok()
        .and_then(|stats| column_bytes(&stats));
    match (projected, whole) {
        (Some(projected), Some(whole)) if whole > 0 && projected < whole => {
            // A scan of no column (`count(*)`) still reads the files' footers and row counts.
            let share = (projected as f64 / whole as f64).max(f64::EPSILON);
            ((file_bytes as f64 * share).ceil() as u64).max(1)
        }
        _ => file_bytes,
    }
}

/// How many tasks a stage gets from what it scans and writes.
/// - A scan of files: one task per the crate's bytes per partition
///   (`--scan-bytes-per-partition`) × partitions per task of the bytes it reads ([`bytes_read`]): the crate's own estimate counts whole files, so a query reading a
///   few columns of a wide table was spread over executors (a round trip and a shuffle) for
///   input one executor reads in milliseconds.
/// - Writers spread over every live executor, so a write's rows never funnel through one node
///   (the stage below still decides when it needs more tasks than that).
struct TaskCounts(Arc<ExecutorRegistry>);

#[async_trait]
impl DesiredTaskCountHandler for TaskCounts {
    async fn handle(
        &self,
        ev: DesiredTaskCountEvent<'_>,
    ) -> Option<Result<DesiredTaskCountEventResponse>> {
        if ev.plan.is::<ParallelWriteExec>() {
            let executors = self.0.live_worker_urls().len().max(1);
            return Some(Ok(DesiredTaskCountEventResponse::desired(executors)));
        }
        let files = ev
            .plan
            .downcast_ref::<DataSourceExec>()?
            .data_source()
            .downcast_ref::<FileScanConfig>()?;
        let bytes_per_partition = match DistributedConfig::from_session_config(ev.session_config) {
            Ok(config) => config.file_scan_config_bytes_per_partition.max(1),
            Err(e) => return Some(Err(e)),
        };
        let partitions = bytes_read(files).div_ceil(bytes_per_partition as u64);
        let tasks = usize::try_from(partitions)
            .unwrap_or(usize::MAX)
            .div_ceil(ev.session_config.target_partitions().max(1));
        Some(Ok(DesiredTaskCountEventResponse::desired(tasks.max(1))))
    }
}

/// The index of the task a plan fragment runs in, within its stage (0 outside distributed
/// execution): names what the task writes.
pub(crate) fn task_index(ctx: &Arc<TaskContext>) -> usize {
    DistributedTaskContext::from_ctx(ctx).task_index
}

/// See [`metered_coordinator_state`].
const CONNECTION_BUFFER_BYTES: usize = 16 * 1024 * 1024;

/// `state` collecting per-task metrics from the executors (EXPLAIN ANALYZE).
pub(crate) fn with_metrics(mut state: SessionState) -> Result<SessionState> {
    state.set_distributed_metrics_collection(true)?;
    Ok(state)
}

/// Names the attempt on every request to a worker, so that an executor gives all the attempt's
/// tasks one memory pool (and a rerun never shares one with the run it replaces).
const ATTEMPT_ID_HEADER: &str = "x-quiver-attempt-id";

/// The task context one attempt of `plan` executes with on the coordinator: `state`'s, with the
/// attempt's `runtime` (its memory pool), `placements` recording where its tasks run, and headers
/// that carry the attempt's id, stage deadline and the dynamic filters to carry across stages
/// ([`relayed_filters`]) to every executor it runs on.
///
/// With a `pass_through` stage, that stage's messages go to its sink, and the attempt's batches
/// cross the network uncompressed (the client reads them as they were sent).
pub(crate) fn attempt_task_ctx(
    state: &SessionState,
    plan: &Arc<dyn ExecutionPlan>,
    runtime: Arc<RuntimeEnv>,
    attempt: &AttemptId,
    placements: Arc<TaskPlacements>,
    stage_timeout: Option<Duration>,
    pass_through: Option<PassThroughStage>,
) -> Result<Arc<TaskContext>> {
    let mut headers = stage_timeout
        .map(stage_deadline::headers)
        .unwrap_or_default();
    let id = HeaderValue::from_str(attempt.as_str())
        .map_err(|e| DataFusionError::Internal(format!("attempt id '{attempt}': {e}")))?;
    headers.insert(ATTEMPT_ID_HEADER, id);
    let relayed = relayed_filters(plan);
    if !relayed.is_empty() {
        tracing::debug!(%attempt, filters = ?relayed, "dynamic filters carried across stages");
        let value = HeaderValue::from_str(&filter_relay::header_value(&relayed))
            .map_err(|e| DataFusionError::Internal(format!("relayed filters: {e}")))?;
        headers.insert(filter_relay::RELAYED_FILTERS_HEADER, value);
    }
    // Executors log the attempt's tasks under the query's id.
    if let Some(query) = logs::current_query() {
        let id = HeaderValue::from_str(query.as_str())
            .map_err(|e| DataFusionError::Internal(format!("query id '{query}': {e}")))?;
        headers.insert(logs::QUERY_ID_HEADER, id);
    }
    let mut config = state.config().clone();
    config.set_distributed_passthrough_headers(headers)?;
    config.set_extension(placements);
    if let Some(stage) = pass_through {
        config.set_distributed_compression(None)?;
        config.set_extension(Arc::new(stage));
    }
    Ok(Arc::new(
        TaskContext::from(state)
            .with_session_config(config)
            .with_runtime(runtime),
    ))
}

/// The headers of a worker request that Quiver forwards to the task's own requests.
fn quiver_headers(headers: &HeaderMap) -> HeaderMap {
    [
        ATTEMPT_ID_HEADER,
        stage_deadline::HEADER,
        logs::QUERY_ID_HEADER,
        filter_relay::RELAYED_FILTERS_HEADER,
    ]
    .into_iter()
    .filter_map(|name| Some((HeaderName::from_static(name), headers.get(name)?.clone())))
    .collect()
}

/// Places each stage's tasks on live executors, right before the stage starts.
///
/// A single task goes where its one input task runs (no network hop), as the crate's default does;
/// otherwise tasks go to the live executors least loaded first (tasks this coordinator placed
/// there whose queries still run), ties broken round-robin from a rotating offset, so
/// consecutive stages and queries spread over the whole cluster. Placements are recorded in the
/// query's [`TaskPlacements`], which counts them as load until the attempt ends.
struct TaskRouter {
    registry: Arc<ExecutorRegistry>,
    load: Arc<ExecutorLoad>,
    next: AtomicUsize,
}

impl RouteTasksHandler for TaskRouter {
    fn handle(&self, ev: RouteTasksEvent) -> Option<Result<RouteTasksEventResponse>> {
        let urls = match colocated_url(ev.plan).filter(|_| ev.task_count == 1) {
            Some(url) => vec![url],
            None => {
                let live = self.registry.live_worker_urls();
                if live.is_empty() {
                    let e =
                        QuiverError::Unavailable("no live executors to run the query on".into());
                    return Some(Err(to_datafusion(e)));
                }
                let start = self.next.fetch_add(ev.task_count.max(1), Ordering::Relaxed);
                let order = self.load.least_loaded_first(&live, start);
                (0..ev.task_count)
                    .map(|i| order[i % order.len()].clone())
                    .collect()
            }
        };
        // Without a placement log (no attempt whose end uncounts them) tasks are not counted.
        if let Some(log) = ev
            .task_ctx
            .session_config()
            .get_extension::<TaskPlacements>()
        {
            log.record(ev.plan.as_ref(), &urls, &self.load);
        }
        Some(Ok(RouteTasksEventResponse::new(urls)))
    }
}

/// Tasks this coordinator placed on each executor whose attempts have not ended.
#[derive(Debug, Default)]
struct ExecutorLoad(Mutex<HashMap<Url, usize>>);

impl ExecutorLoad {
    /// `live` ordered by load, ties in rotation from `start`.
    fn least_loaded_first(&self, live: &[Url], start: usize) -> Vec<Url> {
        let load = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut order: Vec<(usize, usize, &Url)> = live
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let rotation = (i + live.len() - start % live.len()) % live.len();
                (load.get(url).copied().unwrap_or(0), rotation, url)
            })
            .collect();
        order.sort();
        order.into_iter().map(|(_, _, url)| url.clone()).collect()
    }

    fn add(&self, urls: &[Url]) {
        let mut load = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for url in urls {
            *load.entry(url.clone()).or_default() += 1;
        }
    }

    fn remove(&self, urls: &[Url]) {
        let mut load = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for url in urls {
            if let Some(n) = load.get_mut(url) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    load.remove(url);
                }
            }
        }
    }
}

/// The executor running the single task of a stage's only remote input, if there is one.
fn colocated_url(plan: &Arc<dyn ExecutionPlan>) -> Option<Url> {
    let mut url = None;
    let _ = plan.apply(|node| {
        let Some(boundary) = node.as_network_boundary() else {
            return Ok(TreeNodeRecursion::Continue);
        };
        if let Stage::Remote(remote) = boundary.input_stage()
            && remote.workers.len() == 1
        {
            url = Some(remote.workers[0].clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Jump)
    });
    url
}

/// Where the tasks of one attempt's stages were placed, in the order stages started: what the
/// departure watchdog watches, and what `EXPLAIN ANALYZE` shows. Its tasks count as their
/// executors' load until it is dropped (the attempt ended).
#[derive(Debug, Default)]
pub(crate) struct TaskPlacements {
    stages: Mutex<Vec<(String, Vec<Url>)>>,
    load: Mutex<Option<Arc<ExecutorLoad>>>,
}

impl Drop for TaskPlacements {
    fn drop(&mut self) {
        let load = self.load.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(load) = load.take() {
            let stages = self.stages.get_mut().unwrap_or_else(|e| e.into_inner());
            for (_, urls) in stages.iter() {
                load.remove(urls);
            }
        }
    }
}

impl TaskPlacements {
    fn record(&self, stage_head: &dyn ExecutionPlan, urls: &[Url], load: &Arc<ExecutorLoad>) {
        load.add(urls);
        self.load
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| Arc::clone(load));
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((stage_head.name().to_string(), urls.to_vec()));
    }

    /// Every executor a task of the attempt was placed on so far, sorted, without repeats.
    pub(crate) fn executors(&self) -> Vec<Url> {
        let mut urls: Vec<Url> = self
            .stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|(_, urls)| urls.iter().cloned())
            .collect();
        urls.sort();
        urls.dedup();
        urls
    }

    /// One line per stage.
    pub(crate) fn render(&self) -> String {
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(head, urls)| {
                let tasks = urls
                    .iter()
                    .enumerate()
                    .map(|(i, url)| format!("t{i} -> {}", url.as_str().trim_end_matches('/')))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("stage with head {head}: {tasks}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What an executor learns from each task session it builds.
pub(crate) trait TaskObserver: Send + Sync + 'static {
    /// Called once per task, with the settings of the session the task runs in.
    fn task_started(&self, settings: &SessionConfig);
}

/// How long connecting to a worker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings on every connection between nodes, even idle ones (lenient: a peer whose runtime
/// is saturated answers late; frozen and dead executors are caught sooner by their heartbeats)...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ...and a connection whose ping goes unanswered this long is dead: its streams fail, so a
/// connection to a host that vanished (no reset ever arrives) does not hold a query forever.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Channels to workers, one per URL, reused by every query; their requests carry the cluster
/// signature, and HTTP/2 keepalive bounds how long a silent peer can stall a stream. Their
/// bodies count into the node's [`Traffic`].
#[derive(Clone)]
struct SignedChannels {
    channels: Arc<Mutex<HashMap<Url, Channel>>>,
    auth: ClusterAuth,
    traffic: Traffic,
}

impl SignedChannels {
    fn new(auth: ClusterAuth, traffic: Traffic) -> Self {
        Self {
            channels: Arc::default(),
            auth,
            traffic,
        }
    }

    fn channel(&self, url: &Url) -> Result<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        // Lazy: connects on first use and reconnects after a failure.
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| DataFusionError::Configuration(format!("worker URL '{url}': {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(url.clone(), channel.clone());
        Ok(channel)
    }
}

#[async_trait]
impl ChannelResolver for SignedChannels {
    async fn get_worker_client_for_url(
        &self,
        url: &Url,
    ) -> Result<Box<dyn WorkerChannel>, DataFusionError> {
        let channel = Signed::new(
            Counted::channel(self.channel(url)?, self.traffic.clone()),
            self.auth.clone(),
        );
        Ok(Box::new(QuiverWorkerChannel {
            inner: create_worker_client(BoxCloneSyncChannel::new(channel.clone())),
            channel,
        }))
    }
}

/// The crate's worker client, except that the tasks of a pass-through stage
/// ([`PassThroughStage`]) are read through a [`Tap`] that forwards their messages to the client.
struct QuiverWorkerChannel {
    inner: Box<dyn WorkerChannel>,
    channel: Signed<Counted<Channel>>,
}

#[async_trait]
impl WorkerChannel for QuiverWorkerChannel {
    async fn coordinator_channel(
        &mut self,
        headers: HeaderMap,
        set_plan_request: SetPlanRequest,
        c2w_stream: BoxStream<'static, CoordinatorToWorkerMsg>,
        metrics: ExecutionPlanMetricsSet,
        task_ctx: &Arc<TaskContext>,
    ) -> Result<BoxStream<'static, Result<WorkerToCoordinatorMsg>>> {
        // The joins' yield points stay here and are put back by the executor
        // ([`cooperative::strip`]): a deep plan otherwise exceeds what prost decodes. The scans
        // carry only the statistics an executor reads ([`wire_statistics`]).
        let mut set_plan_request = set_plan_request;
        if let MaybeEncoded::Decoded(plan) = set_plan_request.plan {
            let plan = wire_statistics::trim_for_executor(cooperative::strip(plan)?)?;
            set_plan_request.plan = MaybeEncoded::Decoded(plan);
        }
        self.inner
            .coordinator_channel(headers, set_plan_request, c2w_stream, metrics, task_ctx)
            .await
    }

    async fn execute_task(
        &mut self,
        headers: HeaderMap,
        request: ExecuteTaskRequest,
        metrics: ExecutionPlanMetricsSet,
        task_ctx: &Arc<TaskContext>,
    ) -> Result<Vec<BoxStream<'static, Result<RecordBatch>>>> {
        let key = request.task_key;
        let tapped = task_ctx
            .session_config()
            .get_extension::<PassThroughStage>()
            .filter(|stage| stage.query_id == key.query_id && stage.num == key.stage_id);
        match tapped {
            Some(stage) => {
                let tap = Tap::new(self.channel.clone(), stage.sink.clone());
                create_worker_client(BoxCloneSyncChannel::new(tap))
                    .execute_task(headers, request, metrics, task_ctx)
                    .await
            }
            None => {
                self.inner
                    .execute_task(headers, request, metrics, task_ctx)
                    .await
            }
        }
    }

    async fn get_worker_info(
        &mut self,
        request: GetWorkerInfoRequest,
    ) -> Result<GetWorkerInfoResponse> {
        self.inner.get_worker_info(request).await
    }
}

/// The stage whose executors' messages go straight to the client, and where they go.
#[derive(Debug)]
pub(crate) struct PassThroughStage {
    query_id: uuid::Uuid,
    num: usize,
    sink: PassThroughSink,
}

/// The stage of `plan` whose record batch messages can go to the client as they are, with
/// `schema` announced: when the coordinator's head only concatenates that stage's streams
/// (`DistributedExec` over `CoalescePartitionsExec` over the stage's coalesce, no merge, sort,
/// limit or projection) and the stage produces exactly `schema`'s types, none of them
/// dictionary-encoded (what every client in the conformance table reads as they are sent).
/// Returns the stage with a new sink, and where the sink's messages come out.
pub(crate) fn pass_through_stage(
    plan: &Arc<dyn ExecutionPlan>,
    schema: &Schema,
) -> Option<(PassThroughStage, mpsc::Receiver<FlightData>)> {
    let head = plan.downcast_ref::<DistributedExec>()?.children()[0];
    let coalesce = head.downcast_ref::<CoalescePartitionsExec>()?;
    if coalesce.fetch().is_some() {
        return None;
    }
    let boundary = coalesce.input().downcast_ref::<NetworkCoalesceExec>()?;
    let Stage::Local(stage) = boundary.input_stage() else {
        return None;
    };
    let produced = stage.plan.schema();
    let same_types = produced.fields().len() == schema.fields().len()
        && produced
            .fields()
            .iter()
            .zip(schema.fields())
            .all(|(a, b)| a.data_type() == b.data_type() && !has_dictionary(a.data_type()));
    if !same_types {
        return None;
    }
    let (sink, forwarded) = PassThroughSink::new();
    let stage = PassThroughStage {
        query_id: stage.query_id,
        num: stage.num,
        sink,
    };
    Some((stage, forwarded))
}

fn has_dictionary(data_type: &DataType) -> bool {
    match data_type {
        DataType::Dictionary(_, _) => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::FixedSizeList(f, _)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::Map(f, _) => has_dictionary(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
        DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_dictionary(f.data_type())),
        DataType::RunEndEncoded(_, values) => has_dictionary(values.data_type()),
        _ => false,
    }
}

/// Builds every task session of an executor: the crate's defaults plus Quiver's settings, and
/// signed channels to the other executors.
struct ExecutorSessions {
    target_partitions: usize,
    memory: Arc<QueryMemory>,
    observer: Arc<dyn TaskObserver>,
    channels: SignedChannels,
    filters: Arc<FilterRelay>,
}

#[async_trait]
impl WorkerSessionBuilder for ExecutorSessions {
    async fn build_session_state(&self, mut ctx: WorkerQueryContext) -> Result<SessionState> {
        // The builder's config already carries the crate's per-task extensions: amend it in place.
        let config = ctx.builder.config().get_or_insert_with(SessionConfig::new);
        settings::apply(config.options_mut())?;
        if self.target_partitions > 0 {
            config.options_mut().execution.target_partitions = self.target_partitions;
        }
        ctx.builder
            .set_distributed_channel_resolver(self.channels.clone());
        ctx.builder.set_distributed_user_codec(QuiverCodec);
        // Requests this task makes to other executors carry the query's id and stage deadline.
        ctx.builder
            .set_distributed_passthrough_headers(quiver_headers(&ctx.headers))?;
        let mut relayed = None;
        if let Some(attempt) = ctx
            .headers
            .get(ATTEMPT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            let runtime = self
                .memory
                .for_attempt(attempt)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            ctx.builder = std::mem::take(&mut ctx.builder).with_runtime_env(runtime);
            relayed = ctx
                .headers
                .get(filter_relay::RELAYED_FILTERS_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|named| {
                    (
                        TaskFilters::parse(attempt, named),
                        Arc::clone(&self.filters),
                    )
                });
        }
        // First the joins' yield points the coordinator kept ([`cooperative::restore`]), then
        // the filter relay's wrappers, on the plan as the coordinator planned it.
        ctx.builder.set_distributed_worker_plan_rewrite_handler(
            move |ev: WorkerPlanRewriteEvent<'_>| {
                let mut plan = cooperative::restore(ev.plan)?;
                if let Some((task, relay)) = &relayed {
                    plan = relay.rewrite(plan, task, &|node| node.is_network_boundary())?;
                }
                Ok(WorkerPlanRewriteEventResponse::new(plan))
            },
        );
        let state = ctx.builder.build();
        // Inside the query's span (see crate::logs): the line names the query.
        if let Some(task) = state.config().get_extension::<DistributedTaskContext>() {
            tracing::info!(
                task = task.task_index,
                tasks = task.task_count,
                "task started"
            );
        }
        self.observer.task_started(state.config());
        Ok(state)
    }
}

/// Adds the worker service (what the coordinator and other executors call to run plan fragments)
/// and the crate's task-progress service (read by [`running_tasks`]) to an executor's gRPC server;
/// the worker traffic, served and sent, counts into `traffic`. Also returns the worker's task
/// count, read in-process.
#[allow(clippy::too_many_arguments)]
pub(crate) fn worker_router(
    server: &mut Server,
    memory: Arc<QueryMemory>,
    target_partitions: usize,
    observer: Arc<dyn TaskObserver>,
    auth: ClusterAuth,
    traffic: Traffic,
    filters: Arc<FilterRelay>,
) -> (Router, LocalTasks) {
    let runtime = Arc::clone(memory.node());
    let worker = Worker::from_session_builder(ExecutorSessions {
        target_partitions,
        memory,
        observer,
        channels: SignedChannels::new(auth.clone(), traffic.clone()),
        filters,
    })
    .with_runtime_env(runtime)
    .with_version(env!("CARGO_PKG_VERSION"));
    // Executors resolve no workers themselves; the service is mounted for its task progress.
    let progress = worker.with_observability_service(Arc::new(NoWorkers));
    let local = LocalTasks(worker.with_observability_service(Arc::new(NoWorkers)));
    let router = server
        .add_service(Verified::new(progress, auth.clone()))
        .add_service(Counted::service(
            Verified::new(
                StageDeadlines::new(QuerySpans::new(worker.into_worker_server())),
                auth,
            ),
            traffic,
        ));
    (router, local)
}

/// The number of tasks an executor's worker holds for queries that have not ended (what
/// [`running_tasks`] asks over the network), read in-process: no connection, and no wait for a
/// runtime busy with queries.
#[derive(Clone)]
pub(crate) struct LocalTasks(ObservabilityServiceServer<ObservabilityServiceImpl>);

impl std::fmt::Debug for LocalTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalTasks")
    }
}

impl LocalTasks {
    pub(crate) async fn running(&self) -> Result<u64> {
        let mut client = ObservabilityServiceClient::new(self.0.clone());
        let progress = client
            .get_task_progress(GetTaskProgressRequest {})
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(progress.into_inner().tasks.len() as u64)
    }
}

struct NoWorkers;

impl WorkerResolver for NoWorkers {
    fn get_urls(&self) -> Result<Vec<Url>, DataFusionError> {
        Ok(Vec::new())
    }
}

/// Number of tasks the worker at `worker_url` holds for queries that have not ended.
pub(crate) async fn running_tasks(worker_url: &Url, auth: &ClusterAuth) -> Result<u64> {
    let channel = tonic::transport::Endpoint::from_shared(worker_url.to_string())
        .map_err(|e| DataFusionError::External(Box::new(e)))?
        .connect()
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let mut client = ObservabilityServiceClient::new(Signed::new(channel, auth.clone()));
    let progress = client
        .get_task_progress(GetTaskProgressRequest {})
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(progress.into_inner().tasks.len() as u64)
}

/// The crate's id of a distributed plan's query and, per stage that runs on executors, its
/// number and task count (empty for a plan that stays on the coordinator). Read before the plan
/// runs, to follow its tasks' progress.
pub(crate) fn stage_shapes(plan: &Arc<dyn ExecutionPlan>) -> (Option<Vec<u8>>, Vec<(u64, u64)>) {
    let mut query = None;
    let mut stages = Vec::new();
    let mut pending = vec![Arc::clone(plan)];
    while let Some(node) = pending.pop() {
        // `apply` only fails if the closure does.
        let _ = node.apply(|n| {
            let Some(boundary) = n.as_network_boundary() else {
                return Ok(TreeNodeRecursion::Continue);
            };
            if let Stage::Local(stage) = boundary.input_stage() {
                query.get_or_insert_with(|| stage.query_id.as_bytes().to_vec());
                stages.push((stage.num as u64, stage.tasks as u64));
                pending.push(Arc::clone(&stage.plan));
            }
            Ok(TreeNodeRecursion::Jump)
        });
    }
    stages.sort_unstable();
    stages.dedup();
    (query, stages)
}

/// One task an executor runs now, as its task-progress service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunningTask {
    /// The crate's query id (see [`stage_shapes`]).
    pub(crate) query: Vec<u8>,
    pub(crate) stage: u64,
    pub(crate) task: u64,
    pub(crate) output_rows: u64,
}

/// Reads executors' task progress, keeping one channel per executor.
#[derive(Debug)]
pub(crate) struct ProgressReader {
    auth: ClusterAuth,
    channels: Mutex<HashMap<Url, Channel>>,
}

impl ProgressReader {
    pub(crate) fn new(auth: ClusterAuth) -> Self {
        Self {
            auth,
            channels: Mutex::default(),
        }
    }

    /// The tasks `worker_url` runs now.
    pub(crate) async fn running(&self, worker_url: &Url) -> Result<Vec<RunningTask>> {
        let channel = {
            let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            match channels.get(worker_url) {
                Some(channel) => channel.clone(),
                None => {
                    let channel = Endpoint::from_shared(worker_url.to_string())
                        .map_err(|e| DataFusionError::External(Box::new(e)))?
                        .connect_timeout(Duration::from_secs(2))
                        .timeout(Duration::from_secs(2))
                        .connect_lazy();
                    channels.insert(worker_url.clone(), channel.clone());
                    channel
                }
            }
        };
        let mut client = ObservabilityServiceClient::new(Signed::new(channel, self.auth.clone()));
        let progress = match client.get_task_progress(GetTaskProgressRequest {}).await {
            Ok(progress) => progress.into_inner(),
            Err(status) => {
                // A gone executor's channel is not kept: it may come back at the same address.
                self.channels
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(worker_url);
                return Err(DataFusionError::External(Box::new(status)));
            }
        };
        Ok(progress
            .tasks
            .into_iter()
            .filter_map(|t| {
                let key = t.task_key?;
                Some(RunningTask {
                    query: key.query_id,
                    stage: key.stage_id,
                    task: key.task_number,
                    output_rows: t.output_rows,
                })
            })
            .collect())
    }

    /// Forgets channels to executors not in `live`.
    pub(crate) fn retain(&self, live: &[Url]) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|url, _| live.contains(url));
    }
}

/// The distributed plan as text: stages, their tasks and partitions.
pub(crate) fn render_plan(plan: &dyn ExecutionPlan) -> String {
    datafusion_distributed::display_plan_ascii(plan, false)
}

/// The plan as it ran, with the metrics the coordinator holds (per task where they were
/// collected).
pub(crate) fn render_plan_with_metrics(plan: &dyn ExecutionPlan) -> String {
    datafusion_distributed::display_plan_ascii(plan, true)
}

/// The plan after execution, with per-task metrics.
pub(crate) async fn render_analyzed_plan(plan: Arc<dyn ExecutionPlan>) -> Result<String> {
    datafusion_distributed::explain_analyze(plan, DistributedMetricsFormat::PerTask).await
}

/// The dynamic filters of `plan` worth carrying across stages (see
/// [`crate::cluster::filter_relay`]): those of `CollectLeft` hash joins that run on executors,
/// whose every task sees the whole build side (a broadcast build, or a stage of one task), and
/// whose filter is consumed in another stage. Joins in the coordinator's head stage and
/// partitioned joins are left out.
pub(crate) fn relayed_filters(plan: &Arc<dyn ExecutionPlan>) -> Vec<u64> {
    fn walk(node: &Arc<dyn ExecutionPlan>, stage_tasks: Option<usize>, ids: &mut Vec<u64>) {
        if let Some(boundary) = node.as_network_boundary() {
            let tasks = boundary.input_stage().task_count();
            for child in node.children() {
                walk(child, Some(tasks), ids);
            }
            return;
        }
        if let Some(tasks) = stage_tasks
            && let Some(join) = node.downcast_ref::<HashJoinExec>()
            && let Some(id) =
                filter_relay::collect_left_filter(node.as_ref()).and_then(|f| f.expression_id())
            && (tasks == 1 || whole_build_side(join.left()))
            && consumed_in_another_stage(join.right(), id)
        {
            ids.push(id);
        }
        for child in node.children() {
            walk(child, stage_tasks, ids);
        }
    }
    let mut ids = Vec::new();
    walk(plan, None, &mut ids);
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether each task of a stage builds from all of a build side: every network input of it is a
/// broadcast and no scan in it is split between the stage's tasks (an inlined broadcast's scans
/// are whole, [`inline_small_broadcasts`]).
fn whole_build_side(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if plan.as_network_boundary().is_some() {
        return plan.is::<NetworkBroadcastExec>();
    }
    if plan.is::<DistributedLeafExec>() {
        return false;
    }
    plan.children().into_iter().all(whole_build_side)
}

/// Whether a node under a network boundary of `probe` uses the expression `id`.
fn consumed_in_another_stage(probe: &Arc<dyn ExecutionPlan>, id: u64) -> bool {
    fn uses(node: &Arc<dyn ExecutionPlan>, id: u64) -> bool {
        let mut found = false;
        let _ = node.apply_expressions(&mut |root| {
            root.apply(|expr| {
                found |= expr.expression_id() == Some(id);
                Ok(if found {
                    TreeNodeRecursion::Stop
                } else {
                    TreeNodeRecursion::Continue
                })
            })
        });
        found || node.children().into_iter().any(|c| uses(c, id))
    }
    if probe.as_network_boundary().is_some() {
        return probe.children().into_iter().any(|c| uses(c, id));
    }
    probe
        .children()
        .into_iter()
        .any(|c| consumed_in_another_stage(c, id))
}

/// Number of stages in a physical plan, the coordinator's head stage included (1 when nothing
/// is distributed).
pub(crate) fn stage_count(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let mut stages = HashSet::new();
    // `apply` only fails if the closure does.
    let _ = plan.apply(|node| {
        if let Some(boundary) = node.as_network_boundary() {
            stages.insert(boundary.input_stage().num());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    stages.len() + 1
}

/// Records the settings of the latest task session, for the status RPC.
#[derive(Debug, Default)]
pub(crate) struct LatestSettings(Mutex<Vec<(String, String)>>);

impl LatestSettings {
    pub(crate) fn record(&self, config: &SessionConfig) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = settings::effective(config.options());
    }

    pub(crate) fn get(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The gRPC code and message inside an error an executor sent, when datafusion-distributed
/// flattened it ([`crate::error`] turns them into the status a client sees).
///
/// The crate carries a worker's error as its DataFusion error tree, except `External` errors
/// (a status from a third node, a Quiver error with its code): those cross as text only, their
/// `Display`, which for a `tonic::Status` is `code: '<description>', message: "<escaped>"`.
/// This reads the code and the message back, so a lost executor still reads as `Unavailable`
/// and a client sees the message rather than the rendering. Checked for datafusion-distributed
/// 4.0.0 (a test fails when the workspace pins another version).
pub(crate) fn flattened_status(text: &str) -> Option<(tonic::Code, String)> {
    const CODE: &str = "code: '";
    const MESSAGE: &str = ", message: \"";
    let start = text.find(CODE)? + CODE.len();
    let end = start + text[start..].find('\'')?;
    let description = &text[start..end];
    let code = (1..=16)
        .map(tonic::Code::from_i32)
        .find(|code| code.description() == description)?;
    let message = text[end + 1..]
        .strip_prefix(MESSAGE)
        .and_then(unescape_debug)
        .unwrap_or_default();
    Some((code, message))
}

/// The string a `{:?}` rendering starts (after its opening quote), up to its closing quote.
fn unescape_debug(escaped: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                'u' => {
                    let hex: String = chars
                        .by_ref()
                        .skip_while(|c| *c == '{')
                        .take_while(|c| *c != '}')
                        .collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

    /// [`bytes_read`] of the one file scan in `sql`'s physical plan.
    async fn scan_bytes_read(ctx: &SessionContext, sql: &str) -> u64 {
        let plan = ctx
            .sql(sql)
            .await
            .expect("plan")
            .create_physical_plan()
            .await
            .expect("physical plan");
        let mut read = None;
        plan.apply(|node| {
            if let Some(files) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|scan| scan.data_source().downcast_ref::<FileScanConfig>())
            {
                read = Some(bytes_read(files));
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .expect("walk");
        read.expect("a file scan")
    }

    #[tokio::test]
    async fn a_scan_counts_the_bytes_of_the_columns_it_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = SessionContext::new();
        let mut sizes = Vec::new();
        for format in ["parquet", "csv"] {
            let path = dir.path().join(format!("wide.{format}"));
            ctx.sql(&format!(
                "COPY (SELECT value AS a, value * 7 AS b, value * 13 AS c, value * 31 AS d, \
                 'row ' || value AS e FROM generate_series(1, 20000)) TO '{}' STORED AS {format}",
                path.display()
            ))
            .await
            .expect("copy")
            .collect()
            .await
            .expect("copy");
            sizes.push(std::fs::metadata(&path).expect("file").len());
            let path = path.display().to_string();
            match format {
                "parquet" => ctx
                    .register_parquet("p", &path, ParquetReadOptions::default())
                    .await
                    .expect("register"),
                _ => ctx
                    .register_csv("c", &path, CsvReadOptions::default())
                    .await
                    .expect("register"),
            }
        }
        let (parquet, csv) = (sizes[0], sizes[1]);
        assert_eq!(scan_bytes_read(&ctx, "SELECT * FROM p").await, parquet);
        let one_column = scan_bytes_read(&ctx, "SELECT b FROM p").await;
        assert!(
            one_column > 0 && one_column < parquet / 3,
            "one BIGINT of five columns: {one_column} of {parquet} bytes"
        );
        let two_columns = scan_bytes_read(&ctx, "SELECT b, d FROM p WHERE a > 10").await;
        assert!(two_columns > one_column && two_columns < parquet);
        // A row format reads whole rows, whatever it projects.
        assert_eq!(scan_bytes_read(&ctx, "SELECT b FROM c").await, csv);
    }

    /// The datafusion-distributed version [`flattened_status`] was checked against.
    const FLATTENING_CHECKED_FOR: &str = "4.0.0";

    #[test]
    fn flattening_was_checked_for_the_pinned_version() {
        // Reading flattened statuses depends on how this exact version encodes errors: a new
        // version must be checked (and this constant moved) before it is pinned.
        let manifest = include_str!("../../../Cargo.toml");
        let pin = format!("datafusion-distributed = \"={FLATTENING_CHECKED_FOR}\"");
        assert!(
            manifest.contains(&pin),
            "the workspace no longer pins {pin}: check flattened_status against the new version"
        );
    }

    #[test]
    fn flattened_statuses_keep_code_and_message() {
        let sent = tonic::Status::unavailable("h2 protocol error: \"reset\"\nby peer é");
        // What the crate's encoder keeps of an External error: its Display, often with context.
        let text = format!(
            "External error: {}",
            DataFusionError::External(Box::new(sent.clone()))
        );
        let (code, message) = flattened_status(&text).expect("a status");
        assert_eq!(code, tonic::Code::Unavailable);
        assert_eq!(message, sent.message());

        let (code, message) = flattened_status(&tonic::Status::cancelled("").to_string()).unwrap();
        assert_eq!(code, tonic::Code::Cancelled);
        assert!(message.is_empty());
        assert!(flattened_status("code: 'nonsense', message: \"x\"").is_none());
        assert!(flattened_status("no status here").is_none());
    }
}
