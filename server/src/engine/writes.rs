//! Writes: `CREATE TABLE [AS SELECT] [PARTITIONED BY]`, `INSERT INTO … SELECT/VALUES`,
//! `INSERT OVERWRITE`, `COPY (query) TO`, and Flight SQL bulk ingest (create, append, replace).
//!
//! Contract:
//! * the rows never pass through the coordinator (bulk ingest excepted: the client sends them
//!   there): a write is one supervised run ([`PlanRunner::run_to_end`]) of a plan whose last
//!   distributed stage writes ([`crate::sink`]): every task writes its partition of the rows
//!   into its own files (hive `col=value/` directories for partitioned tables, a new file past
//!   the target size) and reports what it wrote; the coordinator commits the reported files
//!   once. A rerun after a lost executor writes new files under a new attempt id; the dead
//!   attempt's files are never committed and are deleted;
//! * every write is journaled before it writes ([`StagingCollector`]); whatever a failed,
//!   cancelled or crashed write left is removed, at once when the write fails here, else by the
//!   collector;
//! * the commit is one step that cannot be cut in half: it runs in a task of its own, to its end,
//!   even if the client hangs up or the deadline fires, and the client's answer is its outcome.
//!   For a managed table everything that can fail or wait (the catalog lock, the checks that the
//!   table is still what the write started from, building the new table) happens before the
//!   catalog file write (atomic, fsynced, listing the new files with their rows and sizes);
//!   after it the table is re-registered (no wait) and files no longer referenced are deleted.
//!   Readers see all of a write or none. For `COPY`, files are staged under
//!   `<target>/_staging/<write id>/` and the commit moves them into the target, then writes
//!   `_SUCCESS` last (on object stores a move is a copy and a delete: readers wait for
//!   `_SUCCESS`);
//! * only managed tables are written; external tables are read-only, a coordinator without
//!   `--warehouse` refuses table writes with `FailedPrecondition`, and `COPY` writes only where
//!   the `[locations] copy_targets` policy allows (`PermissionDenied` otherwise).

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::Column;
use datafusion::logical_expr::dml::CopyTo;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    CreateMemoryTable, DdlStatement, DmlStatement, Expr, LogicalPlan, LogicalPlanBuilder, WriteOp,
    cast as cast_expr,
};
use datafusion::prelude::SessionContext;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::path::Path as ObjectPath;

use crate::arrow_compat::{cast_batch, plain_schema};
use crate::config::LocationPolicy;
use crate::error::{QuiverError, Result};
use crate::ids::random_text;
use crate::sink::staging::{RunningWrite, STAGING_DIR, StagingCollector};
use crate::sink::{
    Commit, Committer, DataFormat, MIN_TARGET_FILE_BYTES, TABLE_COMPRESSION, TaskFiles, WriteNode,
    WriteSpec, WrittenFile, store_error, write_task_files,
};
use crate::storage::catalog::{self, Catalog, CatalogGuard, ManagedFile, PendingKind, TableDef};
use crate::storage::hive;
use crate::storage::managed_table::data_file_path;
use crate::storage::object_stores::{self, StoreOptions};
use crate::storage::warehouse::Warehouse;
use crate::task;

use super::run::{Deadline, PlanRunner};
use super::{Statement, table_name};

/// What bulk ingest does when the table does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfMissing {
    Create,
    Fail,
}

/// What bulk ingest does when the table exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfExists {
    Fail,
    Append,
    Replace,
}

/// How a commit changes a table's file list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A new table (or one replacing whatever had the name).
    Create { replace: bool },
    /// Add the files to the table as it was when the write started.
    Append,
    /// The files become the table's only files.
    Overwrite,
}

/// How writes are made: the server's settings and its write journal.
#[derive(Debug, Clone)]
pub(crate) struct WriteSettings {
    /// The journal of writes and the collector of what failed ones left.
    pub(crate) staging: Arc<StagingCollector>,
    /// A file is closed and the next one started past this size.
    pub(crate) target_file_bytes: u64,
    /// Test only: how long every commit sleeps after it made the write visible.
    pub(crate) test_commit_pause: Option<Duration>,
}

/// Writes managed tables and `COPY` targets and commits them; see the module contract.
pub(super) struct TableWriter {
    ctx: SessionContext,
    catalog: Arc<Catalog>,
    runner: Arc<PlanRunner>,
    /// Where managed tables keep their files; `None` refuses table writes.
    warehouse: Option<Warehouse>,
    /// Where `COPY` may write; `None` refuses it.
    locations: Option<LocationPolicy>,
    settings: WriteSettings,
}

/// A write ready to run: the plan whose head commits, and the journal entry it runs under.
struct PreparedWrite {
    plan: LogicalPlan,
    commit: Arc<Commit>,
    running: Option<RunningWrite>,
}

/// What planning a write statement found to do.
enum Planned {
    /// Nothing (`CREATE TABLE IF NOT EXISTS` of an existing table).
    Nothing,
    /// Commit with no files (`CREATE TABLE t (…)`: an empty table).
    CommitOnly(Arc<Commit>),
    /// Run the plan.
    Run(Box<PreparedWrite>),
}

impl TableWriter {
    pub(super) fn new(
        ctx: SessionContext,
        catalog: Arc<Catalog>,
        runner: Arc<PlanRunner>,
        warehouse: Option<Warehouse>,
        locations: Option<LocationPolicy>,
        settings: WriteSettings,
    ) -> Self {
        Self {
            ctx,
            catalog,
            runner,
            warehouse,
            locations,
            settings,
        }
    }

    fn warehouse(&self) -> Result<&Warehouse> {
        self.warehouse.as_ref().ok_or_else(|| {
            QuiverError::FailedPrecondition(
                "this coordinator has no warehouse for table data: start it with --warehouse DIR_OR_URL".into(),
            )
        })
    }

    /// Runs a write statement; returns the rows written.
    pub(super) async fn run_write(&self, statement: &Statement) -> Result<u64> {
        let deadline = self.runner.deadline();
        let _slot = self.runner.admit(deadline).await?;
        match self.plan_write(statement, true).await? {
            Planned::Nothing => Ok(0),
            Planned::CommitOnly(commit) => commit.run(Vec::new()).await,
            Planned::Run(prepared) => self.execute(*prepared, deadline).await,
        }
    }

    /// The plan a write statement runs, for `EXPLAIN`: nothing is journaled or written.
    pub(super) async fn explain_plan(&self, statement: &Statement) -> Result<LogicalPlan> {
        match self.plan_write(statement, false).await? {
            Planned::Run(prepared) => Ok(prepared.plan),
            Planned::Nothing | Planned::CommitOnly(_) => Err(QuiverError::InvalidArgument(
                "this statement writes no rows: there is no plan to explain".into(),
            )),
        }
    }

    async fn plan_write(&self, statement: &Statement, run: bool) -> Result<Planned> {
        match &statement.plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmd)) => {
                self.plan_create(cmd, statement, run).await
            }
            LogicalPlan::Dml(dml) => {
                self.plan_insert(dml, statement.target_file_bytes, run)
                    .await
            }
            LogicalPlan::Copy(copy) => self.plan_copy(copy, statement.target_file_bytes, run).await,
            _ => Err(QuiverError::Internal("not a write statement".into())),
        }
    }

    /// Runs a prepared write; after a failure (or a rerun) deletes what it left.
    async fn execute(&self, prepared: PreparedWrite, deadline: Deadline) -> Result<u64> {
        let PreparedWrite {
            plan,
            commit,
            mut running,
        } = prepared;
        let state = self.ctx.state();
        let outcome = self
            .runner
            .run_to_end(&state, &plan, deadline, "write", |batches| {
                let commit = Arc::clone(&commit);
                async move {
                    let counted = count_rows(batches).await;
                    // Once the commit started its outcome is the write's, whatever cut the stream.
                    if commit.started() {
                        return commit.outcome().await;
                    }
                    counted
                }
            })
            .await;
        let (result, reran) = match outcome {
            Ok(completed) => (Ok(completed.value), completed.reran),
            Err(_) if commit.started() => (commit.outcome().await, true),
            Err(e) => (Err(e), true),
        };
        if let Some(running) = &mut running {
            if result.is_err() || reran {
                self.settings.staging.discard_leftovers(running.id()).await;
            }
            running.settle();
        }
        result
    }

    async fn plan_create(
        &self,
        cmd: &CreateMemoryTable,
        statement: &Statement,
        run: bool,
    ) -> Result<Planned> {
        let partition_by = statement.partition_by.as_slice();
        let name = table_name(&cmd.name)?;
        if !cmd.constraints.is_empty() {
            return Err(QuiverError::Unsupported(
                "constraints (PRIMARY KEY, UNIQUE, ...) are not supported on Quiver tables".into(),
            ));
        }
        if !cmd.column_defaults.is_empty() {
            return Err(QuiverError::Unsupported(
                "column DEFAULT values are not supported on Quiver tables".into(),
            ));
        }
        let warehouse = self.warehouse()?;
        {
            let guard = self.catalog.lock().await;
            if guard.is_flag_table(&name) {
                return Err(flag_table(&name));
            }
            if self.ctx.table_exist(cmd.name.clone())? {
                if cmd.if_not_exists {
                    return Ok(Planned::Nothing);
                }
                if !cmd.or_replace {
                    return Err(already_exists(&name));
                }
            }
        }
        // `CREATE TABLE t (a INT NOT NULL)` keeps its declared nullability; the columns of
        // `CREATE TABLE … AS SELECT` accept NULLs, as in other databases.
        let declared = matches!(cmd.input.as_ref(), LogicalPlan::EmptyRelation(_));
        let schema = plain_schema(cmd.input.schema().as_arrow());
        let schema = if declared { schema } else { nullable(&schema) };
        let schema = partitioned_last(&schema, partition_by)?;
        let location = warehouse.table_location(&name);
        let mode = Mode::Create {
            replace: cmd.or_replace,
        };
        let committer = self.table_commit(&name, &location, mode, None, &schema, partition_by);
        if declared {
            return Ok(Planned::CommitOnly(Commit::new(committer)));
        }
        let input = conform_by_name(cmd.input.as_ref(), &schema)?;
        let spec = self.spec(
            &location,
            DataFormat::parquet(TABLE_COMPRESSION)?,
            &schema,
            partition_by,
            statement.target_file_bytes,
        );
        self.prepare(input, spec, committer, PendingKind::Table, &location, run)
            .await
            .map(|p| Planned::Run(Box::new(p)))
    }

    async fn plan_insert(
        &self,
        dml: &DmlStatement,
        target_file_bytes: Option<u64>,
        run: bool,
    ) -> Result<Planned> {
        let name = table_name(&dml.table_name)?;
        let mode = match &dml.op {
            WriteOp::Insert(InsertOp::Append) => Mode::Append,
            WriteOp::Insert(InsertOp::Overwrite) => Mode::Overwrite,
            other => {
                return Err(QuiverError::Unsupported(format!(
                    "{other} is not supported: Quiver tables take INSERT INTO and INSERT OVERWRITE"
                )));
            }
        };
        let def = self.managed_table(&name).await?;
        let schema = plain_schema(dml.target.schema().as_ref());
        let input = conform_by_position(dml.input.as_ref(), &schema)?;
        let at_start = def.files.iter().map(|f| f.path.clone()).collect();
        let committer = self.table_commit(
            &name,
            &def.url,
            mode,
            Some(at_start),
            &schema,
            &def.partition_by,
        );
        let spec = self.spec(
            &def.url,
            DataFormat::parquet(TABLE_COMPRESSION)?,
            &schema,
            &def.partition_by,
            target_file_bytes,
        );
        self.prepare(input, spec, committer, PendingKind::Table, &def.url, run)
            .await
            .map(|p| Planned::Run(Box::new(p)))
    }

    async fn plan_copy(
        &self,
        copy: &CopyTo,
        target_file_bytes: Option<u64>,
        run: bool,
    ) -> Result<Planned> {
        let target = copy_target(self.locations.as_ref(), &copy.output_url)?;
        let default_target = target_file_bytes.unwrap_or(self.settings.target_file_bytes);
        let options = CopyOptions::parse(copy, default_target)?;
        let schema = plain_schema(copy.input.schema().as_arrow());
        let schema = partitioned_last(&schema, &copy.partition_by)?;
        let input = conform_by_name(copy.input.as_ref(), &schema)?;
        let mut committer = CopyCommit {
            runtime: self.ctx.runtime_env(),
            store_options: self.store_options_for(&target).await,
            target: target.clone(),
            overwrite: options.overwrite,
            write_id: String::new(),
        };
        if run && !options.overwrite && committer.has_result().await? {
            return Err(QuiverError::AlreadyExists(format!(
                "'{target}' already holds a committed result (_SUCCESS): add OPTIONS (overwrite true) to replace it"
            )));
        }
        let (running, write_id) = self.journal(&target, PendingKind::Copy, run).await?;
        let mut spec = self.spec(
            &format!("{target}{STAGING_DIR}/{write_id}/"),
            options.format,
            &schema,
            &copy.partition_by,
            Some(options.target_file_bytes),
        );
        spec.write_id = write_id.clone();
        committer.write_id = write_id;
        prepared(input, spec, Arc::new(committer), running).map(|p| Planned::Run(Box::new(p)))
    }

    /// The write spec of a write into `destination`; its id is set when it is journaled.
    fn spec(
        &self,
        destination: &str,
        format: DataFormat,
        schema: &Schema,
        partition_by: &[String],
        target_file_bytes: Option<u64>,
    ) -> WriteSpec {
        WriteSpec {
            write_id: String::new(),
            attempt: String::new(),
            destination: destination.to_string(),
            format,
            partition_by: partition_by.to_vec(),
            not_null: schema
                .fields()
                .iter()
                .filter(|f| !f.is_nullable())
                .map(|f| f.name().clone())
                .collect(),
            target_file_bytes: target_file_bytes.unwrap_or(self.settings.target_file_bytes),
        }
    }

    /// Journals the write (when it is to run) and builds its plan.
    async fn prepare(
        &self,
        input: LogicalPlan,
        mut spec: WriteSpec,
        committer: Arc<dyn Committer>,
        kind: PendingKind,
        location: &str,
        run: bool,
    ) -> Result<PreparedWrite> {
        let (running, write_id) = self.journal(location, kind, run).await?;
        spec.write_id = write_id;
        prepared(input, spec, committer, running)
    }

    /// A write into `location` that is to run is journaled; one only explained is not (and
    /// its id says so). Returns the journal entry and the write's id.
    async fn journal(
        &self,
        location: &str,
        kind: PendingKind,
        run: bool,
    ) -> Result<(Option<RunningWrite>, String)> {
        if !run {
            return Ok((None, "explain".into()));
        }
        let running = self.settings.staging.begin(location, kind).await?;
        let id = running.id().as_str().to_string();
        Ok((Some(running), id))
    }

    fn table_commit(
        &self,
        name: &str,
        location: &str,
        mode: Mode,
        files_at_start: Option<Vec<String>>,
        schema: &SchemaRef,
        partition_by: &[String],
    ) -> Arc<dyn Committer> {
        Arc::new(TableCommit {
            ctx: self.ctx.clone(),
            catalog: Arc::clone(&self.catalog),
            warehouse: self.warehouse.clone(),
            test_pause: self.settings.test_commit_pause,
            name: name.to_string(),
            location: location.to_string(),
            mode,
            files_at_start,
            schema: Arc::clone(schema),
            partition_by: partition_by.to_vec(),
        })
    }

    /// Bulk ingest of a client's batches into `table`; returns the rows written. The rows are
    /// written here (the client sends them here), in files that roll like every write's, and
    /// committed the same way. The query deadline bounds it from admission on.
    pub(super) async fn ingest(
        &self,
        table: &str,
        if_missing: IfMissing,
        if_exists: IfExists,
        incoming: SchemaRef,
        batches: impl Stream<Item = Result<RecordBatch>> + Send,
    ) -> Result<u64> {
        let warehouse = self.warehouse()?;
        let deadline = self.runner.deadline();
        let _slot = self.runner.admit(deadline).await?;
        let existing = {
            let guard = self.catalog.lock().await;
            if guard.is_flag_table(table) {
                return Err(flag_table(table));
            }
            guard.get(table).cloned()
        };
        let exists = existing.is_some() || self.ctx.table_exist(table)?;
        let mode = match (exists, if_exists, if_missing) {
            (false, _, IfMissing::Fail) => {
                return Err(QuiverError::NotFound(format!(
                    "table '{table}' does not exist (ingest mode does not create tables)"
                )));
            }
            (false, _, IfMissing::Create) => Mode::Create { replace: false },
            (true, IfExists::Fail, _) => return Err(already_exists(table)),
            (true, IfExists::Replace, _) => Mode::Create { replace: true },
            (true, IfExists::Append, _) => Mode::Append,
        };
        let IngestTarget {
            location,
            schema,
            partition_by,
            at_start,
            rows,
        } = if let Mode::Create { .. } = mode {
            let schema = plain_schema(&Schema::new(incoming.fields().clone()));
            IngestTarget {
                location: warehouse.table_location(table),
                rows: conform_stream(batches, Arc::clone(&schema)).boxed(),
                schema,
                partition_by: Vec::new(),
                at_start: None,
            }
        } else {
            let def = self.managed_table(table).await?;
            let target = self
                .ctx
                .table_provider(table)
                .await
                .map(|t| plain_schema(t.schema().as_ref()))?;
            let mapping = column_mapping(&incoming, &target)?;
            let schema = Arc::clone(&target);
            let rows = batches
                .map(move |batch| {
                    let batch = batch?;
                    map_columns(&batch, &mapping, &target)
                })
                .boxed();
            IngestTarget {
                location: def.url.clone(),
                schema,
                partition_by: def.partition_by.clone(),
                at_start: Some(def.files.iter().map(|f| f.path.clone()).collect()),
                rows,
            }
        };
        let mut running = self
            .settings
            .staging
            .begin(&location, PendingKind::Table)
            .await?;
        let mut spec = self.spec(
            &location,
            DataFormat::parquet(TABLE_COMPRESSION)?,
            &schema,
            &partition_by,
            None,
        );
        spec.write_id = running.id().as_str().to_string();
        spec.attempt = random_text();
        let files = TaskFiles {
            spec,
            input: Arc::clone(&schema),
            name: "ingest".into(),
        };
        let runtime = self.ctx.runtime_env();
        let written = match deadline.run(write_task_files(&runtime, files, rows)).await {
            Ok(Ok(files)) => files,
            Ok(Err(e)) | Err(e) => {
                self.settings.staging.discard_leftovers(running.id()).await;
                running.settle();
                return Err(e);
            }
        };
        let committer = self.table_commit(table, &location, mode, at_start, &schema, &partition_by);
        let outcome = Commit::new(committer).run(written).await;
        if outcome.is_err() {
            self.settings.staging.discard_leftovers(running.id()).await;
        }
        running.settle();
        outcome
    }

    /// Deletes a managed table's files once the catalog no longer lists them (DROP, replace).
    /// The deletion runs to its end even if the caller goes away, so a dropped table leaves no
    /// file behind.
    pub(super) async fn discard_files(&self, def: &TableDef) {
        if !def.managed {
            return;
        }
        let Some(warehouse) = self.warehouse.clone() else {
            return;
        };
        let options = self.store_options().await;
        let runtime = self.ctx.runtime_env();
        let url = def.url.clone();
        let files: Vec<String> = def.files.iter().map(|f| f.path.clone()).collect();
        let deleted = task::uninterruptible(async move {
            warehouse
                .delete(runtime.as_ref(), &options, &url, &files)
                .await;
        })
        .await;
        if let Err(e) = deleted {
            tracing::warn!(table = %def.name, error = %e, "could not delete a dropped table's files");
        }
    }

    /// The managed table `name`, or why it cannot be written.
    async fn managed_table(&self, name: &str) -> Result<TableDef> {
        let guard = self.catalog.lock().await;
        if guard.is_flag_table(name) {
            return Err(flag_table(name));
        }
        match guard.get(name) {
            Some(def) if def.managed => Ok(def.clone()),
            Some(def) if def.url.is_empty() => Err(QuiverError::InvalidArgument(format!(
                "'{name}' is a view: write to its tables instead"
            ))),
            Some(_) => Err(QuiverError::InvalidArgument(format!(
                "'{name}' is an external table (read-only): Quiver writes to tables made with CREATE TABLE or bulk ingest"
            ))),
            None => Err(QuiverError::NotFound(format!("table '{name}' not found"))),
        }
    }

    /// The catalog's options for the warehouse's object store, if it is remote.
    async fn store_options(&self) -> StoreOptions {
        match &self.warehouse {
            Some(warehouse) => store_options(&self.catalog.lock().await, warehouse),
            None => StoreOptions::new(),
        }
    }

    /// The catalog's options for the object store `location` is in (none when local).
    async fn store_options_for(&self, location: &str) -> StoreOptions {
        match object_stores::store_root(location) {
            Ok(Some(root)) => self.catalog.lock().await.store_options(&root),
            _ => StoreOptions::new(),
        }
    }
}

/// Where ingested rows go: the table's directory, schema and partitioning, its files when the
/// ingest started (appends), and the rows conformed to the schema.
struct IngestTarget<'a> {
    location: String,
    schema: SchemaRef,
    partition_by: Vec<String>,
    at_start: Option<Vec<String>>,
    rows: futures::stream::BoxStream<'a, Result<RecordBatch>>,
}

/// The plan of a write whose head commits through `committer`.
fn prepared(
    input: LogicalPlan,
    spec: WriteSpec,
    committer: Arc<dyn Committer>,
    running: Option<RunningWrite>,
) -> Result<PreparedWrite> {
    let commit = Commit::new(committer);
    let plan = WriteNode::new(input, spec, Arc::clone(&commit))?.into_plan();
    Ok(PreparedWrite {
        plan,
        commit,
        running,
    })
}

/// Drains a write's output (one batch: the rows it added).
async fn count_rows(
    batches: futures::stream::BoxStream<'static, Result<RecordBatch>>,
) -> Result<u64> {
    let batches: Vec<RecordBatch> = batches.try_collect().await?;
    let mut rows = 0;
    for batch in &batches {
        if let Some(counts) = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::UInt64Array>()
        {
            rows += counts.iter().flatten().sum::<u64>();
        }
    }
    Ok(rows)
}

/// The commit of a write into a managed table.
struct TableCommit {
    ctx: SessionContext,
    catalog: Arc<Catalog>,
    warehouse: Option<Warehouse>,
    test_pause: Option<Duration>,
    name: String,
    location: String,
    mode: Mode,
    /// For appends and overwrites: the table's files when the write started.
    files_at_start: Option<Vec<String>>,
    schema: SchemaRef,
    partition_by: Vec<String>,
}

#[async_trait]
impl Committer for TableCommit {
    fn describe(&self) -> String {
        let what = match self.mode {
            Mode::Create { replace: false } => "create table",
            Mode::Create { replace: true } => "create or replace table",
            Mode::Append => "append to table",
            Mode::Overwrite => "overwrite table",
        };
        format!("{what} {}", self.name)
    }

    async fn commit(&self, files: Vec<WrittenFile>) -> Result<u64> {
        let name = self.name.as_str();
        let location = self.location.as_str();
        let ctx = &self.ctx;
        let runtime = ctx.runtime_env();
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let new_files: Vec<ManagedFile> = files
            .iter()
            .map(|f| ManagedFile {
                path: f.path.clone(),
                rows: f.rows,
                bytes: f.bytes,
            })
            .collect();
        // Everything that can fail or wait comes first; nothing has changed yet.
        let mut guard = self.catalog.lock().await;
        let options = self
            .warehouse
            .as_ref()
            .map(|w| store_options(&guard, w))
            .unwrap_or_default();
        let discard = || async {
            if let Some(warehouse) = &self.warehouse {
                let names: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
                warehouse
                    .delete(runtime.as_ref(), &options, location, &names)
                    .await;
            }
        };
        let current = guard.get(name).cloned();
        let (next, unreferenced) = match self.mode {
            Mode::Create { replace } => {
                let taken = current.is_some() || ctx.table_exist(name)?;
                if taken && !replace {
                    drop(guard);
                    discard().await;
                    return Err(already_exists(name));
                }
                let old = current
                    .filter(|c| c.managed)
                    .map(|c| (c.url, c.files.into_iter().map(|f| f.path).collect()))
                    .unwrap_or_default();
                let def = TableDef::managed(
                    name,
                    location,
                    new_files,
                    &self.schema,
                    self.partition_by.clone(),
                )?;
                (def, old)
            }
            Mode::Append | Mode::Overwrite => {
                let unchanged = current.as_ref().is_some_and(|c| {
                    c.managed
                        && c.url == location
                        && self.files_at_start.as_ref().is_some_and(|start| {
                            start.iter().all(|f| c.files.iter().any(|m| &m.path == f))
                        })
                });
                let Some(current) = current.filter(|_| unchanged) else {
                    drop(guard);
                    discard().await;
                    return Err(QuiverError::FailedPrecondition(format!(
                        "table '{name}' was dropped or replaced while the write ran; nothing was written"
                    )));
                };
                if self.mode == Mode::Append && rows == 0 {
                    drop(guard);
                    discard().await;
                    return Ok(0);
                }
                let (files, old) = if self.mode == Mode::Append {
                    let mut files = current.files.clone();
                    files.extend(new_files);
                    (files, (String::new(), Vec::new()))
                } else {
                    let old = current.files.iter().map(|f| f.path.clone()).collect();
                    (new_files, (current.url.clone(), old))
                };
                let schema = current
                    .table_schema()?
                    .unwrap_or_else(|| Arc::clone(&self.schema));
                let def = TableDef::managed(
                    name,
                    location,
                    files,
                    &schema,
                    current.partition_by.clone(),
                )?;
                (def, old)
            }
        };
        let provider = match catalog::managed_provider(ctx, &next).await {
            Ok(provider) => provider,
            Err(e) => {
                drop(guard);
                discard().await;
                return Err(e);
            }
        };

        // The catalog file write: from here on nothing can fail but deleting old files, which
        // is best effort.
        if let Err(e) = guard.add(next) {
            drop(guard);
            discard().await;
            return Err(e);
        }
        // The catalog file is the truth; the session follows it without waiting. Should that
        // fail, the write still happened: the next start registers the table from the file.
        if let Err(e) = catalog::register_provider(ctx, name, provider) {
            tracing::error!(table = %name, error = %e, "a committed table could not be registered until restart");
        }
        drop(guard);
        if let Some(pause) = self.test_pause {
            tracing::warn!(table = %name, ?pause, "commit paused for a test");
            tokio::time::sleep(pause).await;
        }
        let (old_location, old_files) = unreferenced;
        if !old_files.is_empty()
            && let Some(warehouse) = &self.warehouse
        {
            warehouse
                .delete(runtime.as_ref(), &options, &old_location, &old_files)
                .await;
        }
        tracing::info!(table = %name, rows, files = files.len(), "committed a write");
        Ok(rows)
    }
}

/// The commit of a `COPY`: staged files move into the target, `_SUCCESS` last.
struct CopyCommit {
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    store_options: StoreOptions,
    /// The target directory, with a trailing slash.
    target: String,
    /// The write: its files are staged under `<target>/_staging/<write id>/`.
    write_id: String,
    overwrite: bool,
}

/// The marker a committed `COPY` result ends with.
const SUCCESS_MARKER: &str = "_SUCCESS";

impl CopyCommit {
    /// The target's store and the target's path in it.
    fn location(&self) -> Result<(Arc<dyn object_store::ObjectStore>, ObjectPath)> {
        object_stores::resolve(self.runtime.as_ref(), &self.target, &self.store_options)
    }

    /// Whether the target holds a committed result.
    async fn has_result(&self) -> Result<bool> {
        let (store, base) = self.location()?;
        has_marker(store.as_ref(), &data_file_path(&base, SUCCESS_MARKER)?).await
    }
}

/// Whether the `_SUCCESS` marker at `marker` exists.
async fn has_marker(store: &dyn object_store::ObjectStore, marker: &ObjectPath) -> Result<bool> {
    match store.head(marker).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(store_error(e)),
    }
}

#[async_trait]
impl Committer for CopyCommit {
    fn describe(&self) -> String {
        let mode = if self.overwrite { "replace" } else { "write" };
        format!("{mode} COPY result {}", self.target)
    }

    async fn commit(&self, files: Vec<WrittenFile>) -> Result<u64> {
        let (store, base) = self.location()?;
        let marker = data_file_path(&base, SUCCESS_MARKER)?;
        if has_marker(store.as_ref(), &marker).await? {
            if !self.overwrite {
                return Err(QuiverError::AlreadyExists(format!(
                    "'{}' already holds a committed result (_SUCCESS): add OPTIONS (overwrite true) to replace it",
                    self.target
                )));
            }
            // The old result stops being one first, then goes.
            store.delete(&marker).await.map_err(store_error)?;
            let staging = data_file_path(&base, STAGING_DIR)?;
            let old: Vec<ObjectPath> = store
                .list(Some(&base))
                .map_ok(|o| o.location)
                .try_collect()
                .await
                .map_err(store_error)?;
            for path in old
                .iter()
                .filter(|p| !p.as_ref().starts_with(staging.as_ref()))
            {
                store.delete(path).await.map_err(store_error)?;
            }
        }
        for file in &files {
            let from = data_file_path(
                &base,
                &format!("{STAGING_DIR}/{}/{}", self.write_id, file.path),
            )?;
            let to = data_file_path(&base, &file.path)?;
            store.rename(&from, &to).await.map_err(store_error)?;
        }
        // Empty, as Spark writes it: readers that list the directory for data files skip
        // empty files and `_` names (DataFusion's partition inference does not, see the README).
        store
            .put(&marker, PutPayload::default())
            .await
            .map_err(store_error)?;
        prune_empty_local_dirs(&self.target);
        let rows = files.iter().map(|f| f.rows).sum();
        tracing::info!(target = %self.target, rows, files = files.len(), "committed a COPY");
        Ok(rows)
    }
}

/// Removes the empty directories under a local `target` (the staging directories a commit
/// emptied, the partition directories of a replaced result); object stores have none.
fn prune_empty_local_dirs(target: &str) {
    if !matches!(object_stores::store_root(target), Ok(None)) {
        return;
    }
    fn prune(dir: &std::path::Path) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        let mut empty = true;
        for entry in entries.flatten() {
            let path = entry.path();
            if !(path.is_dir() && prune(&path) && std::fs::remove_dir(&path).is_ok()) {
                empty = false;
            }
        }
        empty
    }
    prune(std::path::Path::new(target.trim_end_matches('/')));
}

/// `COPY` options Quiver takes: `format.compression` (Parquet), `format.has_header` (CSV),
/// `overwrite`, `target_file_bytes`.
struct CopyOptions {
    format: DataFormat,
    overwrite: bool,
    target_file_bytes: u64,
}

impl CopyOptions {
    fn parse(copy: &CopyTo, default_target: u64) -> Result<Self> {
        let mut compression: Option<String> = None;
        let mut header = true;
        let mut overwrite = false;
        let mut target_file_bytes = default_target;
        for (key, value) in &copy.options {
            let key = key.to_ascii_lowercase();
            let key = key.strip_prefix("format.").unwrap_or(&key);
            match key {
                "compression" => compression = Some(value.clone()),
                "has_header" => header = parse_bool(key, value)?,
                "overwrite" => overwrite = parse_bool(key, value)?,
                "target_file_bytes" => {
                    target_file_bytes = crate::resources::parse_bytes(value).map_err(|e| {
                        QuiverError::InvalidArgument(format!("COPY option target_file_bytes: {e}"))
                    })?;
                    if target_file_bytes < MIN_TARGET_FILE_BYTES {
                        return Err(QuiverError::InvalidArgument(format!(
                            "COPY option target_file_bytes must be at least {MIN_TARGET_FILE_BYTES}"
                        )));
                    }
                }
                other => {
                    return Err(QuiverError::InvalidArgument(format!(
                        "unknown COPY option '{other}' (Quiver takes compression, has_header, overwrite, target_file_bytes)"
                    )));
                }
            }
        }
        let format = match copy.file_type.get_ext().to_ascii_lowercase().as_str() {
            "parquet" => DataFormat::parquet(compression.as_deref().unwrap_or("zstd(3)"))?,
            "csv" if compression.is_none() => DataFormat::Csv { header },
            "json" if compression.is_none() => DataFormat::Json,
            "csv" | "json" => {
                return Err(QuiverError::InvalidArgument(
                    "COPY compression applies to Parquet only".into(),
                ));
            }
            other => {
                return Err(QuiverError::InvalidArgument(format!(
                    "COPY writes Parquet, CSV or JSON, not {other}"
                )));
            }
        };
        Ok(Self {
            format,
            overwrite,
            target_file_bytes,
        })
    }
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(QuiverError::InvalidArgument(format!(
            "COPY option {key}: expected true or false, got '{value}'"
        ))),
    }
}

/// The directory a `COPY` writes to (trailing slash), if the policy allows it.
fn copy_target(policy: Option<&LocationPolicy>, url: &str) -> Result<String> {
    let remote = object_stores::store_root(url)?.is_some();
    let local = url.strip_prefix("file://").unwrap_or(url);
    if !remote && !local.starts_with('/') {
        return Err(QuiverError::InvalidArgument(format!(
            "COPY target '{url}' must be an absolute path or an s3:// URL"
        )));
    }
    let Some(policy) = policy else {
        return Err(QuiverError::PermissionDenied(
            "COPY is not allowed on this server: list the directories it may write in [locations] copy_targets of the server's --config".into(),
        ));
    };
    policy.check_copy_target(url)?;
    let target = if remote {
        url.to_string()
    } else {
        local.to_string()
    };
    Ok(if target.ends_with('/') {
        target
    } else {
        format!("{target}/")
    })
}

/// `schema` with the partition columns moved to the end, in `partition_by` order; checks that
/// they exist, are not all the columns, and have types that can be partition values.
fn partitioned_last(schema: &Schema, partition_by: &[String]) -> Result<SchemaRef> {
    let mut data: Vec<Field> = Vec::new();
    let mut parts: Vec<Option<Field>> = vec![None; partition_by.len()];
    for field in schema.fields() {
        match partition_by
            .iter()
            .position(|p| p.eq_ignore_ascii_case(field.name()))
        {
            Some(i) => parts[i] = Some(Field::clone(field)),
            None => data.push(Field::clone(field)),
        }
    }
    let mut fields = data;
    for (name, field) in partition_by.iter().zip(parts) {
        let Some(field) = field else {
            return Err(QuiverError::InvalidArgument(format!(
                "partition column '{name}' is not a column of the result"
            )));
        };
        hive::check_partition_type(field.name(), field.data_type())?;
        fields.push(field);
    }
    if fields.len() == partition_by.len() {
        return Err(QuiverError::InvalidArgument(
            "a partitioned table needs at least one column that is not a partition column".into(),
        ));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// `input` projected onto `schema`'s columns, found by name, cast to its types.
fn conform_by_name(input: &LogicalPlan, schema: &Schema) -> Result<LogicalPlan> {
    let source = input.schema();
    let exprs = schema
        .fields()
        .iter()
        .map(|field| {
            let (qualifier, source_field) = source
                .iter()
                .find(|(_, f)| f.name() == field.name())
                .ok_or_else(|| {
                QuiverError::Internal(format!("column '{}' vanished from a write", field.name()))
            })?;
            Ok(conformed(
                Column::from((qualifier, source_field)),
                source_field.data_type(),
                field,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LogicalPlanBuilder::from(input.clone())
        .project(exprs)?
        .build()?)
}

/// `input`'s columns, by position, cast to `schema`'s types and named as it names them.
fn conform_by_position(input: &LogicalPlan, schema: &Schema) -> Result<LogicalPlan> {
    let source = input.schema();
    if source.fields().len() != schema.fields().len() {
        return Err(QuiverError::InvalidArgument(format!(
            "the write has {} columns, the table {}",
            source.fields().len(),
            schema.fields().len()
        )));
    }
    let exprs: Vec<Expr> = source
        .iter()
        .zip(schema.fields())
        .map(|((qualifier, source_field), field)| {
            conformed(
                Column::from((qualifier, source_field)),
                source_field.data_type(),
                field,
            )
        })
        .collect();
    Ok(LogicalPlanBuilder::from(input.clone())
        .project(exprs)?
        .build()?)
}

fn conformed(column: Column, from: &DataType, to: &Field) -> Expr {
    let expr = Expr::Column(column);
    let expr = if from == to.data_type() {
        expr
    } else {
        cast_expr(expr, to.data_type().clone())
    };
    expr.alias(to.name())
}

/// The catalog's options for `warehouse`'s object store (none for a local warehouse).
fn store_options(catalog: &CatalogGuard, warehouse: &Warehouse) -> StoreOptions {
    warehouse
        .store_root()
        .map(|root| catalog.store_options(root))
        .unwrap_or_default()
}

fn flag_table(name: &str) -> QuiverError {
    QuiverError::InvalidArgument(format!(
        "table '{name}' is defined by a --table flag: it is read-only"
    ))
}

fn already_exists(name: &str) -> QuiverError {
    QuiverError::AlreadyExists(format!("table '{name}' already exists"))
}

fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::clone(f).with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

/// Casts each incoming batch to `schema` (plain types; same columns in the same order).
fn conform_stream(
    batches: impl Stream<Item = Result<RecordBatch>> + Send,
    schema: SchemaRef,
) -> impl Stream<Item = Result<RecordBatch>> + Send {
    batches.map(move |batch| Ok(cast_batch(&batch?, &schema)?))
}

/// For each target column, the incoming column that feeds it: by name when every target column
/// is present by name (ignoring case), else by position when the counts agree.
fn column_mapping(incoming: &Schema, target: &Schema) -> Result<Vec<usize>> {
    let by_name: Option<Vec<usize>> = target
        .fields()
        .iter()
        .map(|t| {
            incoming
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(t.name()))
        })
        .collect();
    if let Some(mapping) = by_name
        && incoming.fields().len() == target.fields().len()
    {
        return Ok(mapping);
    }
    if incoming.fields().len() == target.fields().len() {
        return Ok((0..target.fields().len()).collect());
    }
    let names = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(QuiverError::InvalidArgument(format!(
        "ingested columns ({}) do not match the table's columns ({})",
        names(incoming),
        names(target)
    )))
}

fn map_columns(batch: &RecordBatch, mapping: &[usize], target: &SchemaRef) -> Result<RecordBatch> {
    let columns = mapping
        .iter()
        .zip(target.fields())
        .map(|(i, field)| {
            let column = batch.column(*i);
            if column.data_type() == field.data_type() {
                return Ok(Arc::clone(column));
            }
            cast(column, field.data_type()).map_err(|e| {
                QuiverError::InvalidArgument(format!(
                    "column '{}': cannot store {} as {}: {e}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                ))
            })
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    RecordBatch::try_new(Arc::clone(target), columns).map_err(|e| {
        QuiverError::InvalidArgument(format!("ingested data does not fit the table: {e}"))
    })
}
