//! Writes into managed tables: `CREATE TABLE [AS SELECT]`, `INSERT INTO … SELECT/VALUES`,
//! `INSERT OVERWRITE`, and Flight SQL bulk ingest (create, append, replace).
//!
//! Contract:
//! * a write's input is a supervised run ([`PlanRunner::run_to_end`]): admission inside the
//!   query deadline, the deadline over the whole input, stage deadlines, the departure watchdog,
//!   and one rerun on the remaining executors when an executor it used is lost (the dead
//!   attempt's file is deleted; with no executor left the write fails `Unavailable`). Its rows
//!   stream into one new Parquet file in the [`Warehouse`] (bounded memory);
//! * the commit is one step that cannot be cut in half: it runs in a task of its own, to its end,
//!   even if the client hangs up or the deadline fires, and the client's answer says what it did.
//!   Everything that can fail or wait (the catalog lock, the checks that the table is still what
//!   the write started from, the new file's footer) happens before the catalog file write
//!   (atomic, fsynced, listing the new file); after it the table is re-registered (no wait) and
//!   the files the commit stopped referencing are deleted. Readers see all of a write or none;
//! * a write that fails or is cancelled before its commit leaves no visible change; the file it
//!   may have written is deleted (or, after a crash, left unreferenced);
//! * only managed tables are written; external tables (`CREATE EXTERNAL TABLE`, `--table`) are
//!   read-only, and a coordinator without `--warehouse` refuses writes with `FailedPrecondition`.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    CreateMemoryTable, DdlStatement, DmlStatement, LogicalPlan, WriteOp,
};
use std::time::Duration;

use datafusion::prelude::SessionContext;
use futures::{Stream, StreamExt};

use crate::arrow_compat::{cast_batch, plain_schema};
use crate::task;

use super::run::{Deadline, PlanRunner};
use super::table_name;
use crate::error::{QuiverError, Result};
use crate::storage::catalog::{self, Catalog, CatalogGuard, TableDef};
use crate::storage::object_stores::StoreOptions;
use crate::storage::warehouse::{DataFile, Warehouse};

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
enum Commit {
    /// A new table (or one replacing whatever had the name).
    Create { replace: bool },
    /// Add the file to the table as it was when the write started.
    Append,
    /// The file becomes the table's only file.
    Overwrite,
}

/// Writes managed tables and commits them; see the module contract.
pub(super) struct TableWriter {
    ctx: SessionContext,
    catalog: Arc<Catalog>,
    runner: Arc<PlanRunner>,
    /// Where managed tables keep their files; `None` refuses writes.
    warehouse: Option<Warehouse>,
    /// Test only: how long every commit sleeps after its catalog write.
    test_commit_pause: Option<Duration>,
}

impl TableWriter {
    pub(super) fn new(
        ctx: SessionContext,
        catalog: Arc<Catalog>,
        runner: Arc<PlanRunner>,
        warehouse: Option<Warehouse>,
        test_commit_pause: Option<Duration>,
    ) -> Self {
        Self {
            ctx,
            catalog,
            runner,
            warehouse,
            test_commit_pause,
        }
    }

    fn warehouse(&self) -> Result<&Warehouse> {
        self.warehouse.as_ref().ok_or_else(|| {
            QuiverError::FailedPrecondition(
                "this coordinator has no warehouse for table data: start it with --warehouse DIR_OR_URL".into(),
            )
        })
    }

    /// Runs a `CREATE TABLE` or `INSERT` statement; returns the rows written.
    pub(super) async fn run_write(&self, plan: &LogicalPlan) -> Result<u64> {
        let deadline = self.runner.deadline();
        let _slot = self.runner.admit(deadline).await?;
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmd)) => {
                self.create_table(cmd, deadline).await
            }
            LogicalPlan::Dml(dml) => self.insert(dml, deadline).await,
            _ => Err(QuiverError::Internal("not a write statement".into())),
        }
    }

    async fn create_table(&self, cmd: &CreateMemoryTable, deadline: Deadline) -> Result<u64> {
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
                    return Ok(0);
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
        let location = warehouse.table_location(&name);
        let file = self
            .write_input(&cmd.input, schema, &location, deadline)
            .await?;
        let commit = Commit::Create {
            replace: cmd.or_replace,
        };
        self.commit(&name, &location, file, commit, None).await
    }

    async fn insert(&self, dml: &DmlStatement, deadline: Deadline) -> Result<u64> {
        let name = table_name(&dml.table_name)?;
        let commit = match &dml.op {
            WriteOp::Insert(InsertOp::Append) => Commit::Append,
            WriteOp::Insert(InsertOp::Overwrite) => Commit::Overwrite,
            other => {
                return Err(QuiverError::Unsupported(format!(
                    "{other} is not supported: Quiver tables take INSERT INTO and INSERT OVERWRITE"
                )));
            }
        };
        let def = self.managed_table(&name).await?;
        let schema = plain_schema(dml.target.schema().as_ref());
        let file = self
            .write_input(&dml.input, schema, &def.url, deadline)
            .await?;
        self.commit(&name, &def.url, file, commit, Some(def.files))
            .await
    }

    /// Bulk ingest of a client's batches into `table`; returns the rows written. The query
    /// deadline bounds it from admission on; the commit is the same as every write's.
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
        let plan = match (exists, if_exists, if_missing) {
            (false, _, IfMissing::Fail) => {
                return Err(QuiverError::NotFound(format!(
                    "table '{table}' does not exist (ingest mode does not create tables)"
                )));
            }
            (false, _, IfMissing::Create) => None,
            (true, IfExists::Fail, _) => return Err(already_exists(table)),
            (true, IfExists::Replace, _) => Some(Commit::Create { replace: true }),
            (true, IfExists::Append, _) => Some(Commit::Append),
        };
        let runtime = self.ctx.runtime_env();
        let options = self.store_options().await;
        match plan {
            None | Some(Commit::Create { .. }) => {
                let schema = plain_schema(&Schema::new(incoming.fields().clone()));
                let conformed = conform_stream(batches, Arc::clone(&schema));
                let location = warehouse.table_location(table);
                let file = deadline
                    .run(warehouse.write(runtime.as_ref(), &options, &location, schema, conformed))
                    .await??;
                let commit = Commit::Create {
                    replace: plan.is_some(),
                };
                self.commit(table, &location, file, commit, None).await
            }
            Some(_) => {
                let def = self.managed_table(table).await?;
                let target = self
                    .ctx
                    .table_provider(table)
                    .await
                    .map(|t| plain_schema(t.schema().as_ref()))?;
                let mapping = column_mapping(&incoming, &target)?;
                let schema = Arc::clone(&target);
                let conformed = batches.map(move |batch| {
                    let batch = batch?;
                    map_columns(&batch, &mapping, &target)
                });
                let file = deadline
                    .run(warehouse.write(runtime.as_ref(), &options, &def.url, schema, conformed))
                    .await??;
                self.commit(table, &def.url, file, Commit::Append, Some(def.files))
                    .await
            }
        }
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
        let (url, files) = (def.url.clone(), def.files.clone());
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

    /// Runs a write's input plan (supervised, see the module contract) into one new file under
    /// `location`, its batches cast to `schema`.
    async fn write_input(
        &self,
        plan: &LogicalPlan,
        schema: SchemaRef,
        location: &str,
        deadline: Deadline,
    ) -> Result<DataFile> {
        let warehouse = self.warehouse()?;
        let runtime = self.ctx.runtime_env();
        let runtime = runtime.as_ref();
        let options = self.store_options().await;
        let options = &options;
        let state = self.ctx.state();
        let completed = self
            .runner
            .run_to_end(&state, plan, deadline, "write", move |batches| {
                let target = Arc::clone(&schema);
                let conformed = batches.map(move |batch| Ok(cast_batch(&batch?, &target)?));
                warehouse.write(runtime, options, location, Arc::clone(&schema), conformed)
            })
            .await?;
        Ok(completed.value)
    }

    /// The catalog's options for the warehouse's object store, if it is remote.
    async fn store_options(&self) -> StoreOptions {
        match &self.warehouse {
            Some(warehouse) => store_options(&self.catalog.lock().await, warehouse),
            None => StoreOptions::new(),
        }
    }

    /// Commits `file` (written under `location`) to table `name`; see the module contract. The
    /// whole commit runs in a task of its own: a caller that goes away between the file's
    /// write and the catalog's neither leaves the file behind nor cuts the commit in half.
    async fn commit(
        &self,
        name: &str,
        location: &str,
        file: DataFile,
        commit: Commit,
        files_at_start: Option<Vec<String>>,
    ) -> Result<u64> {
        let job = CommitJob {
            ctx: self.ctx.clone(),
            catalog: Arc::clone(&self.catalog),
            warehouse: self.warehouse()?.clone(),
            test_pause: self.test_commit_pause,
            name: name.to_string(),
            location: location.to_string(),
            file,
            commit,
            files_at_start,
        };
        task::uninterruptible(job.run()).await?
    }
}

/// One commit, owning all it needs so that it can run in a task of its own.
struct CommitJob {
    ctx: SessionContext,
    catalog: Arc<Catalog>,
    warehouse: Warehouse,
    test_pause: Option<Duration>,
    name: String,
    location: String,
    file: DataFile,
    commit: Commit,
    files_at_start: Option<Vec<String>>,
}

impl CommitJob {
    async fn run(self) -> Result<u64> {
        let Self {
            ctx,
            catalog,
            warehouse,
            test_pause,
            name,
            location,
            file,
            commit,
            files_at_start,
        } = self;
        let name = name.as_str();
        let location = location.as_str();
        let runtime = ctx.runtime_env();
        // Everything that can fail or wait comes first; nothing has changed yet.
        let mut guard = catalog.lock().await;
        let options = store_options(&guard, &warehouse);
        let discard = |file: DataFile| {
            let (warehouse, runtime, options) = (&warehouse, &runtime, &options);
            async move {
                warehouse
                    .delete(runtime.as_ref(), options, location, &[file.name])
                    .await;
            }
        };
        let current = guard.get(name).cloned();
        let (next, unreferenced) = match commit {
            Commit::Create { replace } => {
                let taken = current.is_some() || ctx.table_exist(name)?;
                if taken && !replace {
                    drop(guard);
                    discard(file).await;
                    return Err(already_exists(name));
                }
                let old = current
                    .filter(|c| c.managed)
                    .map(|c| (c.url, c.files))
                    .unwrap_or_default();
                (
                    TableDef::managed(name, location, vec![file.name.clone()]),
                    old,
                )
            }
            Commit::Append | Commit::Overwrite => {
                let unchanged = current.as_ref().is_some_and(|c| {
                    c.managed
                        && c.url == location
                        && files_at_start
                            .as_ref()
                            .is_some_and(|start| start.iter().all(|f| c.files.contains(f)))
                });
                let Some(current) = current.filter(|_| unchanged) else {
                    drop(guard);
                    discard(file).await;
                    return Err(QuiverError::FailedPrecondition(format!(
                        "table '{name}' was dropped or replaced while the write ran; nothing was written"
                    )));
                };
                if commit == Commit::Append && file.rows == 0 {
                    drop(guard);
                    discard(file).await;
                    return Ok(0);
                }
                let mut files = if commit == Commit::Append {
                    current.files.clone()
                } else {
                    Vec::new()
                };
                files.push(file.name.clone());
                let old = if commit == Commit::Overwrite {
                    (current.url.clone(), current.files.clone())
                } else {
                    Default::default()
                };
                (TableDef::managed(name, location, files), old)
            }
        };
        let provider = match catalog::managed_provider(&ctx, &next).await {
            Ok(provider) => provider,
            Err(e) => {
                drop(guard);
                discard(file).await;
                return Err(e);
            }
        };

        // The catalog file write: from here on nothing can fail but deleting old files, which
        // is best effort.
        if let Err(e) = guard.add(next) {
            drop(guard);
            discard(file).await;
            return Err(e);
        }
        // The catalog file is the truth; the session follows it without waiting. Should that
        // fail, the write still happened: the next start registers the table from the file.
        if let Err(e) = catalog::register_provider(&ctx, name, provider) {
            tracing::error!(table = %name, error = %e, "a committed table could not be registered until restart");
        }
        drop(guard);
        if let Some(pause) = test_pause {
            tracing::warn!(table = %name, ?pause, "commit paused for a test");
            tokio::time::sleep(pause).await;
        }
        let (old_location, old_files) = unreferenced;
        if !old_files.is_empty() {
            warehouse
                .delete(runtime.as_ref(), &options, &old_location, &old_files)
                .await;
        }
        tracing::info!(table = %name, rows = file.rows, file = %file.name, "committed a write");
        Ok(file.rows)
    }
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
