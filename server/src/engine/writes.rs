//! Writes into managed tables: `CREATE TABLE [AS SELECT]`, `INSERT INTO … SELECT/VALUES`,
//! `INSERT OVERWRITE`, and Flight SQL bulk ingest (create, append, replace).
//!
//! Contract:
//! * a write runs its input (distributed like any query), streams it into one new Parquet file
//!   in the [`Warehouse`] (bounded memory), and only then commits: under the catalog lock it
//!   checks the table is still what it was, writes the catalog file (atomic, fsynced) listing the
//!   new file, and re-registers the table. Readers see all of a write or none of it;
//! * a write that fails or is cancelled before its commit leaves no visible change; the file it
//!   may have written is deleted (or, after a crash, left unreferenced);
//! * files a commit stops referencing (replace, overwrite, drop) are deleted after the commit;
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
use datafusion::physical_plan::execute_stream;
use futures::{Stream, StreamExt, TryStreamExt};

use crate::arrow_compat::{cast_batch, plain_schema};
use crate::engine::{Deadline, QueryEngine, table_name};
use crate::error::{QuiverError, Result};
use crate::storage::catalog::{self, TableDef};
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

impl QueryEngine {
    fn warehouse(&self) -> Result<&Warehouse> {
        self.warehouse.as_ref().ok_or_else(|| {
            QuiverError::FailedPrecondition(
                "this coordinator has no warehouse for table data: start it with --warehouse DIR_OR_URL".into(),
            )
        })
    }

    /// Runs a `CREATE TABLE` or `INSERT` statement; returns the rows written.
    pub(crate) async fn run_write(&self, plan: &LogicalPlan) -> Result<u64> {
        let deadline = Deadline::start(self.query_timeout);
        let _slot = deadline.run(self.admission.admit()).await??;
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmd)) => {
                deadline.run(self.create_table(cmd)).await?
            }
            LogicalPlan::Dml(dml) => deadline.run(self.insert(dml)).await?,
            _ => Err(QuiverError::Internal("not a write statement".into())),
        }
    }

    async fn create_table(&self, cmd: &CreateMemoryTable) -> Result<u64> {
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
        let batches = self.run_input(&cmd.input, Arc::clone(&schema)).await?;
        let location = warehouse.table_location(&name);
        self.write_and_commit(
            &name,
            &location,
            schema,
            batches,
            Commit::Create {
                replace: cmd.or_replace,
            },
            None,
        )
        .await
    }

    async fn insert(&self, dml: &DmlStatement) -> Result<u64> {
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
        let batches = self.run_input(&dml.input, Arc::clone(&schema)).await?;
        self.write_and_commit(&name, &def.url, schema, batches, commit, Some(def.files))
            .await
    }

    /// Bulk ingest of a client's batches into `table`; returns the rows written.
    pub(crate) async fn ingest(
        &self,
        table: &str,
        if_missing: IfMissing,
        if_exists: IfExists,
        incoming: SchemaRef,
        batches: impl Stream<Item = Result<RecordBatch>> + Send,
    ) -> Result<u64> {
        let warehouse = self.warehouse()?;
        let _slot = self.admission.admit().await?;
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
        let deadline = Deadline::start(self.query_timeout);
        match plan {
            None | Some(Commit::Create { .. }) => {
                let schema = plain_schema(&Schema::new(incoming.fields().clone()));
                let conformed = conform_stream(batches, Arc::clone(&schema));
                let location = warehouse.table_location(table);
                let commit = Commit::Create {
                    replace: plan.is_some(),
                };
                deadline
                    .run(self.write_and_commit(table, &location, schema, conformed, commit, None))
                    .await?
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
                deadline
                    .run(self.write_and_commit(
                        table,
                        &def.url,
                        schema,
                        conformed,
                        Commit::Append,
                        Some(def.files),
                    ))
                    .await?
            }
        }
    }

    /// Deletes a managed table's files once the catalog no longer lists them (DROP, replace).
    pub(crate) async fn discard_files(&self, def: &TableDef) {
        if !def.managed {
            return;
        }
        let Some(warehouse) = self.warehouse.as_ref() else {
            return;
        };
        let options = self.store_options().await;
        warehouse
            .delete(
                self.ctx.runtime_env().as_ref(),
                &options,
                &def.url,
                &def.files,
            )
            .await;
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

    /// Runs a write's input plan, casting its batches to `schema`.
    async fn run_input(
        &self,
        plan: &LogicalPlan,
        schema: SchemaRef,
    ) -> Result<impl Stream<Item = Result<RecordBatch>> + Send + use<>> {
        self.require_executors(plan)?;
        let state = self.ctx.state();
        let physical = state.create_physical_plan(plan).await?;
        let stream = execute_stream(physical, self.task_ctx(&state)?)?;
        Ok(stream
            .map_err(QuiverError::from)
            .map(move |batch| Ok(cast_batch(&batch?, &schema)?)))
    }

    /// The catalog's options for the warehouse's object store, if it is remote.
    async fn store_options(&self) -> StoreOptions {
        let Some(root) = self.warehouse.as_ref().and_then(|w| w.store_root()) else {
            return StoreOptions::new();
        };
        self.catalog.lock().await.store_options(root)
    }

    /// Writes the file, then commits it; see the module contract.
    async fn write_and_commit(
        &self,
        name: &str,
        location: &str,
        schema: SchemaRef,
        batches: impl Stream<Item = Result<RecordBatch>> + Send,
        commit: Commit,
        files_at_start: Option<Vec<String>>,
    ) -> Result<u64> {
        let warehouse = self.warehouse()?;
        let runtime = self.ctx.runtime_env();
        let options = self.store_options().await;
        let file = warehouse
            .write(runtime.as_ref(), &options, location, schema, batches)
            .await?;
        let discard = |file: DataFile| {
            let runtime = Arc::clone(&runtime);
            let options = options.clone();
            async move {
                warehouse
                    .delete(runtime.as_ref(), &options, location, &[file.name])
                    .await;
            }
        };

        let mut guard = self.catalog.lock().await;
        let current = guard.get(name).cloned();
        let (next, unreferenced) = match commit {
            Commit::Create { replace } => {
                let taken = current.is_some() || self.ctx.table_exist(name)?;
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
        if let Err(e) = guard.add(next.clone()) {
            drop(guard);
            discard(file).await;
            return Err(e);
        }
        // The catalog file is the truth; the in-memory registration follows it.
        let registered = catalog::register_managed(&self.ctx, &next).await;
        drop(guard);
        registered?;
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
