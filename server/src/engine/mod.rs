//! The coordinator's query engine: what the Flight SQL front door talks to.
//!
//! [`QueryEngine::prepare`] turns SQL into a [`Statement`] without side effects (DDL included),
//! so it can back `CreatePreparedStatement` and `GetFlightInfo`; [`QueryEngine::bind`] binds
//! parameter values; [`QueryEngine::execute_statement`] runs a statement and returns its result
//! as a stream whose schema is exactly the one `prepare` announced (plain Arrow types, see
//! [`crate::arrow_compat`]). Results stream as the head stage produces them and dropping the
//! stream cancels the query on every executor.
//!
//! Statements: queries, `EXPLAIN [ANALYZE]` (showing the distributed plan), and the catalog DDL
//! `CREATE EXTERNAL TABLE`, `CREATE VIEW`, `DROP TABLE`, `DROP VIEW`, which are persisted in the
//! catalog. Other DDL, DML and `SET` answer `Unimplemented` until Quiver can run them across the
//! cluster.

mod placeholders;
mod writes;

pub(crate) use writes::{IfExists, IfMissing};

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{ScalarValue, TableReference};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::{
    DdlStatement, DropTable, DropView, LogicalPlan, Statement as LogicalStatement, WriteOp,
};
use datafusion::physical_plan::{ExecutionPlan, collect, execute_stream};
use datafusion::prelude::SessionContext;
use futures::stream::{self, BoxStream, Stream, StreamExt, TryStreamExt};
use tokio::time::Instant;
use url::Url;

use crate::arrow_compat::{cast_batch, plain_schema, plain_type};
use crate::cluster::distributed::{self, TaskPlacements};
use crate::cluster::membership::ExecutorRegistry;
use crate::config::LocationPolicy;
use crate::error::{QuiverError, Result, datafusion_status};
use crate::planner::settings::{CATALOG_NAME, SCHEMA_NAME};
use crate::resources::{Admission, QueryMemory};
use crate::storage::catalog::{Catalog, TableDef};
use crate::storage::object_stores;
use crate::storage::warehouse::Warehouse;
use placeholders::number_placeholders;

/// What a statement does, which decides how clients run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatementKind {
    /// Returns rows.
    Query,
    /// Changes the catalog; returns no rows and an empty schema.
    Ddl,
    /// Writes table data (`CREATE TABLE`, `INSERT`); returns a row count, not rows.
    Write,
    /// `EXPLAIN` / `EXPLAIN ANALYZE`: returns the plan as rows.
    Explain { analyze: bool },
}

impl StatementKind {
    /// DDL and writes: no result rows, an empty schema, run once as an update.
    pub(crate) fn is_update(self) -> bool {
        matches!(self, Self::Ddl | Self::Write)
    }
}

/// A planned statement.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub sql: String,
    pub kind: StatementKind,
    /// The schema clients receive.
    pub schema: SchemaRef,
    /// Placeholders still to bind, in position order (`$1`, `$2`, ...).
    pub parameters: Vec<Field>,
    /// Per parameter: whether DataFusion inferred its type (else it is announced as Utf8 and a
    /// bound value keeps its own type).
    typed: Vec<bool>,
    plan: LogicalPlan,
}

impl Statement {
    /// One nullable field per placeholder, named `$1..$n`; a type DataFusion could not infer from
    /// the query is announced as Utf8 (strings coerce to the type the query needs).
    pub(crate) fn parameter_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(self.parameters.clone()))
    }
}

/// A result: its schema and its batches, each batch already in that schema.
pub(crate) struct QueryStream {
    pub schema: SchemaRef,
    pub batches: BoxStream<'static, Result<RecordBatch>>,
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("schema", &self.schema)
            .finish()
    }
}

pub(crate) struct QueryEngine {
    pub(crate) ctx: SessionContext,
    pub(crate) catalog: Arc<Catalog>,
    registry: Arc<ExecutorRegistry>,
    /// How long a query may run, from planning to its last batch; `None` is no limit.
    pub(crate) query_timeout: Option<Duration>,
    /// How long each stage of a query may run on an executor; `None` is no limit.
    stage_timeout: Option<Duration>,
    /// Each query's runtime (memory pool) on the coordinator.
    memory: Arc<QueryMemory>,
    /// Where managed tables keep their files; `None` refuses writes.
    pub(crate) warehouse: Option<Warehouse>,
    /// Bounds the queries and writes running at once.
    pub(crate) admission: Admission,
    /// Where `CREATE EXTERNAL TABLE` may point; `None` allows any location.
    locations: Option<LocationPolicy>,
}

/// What bounds each query the engine runs.
#[derive(Debug)]
pub(crate) struct QueryLimits {
    /// From planning to the last batch; `None` is no limit.
    pub timeout: Option<Duration>,
    /// Each stage on an executor; `None` is no limit.
    pub stage_timeout: Option<Duration>,
    /// Each query's runtime and memory pool on the coordinator.
    pub memory: Arc<QueryMemory>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine").finish_non_exhaustive()
    }
}

impl QueryEngine {
    pub(crate) fn new(
        ctx: SessionContext,
        catalog: Arc<Catalog>,
        registry: Arc<ExecutorRegistry>,
        limits: QueryLimits,
        warehouse: Option<Warehouse>,
        admission: Admission,
        locations: Option<LocationPolicy>,
    ) -> Self {
        Self {
            ctx,
            catalog,
            registry,
            query_timeout: limits.timeout,
            stage_timeout: limits.stage_timeout,
            memory: limits.memory,
            warehouse,
            admission,
            locations,
        }
    }

    /// The session that holds the catalog, for metadata calls.
    pub(crate) fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans `sql` without running it or changing anything.
    pub(crate) async fn prepare(&self, sql: &str) -> Result<Statement> {
        let numbered = number_placeholders(sql);
        let plan = self.ctx.state().create_logical_plan(&numbered).await?;
        let kind = classify(&plan)?;
        let schema = match kind {
            StatementKind::Ddl | StatementKind::Write => Arc::new(Schema::empty()),
            StatementKind::Explain { .. } => explain_schema(),
            StatementKind::Query => plain_schema(plan.schema().as_arrow()),
        };
        let (parameters, typed) = parameter_fields(&plan)?.into_iter().unzip();
        Ok(Statement {
            sql: sql.to_string(),
            kind,
            schema,
            parameters,
            typed,
            plan,
        })
    }

    /// Binds the first row of `values` to the statement's placeholders, by position.
    pub(crate) fn bind(&self, mut statement: Statement, values: &RecordBatch) -> Result<Statement> {
        if values.num_columns() != statement.parameters.len() {
            return Err(QuiverError::InvalidArgument(format!(
                "the statement has {} parameter(s), {} value(s) were bound",
                statement.parameters.len(),
                values.num_columns()
            )));
        }
        if values.num_rows() != 1 {
            return Err(QuiverError::InvalidArgument(format!(
                "bind exactly one row of parameter values per execution, got {}",
                values.num_rows()
            )));
        }
        let scalars = values
            .columns()
            .iter()
            .zip(&statement.parameters)
            .zip(&statement.typed)
            .map(|((column, field), typed)| {
                let value = ScalarValue::try_from_array(column, 0)?;
                if !typed || value.is_null() || &value.data_type() == field.data_type() {
                    return Ok(value);
                }
                value.cast_to(field.data_type()).map_err(|e| {
                    QuiverError::InvalidArgument(format!(
                        "parameter {}: cannot use {} as {}: {e}",
                        field.name(),
                        value.data_type(),
                        field.data_type()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        statement.plan = statement.plan.with_param_values(scalars)?;
        statement.parameters.clear();
        statement.typed.clear();
        if statement.kind == StatementKind::Query {
            // Columns that are bare placeholders (`SELECT ? AS a`) take the bound value's type.
            let plan = statement.plan.recompute_schema()?;
            statement.schema = plain_schema(plan.schema().as_arrow());
            statement.plan = plan;
        }
        Ok(statement)
    }

    /// Runs a statement that returns no rows (DDL, writes) and returns the affected row count
    /// (0 for DDL).
    pub(crate) async fn execute_update(&self, statement: &Statement) -> Result<i64> {
        self.check_runnable(statement)?;
        match statement.kind {
            StatementKind::Ddl => {
                self.run_ddl(statement).await?;
                Ok(0)
            }
            StatementKind::Write => {
                let rows = self.run_write(&statement.plan).await?;
                Ok(i64::try_from(rows).unwrap_or(i64::MAX))
            }
            StatementKind::Query | StatementKind::Explain { .. } => {
                Err(QuiverError::InvalidArgument(
                    "this statement returns rows: run it as a query, not as an update".into(),
                ))
            }
        }
    }

    /// Runs a statement; updates (DDL, writes) run to completion here and stream nothing.
    pub(crate) async fn execute_statement(&self, statement: Statement) -> Result<QueryStream> {
        self.check_runnable(&statement)?;
        match statement.kind {
            StatementKind::Ddl | StatementKind::Write => {
                self.execute_update(&statement).await?;
                Ok(QueryStream {
                    schema: statement.schema,
                    batches: stream::empty().boxed(),
                })
            }
            StatementKind::Query => {
                self.require_executors(&statement.plan)?;
                self.run_query(statement).await
            }
            StatementKind::Explain { analyze } => {
                let inner = match &statement.plan {
                    LogicalPlan::Explain(e) => Arc::clone(&e.plan),
                    LogicalPlan::Analyze(a) => Arc::clone(&a.input),
                    _ => return Err(QuiverError::Internal("explain without a plan".into())),
                };
                let batch = self.explain(&inner, analyze).await?;
                Ok(QueryStream {
                    schema: statement.schema,
                    batches: stream::once(async { Ok(batch) }).boxed(),
                })
            }
        }
    }

    /// Runs a query. If it fails before its first row because an executor is gone, the executors
    /// that no longer answer leave the live set and the query runs once more on the others: the
    /// client has seen nothing yet, so the retry is invisible to it.
    ///
    /// Planning happens here, so planning errors are the call's status; execution starts when the
    /// returned stream is first polled, so a client that hangs up before the first row (which gRPC
    /// notices only while a response streams) still cancels the query.
    async fn run_query(&self, statement: Statement) -> Result<QueryStream> {
        let deadline = Deadline::start(self.query_timeout);
        let slot = deadline.run(self.admission.admit()).await??;
        let physical = self
            .ctx
            .state()
            .create_physical_plan(&statement.plan)
            .await?;
        let ctx = self.ctx.clone();
        let registry = Arc::clone(&self.registry);
        let plan = statement.plan.clone();
        let memory = Arc::clone(&self.memory);
        let stage_timeout = self.stage_timeout;
        // Every attempt is a query of its own on the executors.
        let task_ctx = move |state: &SessionState| query_task_ctx(state, &memory, stage_timeout);
        // The executors live when the current attempt started, for naming lost ones.
        let attempt_executors = Arc::new(Mutex::new(Vec::new()));
        let executors = Arc::clone(&attempt_executors);
        let started = stream::once(async move {
            let mut physical = Some(physical);
            let mut retried = false;
            loop {
                let physical = match physical.take() {
                    Some(p) => p,
                    None => ctx.state().create_physical_plan(&plan).await?,
                };
                // A plan that stays on the coordinator depends on no executor.
                let live_at_start = if distributed::stage_count(&physical) > 1 {
                    registry.live_worker_urls()
                } else {
                    Vec::new()
                };
                *attempt_executors.lock().unwrap_or_else(|e| e.into_inner()) =
                    live_at_start.clone();
                let mut stream = fail_on_departure(
                    execute_stream(physical, task_ctx(&ctx.state()).map_err(to_datafusion)?)?,
                    Arc::clone(&registry),
                    live_at_start.clone(),
                );
                let first = deadline.run(stream.next()).await.map_err(to_datafusion)?;
                if let Some(Err(e)) = &first
                    && !retried
                    && may_be_lost_executor(e)
                {
                    let lost = registry.lost_since(&live_at_start).await;
                    if !lost.is_empty() {
                        tracing::warn!(?lost, error = %e, "executor lost before the first row: running the query again");
                        retried = true;
                        if registry.live_worker_urls().is_empty() {
                            return Err(to_datafusion(QuiverError::Unavailable(
                                "no live executors left to run the query on".into(),
                            )));
                        }
                        continue;
                    }
                }
                return Ok(stream::iter(first).chain(stream));
            }
        })
        .try_flatten()
        // The query keeps its admission slot until its stream ends or is dropped.
        .map(move |item| {
            let _slot = &slot;
            item
        });
        let batches = deadline.bound(started);
        Ok(conform(
            batches,
            statement.schema,
            Arc::clone(&self.registry),
            executors,
        ))
    }

    /// The task context of one new query planned in `state`.
    pub(crate) fn task_ctx(&self, state: &SessionState) -> Result<Arc<TaskContext>> {
        query_task_ctx(state, &self.memory, self.stage_timeout)
    }

    async fn explain(&self, plan: &LogicalPlan, analyze: bool) -> Result<RecordBatch> {
        let _slot = if analyze {
            self.require_executors(plan)?;
            Some(self.admission.admit().await?)
        } else {
            None
        };
        let mut state = if analyze {
            distributed::with_metrics(self.ctx.state())?
        } else {
            self.ctx.state()
        };
        let placements = Arc::new(TaskPlacements::default());
        state.config_mut().set_extension(Arc::clone(&placements));
        let physical: Arc<dyn ExecutionPlan> = state.create_physical_plan(plan).await?;
        let stages = distributed::stage_count(&physical);
        let rendered = if analyze {
            // Run to completion, discarding rows, then show the per-task metrics.
            collect(Arc::clone(&physical), self.task_ctx(&state)?).await?;
            distributed::render_analyzed_plan(physical).await?
        } else {
            distributed::render_plan(physical.as_ref())
        };
        let executors = self
            .registry
            .live_worker_urls()
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let (kinds, texts): (Vec<&str>, Vec<String>) = [
            (
                if analyze {
                    "analyzed_plan"
                } else {
                    "distributed_plan"
                },
                rendered,
            ),
            ("stages", stages.to_string()),
            // Tasks of every stage but the head one are spread over these at execution time.
            ("executors", executors),
        ]
        .into_iter()
        .chain(analyze.then(|| ("task_placement", placements.render())))
        .unzip();
        Ok(RecordBatch::try_new(
            explain_schema(),
            vec![
                Arc::new(StringArray::from(kinds)),
                Arc::new(StringArray::from(texts)),
            ],
        )?)
    }

    /// Fails fast, before a client fetches, if the statement cannot run now.
    pub(crate) fn check_runnable(&self, statement: &Statement) -> Result<()> {
        if !statement.parameters.is_empty() {
            return Err(QuiverError::InvalidArgument(format!(
                "the statement has {} parameter(s): bind values before executing it",
                statement.parameters.len()
            )));
        }
        match statement.kind {
            StatementKind::Query | StatementKind::Explain { analyze: true } => {
                self.require_executors(&statement.plan)
            }
            StatementKind::Write => match &statement.plan {
                LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmd)) => {
                    self.require_executors(&cmd.input)
                }
                LogicalPlan::Dml(dml) => self.require_executors(&dml.input),
                _ => Ok(()),
            },
            StatementKind::Ddl | StatementKind::Explain { analyze: false } => Ok(()),
        }
    }

    /// Queries that read tables need at least one live executor.
    pub(crate) fn require_executors(&self, plan: &LogicalPlan) -> Result<()> {
        let reads_tables = plan
            .exists(|node| {
                Ok(matches!(node, LogicalPlan::TableScan(scan)
                    if scan.table_name.schema() != Some("information_schema")))
            })
            .unwrap_or(true);
        if reads_tables && self.registry.live_worker_urls().is_empty() {
            return Err(QuiverError::Unavailable(
                "no live executors in the cluster: start one with `quiver executor --coordinator <this coordinator's URL>`".into(),
            ));
        }
        Ok(())
    }

    async fn run_ddl(&self, statement: &Statement) -> Result<()> {
        let LogicalPlan::Ddl(ddl) = &statement.plan else {
            return Err(QuiverError::Internal("not a catalog statement".into()));
        };
        // What the statement names, and for creations the location recorded in the catalog.
        let (reference, created_at) = match ddl {
            DdlStatement::CreateExternalTable(cmd) => {
                (&cmd.name, Some(self.external_location(&cmd.locations)?))
            }
            DdlStatement::CreateView(cmd) => (&cmd.name, Some(String::new())),
            DdlStatement::DropTable(DropTable { name, .. })
            | DdlStatement::DropView(DropView { name, .. }) => (name, None),
            other => {
                return Err(QuiverError::Internal(format!(
                    "not a catalog statement: {}",
                    other.name()
                )));
            }
        };
        let name = table_name(reference)?;
        let mut guard = self.catalog.lock().await;
        if guard.is_flag_table(&name) {
            return Err(QuiverError::InvalidArgument(format!(
                "table '{name}' is defined by a --table flag: change the flag instead of using SQL"
            )));
        }
        let previous = guard.get(&name).cloned();
        let Some(url) = created_at else {
            let existed = self.ctx.table_exist(reference.clone())?;
            self.ctx
                .execute_logical_plan(statement.plan.clone())
                .await?;
            guard.remove(&name)?;
            drop(guard);
            if let Some(previous) = previous {
                self.discard_files(&previous).await;
            }
            if existed {
                tracing::info!(table = %name, "dropped");
            }
            return Ok(());
        };
        if let Some(root) = object_stores::store_root(&url)? {
            let options = guard.store_options(&root);
            object_stores::ensure_registered(self.ctx.runtime_env().as_ref(), &root, &options)?;
        }
        let existed = self.ctx.table_exist(reference.clone())?;
        self.ctx
            .execute_logical_plan(statement.plan.clone())
            .await?;
        let replaced = matches!(ddl, DdlStatement::CreateExternalTable(c) if c.or_replace)
            || matches!(ddl, DdlStatement::CreateView(c) if c.or_replace);
        if existed && !replaced {
            // IF NOT EXISTS on an existing table: nothing changed.
            return Ok(());
        }
        let def = TableDef {
            name: name.clone(),
            url,
            format: None,
            options: Default::default(),
            ddl: Some(statement.sql.clone()),
            managed: false,
            files: Vec::new(),
        };
        if let Err(e) = guard.add(def) {
            // Keep memory and disk in agreement: what is not persisted does not exist.
            let _ = self.ctx.deregister_table(reference.clone());
            return Err(e);
        }
        drop(guard);
        if let Some(previous) = previous {
            self.discard_files(&previous).await;
        }
        tracing::info!(table = %name, "created");
        Ok(())
    }

    /// The one location of `CREATE EXTERNAL TABLE`, which every executor must resolve alike.
    fn external_location(&self, locations: &[String]) -> Result<String> {
        let [location] = locations else {
            return Err(QuiverError::Unsupported(
                "CREATE EXTERNAL TABLE with several locations is not supported".into(),
            ));
        };
        let remote = object_stores::store_root(location)?.is_some();
        if !remote && !location.starts_with("file://") && !location.starts_with('/') {
            return Err(QuiverError::InvalidArgument(format!(
                "LOCATION '{location}' must be an absolute path or a URL: every executor resolves it"
            )));
        }
        if let Some(policy) = &self.locations {
            policy.check(location)?;
        }
        Ok(location.clone())
    }
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

    /// Awaits `fut` unless the deadline passes first.
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
                Err(e) => Some((
                    Err(DataFusionError::External(Box::new(e.to_status()))),
                    None,
                )),
            }
        })
        .boxed()
    }
}

/// Re-labels every batch with the announced schema (casting views to plain types). An error a
/// lost executor explains becomes `Unavailable` naming the executors that no longer answer.
fn conform(
    stream: impl Stream<Item = DFResult<RecordBatch>> + Send + 'static,
    schema: SchemaRef,
    registry: Arc<ExecutorRegistry>,
    executors: Arc<Mutex<Vec<Url>>>,
) -> QueryStream {
    let target = Arc::clone(&schema);
    let batches = stream
        .then(move |batch| {
            let target = Arc::clone(&target);
            let registry = Arc::clone(&registry);
            let executors = Arc::clone(&executors);
            async move {
                match batch {
                    Ok(batch) => Ok(cast_batch(&batch, &target)?),
                    Err(e) if may_be_lost_executor(&e) => {
                        let live_at_start =
                            executors.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let lost = registry.lost_since(&live_at_start).await;
                        if lost.is_empty() {
                            return Err(e.into());
                        }
                        let lost: Vec<&str> = lost
                            .iter()
                            .map(|u| u.as_str().trim_end_matches('/'))
                            .collect();
                        Err(QuiverError::Unavailable(format!(
                            "executor {} was lost while the query ran; run it again: {e}",
                            lost.join(", ")
                        )))
                    }
                    Err(e) => Err(e.into()),
                }
            }
        })
        .boxed();
    QueryStream { schema, batches }
}

/// Ends a query's stream with `Unavailable` as soon as one of `executors` leaves the live set
/// (missed heartbeats or a failed probe), whatever the data path noticed: a dead executor must
/// never leave the query waiting. Dropping the stream stops the query's remaining tasks.
fn fail_on_departure(
    stream: SendableRecordBatchStream,
    registry: Arc<ExecutorRegistry>,
    executors: Vec<Url>,
) -> BoxStream<'static, DFResult<RecordBatch>> {
    let departures = registry.departures();
    stream::unfold(Some((stream, departures)), move |state| {
        let registry = Arc::clone(&registry);
        let executors = executors.clone();
        async move {
            let (mut stream, mut departures) = state?;
            loop {
                tokio::select! {
                    item = stream.next() => return item.map(|item| (item, Some((stream, departures)))),
                    changed = departures.changed() => {
                        if changed.is_err() {
                            // The registry is gone (shutdown): just run the query out.
                            let item = stream.next().await;
                            return item.map(|item| (item, None));
                        }
                        let live = registry.live_worker_urls();
                        let lost: Vec<&str> = executors
                            .iter()
                            .filter(|url| !live.contains(url))
                            .map(|url| url.as_str().trim_end_matches('/'))
                            .collect();
                        if !lost.is_empty() {
                            let e = QuiverError::Unavailable(format!(
                                "executor {} left the cluster while the query ran",
                                lost.join(", ")
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

/// The task context of one new query: its own id and runtime.
fn query_task_ctx(
    state: &SessionState,
    memory: &QueryMemory,
    stage_timeout: Option<Duration>,
) -> Result<Arc<TaskContext>> {
    let query_id = uuid::Uuid::new_v4().to_string();
    Ok(distributed::query_task_ctx(
        state,
        memory.for_query()?,
        &query_id,
        stage_timeout,
    )?)
}

/// Carries a Quiver error (with its status code) through DataFusion's error type.
fn to_datafusion(e: QuiverError) -> DataFusionError {
    DataFusionError::External(Box::new(e.to_status()))
}

/// Errors that a vanished executor explains: transport failures surfacing from the network
/// operators. Only a hint: callers act on it only if an executor really stopped answering.
fn may_be_lost_executor(e: &DataFusionError) -> bool {
    matches!(
        datafusion_status(e).code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

fn classify(plan: &LogicalPlan) -> Result<StatementKind> {
    let unsupported = |what: &str| {
        Err(QuiverError::Unsupported(format!(
            "{what} is not supported; Quiver runs queries, EXPLAIN, CREATE [EXTERNAL] TABLE, CREATE TABLE AS, INSERT INTO/OVERWRITE, CREATE VIEW and DROP TABLE/VIEW"
        )))
    };
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmd)) if cmd.temporary => {
            unsupported("CREATE TEMPORARY TABLE")
        }
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(_)) => Ok(StatementKind::Write),
        LogicalPlan::Dml(dml) if matches!(dml.op, WriteOp::Insert(_)) => Ok(StatementKind::Write),
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) if cmd.temporary => {
            unsupported("CREATE TEMPORARY EXTERNAL TABLE")
        }
        LogicalPlan::Ddl(DdlStatement::CreateView(cmd)) if cmd.temporary => {
            unsupported("CREATE TEMPORARY VIEW")
        }
        LogicalPlan::Ddl(
            DdlStatement::CreateExternalTable(_)
            | DdlStatement::DropTable(_)
            | DdlStatement::CreateView(_)
            | DdlStatement::DropView(_),
        ) => Ok(StatementKind::Ddl),
        LogicalPlan::Ddl(other) => unsupported(other.name()),
        LogicalPlan::Dml(dml) => unsupported(&dml.op.to_string()),
        // COPY writes files wherever the server can, and SET changes the shared session's
        // runtime settings for every client: neither is a client's to do.
        LogicalPlan::Copy(_) => Err(QuiverError::PermissionDenied(
            "COPY writes files on the server and is not allowed; read results through Flight SQL, or write tables with CREATE TABLE AS / INSERT".into(),
        )),
        LogicalPlan::Statement(
            LogicalStatement::SetVariable(_) | LogicalStatement::ResetVariable(_),
        ) => {
            Err(QuiverError::PermissionDenied(
                "changing runtime settings with SET/RESET is not allowed; the server's settings apply to every query".into(),
            ))
        }
        LogicalPlan::Statement(_) => {
            unsupported("PREPARE / EXECUTE / transaction statements")
        }
        LogicalPlan::Explain(_) => Ok(StatementKind::Explain { analyze: false }),
        LogicalPlan::Analyze(_) => Ok(StatementKind::Explain { analyze: true }),
        _ => Ok(StatementKind::Query),
    }
}

/// The statement's placeholders as `$1..$n` fields, in position order, each with whether its
/// type was inferred.
fn parameter_fields(plan: &LogicalPlan) -> Result<Vec<(Field, bool)>> {
    let mut found: Vec<(usize, Field, bool)> = Vec::new();
    for (name, field) in plan.get_parameter_fields()? {
        let position = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                QuiverError::InvalidArgument(format!(
                    "placeholder {name}: use ? or $1, $2, ... (named placeholders are not supported)"
                ))
            })?;
        let inferred = field
            .map(|f| f.data_type().clone())
            .filter(|t| t != &DataType::Null);
        let typed = inferred.is_some();
        let data_type = inferred.unwrap_or(DataType::Utf8);
        found.push((
            position,
            Field::new(name, plain_type(&data_type), true),
            typed,
        ));
    }
    found.sort_by_key(|(position, _, _)| *position);
    if found
        .iter()
        .enumerate()
        .any(|(i, (position, _, _))| *position != i + 1)
    {
        return Err(QuiverError::InvalidArgument(
            "placeholders must be numbered $1..$n without gaps".into(),
        ));
    }
    Ok(found
        .into_iter()
        .map(|(_, field, typed)| (field, typed))
        .collect())
}

fn explain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]))
}

/// The table part of a reference inside Quiver's one catalog and schema.
pub(crate) fn table_name(reference: &TableReference) -> Result<String> {
    let in_quiver = reference.catalog().is_none_or(|c| c == CATALOG_NAME)
        && reference.schema().is_none_or(|s| s == SCHEMA_NAME);
    if !in_quiver {
        return Err(QuiverError::InvalidArgument(format!(
            "tables live in {CATALOG_NAME}.{SCHEMA_NAME}; '{reference}' is outside it"
        )));
    }
    Ok(reference.table().to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datafusion::execution::runtime_env::RuntimeEnv;
    use futures::TryStreamExt;

    use super::*;
    use crate::planner::settings;

    fn engine(dir: &std::path::Path) -> QueryEngine {
        let registry = ExecutorRegistry::new(
            Duration::from_secs(10),
            crate::security::cluster_auth::ClusterAuth::open(),
        );
        let state = distributed::coordinator_state(
            settings::session_config(2).unwrap(),
            Arc::new(RuntimeEnv::default()),
            Arc::clone(&registry),
            1 << 20,
            None,
            crate::security::cluster_auth::ClusterAuth::open(),
        )
        .unwrap();
        let catalog = Catalog::load(Some(dir.join("catalog.toml")), vec![]).unwrap();
        QueryEngine::new(
            SessionContext::new_with_state(state),
            Arc::new(catalog),
            registry,
            QueryLimits {
                timeout: None,
                stage_timeout: None,
                memory: Arc::new(QueryMemory::new(Arc::new(RuntimeEnv::default()), None)),
            },
            None,
            Admission::new(0, 0),
            None,
        )
    }

    #[tokio::test]
    async fn prepare_classifies_without_side_effects() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path());
        let ddl = format!(
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}/t.csv'",
            dir.path().display()
        );
        std::fs::write(dir.path().join("t.csv"), "a,b\n1,x\n2,y\n").unwrap();

        let statement = engine.prepare(&ddl).await.unwrap();
        assert_eq!(statement.kind, StatementKind::Ddl);
        assert!(statement.schema.fields().is_empty());
        assert!(
            !engine.session().table_exist("t").unwrap(),
            "prepare must not run DDL"
        );
        assert!(!dir.path().join("catalog.toml").exists());

        let explain = engine.prepare("EXPLAIN SELECT 1").await.unwrap();
        assert_eq!(explain.kind, StatementKind::Explain { analyze: false });
        assert_eq!(explain.schema.fields().len(), 2);

        for (statement, code) in [
            (
                "COPY (SELECT 1) TO '/tmp/never.parquet'",
                tonic::Code::PermissionDenied,
            ),
            (
                "SET datafusion.execution.batch_size = 1",
                tonic::Code::PermissionDenied,
            ),
            (
                "CREATE TEMPORARY TABLE m AS SELECT 1",
                tonic::Code::Unimplemented,
            ),
        ] {
            let err = engine.prepare(statement).await.unwrap_err();
            assert_eq!(err.to_status().code(), code, "{statement}");
        }
        let select = engine.prepare("SELECT 1").await.unwrap();
        let err = engine.execute_update(&select).await.unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);

        // Writes need a warehouse.
        let ctas = engine
            .prepare("CREATE TABLE m AS SELECT 1 AS a")
            .await
            .unwrap();
        assert_eq!(ctas.kind, StatementKind::Write);
        let err = engine.execute_update(&ctas).await.unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::FailedPrecondition);

        // Running the DDL creates and persists the table; reading it needs an executor.
        assert_eq!(engine.execute_update(&statement).await.unwrap(), 0);
        assert!(engine.session().table_exist("t").unwrap());
        let persisted = std::fs::read_to_string(dir.path().join("catalog.toml")).unwrap();
        assert!(persisted.contains("name = \"t\""), "{persisted}");
        // External tables are read-only.
        let insert = engine
            .prepare("INSERT INTO t VALUES (3, 'z')")
            .await
            .unwrap();
        let err = engine.execute_update(&insert).await.unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
        let scan = engine.prepare("SELECT count(*) FROM t").await.unwrap();
        let err = engine.check_runnable(&scan).unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::Unavailable);

        // Constant queries run on the coordinator, views become plain Utf8.
        let one = engine.prepare("SELECT 'a' AS s").await.unwrap();
        engine.check_runnable(&one).unwrap();
        let result = engine.execute_statement(one).await.unwrap();
        assert_eq!(result.schema.field(0).data_type(), &DataType::Utf8);
        let batches: Vec<RecordBatch> = result.batches.try_collect().await.unwrap();
        assert_eq!(batches[0].num_rows(), 1);
    }
}
