//! The `system` schema of the `quiver` catalog: the cluster's state as tables any client can
//! query with SQL.
//!
//! * `system.queries`: the [`QueryLog`]: running queries, then the bounded history of ended ones;
//! * `system.executors`: the live executor set;
//! * `system.tables`: the tables of `quiver.public`, with their files and bytes (managed tables
//!   from the catalog, external tables by listing their location).
//!
//! Every scan reads a fresh snapshot; the tables cannot be written or dropped. Their scans are
//! in-memory sources, so a query over them alone runs on the coordinator and needs no executor.
//! Every user sees every query of `system.queries` (SQL text included), as with the status page.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use futures::{StreamExt, TryStreamExt};

use crate::cluster::membership::ExecutorRegistry;
use crate::ops::queries::QueryLog;
use crate::planner::settings::{CATALOG_NAME, SCHEMA_NAME};
use crate::storage::managed_table::ManagedTable;

/// The schema's name in the `quiver` catalog.
pub(crate) const SYSTEM_SCHEMA: &str = "system";

/// Most files listed per external table for `system.tables` (beyond it the count is a floor).
const MAX_LISTED_FILES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Queries,
    Executors,
    Tables,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Queries, Kind::Executors, Kind::Tables];

    fn name(self) -> &'static str {
        match self {
            Kind::Queries => "queries",
            Kind::Executors => "executors",
            Kind::Tables => "tables",
        }
    }

    fn schema(self) -> SchemaRef {
        let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
        let count = |name: &str| Field::new(name, DataType::UInt64, false);
        let fields = match self {
            Kind::Queries => vec![
                text("query_id", false),
                text("user_name", true),
                text("sql", false),
                text("state", false),
                Field::new(
                    "started",
                    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                    false,
                ),
                count("duration_ms"),
                count("rows"),
                count("bytes"),
                text("error_code", true),
                text("error_message", true),
                text("executors", false),
                count("tasks_done"),
                count("tasks_total"),
            ],
            Kind::Executors => vec![
                text("executor_id", false),
                text("worker_url", false),
                count("last_heartbeat_age_ms"),
            ],
            Kind::Tables => vec![
                text("table_catalog", false),
                text("table_schema", false),
                text("table_name", false),
                text("table_type", false),
                text("location", true),
                Field::new("files", DataType::UInt64, true),
                Field::new("size_bytes", DataType::UInt64, true),
            ],
        };
        Arc::new(Schema::new(fields))
    }
}

/// The `system` schema provider.
#[derive(Debug)]
pub(crate) struct SystemSchema {
    log: Arc<QueryLog>,
    registry: Arc<ExecutorRegistry>,
}

impl SystemSchema {
    pub(crate) fn new(log: Arc<QueryLog>, registry: Arc<ExecutorRegistry>) -> Self {
        Self { log, registry }
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        Kind::ALL.iter().map(|k| k.name().to_string()).collect()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        Ok(Kind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
            .map(|kind| {
                Arc::new(SystemTable {
                    kind,
                    schema: kind.schema(),
                    log: Arc::clone(&self.log),
                    registry: Arc::clone(&self.registry),
                }) as Arc<dyn TableProvider>
            }))
    }

    fn table_exist(&self, name: &str) -> bool {
        Kind::ALL
            .iter()
            .any(|k| k.name().eq_ignore_ascii_case(name))
    }
}

#[derive(Debug)]
struct SystemTable {
    kind: Kind,
    schema: SchemaRef,
    log: Arc<QueryLog>,
    registry: Arc<ExecutorRegistry>,
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let columns = match self.kind {
            Kind::Queries => self.queries(),
            Kind::Executors => self.executors(),
            Kind::Tables => tables(state).await?,
        };
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?)
    }
}

fn text<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<StringArray>())
}

fn counts(values: impl IntoIterator<Item = u64>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<UInt64Array>())
}

impl SystemTable {
    fn queries(&self) -> Vec<ArrayRef> {
        let snapshot = self.log.snapshot();
        let q: Vec<_> = snapshot
            .running
            .into_iter()
            .chain(snapshot.recent)
            .collect();
        let executors: Vec<String> = q.iter().map(|i| i.executors.join(",")).collect();
        let tasks = |i: &crate::ops::queries::QueryInfo, done: bool| -> u64 {
            i.stages
                .iter()
                .map(|s| if done { s.tasks_done } else { s.tasks_total })
                .sum()
        };
        vec![
            text(q.iter().map(|i| Some(i.id.as_str()))),
            text(q.iter().map(|i| i.user.as_deref())),
            text(q.iter().map(|i| Some(i.sql.as_str()))),
            text(q.iter().map(|i| Some(i.state))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    q.iter()
                        .map(|i| i64::try_from(i.started_unix_ms).unwrap_or(i64::MAX)),
                )
                .with_timezone("UTC"),
            ),
            counts(q.iter().map(|i| i.duration_ms)),
            counts(q.iter().map(|i| i.rows)),
            counts(q.iter().map(|i| i.bytes)),
            text(q.iter().map(|i| i.error_code.as_deref())),
            text(q.iter().map(|i| i.error_message.as_deref())),
            text(executors.iter().map(|e| Some(e.as_str()))),
            counts(q.iter().map(|i| tasks(i, true))),
            counts(q.iter().map(|i| tasks(i, false))),
        ]
    }

    fn executors(&self) -> Vec<ArrayRef> {
        let live = self.registry.snapshot();
        vec![
            text(live.iter().map(|e| Some(e.executor_id.as_str()))),
            text(live.iter().map(|e| Some(e.worker_url.as_str()))),
            counts(live.iter().map(|e| e.last_heartbeat_age_ms)),
        ]
    }
}

/// One row per table of `quiver.public`.
struct TableRow {
    name: String,
    kind: &'static str,
    location: Option<String>,
    files: Option<u64>,
    bytes: Option<u64>,
}

async fn tables(session: &dyn Session) -> DFResult<Vec<ArrayRef>> {
    let state = session
        .as_any()
        .downcast_ref::<SessionState>()
        .ok_or_else(|| DataFusionError::Internal("system.tables needs a SessionState".into()))?;
    let mut rows = Vec::new();
    if let Some(schema) = state
        .catalog_list()
        .catalog(CATALOG_NAME)
        .and_then(|c| c.schema(SCHEMA_NAME))
    {
        let mut names = schema.table_names();
        names.sort();
        for name in names {
            // A table dropped while we list is not listed.
            let Some(table) = schema.table(&name).await? else {
                continue;
            };
            rows.push(describe(state, name, table.as_ref()).await);
        }
    }
    Ok(vec![
        text(rows.iter().map(|_| Some(CATALOG_NAME))),
        text(rows.iter().map(|_| Some(SCHEMA_NAME))),
        text(rows.iter().map(|r| Some(r.name.as_str()))),
        text(rows.iter().map(|r| Some(r.kind))),
        text(rows.iter().map(|r| r.location.as_deref())),
        Arc::new(rows.iter().map(|r| r.files).collect::<UInt64Array>()),
        Arc::new(rows.iter().map(|r| r.bytes).collect::<UInt64Array>()),
    ])
}

async fn describe(state: &SessionState, name: String, table: &dyn TableProvider) -> TableRow {
    let kind = match table.table_type() {
        TableType::Base => "TABLE",
        TableType::View => "VIEW",
        TableType::Temporary => "LOCAL TEMPORARY",
    };
    let mut row = TableRow {
        name,
        kind,
        location: None,
        files: None,
        bytes: None,
    };
    if let Some(managed) = (table as &dyn Any).downcast_ref::<ManagedTable>() {
        let (files, bytes) = managed.size();
        row.files = Some(files);
        row.bytes = Some(bytes);
    } else if let Some(listing) = (table as &dyn Any).downcast_ref::<ListingTable>() {
        let urls = listing.table_paths();
        row.location = Some(
            urls.iter()
                .map(|u| u.as_str().to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        let (mut files, mut bytes) = (0u64, 0u64);
        for url in urls {
            let Ok(store) = state.runtime_env().object_store(url) else {
                return row;
            };
            let listed = url.list_all_files(state, store.as_ref(), "").await;
            let Ok(stream) = listed else {
                // An unreachable location leaves the size unknown, not the whole listing failed.
                return row;
            };
            let metas: DFResult<Vec<_>> = stream.take(MAX_LISTED_FILES).try_collect().await;
            let Ok(metas) = metas else {
                return row;
            };
            files += metas.len() as u64;
            bytes += metas.iter().map(|m| m.size).sum::<u64>();
        }
        row.files = Some(files);
        row.bytes = Some(bytes);
    }
    row
}
