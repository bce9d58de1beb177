//! The coordinator's query engine: what the Flight SQL front door talks to.
//!
//! [`QueryService::prepare`] turns SQL into a [`Statement`] without side effects (DDL included),
//! so it can back `CreatePreparedStatement` and `GetFlightInfo`; [`QueryService::bind`] binds
//! parameter values; [`QueryService::execute`] runs a statement and returns its result
//! as a stream whose schema is exactly the one `prepare` announced (plain Arrow types, see
//! [`crate::arrow_compat`]). Results stream as the head stage produces them and dropping the
//! stream cancels the query on every executor.
//!
//! Statements ([`statement`]): queries, `EXPLAIN [ANALYZE]` ([`explain`], showing the distributed
//! plan), the catalog DDL `CREATE EXTERNAL TABLE`, `CREATE VIEW`, `DROP TABLE`, `DROP VIEW`
//! ([`ddl`], persisted in the catalog), and writes ([`writes`]: `CREATE TABLE [AS]
//! [PARTITIONED BY]`, `INSERT INTO/OVERWRITE`, `COPY … TO`, bulk ingest), which executors write
//! in parallel and the coordinator commits once. `SET` answers `PermissionDenied`; other DDL and
//! DML `Unimplemented`.
//!
//! Every plan that runs on the cluster (queries, `EXPLAIN ANALYZE`, every write's input) runs
//! through the one [`run::PlanRunner`], which gives them all the same guarantees: admission and
//! the query deadline, stage deadlines, the departure watchdog on the executors the run uses,
//! errors naming a lost executor, and a rerun when one is lost before anything was shown. An
//! uncorrelated scalar subquery is such a run of its own, before its query is planned with its
//! value ([`scalar_subqueries`]).

mod api;
mod ddl;
mod explain;
mod placeholders;
mod run;
mod scalar_subqueries;
mod statement;
mod writes;

#[cfg(test)]
pub(crate) use api::in_process_engine;
pub(crate) use api::{CatalogListing, PlannedQuery, QueryService, TableKind, TableListing};
pub(crate) use statement::{Procedure, Statement, StatementKind};
pub(crate) use writes::{IfExists, IfMissing, WriteSettings};

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::FlightData;
use async_trait::async_trait;
use datafusion::common::TableReference;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use crate::cluster::membership::ExecutorRegistry;
use crate::config::LocationPolicy;
use crate::error::{QuiverError, Result};
use crate::planner::settings::{CATALOG_NAME, SCHEMA_NAME};
use crate::resources::{Admission, QueryMemory};
use crate::storage::catalog::Catalog;
use crate::storage::warehouse::Warehouse;
use run::PlanRunner;
use writes::TableWriter;

/// A result: its schema and its parts, each already in that schema.
pub(crate) struct QueryStream {
    pub(crate) schema: SchemaRef,
    pub(crate) parts: BoxStream<'static, Result<ResultPart>>,
}

impl QueryStream {
    pub(crate) fn from_batches(
        schema: SchemaRef,
        batches: BoxStream<'static, Result<RecordBatch>>,
    ) -> Self {
        Self {
            schema,
            parts: batches.map_ok(ResultPart::Batch).boxed(),
        }
    }
}

#[cfg(test)]
impl QueryStream {
    /// The decoded batches of a result that forwards no encoded message.
    pub(crate) async fn collect_batches(self) -> Result<Vec<RecordBatch>> {
        self.parts
            .map(|part| match part? {
                ResultPart::Batch(batch) => Ok(batch),
                ResultPart::Encoded(_) => Err(QuiverError::Internal("an encoded message".into())),
            })
            .try_collect()
            .await
    }
}

/// A piece of a result.
#[derive(Debug)]
pub(crate) enum ResultPart {
    Batch(RecordBatch),
    /// An executor's Arrow IPC record batch message, as it goes to the client (pass-through):
    /// plain types, uncompressed, of the result's schema.
    Encoded(FlightData),
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("schema", &self.schema)
            .finish()
    }
}

pub(crate) struct QueryEngine {
    /// The planning session; it holds the catalog's tables.
    ctx: SessionContext,
    catalog: Arc<Catalog>,
    /// Runs every plan that reaches the cluster.
    runner: Arc<PlanRunner>,
    /// Writes and commits managed tables.
    writer: TableWriter,
    /// Where `CREATE EXTERNAL TABLE` may point; `None` allows any location.
    locations: Option<LocationPolicy>,
}

/// What bounds each query the engine runs.
#[derive(Debug)]
pub(crate) struct QueryLimits {
    /// From admission to the last batch; `None` is no limit.
    pub(crate) timeout: Option<Duration>,
    /// Each stage on an executor; `None` is no limit.
    pub(crate) stage_timeout: Option<Duration>,
    /// Each query's runtime and memory pool on the coordinator.
    pub(crate) memory: Arc<QueryMemory>,
    /// How writes roll their files (and the test-only commit pause).
    pub(crate) writes: WriteSettings,
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
        let runner = Arc::new(PlanRunner::new(
            registry,
            limits.memory,
            limits.timeout,
            limits.stage_timeout,
            admission,
        ));
        let writer = TableWriter::new(
            ctx.clone(),
            Arc::clone(&catalog),
            Arc::clone(&runner),
            warehouse,
            locations.clone(),
            limits.writes,
        );
        Self {
            ctx,
            catalog,
            runner,
            writer,
            locations,
        }
    }

    /// Queries that read tables need at least one live executor.
    fn require_executors(&self, plan: &LogicalPlan) -> Result<()> {
        require_executors(self.runner.registry(), plan)
    }

    /// Runs a statement ([`QueryService::execute`]); a query's first attempt runs `physical` when
    /// it was planned already ([`QueryService::execute_planned`]).
    async fn run_statement(
        &self,
        statement: Statement,
        physical: Option<Arc<dyn ExecutionPlan>>,
    ) -> Result<QueryStream> {
        self.check_runnable(&statement)?;
        match statement.kind {
            StatementKind::Ddl | StatementKind::Write => {
                self.execute_update(&statement).await?;
                Ok(QueryStream::from_batches(
                    statement.schema,
                    stream::empty().boxed(),
                ))
            }
            StatementKind::Query => {
                self.runner
                    .stream(
                        &self.ctx,
                        &statement.plan,
                        statement.schema,
                        physical,
                        statement.tracker,
                    )
                    .await
            }
            StatementKind::Explain { analyze } => {
                let inner = match &statement.plan {
                    LogicalPlan::Explain(e) => Arc::clone(&e.plan),
                    LogicalPlan::Analyze(a) => Arc::clone(&a.input),
                    _ => return Err(QuiverError::Internal("explain without a plan".into())),
                };
                // A write explains as the plan it runs: where it writes, on how many tasks.
                let inner = if statement::classify(&inner)? == StatementKind::Write {
                    if analyze {
                        return Err(QuiverError::Unsupported(
                            "EXPLAIN ANALYZE of a write is not supported (it would write): use EXPLAIN".into(),
                        ));
                    }
                    let write = statement.clone().with_plan(inner.as_ref().clone());
                    Arc::new(self.writer.explain_plan(&write).await?)
                } else {
                    inner
                };
                let batch = explain::explain(&self.ctx, &self.runner, &inner, analyze).await?;
                Ok(QueryStream::from_batches(
                    statement.schema,
                    stream::once(async { Ok(batch) }).boxed(),
                ))
            }
        }
    }
}

/// The engine's API: see [`QueryService`].
#[async_trait]
impl QueryService for QueryEngine {
    /// Plans `sql` without running it or changing anything.
    async fn prepare(&self, sql: &str) -> Result<Statement> {
        Statement::plan(&self.ctx.state(), sql).await
    }

    /// Binds the first row of `values` to the statement's placeholders, by position.
    fn bind(&self, statement: Statement, values: &RecordBatch) -> Result<Statement> {
        statement.bind(values)
    }

    /// Runs a statement that returns no rows (DDL, writes) and returns the affected row count
    /// (0 for DDL).
    async fn execute_update(&self, statement: &Statement) -> Result<i64> {
        self.check_runnable(statement)?;
        match statement.kind {
            StatementKind::Ddl if statement.procedure.is_some() => Err(QuiverError::Internal(
                "a CALL reached the engine: the front door runs procedures".into(),
            )),
            StatementKind::Ddl => {
                ddl::run(
                    &self.ctx,
                    &self.catalog,
                    self.locations.as_ref(),
                    &self.writer,
                    statement,
                )
                .await?;
                Ok(0)
            }
            StatementKind::Write => {
                let rows = self.writer.run_write(statement).await?;
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
    async fn execute(&self, statement: Statement) -> Result<QueryStream> {
        self.run_statement(statement, None).await
    }

    /// Plans a query down to its physical plan, under the deadline a query's planning has; an
    /// `EXPLAIN` is kept as it is (explaining is its run).
    async fn plan_query(&self, statement: Statement) -> Result<PlannedQuery> {
        self.check_runnable(&statement)?;
        let physical = match statement.kind {
            // Scalar subqueries run when the query does, under its admission slot.
            StatementKind::Query
                if !scalar_subqueries::to_run_first(&statement.plan).is_empty() =>
            {
                None
            }
            StatementKind::Query => Some(
                self.runner
                    .deadline()
                    .run(self.ctx.state().create_physical_plan(&statement.plan))
                    .await??,
            ),
            StatementKind::Explain { .. } => None,
            StatementKind::Ddl | StatementKind::Write => {
                return Err(QuiverError::InvalidArgument(
                    "this statement returns no rows: run it as an update, not as a query".into(),
                ));
            }
        };
        Ok(PlannedQuery {
            statement,
            physical,
        })
    }

    /// Compares every table the plan scans (subqueries and views included) with the table of
    /// that name now: a commit, DDL or drop registers a new one (managed tables are immutable
    /// snapshots of their files, so a plan over a replaced one may read deleted files).
    /// `information_schema` and `system` are computed when read, and their tables are built anew
    /// on every lookup: not compared.
    async fn is_current(&self, planned: &PlannedQuery) -> bool {
        let mut scans = Vec::new();
        let walked = planned.statement.plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && !matches!(
                    scan.table_name.schema(),
                    Some("information_schema" | "system")
                )
            {
                scans.push((scan.table_name.clone(), Arc::clone(&scan.source)));
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if walked.is_err() {
            return false;
        }
        for (name, source) in scans {
            let Ok(planned_with) = source_as_provider(&source) else {
                return false;
            };
            let Ok(now) = self.ctx.table_provider(name).await else {
                return false;
            };
            // The data pointers: the same table whatever vtable the Arcs were made with.
            if !std::ptr::eq(
                Arc::as_ptr(&planned_with).cast::<()>(),
                Arc::as_ptr(&now).cast::<()>(),
            ) {
                return false;
            }
        }
        true
    }

    /// Runs the physical plan made at planning for the query's first attempt; the checks of
    /// [`QueryService::execute`] run again (executors may have left since).
    async fn execute_planned(&self, planned: PlannedQuery) -> Result<QueryStream> {
        self.run_statement(planned.statement, planned.physical)
            .await
    }

    /// Bulk ingest of a client's batches into `table`; returns the rows written.
    async fn ingest(
        &self,
        table: &str,
        if_missing: IfMissing,
        if_exists: IfExists,
        incoming: SchemaRef,
        batches: BoxStream<'static, Result<RecordBatch>>,
    ) -> Result<u64> {
        self.writer
            .ingest(table, if_missing, if_exists, incoming, batches)
            .await
    }

    /// Fails fast, before a client fetches, if the statement cannot run now.
    fn check_runnable(&self, statement: &Statement) -> Result<()> {
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
                LogicalPlan::Copy(copy) => self.require_executors(&copy.input),
                _ => Ok(()),
            },
            StatementKind::Ddl | StatementKind::Explain { analyze: false } => Ok(()),
        }
    }

    fn catalogs(&self) -> Vec<CatalogListing> {
        api::list_catalogs(&self.ctx)
    }

    async fn tables(&self) -> Result<Vec<TableListing>> {
        api::list_tables(&self.ctx).await
    }
}

/// Plans that read tables need at least one live executor.
fn require_executors(registry: &ExecutorRegistry, plan: &LogicalPlan) -> Result<()> {
    let reads_tables = plan
        .exists(|node| {
            Ok(matches!(node, LogicalPlan::TableScan(scan)
                if !matches!(scan.table_name.schema(), Some("information_schema" | "system"))))
        })
        .unwrap_or(true);
    if reads_tables && registry.live_worker_urls().is_empty() {
        return Err(QuiverError::Unavailable(
            "no live executors in the cluster: start one with `quiver executor --coordinator <this coordinator's URL>`".into(),
        ));
    }
    Ok(())
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
    use futures::TryStreamExt;

    use arrow::datatypes::DataType;

    use super::*;

    #[tokio::test]
    async fn prepare_classifies_without_side_effects() {
        let dir = tempfile::tempdir().unwrap();
        let engine = in_process_engine(dir.path());
        let ddl = format!(
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}/t.csv'",
            dir.path().display()
        );
        std::fs::write(dir.path().join("t.csv"), "a,b\n1,x\n2,y\n").unwrap();

        let statement = engine.prepare(&ddl).await.unwrap();
        assert_eq!(statement.kind, StatementKind::Ddl);
        assert!(statement.schema.fields().is_empty());
        assert!(
            !engine.ctx.table_exist("t").unwrap(),
            "prepare must not run DDL"
        );
        assert!(!dir.path().join("catalog.toml").exists());

        let explain = engine.prepare("EXPLAIN SELECT 1").await.unwrap();
        assert_eq!(explain.kind, StatementKind::Explain { analyze: false });
        assert_eq!(explain.schema.fields().len(), 2);

        // COPY plans as a write; without a [locations] copy_targets policy it may not run.
        let copy = engine
            .prepare("COPY (SELECT 1 AS a) TO '/tmp/never/' STORED AS PARQUET")
            .await
            .unwrap();
        assert_eq!(copy.kind, StatementKind::Write);
        let err = engine.execute_update(&copy).await.unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::PermissionDenied);
        assert!(!std::path::Path::new("/tmp/never").exists());
        for (statement, code) in [
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
        assert!(engine.ctx.table_exist("t").unwrap());
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
        let result = engine.execute(one).await.unwrap();
        assert_eq!(result.schema.field(0).data_type(), &DataType::Utf8);
        let parts: Vec<ResultPart> = result.parts.try_collect().await.unwrap();
        let [ResultPart::Batch(batch)] = &parts[..] else {
            panic!("one decoded batch expected: {parts:?}");
        };
        assert_eq!(batch.num_rows(), 1);
    }

    #[tokio::test]
    async fn a_query_planned_ahead_runs_its_plan_until_a_table_it_reads_changes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = in_process_engine(dir.path());

        // Planned under the rules of execute: updates are refused, unbound parameters too.
        let ddl = engine
            .prepare("CREATE VIEW v AS SELECT 1 AS x")
            .await
            .unwrap();
        let err = engine.plan_query(ddl).await.err().unwrap();
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
        let unbound = engine.prepare("SELECT $1 AS p").await.unwrap();
        let err = engine.plan_query(unbound).await.err().unwrap();
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);

        let planned = engine.plan_query(engine.prepare("SELECT 'a' AS s").await.unwrap());
        let planned = planned.await.unwrap();
        assert!(planned.physical.is_some());
        assert!(engine.is_current(&planned).await);
        let result = engine.execute_planned(planned).await.unwrap();
        assert_eq!(result.schema.field(0).data_type(), &DataType::Utf8);
        let batches = result.collect_batches().await.unwrap();
        assert_eq!(batches[0].num_rows(), 1);

        // A scalar subquery run first runs with its query, under its admission slot: planned at
        // execute. One that stays a join is planned ahead. Both announce nullable columns.
        let values = "(VALUES (CAST(1 AS BIGINT)), (5)) v(x)";
        for (sql, ahead) in [
            (
                format!("SELECT x AS top FROM {values} WHERE x = (SELECT max(x) FROM {values})"),
                false,
            ),
            (format!("SELECT (SELECT max(x) FROM {values}) AS top"), true),
        ] {
            let planned = engine.plan_query(engine.prepare(&sql).await.unwrap());
            let planned = planned.await.unwrap();
            assert_eq!(planned.physical.is_some(), ahead, "{sql}");
            assert!(planned.statement.schema.field(0).is_nullable(), "{sql}");
            let result = engine.execute_planned(planned).await.unwrap();
            let batches = result.collect_batches().await.unwrap();
            let top = batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .map(|a| a.value(0));
            assert_eq!(top, Some(5), "{sql}");
        }

        let explain = engine.prepare("EXPLAIN SELECT 1").await.unwrap();
        let explain = engine.plan_query(explain).await.unwrap();
        assert!(explain.physical.is_none(), "explaining is its run");
        let result = engine.execute_planned(explain).await.unwrap();
        let batches = result.collect_batches().await.unwrap();
        assert!(batches[0].num_rows() > 0);

        // A plan over a table (built here: reading one needs an executor to run, not to plan
        // or compare) is current until the table is replaced.
        std::fs::write(dir.path().join("t.csv"), "a,b\n1,x\n").unwrap();
        let create = format!(
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}/t.csv'",
            dir.path().display()
        );
        engine
            .execute_update(&engine.prepare(&create).await.unwrap())
            .await
            .unwrap();
        let scan = PlannedQuery {
            statement: engine
                .prepare("SELECT a FROM t WHERE a IN (SELECT a FROM t)")
                .await
                .unwrap(),
            physical: None,
        };
        assert!(engine.is_current(&scan).await);
        engine
            .execute_update(&engine.prepare("DROP TABLE t").await.unwrap())
            .await
            .unwrap();
        assert!(!engine.is_current(&scan).await, "a dropped table");
        engine
            .execute_update(&engine.prepare(&create).await.unwrap())
            .await
            .unwrap();
        assert!(!engine.is_current(&scan).await, "a table made anew");
        let info = PlannedQuery {
            statement: engine
                .prepare("SELECT table_name FROM information_schema.tables")
                .await
                .unwrap(),
            physical: None,
        };
        assert!(engine.is_current(&info).await);
    }
}
