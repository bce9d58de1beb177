//! The table provider of managed tables: exactly the Parquet files the catalog lists.
//!
//! Contract:
//! * the table is the files of its [`TableDef`], never a listing of its directory: uncommitted
//!   and replaced files sit in the same directory and must not be read;
//! * the schema is the stored one ([`TableDef::table_schema`]); a table of an earlier version
//!   without one takes its first file's (every file of a managed table has the table's schema);
//! * everything that needs I/O happens once, when the provider is built (a commit builds it
//!   before it changes anything): the first footer for a legacy schema, one `head` per file of
//!   unknown size (the Parquet reader needs exact sizes), and the parsing of every file's
//!   partition values. Planning a scan does no I/O;
//! * filters on partition columns only are [`TableProviderFilterPushDown::Exact`]: the scan
//!   evaluates them on each partition's values and reads only the files of partitions that pass;
//!   every other filter is `Inexact` (left to the Parquet reader's pruning and a filter above);
//! * a file's path in its object store is the table directory's path, `/`, and the catalog's
//!   relative path verbatim ([`data_file_path`]); the writer names files the same way.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{
    ColumnStatistics, DFSchema, ScalarValue, Statistics, internal_datafusion_err, project_schema,
};
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::helpers::expr_applicable_for_cols;
use datafusion::datasource::listing::{ListingTableUrl, PartitionedFile};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{QuiverError, Result};
use crate::storage::catalog::{ManagedFile, TableDef, check_partition_columns};
use crate::storage::hive;

/// How many size lookups (`head`) run at once for files of unknown size.
const HEAD_CONCURRENCY: usize = 16;

/// A managed table: its files, their partitions, and how to scan them. See the module contract.
#[derive(Debug)]
pub(crate) struct ManagedTable {
    store: ObjectStoreUrl,
    /// The full schema: the file columns, then the partition columns.
    schema: SchemaRef,
    file_schema: SchemaRef,
    partition_fields: Vec<FieldRef>,
    /// The distinct partitions of the files (values in `partition_fields` order); the files of
    /// an unpartitioned table share one, with no values.
    partitions: Vec<Vec<ScalarValue>>,
    files: Vec<TableFile>,
}

#[derive(Debug)]
struct TableFile {
    /// Path, exact size, partition values and statistics, ready for the scan.
    file: PartitionedFile,
    /// Index into `ManagedTable::partitions`.
    partition: usize,
}

impl ManagedTable {
    /// The table's data files and their total size in bytes.
    pub(crate) fn size(&self) -> (u64, u64) {
        let bytes = self.files.iter().map(|f| f.file.object_meta.size).sum();
        (self.files.len() as u64, bytes)
    }

    /// Builds the provider of managed table `table`; does all of its I/O (see the contract). The
    /// table's object store must be registered in `state`'s runtime.
    pub(crate) async fn try_new(state: &dyn Session, table: &TableDef) -> Result<Self> {
        let table_url = ListingTableUrl::parse(&table.url)?;
        let store = state.runtime_env().object_store(&table_url)?;
        let dir = table_url.prefix();
        // The futures are made up front: a closure held across the awaits would keep the
        // provider's future from being `Send` (spawned commits build providers).
        let lookups: Vec<_> = table
            .files
            .iter()
            .map(|file| sized_file(store.as_ref(), dir, table, file))
            .collect();
        let sized = futures::stream::iter(lookups)
            .buffered(HEAD_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        let schema = match table.table_schema()? {
            Some(schema) => schema,
            None => legacy_schema(state, &store, table, &sized).await?,
        };
        check_partition_columns(&table.name, &schema, &table.partition_by)?;
        let file_columns = schema.fields().len() - table.partition_by.len();
        let file_schema = Arc::new(Schema::new_with_metadata(
            schema.fields()[..file_columns].to_vec(),
            schema.metadata().clone(),
        ));
        let partition_fields = schema.fields()[file_columns..].to_vec();

        let mut partitions = Vec::new();
        let mut partition_index: HashMap<Vec<ScalarValue>, usize> = HashMap::new();
        let mut files = Vec::with_capacity(sized.len());
        for (managed, mut file) in table.files.iter().zip(sized) {
            let values = partition_values(table, managed, &partition_fields)?;
            let partition = *partition_index.entry(values.clone()).or_insert_with(|| {
                partitions.push(values.clone());
                partitions.len() - 1
            });
            file.statistics = Some(Arc::new(file_statistics(
                &file_schema,
                &values,
                managed.rows,
            )));
            file.partition_values = values;
            files.push(TableFile { file, partition });
        }
        Ok(Self {
            store: table_url.object_store(),
            schema,
            file_schema,
            partition_fields,
            partitions,
            files,
        })
    }

    fn partition_column_names(&self) -> Vec<&str> {
        self.partition_fields
            .iter()
            .map(|f| f.name().as_str())
            .collect()
    }

    /// Whether `filter` is decided by the partition values alone, so that pruning files applies
    /// it exactly.
    fn is_partition_filter(&self, columns: &[&str], filter: &Expr) -> bool {
        // A subquery cannot be evaluated on partition values while planning.
        let has_subquery = filter
            .exists(|e| {
                Ok(matches!(
                    e,
                    Expr::ScalarSubquery(_)
                        | Expr::Exists(_)
                        | Expr::InSubquery(_)
                        | Expr::SetComparison(_)
                ))
            })
            .unwrap_or(true);
        !columns.is_empty() && !has_subquery && expr_applicable_for_cols(columns, filter)
    }

    /// For each partition, whether it passes the partition filters among `filters`.
    fn partitions_passing(&self, state: &dyn Session, filters: &[Expr]) -> DFResult<Vec<bool>> {
        let columns = self.partition_column_names();
        let predicate = conjunction(
            filters
                .iter()
                .filter(|f| self.is_partition_filter(&columns, f))
                .cloned(),
        );
        let (Some(predicate), false) = (predicate, self.partitions.is_empty()) else {
            return Ok(vec![true; self.partitions.len()]);
        };
        // One row per partition: the predicate runs once per directory, not per file.
        let schema = Arc::new(Schema::new(
            self.partition_fields
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let arrays = (0..self.partition_fields.len())
            .map(|i| ScalarValue::iter_to_array(self.partitions.iter().map(|p| p[i].clone())))
            .collect::<DFResult<Vec<ArrayRef>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(self.partitions.len()));
        let batch = RecordBatch::try_new_with_options(Arc::clone(&schema), arrays, &options)?;
        let expr = state.create_physical_expr(predicate, &DFSchema::try_from(schema)?)?;
        let result = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
        let passed = result.as_boolean_opt().ok_or_else(|| {
            internal_datafusion_err!(
                "a partition filter gave {}, not booleans",
                result.data_type()
            )
        })?;
        // NULL does not pass, as in WHERE.
        Ok((0..passed.len())
            .map(|i| passed.is_valid(i) && passed.value(i))
            .collect())
    }
}

#[async_trait]
impl TableProvider for ManagedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        let columns = self.partition_column_names();
        Ok(filters
            .iter()
            .map(|filter| {
                if self.is_partition_filter(&columns, filter) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let passing = self.partitions_passing(state, filters)?;
        let selected: Vec<&TableFile> =
            self.files.iter().filter(|f| passing[f.partition]).collect();
        if selected.is_empty() {
            let schema = project_schema(&self.schema, projection)?;
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let groups = balanced_groups(selected, state.config().target_partitions(), &self.schema)?;
        let statistics = Statistics::try_merge_iter(
            groups.iter().filter_map(|g| g.file_statistics(None)),
            &self.schema,
        )?
        .to_inexact();
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let source = format.file_source(
            TableSchema::builder(Arc::clone(&self.file_schema))
                .with_table_partition_cols(self.partition_fields.clone())
                .build(),
        );
        let config = FileScanConfigBuilder::new(self.store.clone(), source)
            .with_file_groups(groups)
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}

/// Where the file at `relative` (a catalog path) of the table directory `table_dir` is in the
/// table's object store: the catalog path verbatim, so a local file's name and an object's key
/// are exactly what the catalog says (hive escapes included, as Spark writes them).
pub(crate) fn data_file_path(table_dir: &ObjectPath, relative: &str) -> Result<ObjectPath> {
    let invalid = |why: &dyn std::fmt::Display| {
        QuiverError::InvalidArgument(format!("data file path '{relative}': {why}"))
    };
    if relative.is_empty() || relative.starts_with('/') || relative.ends_with('/') {
        return Err(invalid(
            &"expected a file path relative to the table directory",
        ));
    }
    let joined = if table_dir.as_ref().is_empty() {
        relative.to_string()
    } else {
        format!("{}/{relative}", table_dir.as_ref())
    };
    ObjectPath::parse(joined).map_err(|e| invalid(&e))
}

/// `managed` as a file to scan: its object path and exact size (looked up when the catalog
/// does not know it).
async fn sized_file(
    store: &dyn ObjectStore,
    table_dir: &ObjectPath,
    table: &TableDef,
    managed: &ManagedFile,
) -> Result<PartitionedFile> {
    let location = data_file_path(table_dir, &managed.path)?;
    let size = if managed.bytes > 0 {
        managed.bytes
    } else {
        store
            .head(&location)
            .await
            .map_err(|e| {
                DataFusionError::from(e).context(format!(
                    "table '{}': data file '{}'",
                    table.name, managed.path
                ))
            })?
            .size
    };
    // `PartitionedFile::new` would escape the path again; the location is already exact.
    let mut file = PartitionedFile::new(String::new(), size);
    file.object_meta.location = location;
    Ok(file)
}

/// The schema of a table from before schemas were stored: its first file's.
async fn legacy_schema(
    state: &dyn Session,
    store: &Arc<dyn ObjectStore>,
    table: &TableDef,
    files: &[PartitionedFile],
) -> Result<SchemaRef> {
    if !table.partition_by.is_empty() {
        return Err(QuiverError::InvalidArgument(format!(
            "managed table '{}' is partitioned but its catalog entry stores no schema",
            table.name
        )));
    }
    let first = files.first().ok_or_else(|| {
        QuiverError::InvalidArgument(format!(
            "managed table '{}' lists no files and stores no schema: its catalog entry is incomplete",
            table.name
        ))
    })?;
    let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
    // The exact object, not a listing of its name as a prefix, which could match other files.
    let schema = format
        .infer_schema(state, store, std::slice::from_ref(&first.object_meta))
        .await?;
    Ok(schema)
}

/// A file's partition values, typed as their columns.
fn partition_values(
    table: &TableDef,
    managed: &ManagedFile,
    fields: &[FieldRef],
) -> Result<Vec<ScalarValue>> {
    let texts = hive::parse_partition_values(&managed.path, &table.partition_by)?;
    texts
        .into_iter()
        .zip(fields)
        .map(|(text, field)| match text {
            None => Ok(ScalarValue::try_from(field.data_type())?),
            Some(text) => ScalarValue::try_from_string(text.clone(), field.data_type()).map_err(
                |e| {
                    QuiverError::InvalidArgument(format!(
                        "table '{}': data file '{}': '{text}' is not a value of partition column '{}' ({}): {e}",
                        table.name,
                        managed.path,
                        field.name(),
                        field.data_type()
                    ))
                },
            ),
        })
        .collect()
}

/// What is known of a file before reading it: its row count when the catalog has it (Inexact:
/// it helps join planning, but no answer is taken from it) and its partition values, which
/// bound its partition columns.
fn file_statistics(file_schema: &Schema, partition: &[ScalarValue], rows: u64) -> Statistics {
    let num_rows = match usize::try_from(rows) {
        Ok(rows) if rows > 0 => Precision::Inexact(rows),
        _ => Precision::Absent,
    };
    let mut column_statistics = Statistics::unknown_column(file_schema);
    for value in partition {
        let mut column = ColumnStatistics::new_unknown();
        if value.is_null() {
            column.null_count = num_rows;
        } else {
            column.null_count = Precision::Inexact(0);
            column.min_value = Precision::Inexact(value.clone());
            column.max_value = Precision::Inexact(value.clone());
        }
        column_statistics.push(column);
    }
    Statistics {
        num_rows,
        total_byte_size: Precision::Absent,
        column_statistics,
    }
}

/// Spreads `files` over at most `target` groups of about equal bytes (largest first, each to
/// the lightest group), each group with its merged statistics.
fn balanced_groups(
    mut files: Vec<&TableFile>,
    target: usize,
    schema: &Schema,
) -> DFResult<Vec<FileGroup>> {
    let count = target.clamp(1, files.len().max(1));
    files.sort_by(|a, b| {
        let (a, b) = (&a.file.object_meta, &b.file.object_meta);
        b.size
            .cmp(&a.size)
            .then_with(|| a.location.cmp(&b.location))
    });
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); count];
    for file in files {
        // `min_by_key` keeps the first of equals, so the assignment is deterministic.
        if let Some(group) = groups.iter_mut().min_by_key(|(bytes, _)| *bytes) {
            group.0 += file.file.object_meta.size.max(1);
            group.1.push(file.file.clone());
        }
    }
    groups
        .into_iter()
        .filter(|(_, files)| !files.is_empty())
        .map(|(_, files)| {
            let statistics = Statistics::try_merge_iter(
                files.iter().filter_map(|f| f.statistics.as_deref()),
                schema,
            )?;
            Ok(FileGroup::new(files).with_statistics(Arc::new(statistics)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::physical_plan::{StatisticsArgs, StatisticsContext, displayable};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use parquet::arrow::ArrowWriter;

    use super::*;

    fn file_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    fn table_schema() -> Schema {
        let mut fields = file_schema().fields().to_vec();
        fields.push(Arc::new(Field::new("day", DataType::Date32, true)));
        fields.push(Arc::new(Field::new("region", DataType::Utf8, true)));
        Schema::new(fields)
    }

    /// Writes a Parquet file of `ids` (names `n<id>`) at `dir/relative`; returns its catalog entry.
    fn write_file(dir: &Path, relative: &str, ids: &[i64]) -> ManagedFile {
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let batch = RecordBatch::try_new(
            file_schema(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|id| format!("n{id}")),
                )),
            ],
        )
        .unwrap();
        let mut writer =
            ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), file_schema(), None)
                .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        ManagedFile {
            path: relative.to_string(),
            rows: ids.len() as u64,
            bytes: std::fs::metadata(&path).unwrap().len(),
        }
    }

    fn location(dir: &Path) -> String {
        format!("{}/", dir.display())
    }

    async fn rows(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    async fn physical_plan(ctx: &SessionContext, sql: &str) -> String {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        displayable(plan.as_ref()).indent(true).to_string()
    }

    async fn register(ctx: &SessionContext, def: &TableDef) {
        let table = ManagedTable::try_new(&ctx.state(), def).await.unwrap();
        ctx.register_table(def.name.as_str(), Arc::new(table))
            .unwrap();
    }

    /// A partitioned table of three listed files, next to files the catalog does not list.
    fn partitioned_table(dir: &Path) -> TableDef {
        let eu = write_file(dir, "day=2024-01-01/region=eu/part-1.parquet", &[1, 2, 3]);
        let null = write_file(
            dir,
            &format!(
                "{}part-2.parquet",
                hive::partition_dir(&[("day", Some("2024-01-01")), ("region", None)])
            ),
            &[4, 5],
        );
        let us = write_file(dir, "day=2024-01-02/region=us/part-3.parquet", &[6]);
        // An uncommitted write in a listed directory, and a stray file at the top.
        write_file(dir, "day=2024-01-02/region=us/part-stale.parquet", &[100]);
        write_file(dir, "part-stray.parquet", &[200]);
        TableDef::managed(
            "events",
            &location(dir),
            vec![eu, null, us],
            &table_schema(),
            vec!["day".into(), "region".into()],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn reads_exactly_the_listed_files_with_typed_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new();
        register(&ctx, &partitioned_table(dir.path())).await;

        let table = ctx.table_provider("events").await.unwrap();
        assert_eq!(table.schema().as_ref(), &table_schema());
        assert_eq!(
            rows(&ctx, "SELECT id, name, day, region FROM events ORDER BY id").await,
            "\
+----+------+------------+--------+
| id | name | day        | region |
+----+------+------------+--------+
| 1  | n1   | 2024-01-01 | eu     |
| 2  | n2   | 2024-01-01 | eu     |
| 3  | n3   | 2024-01-01 | eu     |
| 4  | n4   | 2024-01-01 |        |
| 5  | n5   | 2024-01-01 |        |
| 6  | n6   | 2024-01-02 | us     |
+----+------+------------+--------+"
        );
        let batches = ctx
            .sql("SELECT day, region FROM events WHERE id = 4")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(batches[0].column(0).data_type(), &DataType::Date32);
        assert_eq!(batches[0].column(1).data_type(), &DataType::Utf8);
        assert!(batches[0].column(1).is_null(0));
        assert_eq!(
            rows(&ctx, "SELECT count(*) AS n, sum(id) AS s FROM events").await,
            "\
+---+----+
| n | s  |
+---+----+
| 6 | 21 |
+---+----+"
        );
    }

    #[tokio::test]
    async fn partition_filters_prune_files() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new();
        register(&ctx, &partitioned_table(dir.path())).await;

        let sql = "SELECT id FROM events WHERE region = 'us'";
        let plan = physical_plan(&ctx, sql).await;
        assert!(plan.contains("region=us/part-3.parquet"), "{plan}");
        for other in ["part-1", "part-2", "part-stale", "part-stray"] {
            assert!(!plan.contains(other), "{other} in {plan}");
        }
        // Exact: no filter is left above the scan.
        assert!(!plan.contains("FilterExec"), "{plan}");
        assert_eq!(
            rows(&ctx, sql).await,
            "+----+\n| id |\n+----+\n| 6  |\n+----+"
        );

        let sql = "SELECT id FROM events WHERE region IS NULL ORDER BY id";
        let plan = physical_plan(&ctx, sql).await;
        assert!(plan.contains("part-2.parquet"), "{plan}");
        assert!(
            !plan.contains("part-1") && !plan.contains("part-3"),
            "{plan}"
        );
        assert_eq!(
            rows(&ctx, sql).await,
            "+----+\n| id |\n+----+\n| 4  |\n| 5  |\n+----+"
        );

        let sql = "SELECT id FROM events WHERE day = DATE '2024-01-01' AND id > 2 ORDER BY id";
        let plan = physical_plan(&ctx, sql).await;
        assert!(plan.contains("part-1") && plan.contains("part-2"), "{plan}");
        assert!(!plan.contains("part-3"), "{plan}");
        assert_eq!(
            rows(&ctx, sql).await,
            "+----+\n| id |\n+----+\n| 3  |\n| 4  |\n| 5  |\n+----+"
        );

        // No partition passes: nothing is read.
        let sql = "SELECT id FROM events WHERE region = 'mars'";
        assert!(physical_plan(&ctx, sql).await.contains("EmptyExec"));
        assert_eq!(rows(&ctx, sql).await, "++\n++");

        let table = ctx.table_provider("events").await.unwrap();
        let region = datafusion::prelude::col("region");
        let id = datafusion::prelude::col("id");
        let pushdown = table
            .supports_filters_pushdown(&[
                &region.clone().eq(datafusion::prelude::lit("eu")),
                &id.clone().gt(datafusion::prelude::lit(1)),
                &region.eq(id),
            ])
            .unwrap();
        assert_eq!(
            pushdown,
            vec![
                TableProviderFilterPushDown::Exact,
                TableProviderFilterPushDown::Inexact,
                TableProviderFilterPushDown::Inexact
            ]
        );
    }

    #[tokio::test]
    async fn files_are_grouped_by_bytes_with_row_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let config = SessionConfig::new().with_target_partitions(2);
        let ctx = SessionContext::new_with_config(config);
        register(&ctx, &partitioned_table(dir.path())).await;
        let plan = ctx
            .sql("SELECT * FROM events")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let text = displayable(plan.as_ref()).indent(true).to_string();
        assert!(text.contains("file_groups={2 groups"), "{text}");
        let statistics = StatisticsContext::new()
            .compute(plan.as_ref(), &StatisticsArgs::new())
            .unwrap();
        assert_eq!(statistics.num_rows, Precision::Inexact(6));
    }

    #[tokio::test]
    async fn legacy_entries_and_empty_tables() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new();
        let a = write_file(dir.path(), "part-a.parquet", &[1, 2]);
        let b = write_file(dir.path(), "part-b.parquet", &[3]);
        write_file(dir.path(), "part-unlisted.parquet", &[4]);
        // As a catalog of an earlier version has it: bare paths, no schema.
        let mut legacy =
            TableDef::managed("old", &location(dir.path()), vec![], &file_schema(), vec![])
                .unwrap();
        legacy.schema = None;
        legacy.files = vec![
            ManagedFile::unknown_size(a.path),
            ManagedFile::unknown_size(b.path),
        ];
        // The footer is read with the session's Parquet options: DataFusion's default reads
        // strings as views, Quiver's sessions as plain Utf8.
        let table = ManagedTable::try_new(&ctx.state(), &legacy).await.unwrap();
        assert_eq!(table.schema().field(1).data_type(), &DataType::Utf8View);
        let config = SessionConfig::new().set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        );
        let ctx = SessionContext::new_with_config(config);
        register(&ctx, &legacy).await;
        let table = ctx.table_provider("old").await.unwrap();
        assert_eq!(table.schema().fields(), file_schema().fields());
        assert_eq!(
            rows(&ctx, "SELECT id, name FROM old ORDER BY id").await,
            "\
+----+------+
| id | name |
+----+------+
| 1  | n1   |
| 2  | n2   |
| 3  | n3   |
+----+------+"
        );
        let plan = ctx
            .sql("SELECT * FROM old")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        assert_eq!(
            StatisticsContext::new()
                .compute(plan.as_ref(), &StatisticsArgs::new())
                .unwrap()
                .num_rows,
            Precision::Absent
        );

        // A table with a schema and no files is empty; one with neither cannot be read.
        let empty = TableDef::managed(
            "empty",
            &location(dir.path()),
            vec![],
            &table_schema(),
            vec!["day".into(), "region".into()],
        )
        .unwrap();
        register(&ctx, &empty).await;
        let sql = "SELECT * FROM empty";
        assert!(physical_plan(&ctx, sql).await.contains("EmptyExec"));
        assert_eq!(
            rows(&ctx, "SELECT count(*) AS n FROM empty").await,
            "+---+\n| n |\n+---+\n| 0 |\n+---+"
        );
        let mut nothing = empty.clone();
        nothing.schema = None;
        nothing.partition_by.clear();
        let e = ManagedTable::try_new(&ctx.state(), &nothing)
            .await
            .unwrap_err();
        assert!(matches!(e, QuiverError::InvalidArgument(_)), "{e}");

        // A listed file that is gone fails when the provider is built, not at query time.
        let mut missing = legacy.clone();
        missing
            .files
            .push(ManagedFile::unknown_size("part-gone.parquet"));
        let e = ManagedTable::try_new(&ctx.state(), &missing)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("part-gone.parquet"), "{e}");
    }

    #[tokio::test]
    async fn bad_partition_paths_and_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new();
        let mut def = partitioned_table(dir.path());
        def.files[0].path = "region=eu/day=2024-01-01/part-1.parquet".into();
        let e = ManagedTable::try_new(&ctx.state(), &def).await.unwrap_err();
        assert!(matches!(e, QuiverError::InvalidArgument(_)), "{e}");
        def.files[0].path = "day=yesterday/region=eu/part-1.parquet".into();
        let e = ManagedTable::try_new(&ctx.state(), &def).await.unwrap_err();
        assert!(e.to_string().contains("yesterday"), "{e}");
        for bad in ["", "/abs.parquet", "../up.parquet", "dir/"] {
            assert!(
                data_file_path(&ObjectPath::from("t"), bad).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            data_file_path(&ObjectPath::from("wh/t"), "a=x%2Fy/f.parquet")
                .unwrap()
                .as_ref(),
            "wh/t/a=x%2Fy/f.parquet"
        );
    }

    #[tokio::test]
    async fn escaped_partition_values_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new();
        let awkward = "x/y = 100% #1";
        let relative = format!(
            "{}part-1.parquet",
            hive::partition_dir(&[("day", Some("2024-03-01")), ("region", Some(awkward))])
        );
        let file = write_file(dir.path(), &relative, &[7]);
        let def = TableDef::managed(
            "odd",
            &location(dir.path()),
            vec![file],
            &table_schema(),
            vec!["day".into(), "region".into()],
        )
        .unwrap();
        register(&ctx, &def).await;
        let sql = format!("SELECT id, region FROM odd WHERE region = '{awkward}'");
        assert_eq!(
            rows(&ctx, &sql).await,
            "\
+----+---------------+
| id | region        |
+----+---------------+
| 7  | x/y = 100% #1 |
+----+---------------+"
        );
    }
}
