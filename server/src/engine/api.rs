//! The engine as the front door sees it: [`QueryService`], in Quiver's own types.
//!
//! The Flight SQL front door depends on this trait, never on the engine's own type or on DataFusion,
//! as InfluxDB 3's Flight server depends on its `QueryExecutor`: the protocol layer can then be
//! tested against an in-process engine, and the engine can change behind it. What crosses the
//! seam:
//! * statements ([`Statement`]): planned without side effects, bound to one row of values,
//!   checked, run as an update (a row count) or as a query (a [`QueryStream`] in exactly the
//!   schema `prepare` announced); the plan inside a statement stays the engine's;
//! * queries planned ahead ([`PlannedQuery`]): a query planned down to its physical plan when
//!   its `GetFlightInfo` announces it, run at its `DoGet` without planning again; the front door
//!   keeps them (its plan cache) and asks whether one is still current before running it;
//! * bulk ingest of a client's batches into a managed table;
//! * catalog, schema and table listings as plain structs; a table's columns are its Arrow
//!   schema in the types clients receive (see [`crate::arrow_compat`]).
//!
//! Errors are [`QuiverError`](crate::error::QuiverError)s; their gRPC code is decided in
//! [`crate::error`] only.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::datasource::TableType;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::stream::BoxStream;

use super::{IfExists, IfMissing, QueryStream, Statement};
use crate::arrow_compat::plain_schema;
use crate::error::Result;

/// What the front door asks of the engine.
#[async_trait]
pub(crate) trait QueryService: Send + Sync + 'static {
    /// Plans `sql` without running it or changing anything (DDL included).
    async fn prepare(&self, sql: &str) -> Result<Statement>;

    /// Binds the first row of `values` to the statement's placeholders, by position.
    fn bind(&self, statement: Statement, values: &RecordBatch) -> Result<Statement>;

    /// Fails fast, before a client fetches, if the statement cannot run now (unbound
    /// parameters, no live executor for a plan that reads tables).
    fn check_runnable(&self, statement: &Statement) -> Result<()>;

    /// Runs a statement that returns no rows (DDL, writes); returns the rows it wrote (0 for
    /// DDL).
    async fn execute_update(&self, statement: &Statement) -> Result<i64>;

    /// Runs a statement; its stream has the schema the statement announced, and dropping it
    /// cancels the query. Updates run to completion here and stream nothing.
    async fn execute(&self, statement: Statement) -> Result<QueryStream>;

    /// Plans a statement that returns rows (a query, `EXPLAIN`) as far as it can before it runs:
    /// a query down to its physical plan. Checked as [`QueryService::execute`] checks it, and
    /// runs nothing; updates are refused (they run through [`QueryService::execute_update`]).
    async fn plan_query(&self, statement: Statement) -> Result<PlannedQuery>;

    /// Whether the tables `planned` reads are still the catalog's (no commit, DDL or drop
    /// replaced one since it was planned); a plan that is not should be planned again from its
    /// SQL.
    async fn is_current(&self, planned: &PlannedQuery) -> bool;

    /// Runs a query planned by [`QueryService::plan_query`], as [`QueryService::execute`] would
    /// run its statement, without planning it again (a rerun after a lost executor does).
    async fn execute_planned(&self, planned: PlannedQuery) -> Result<QueryStream>;

    /// Bulk ingest of a client's batches (in the `incoming` schema) into `table`; returns the
    /// rows written.
    async fn ingest(
        &self,
        table: &str,
        if_missing: IfMissing,
        if_exists: IfExists,
        incoming: SchemaRef,
        batches: BoxStream<'static, Result<RecordBatch>>,
    ) -> Result<u64>;

    /// Every catalog with its schemas.
    fn catalogs(&self) -> Vec<CatalogListing>;

    /// Every table and view of every schema, with its columns.
    async fn tables(&self) -> Result<Vec<TableListing>>;
}

/// A statement that returns rows, planned ahead of its run; see [`QueryService::plan_query`].
pub(crate) struct PlannedQuery {
    pub(crate) statement: Statement,
    /// A query's physical plan, for its first attempt; `None` for `EXPLAIN`, whose run is its
    /// planning.
    pub(super) physical: Option<Arc<dyn ExecutionPlan>>,
}

/// A catalog and the names of its schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CatalogListing {
    pub(crate) name: String,
    pub(crate) schemas: Vec<String>,
}

impl CatalogListing {
    /// Whether the catalog has a schema called `schema`.
    pub(crate) fn has_schema(&self, schema: &str) -> bool {
        self.schemas.iter().any(|s| s == schema)
    }
}

/// One table or view.
#[derive(Debug, Clone)]
pub(crate) struct TableListing {
    pub(crate) catalog: String,
    pub(crate) schema: String,
    pub(crate) name: String,
    pub(crate) kind: TableKind,
    /// The columns, in the types a query over the table returns.
    pub(crate) columns: SchemaRef,
}

/// What a listed table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableKind {
    /// A table with data of its own (external or managed).
    Table,
    /// A view, or a system table computed when read (`information_schema`).
    View,
    /// A session's temporary table. Quiver refuses to create them; listed only so that a
    /// table DataFusion reports this way is not misnamed.
    Temporary,
}

/// Every catalog of `ctx` with its schemas.
pub(super) fn list_catalogs(ctx: &SessionContext) -> Vec<CatalogListing> {
    ctx.catalog_names()
        .into_iter()
        .filter_map(|name| {
            // A catalog deregistered between the two calls is simply not listed.
            let catalog = ctx.catalog(&name)?;
            Some(CatalogListing {
                name,
                schemas: catalog.schema_names(),
            })
        })
        .collect()
}

/// Every table and view of every schema of `ctx`, with its columns.
pub(super) async fn list_tables(ctx: &SessionContext) -> Result<Vec<TableListing>> {
    let mut tables = Vec::new();
    for catalog_name in ctx.catalog_names() {
        let Some(catalog) = ctx.catalog(&catalog_name) else {
            continue;
        };
        for schema_name in catalog.schema_names() {
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            for table_name in schema.table_names() {
                // A table dropped while we list is not listed.
                let Some(table) = schema.table(&table_name).await? else {
                    continue;
                };
                let kind = match table.table_type() {
                    TableType::Base => TableKind::Table,
                    TableType::View => TableKind::View,
                    TableType::Temporary => TableKind::Temporary,
                };
                tables.push(TableListing {
                    catalog: catalog_name.clone(),
                    schema: schema_name.clone(),
                    name: table_name,
                    kind,
                    columns: plain_schema(&table.schema()),
                });
            }
        }
    }
    Ok(tables)
}

/// A real engine for unit tests: no executors, no warehouse, its catalog file in `dir`. Plans
/// that read tables answer `Unavailable`; constant queries and DDL run on the coordinator.
#[cfg(test)]
pub(crate) fn in_process_engine(dir: &std::path::Path) -> super::QueryEngine {
    use std::time::Duration;

    use datafusion::execution::runtime_env::RuntimeEnv;
    use datafusion::prelude::SessionContext;

    use super::{QueryEngine, QueryLimits};
    use crate::cluster::distributed;
    use crate::cluster::membership::ExecutorRegistry;
    use crate::planner::settings;
    use crate::resources::{Admission, QueryMemory};
    use crate::security::cluster_auth::ClusterAuth;
    use crate::storage::catalog::Catalog;

    let registry = ExecutorRegistry::new(Duration::from_secs(10), ClusterAuth::open());
    let state = distributed::coordinator_state(
        settings::session_config(2).expect("the default session config is valid"),
        Arc::new(RuntimeEnv::default()),
        Arc::clone(&registry),
        distributed::StageSizes {
            scan_bytes_per_partition: 1 << 20,
            inline_broadcast_bytes: 0,
        },
        None,
        ClusterAuth::open(),
    )
    .expect("a coordinator session builds");
    let catalog = Arc::new(
        Catalog::load(Some(dir.join("catalog.toml")), vec![]).expect("an empty catalog loads"),
    );
    QueryEngine::new(
        SessionContext::new_with_state(state),
        Arc::clone(&catalog),
        registry,
        QueryLimits {
            timeout: None,
            stage_timeout: None,
            memory: Arc::new(QueryMemory::new(Arc::new(RuntimeEnv::default()), None)),
            writes: super::WriteSettings {
                staging: Arc::new(crate::sink::staging::StagingCollector::new(
                    Arc::clone(&catalog),
                    Arc::new(RuntimeEnv::default()),
                    Duration::from_secs(3600),
                )),
                target_file_bytes: crate::sink::DEFAULT_TARGET_FILE_BYTES,
                test_commit_pause: None,
            },
        },
        None,
        Admission::new(0, 0),
        None,
    )
}
