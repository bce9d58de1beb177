//! The catalog: which tables exist, where their files are, and how that survives restarts.
//!
//! Tables come from three places: `--table NAME[:FORMAT]=URL` flags (fixed for the life of the
//! process), the TOML catalog file given with `--catalog`, and SQL (`CREATE EXTERNAL TABLE`,
//! `CREATE VIEW`, `DROP TABLE`, `DROP VIEW`), which the coordinator persists into the catalog
//! file. External tables are registered in DataFusion through a `CREATE EXTERNAL TABLE`
//! statement, so flag, file and SQL tables behave the same; tables created with SQL are stored as
//! the statement the user ran, so nothing (explicit columns, options, partition columns) is lost
//! on restart.
//!
//! Managed tables (written by Quiver: `CREATE TABLE AS`, `INSERT`, bulk ingest) are different:
//! the entry lists the table's data files ([`ManagedFile`], paths relative to `url`, possibly in
//! hive partition directories, see [`crate::storage::hive`]), its partition columns and its Arrow
//! schema, and the table is exactly those files
//! ([`crate::storage::managed_table::ManagedTable`]). The directory may hold other files
//! (uncommitted or replaced ones); they are not part of the table.
//!
//! Writes that have started but not finished are journaled in `pending_writes`
//! ([`PendingWrite`]): after a crash, the files a pending write staged under its location and
//! that no table references ([`CatalogGuard::referenced_files`]) can be cleaned up.
//!
//! Invariants:
//! * the catalog file is replaced atomically (temp file, fsync, rename, fsync of the directory),
//!   so a crash leaves either the old or the new catalog, never a torn one; tables and the
//!   pending-write journal change together in one such write;
//! * DDL and commits are serialized by [`Catalog::lock`]; the file is written only after
//!   DataFusion accepted the statement, and a failed write undoes the registration;
//! * catalogs written by earlier versions still load: a managed file given as a plain string is
//!   a file of unknown size and row count, and a managed table without a stored schema takes the
//!   schema of its first file.
//!
//! ```toml
//! [[tables]]
//! name = "trips"
//! url = "s3://taxi/trips/"
//! format = "parquet"
//!
//! [[tables]]
//! name = "events"
//! url = "/var/lib/quiver/warehouse/events/"
//! format = "parquet"
//! managed = true
//! partition_by = ["day"]
//! schema = "/////…"  # base64 of an Arrow IPC stream holding only the schema
//! files = [{ path = "day=2024-01-01/part-0a1b….parquet", rows = 1000, bytes = 52311 }]
//!
//! [object_stores."s3://taxi"]
//! endpoint = "http://127.0.0.1:9000"
//! region = "us-east-1"
//! allow_http = "true"
//! ```

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedMutexGuard};
use url::Url;

use crate::error::{QuiverError, Result};
use crate::storage::hive;
use crate::storage::managed_table::ManagedTable;
use crate::storage::object_stores::{self, StoreOptions};

/// File formats a table can be stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    Parquet,
    Csv,
    Json,
}

impl TableFormat {
    /// The format implied by a location's extension; directories default to Parquet.
    pub fn infer(location: &str) -> Self {
        let lower = location.trim_end_matches('/').to_ascii_lowercase();
        if lower.ends_with(".csv") || lower.ends_with(".csv.gz") {
            Self::Csv
        } else if lower.ends_with(".json")
            || lower.ends_with(".ndjson")
            || lower.ends_with(".jsonl")
        {
            Self::Json
        } else {
            Self::Parquet
        }
    }

    fn stored_as(self) -> &'static str {
        match self {
            Self::Parquet => "PARQUET",
            Self::Csv => "CSV",
            Self::Json => "JSON",
        }
    }
}

impl FromStr for TableFormat {
    type Err = QuiverError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "parquet" => Ok(Self::Parquet),
            "csv" => Ok(Self::Csv),
            "json" | "ndjson" => Ok(Self::Json),
            other => Err(QuiverError::InvalidArgument(format!(
                "unknown table format '{other}' (expected parquet, csv or json)"
            ))),
        }
    }
}

/// One table of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    pub name: String,
    /// A local path or `s3://` URL of a file or a directory of files; empty for views.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Defaults to the format implied by the URL's extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TableFormat>,
    /// DataFusion table options, e.g. `"format.has_header" = "true"` for CSV.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// For tables created with SQL: the statement, replayed as is on start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ddl: Option<String>,
    /// A managed table: Quiver wrote its Parquet files into the warehouse directory `url`, and
    /// the table is exactly the files listed in `files` (committed writes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub managed: bool,
    /// A managed table's data files, relative to `url`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ManagedFile>,
    /// A managed table's hive partition columns, outermost directory first; they are the last
    /// columns of `schema`, in this order, and are not stored inside the files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
    /// A managed table's full Arrow schema (partition columns last): base64 of an Arrow IPC
    /// stream holding only the schema. `None` in catalogs of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

/// One data file of a managed table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ManagedFileEntry")]
pub struct ManagedFile {
    /// Relative to the table's `url`, e.g. `day=2024-01-01/part-….parquet`.
    pub path: String,
    /// Rows in the file; 0 when unknown (catalogs of earlier versions).
    pub rows: u64,
    /// The file's exact size in bytes; 0 when unknown (catalogs of earlier versions).
    pub bytes: u64,
}

impl ManagedFile {
    /// A file whose row count and size are not known (they are looked up when needed).
    pub fn unknown_size(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            rows: 0,
            bytes: 0,
        }
    }
}

/// The forms a managed file takes in a catalog file: earlier versions wrote the bare path.
#[derive(Deserialize)]
#[serde(untagged)]
enum ManagedFileEntry {
    Legacy(String),
    Full {
        path: String,
        #[serde(default)]
        rows: u64,
        #[serde(default)]
        bytes: u64,
    },
}

impl From<ManagedFileEntry> for ManagedFile {
    fn from(entry: ManagedFileEntry) -> Self {
        match entry {
            ManagedFileEntry::Legacy(path) => Self::unknown_size(path),
            ManagedFileEntry::Full { path, rows, bytes } => Self { path, rows, bytes },
        }
    }
}

/// A write that has started (and may have staged files under `location`) but has not finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingWrite {
    pub id: String,
    /// The table directory the write stages its files in.
    pub location: String,
    pub kind: PendingKind,
    pub started_unix_ms: u64,
}

/// What a pending write produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PendingKind {
    /// Files of a managed table (CREATE TABLE AS, INSERT, bulk ingest).
    Table,
    /// Files of a `COPY … TO`, which no table references.
    Copy,
}

impl TableDef {
    /// Parses a `--table` flag: `NAME=URL` or `NAME:FORMAT=URL`.
    pub fn parse_flag(flag: &str) -> Result<Self> {
        let (lhs, url) = flag.split_once('=').ok_or_else(|| {
            QuiverError::InvalidArgument(format!(
                "--table {flag}: expected NAME=URL or NAME:FORMAT=URL"
            ))
        })?;
        let (name, format) = match lhs.split_once(':') {
            Some((name, format)) => (name, Some(format.parse()?)),
            None => (lhs, None),
        };
        if name.is_empty() || url.is_empty() {
            return Err(QuiverError::InvalidArgument(format!(
                "--table {flag}: name and URL must not be empty"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            url: absolute_location(url)?,
            format,
            options: BTreeMap::new(),
            ddl: None,
            managed: false,
            files: Vec::new(),
            partition_by: Vec::new(),
            schema: None,
        })
    }

    /// A managed table of Parquet `files` in the warehouse directory `location`, with its full
    /// `schema`: the partition columns `partition_by` are its last columns, in that order, and
    /// are of a type a directory name can hold (`hive::check_partition_type`).
    pub fn managed(
        name: &str,
        location: &str,
        files: Vec<ManagedFile>,
        schema: &Schema,
        partition_by: Vec<String>,
    ) -> Result<Self> {
        check_partition_columns(name, schema, &partition_by)?;
        Ok(Self {
            name: name.to_string(),
            url: location.to_string(),
            format: Some(TableFormat::Parquet),
            options: BTreeMap::new(),
            ddl: None,
            managed: true,
            files,
            partition_by,
            schema: Some(encode_schema(schema)?),
        })
    }

    /// A managed table's stored schema (`None` for tables of earlier versions, whose schema is
    /// that of their files).
    pub fn table_schema(&self) -> Result<Option<SchemaRef>> {
        let Some(encoded) = &self.schema else {
            return Ok(None);
        };
        let undecodable = |e: &dyn std::fmt::Display| {
            QuiverError::InvalidArgument(format!(
                "table '{}': the stored schema does not decode: {e}",
                self.name
            ))
        };
        let bytes = BASE64.decode(encoded).map_err(|e| undecodable(&e))?;
        let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| undecodable(&e))?;
        Ok(Some(reader.schema()))
    }

    /// The statement that registers this table in DataFusion.
    pub fn to_ddl(&self) -> String {
        if let Some(ddl) = &self.ddl {
            return ddl.clone();
        }
        let format = self.format.unwrap_or_else(|| TableFormat::infer(&self.url));
        let mut sql = format!(
            "CREATE EXTERNAL TABLE {} STORED AS {} LOCATION {}",
            quote_ident(&self.name),
            format.stored_as(),
            quote_literal(&self.url)
        );
        if !self.options.is_empty() {
            let options: Vec<String> = self
                .options
                .iter()
                .map(|(k, v)| format!("{} {}", quote_literal(k), quote_literal(v)))
                .collect();
            sql.push_str(&format!(" OPTIONS ({})", options.join(", ")));
        }
        sql
    }
}

/// Local paths become absolute, so a restart from another directory (and every executor) still
/// finds them; directories get the trailing slash DataFusion needs to list them.
pub fn absolute_location(location: &str) -> Result<String> {
    if object_stores::store_root(location)?.is_some() || location.starts_with("file://") {
        return Ok(location.to_string());
    }
    let path = std::path::absolute(location)
        .map_err(|e| QuiverError::io(format!("resolving {location}"), e))?;
    let mut s = path.to_string_lossy().into_owned();
    if path.is_dir() && !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}

/// Partition columns name distinct columns that end the schema, in order, with types a directory
/// name can hold.
pub(crate) fn check_partition_columns(
    table: &str,
    schema: &Schema,
    partition_by: &[String],
) -> Result<()> {
    let fields = schema.fields();
    if partition_by.len() > fields.len() {
        return Err(QuiverError::InvalidArgument(format!(
            "table '{table}' has {} columns and cannot be partitioned by {} columns",
            fields.len(),
            partition_by.len()
        )));
    }
    let tail = &fields[fields.len() - partition_by.len()..];
    for (i, (column, field)) in partition_by.iter().zip(tail).enumerate() {
        if partition_by[..i].contains(column) {
            return Err(QuiverError::InvalidArgument(format!(
                "table '{table}': partition column '{column}' is named twice"
            )));
        }
        if field.name() != column {
            return Err(QuiverError::InvalidArgument(format!(
                "table '{table}': partition columns ({}) must be the last columns of the schema, in order; found '{}' where '{column}' belongs",
                partition_by.join(", "),
                field.name()
            )));
        }
        hive::check_partition_type(column, field.data_type())?;
    }
    Ok(())
}

/// The schema as base64 of an Arrow IPC stream with no batches: compact, exact (every Arrow
/// type and metadata), and readable by any Arrow implementation.
fn encode_schema(schema: &Schema) -> Result<String> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
    writer.finish()?;
    Ok(BASE64.encode(writer.into_inner()?))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The on-disk catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct CatalogFile {
    #[serde(default)]
    pub tables: Vec<TableDef>,
    #[serde(default)]
    pub object_stores: BTreeMap<String, StoreOptions>,
    /// Writes started and not yet finished (committed or cleaned up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_writes: Vec<PendingWrite>,
}

impl CatalogFile {
    /// Options configured for the store at `root` (none: the environment alone).
    fn store_options(&self, root: &Url) -> StoreOptions {
        self.object_stores
            .iter()
            .find(|(url, _)| Url::parse(url).is_ok_and(|u| &u == root))
            .map(|(_, options)| options.clone())
            .unwrap_or_default()
    }

    fn read(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(QuiverError::io(format!("reading {}", path.display()), e)),
        };
        let file: Self = toml::from_str(&text).map_err(|e| QuiverError::Catalog {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut names = BTreeSet::new();
        for table in &file.tables {
            if !names.insert(table.name.as_str()) {
                return Err(QuiverError::Catalog {
                    path: path.display().to_string(),
                    message: format!("table '{}' is defined twice", table.name),
                });
            }
        }
        Ok(file)
    }

    fn write(&self, path: &Path) -> Result<()> {
        let mut text = String::from(
            "# Quiver catalog. Quiver rewrites this file when tables are created or dropped with SQL.\n\n",
        );
        text.push_str(
            &toml::to_string_pretty(self).map_err(|e| QuiverError::Internal(e.to_string()))?,
        );
        write_atomically(path, text.as_bytes())
            .map_err(|e| QuiverError::io(format!("writing {}", path.display()), e))
    }
}

/// Replaces `path` with `contents` so that readers and crashes see the old or the new file.
pub(crate) fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // Make the rename itself durable.
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
}

/// The coordinator's catalog.
#[derive(Debug)]
pub(crate) struct Catalog {
    path: Option<PathBuf>,
    file: Arc<Mutex<CatalogFile>>,
    flag_tables: Vec<TableDef>,
}

impl Catalog {
    /// Loads the catalog file (a missing file is an empty catalog) and checks that flag tables do
    /// not clash with it.
    pub(crate) fn load(path: Option<PathBuf>, flag_tables: Vec<TableDef>) -> Result<Self> {
        let file = match &path {
            Some(p) => CatalogFile::read(p)?,
            None => CatalogFile::default(),
        };
        let mut names = BTreeSet::new();
        for table in flag_tables.iter().chain(&file.tables) {
            if !names.insert(table.name.to_ascii_lowercase()) {
                return Err(QuiverError::InvalidArgument(format!(
                    "table '{}' is defined more than once (flags and catalog file)",
                    table.name
                )));
            }
        }
        Ok(Self {
            path,
            file: Arc::new(Mutex::new(file)),
            flag_tables,
        })
    }

    /// Where SQL DDL is persisted; `None` means tables created with SQL last until restart.
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Registers every table in `ctx`, with the object stores they need. A flag table that fails
    /// to register is an error; a catalog-file table that fails is logged and skipped, so one
    /// unreachable bucket does not keep the whole cluster down.
    pub(crate) async fn register_all(&self, ctx: &SessionContext) -> Result<()> {
        let file = self.file.lock().await;
        for (url, options) in &file.object_stores {
            let root = Url::parse(url).map_err(|e| QuiverError::Catalog {
                path: self.path_display(),
                message: format!("object store '{url}': {e}"),
            })?;
            object_stores::ensure_registered(ctx.runtime_env().as_ref(), &root, options)?;
        }
        for table in &self.flag_tables {
            register(ctx, table, &file).await?;
        }
        // Tables before views, which may read them.
        let (tables, views): (Vec<&TableDef>, Vec<&TableDef>) =
            file.tables.iter().partition(|t| !t.url.is_empty());
        for table in tables.into_iter().chain(views) {
            if let Err(e) = register(ctx, table, &file).await {
                tracing::error!(table = %table.name, error = %e, "skipping table from the catalog file");
            }
        }
        Ok(())
    }

    /// Every object store the tables need, with the catalog-file options for it.
    pub(crate) async fn object_stores(&self) -> Vec<(Url, StoreOptions)> {
        let file = self.file.lock().await;
        let mut stores: BTreeMap<String, (Url, StoreOptions)> = BTreeMap::new();
        for (url, options) in &file.object_stores {
            if let Ok(root) = Url::parse(url) {
                stores.insert(root.to_string(), (root, options.clone()));
            }
        }
        for table in self.flag_tables.iter().chain(&file.tables) {
            if let Ok(Some(root)) = object_stores::store_root(&table.url) {
                stores
                    .entry(root.to_string())
                    .or_insert_with(|| (root, StoreOptions::new()));
            }
        }
        stores.into_values().collect()
    }

    /// Takes the DDL lock: the returned guard persists changes. It owns what it needs, so a
    /// commit can hold it in a task of its own.
    pub(crate) async fn lock(self: &Arc<Self>) -> CatalogGuard {
        CatalogGuard {
            catalog: Arc::clone(self),
            file: Arc::clone(&self.file).lock_owned().await,
        }
    }

    fn path_display(&self) -> String {
        self.path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

async fn register(ctx: &SessionContext, table: &TableDef, file: &CatalogFile) -> Result<()> {
    if let Some(root) = object_stores::store_root(&table.url)? {
        let options = file.store_options(&root);
        object_stores::ensure_registered(ctx.runtime_env().as_ref(), &root, &options)?;
    }
    if table.managed {
        return register_managed(ctx, table).await;
    }
    ctx.sql(&table.to_ddl()).await.map_err(|e| {
        QuiverError::InvalidArgument(format!("table '{}' ({}): {e}", table.name, table.url))
    })?;
    Ok(())
}

/// Registers (or re-registers) a managed table: exactly its committed files, read with the
/// session's Parquet options (so strings stay plain Utf8, as everywhere).
pub(crate) async fn register_managed(ctx: &SessionContext, table: &TableDef) -> Result<()> {
    let provider = managed_provider(ctx, table).await?;
    register_provider(ctx, &table.name, provider)
}

/// Puts `provider` in the session under `name`, replacing what was there. Does not wait.
pub(crate) fn register_provider(
    ctx: &SessionContext,
    name: &str,
    provider: Arc<dyn TableProvider>,
) -> Result<()> {
    ctx.deregister_table(name)?;
    ctx.register_table(name, provider)?;
    Ok(())
}

/// The table provider of a managed table: everything registering it needs that can fail or
/// wait (it may read a footer and look up file sizes), so a commit can do it before it changes
/// anything.
pub(crate) async fn managed_provider(
    ctx: &SessionContext,
    table: &TableDef,
) -> Result<Arc<dyn TableProvider>> {
    Ok(Arc::new(ManagedTable::try_new(&ctx.state(), table).await?))
}

/// Exclusive access to the catalog for one DDL statement or commit.
pub(crate) struct CatalogGuard {
    catalog: Arc<Catalog>,
    file: OwnedMutexGuard<CatalogFile>,
}

impl CatalogGuard {
    /// True when `name` comes from a `--table` flag and so cannot be changed with SQL.
    pub(crate) fn is_flag_table(&self, name: &str) -> bool {
        self.catalog
            .flag_tables
            .iter()
            .any(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// Options configured for the store at `root`.
    pub(crate) fn store_options(&self, root: &Url) -> StoreOptions {
        self.file.store_options(root)
    }

    /// The definition of a table created with SQL or ingest.
    pub(crate) fn get(&self, name: &str) -> Option<&TableDef> {
        self.file
            .tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// Records a table created with SQL and writes the catalog file.
    pub(crate) fn add(&mut self, table: TableDef) -> Result<()> {
        let mut next = self.file.clone();
        next.tables
            .retain(|t| !t.name.eq_ignore_ascii_case(&table.name));
        next.tables.push(table);
        self.commit(next)
    }

    /// Forgets a table and writes the catalog file; unknown names are a no-op.
    pub(crate) fn remove(&mut self, name: &str) -> Result<()> {
        let mut next = self.file.clone();
        next.tables.retain(|t| !t.name.eq_ignore_ascii_case(name));
        if next == *self.file {
            return Ok(());
        }
        self.commit(next)
    }

    /// Journals a write that is about to stage files (replacing an entry with the same id) and
    /// writes the catalog file.
    pub(crate) fn add_pending(&mut self, write: PendingWrite) -> Result<()> {
        let mut next = self.file.clone();
        next.pending_writes.retain(|w| w.id != write.id);
        next.pending_writes.push(write);
        self.commit(next)
    }

    /// Forgets a pending write (committed or cleaned up) and writes the catalog file; unknown
    /// ids are a no-op.
    pub(crate) fn remove_pending(&mut self, id: &str) -> Result<()> {
        if !self.file.pending_writes.iter().any(|w| w.id == id) {
            return Ok(());
        }
        let mut next = self.file.clone();
        next.pending_writes.retain(|w| w.id != id);
        self.commit(next)
    }

    /// The writes journaled as started and not finished.
    pub(crate) fn pending(&self) -> Vec<PendingWrite> {
        self.file.pending_writes.clone()
    }

    /// The paths (relative to `location`) of every file a managed table at `location` lists:
    /// the files a cleanup of `location` must keep.
    pub(crate) fn referenced_files(&self, location: &str) -> HashSet<String> {
        self.file
            .tables
            .iter()
            .filter(|t| t.managed && t.url == location)
            .flat_map(|t| t.files.iter().map(|f| f.path.clone()))
            .collect()
    }

    fn commit(&mut self, next: CatalogFile) -> Result<()> {
        if let Some(path) = &self.catalog.path {
            next.write(path)?;
        }
        *self.file = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_flags() {
        let t = TableDef::parse_flag("trips=s3://b/trips/").unwrap();
        assert_eq!(t.name, "trips");
        assert_eq!(t.url, "s3://b/trips/");
        assert_eq!(
            t.to_ddl(),
            "CREATE EXTERNAL TABLE \"trips\" STORED AS PARQUET LOCATION 's3://b/trips/'"
        );
        let t = TableDef::parse_flag("ev:csv=s3://b/ev/").unwrap();
        assert_eq!(t.format, Some(TableFormat::Csv));
        let t = TableDef::parse_flag("x=rel/x.json").unwrap();
        assert!(t.url.starts_with('/'), "{}", t.url);
        assert!(t.to_ddl().contains("STORED AS JSON"));
        assert!(TableDef::parse_flag("nourl").is_err());
        assert!(TableDef::parse_flag("a:xml=/x").is_err());
        assert!(TableDef::parse_flag("=/x").is_err());
    }

    #[tokio::test]
    async fn catalog_file_round_trip_is_atomic_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.toml");
        let catalog = Arc::new(Catalog::load(Some(path.clone()), vec![]).unwrap());
        {
            let mut guard = catalog.lock().await;
            guard
                .add(TableDef {
                    name: "t".into(),
                    url: "/data/t/".into(),
                    format: None,
                    options: BTreeMap::new(),
                    ddl: Some(
                        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/data/t/'".into(),
                    ),
                    managed: false,
                    files: Vec::new(),
                    partition_by: Vec::new(),
                    schema: None,
                })
                .unwrap();
        }
        let reloaded = CatalogFile::read(&path).unwrap();
        assert_eq!(reloaded.tables.len(), 1);
        assert_eq!(reloaded.tables[0].name, "t");
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let clash = Catalog::load(
            Some(path.clone()),
            vec![TableDef::parse_flag("T=/x/").unwrap()],
        );
        assert!(clash.is_err());

        catalog.lock().await.remove("t").unwrap();
        assert!(CatalogFile::read(&path).unwrap().tables.is_empty());

        std::fs::write(&path, "tables = 3").unwrap();
        assert!(matches!(
            CatalogFile::read(&path),
            Err(QuiverError::Catalog { .. })
        ));
    }

    fn events_schema() -> Schema {
        use arrow::datatypes::{DataType, Field};
        Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("payload", DataType::Utf8View, true),
            Field::new("day", DataType::Date32, true),
            Field::new("region", DataType::Utf8, true),
        ])
        .with_metadata([("origin".to_string(), "test".to_string())].into())
    }

    #[tokio::test]
    async fn managed_tables_and_pending_writes_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.toml");
        let schema = events_schema();
        let files = vec![
            ManagedFile {
                path: "day=2024-01-01/region=eu/part-1.parquet".into(),
                rows: 10,
                bytes: 1234,
            },
            ManagedFile {
                path: format!(
                    "day=2024-01-02/region={}/part-2.parquet",
                    hive::NULL_PARTITION
                ),
                rows: 3,
                bytes: 99,
            },
        ];
        let def = TableDef::managed(
            "events",
            "/wh/events/",
            files.clone(),
            &schema,
            vec!["day".into(), "region".into()],
        )
        .unwrap();
        let pending = PendingWrite {
            id: "w-1".into(),
            location: "/wh/events/".into(),
            kind: PendingKind::Table,
            started_unix_ms: 1_700_000_000_000,
        };
        let catalog = Arc::new(Catalog::load(Some(path.clone()), vec![]).unwrap());
        {
            let mut guard = catalog.lock().await;
            guard.add(def.clone()).unwrap();
            guard.add_pending(pending.clone()).unwrap();
            guard
                .add_pending(PendingWrite {
                    id: "w-2".into(),
                    location: "/wh/out/".into(),
                    kind: PendingKind::Copy,
                    started_unix_ms: 1,
                })
                .unwrap();
            guard.remove_pending("w-2").unwrap();
            guard.remove_pending("never-started").unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("kind = \"table\""), "{text}");

        let reloaded = Arc::new(Catalog::load(Some(path.clone()), vec![]).unwrap());
        let guard = reloaded.lock().await;
        let table = guard.get("events").unwrap();
        assert_eq!(table, &def);
        assert_eq!(table.files, files);
        assert_eq!(table.partition_by, ["day", "region"]);
        assert_eq!(table.table_schema().unwrap().unwrap().as_ref(), &schema);
        assert_eq!(guard.pending(), vec![pending]);
        let referenced = guard.referenced_files("/wh/events/");
        assert_eq!(referenced.len(), 2);
        assert!(referenced.contains("day=2024-01-01/region=eu/part-1.parquet"));
        assert!(guard.referenced_files("/wh/other/").is_empty());
    }

    #[test]
    fn catalogs_of_earlier_versions_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.toml");
        std::fs::write(
            &path,
            r#"
[[tables]]
name = "old"
url = "/wh/old/"
format = "parquet"
managed = true
files = ["part-a.parquet", "part-b.parquet"]

[[tables]]
name = "ext"
url = "s3://b/ext/"
"#,
        )
        .unwrap();
        let file = CatalogFile::read(&path).unwrap();
        let old = &file.tables[0];
        assert_eq!(
            old.files,
            vec![
                ManagedFile::unknown_size("part-a.parquet"),
                ManagedFile::unknown_size("part-b.parquet")
            ]
        );
        assert!(old.partition_by.is_empty());
        assert!(old.table_schema().unwrap().is_none());
        assert!(file.pending_writes.is_empty());
        // Written back in the new form, which reads back the same.
        file.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("path = \"part-a.parquet\""), "{text}");
        assert!(!text.contains("pending_writes"), "{text}");
        assert_eq!(CatalogFile::read(&path).unwrap(), file);
    }

    #[test]
    fn partition_columns_are_checked() {
        let schema = events_schema();
        let make = |cols: &[&str]| {
            TableDef::managed(
                "t",
                "/wh/t/",
                vec![],
                &schema,
                cols.iter().map(|c| c.to_string()).collect(),
            )
        };
        make(&[]).unwrap();
        make(&["region"]).unwrap();
        make(&["day", "region"]).unwrap();
        for bad in [
            &["day"][..],
            &["region", "day"],
            &["nope"],
            &["region", "region"],
            &["id", "payload", "day", "region", "x"],
        ] {
            let e = make(bad).unwrap_err();
            assert!(matches!(e, QuiverError::InvalidArgument(_)), "{bad:?}: {e}");
        }
        let doubles = Schema::new(vec![arrow::datatypes::Field::new(
            "price",
            arrow::datatypes::DataType::Float64,
            true,
        )]);
        let e =
            TableDef::managed("t", "/wh/t/", vec![], &doubles, vec!["price".into()]).unwrap_err();
        assert!(e.to_string().contains("Float64"), "{e}");
        let mut broken = make(&[]).unwrap();
        broken.schema = Some("not base64!".into());
        assert!(matches!(
            broken.table_schema(),
            Err(QuiverError::InvalidArgument(_))
        ));
    }
}
