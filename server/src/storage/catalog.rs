//! The catalog: which tables exist, where their files are, and how that survives restarts.
//!
//! Tables come from three places: `--table NAME[:FORMAT]=URL` flags (fixed for the life of the
//! process), the TOML catalog file given with `--catalog`, and SQL (`CREATE EXTERNAL TABLE`,
//! `CREATE VIEW`, `DROP TABLE`, `DROP VIEW`), which the coordinator persists into the catalog
//! file. Every table is registered
//! in DataFusion through a `CREATE EXTERNAL TABLE` statement, so flag, file and SQL tables behave
//! the same; tables created with SQL are stored as the statement the user ran, so nothing
//! (explicit columns, options, partition columns) is lost on restart.
//!
//! Invariants:
//! * the catalog file is replaced atomically (temp file, fsync, rename, fsync of the directory),
//!   so a crash leaves either the old or the new catalog, never a torn one;
//! * DDL is serialized by [`Catalog::lock`]; the file is written only after DataFusion accepted
//!   the statement, and a failed write undoes the registration.
//!
//! ```toml
//! [[tables]]
//! name = "trips"
//! url = "s3://taxi/trips/"
//! format = "parquet"
//!
//! [object_stores."s3://taxi"]
//! endpoint = "http://127.0.0.1:9000"
//! region = "us-east-1"
//! allow_http = "true"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedMutexGuard};
use url::Url;

use crate::error::{QuiverError, Result};
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
    pub files: Vec<String>,
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
        })
    }

    /// A managed table of Parquet `files` in the warehouse directory `location`.
    pub fn managed(name: &str, location: &str, files: Vec<String>) -> Self {
        Self {
            name: name.to_string(),
            url: location.to_string(),
            format: Some(TableFormat::Parquet),
            options: BTreeMap::new(),
            ddl: None,
            managed: true,
            files,
        }
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

/// Registers (or re-registers) a managed table: a Parquet listing of exactly its committed files,
/// read with the session's Parquet options (so strings stay plain Utf8, as everywhere).
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
/// wait (it reads a footer), so a commit can do it before it changes anything.
pub(crate) async fn managed_provider(
    ctx: &SessionContext,
    table: &TableDef,
) -> Result<Arc<dyn TableProvider>> {
    let urls = table
        .files
        .iter()
        .map(|f| ListingTableUrl::parse(format!("{}{f}", table.url)))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let first = urls.first().ok_or_else(|| {
        QuiverError::Internal(format!("managed table '{}' has no files", table.name))
    })?;
    let state = ctx.state();
    let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
    let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
    // Every file of a managed table has the table's schema: read one footer, not all.
    let schema = options.infer_schema(&state, first).await?;
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config)?))
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
}
