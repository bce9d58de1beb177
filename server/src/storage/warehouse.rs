//! The warehouse: where managed tables (`CREATE TABLE`, `INSERT`, bulk ingest) keep their files.
//!
//! Contract:
//! * each table has a directory ([`Warehouse::table_location`]); writes add complete, immutable
//!   files with fresh names to it ([`crate::sink`] writes them, on the executors); nothing is
//!   ever rewritten in place;
//! * files are not part of a table until the catalog lists them ([`crate::storage::catalog`]
//!   commits after the files are durable), so readers never see a partial file or a partial
//!   write, and a write that fails before its commit leaves nothing visible (its files are
//!   removed, or collected later by [`crate::sink::staging`]);
//! * files the catalog stopped listing (replaced, dropped) are deleted by [`Warehouse::delete`].

use std::path::{Path, PathBuf};

use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::ObjectStoreExt;
use url::Url;

use crate::error::{QuiverError, Result};
use crate::storage::managed_table::data_file_path;
use crate::storage::object_stores::{self, StoreOptions};

/// The warehouse root: a local directory or an object-store prefix.
#[derive(Debug, Clone)]
pub(crate) struct Warehouse {
    location: Location,
}

#[derive(Debug, Clone)]
enum Location {
    Local(PathBuf),
    Remote {
        /// `s3://bucket/prefix/`, with the trailing slash.
        url: Url,
        store_root: Url,
    },
}

impl Warehouse {
    /// `location` is an absolute directory or an `s3://bucket/prefix` URL.
    pub(crate) fn new(location: &str) -> Result<Self> {
        let location = match object_stores::store_root(location)? {
            Some(store_root) => {
                let mut url = Url::parse(location)
                    .map_err(|e| QuiverError::InvalidArgument(format!("--warehouse: {e}")))?;
                if !url.path().ends_with('/') {
                    url.set_path(&format!("{}/", url.path()));
                }
                Location::Remote { url, store_root }
            }
            None => {
                let path = location.strip_prefix("file://").unwrap_or(location);
                let path = PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(QuiverError::InvalidArgument(format!(
                        "--warehouse {location}: use an absolute path"
                    )));
                }
                Location::Local(path)
            }
        };
        Ok(Self { location })
    }

    /// The object store the warehouse lives in, if remote (to register with its options).
    pub(crate) fn store_root(&self) -> Option<&Url> {
        match &self.location {
            Location::Local(_) => None,
            Location::Remote { store_root, .. } => Some(store_root),
        }
    }

    /// The directory URL of a table's files (with a trailing slash): what the catalog records.
    pub(crate) fn table_location(&self, table: &str) -> String {
        let dir = directory_name(table);
        match &self.location {
            Location::Local(root) => format!("{}/", root.join(dir).display()),
            Location::Remote { url, .. } => format!("{url}{dir}/"),
        }
    }

    /// Deletes files no table refers to any more. Best effort: a leftover file is unreferenced
    /// and harmless, so failures are logged, not returned.
    pub(crate) async fn delete(
        &self,
        runtime: &RuntimeEnv,
        options: &StoreOptions,
        table_location: &str,
        names: &[String],
    ) {
        for name in names {
            let result = match &self.location {
                Location::Local(_) => delete_local(Path::new(table_location), name).await,
                Location::Remote { .. } => {
                    delete_remote(runtime, options, table_location, name).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(file = %name, location = %table_location, error = %e, "could not delete an unreferenced data file");
            }
        }
    }
}

/// Deletes `name` under the local table directory `dir`, then the partition directories it
/// leaves empty.
async fn delete_local(dir: &Path, name: &str) -> std::result::Result<(), String> {
    let path = dir.join(name);
    tokio::fs::remove_file(&path)
        .await
        .map_err(|e| e.to_string())?;
    let mut parent = path.parent();
    while let Some(d) = parent.filter(|d| d.starts_with(dir) && *d != dir) {
        if tokio::fs::remove_dir(d).await.is_err() {
            break;
        }
        parent = d.parent();
    }
    Ok(())
}

async fn delete_remote(
    runtime: &RuntimeEnv,
    options: &StoreOptions,
    table_location: &str,
    name: &str,
) -> std::result::Result<(), String> {
    let (store, dir) =
        object_stores::resolve(runtime, table_location, options).map_err(|e| e.to_string())?;
    let path = data_file_path(&dir, name).map_err(|e| e.to_string())?;
    store.delete(&path).await.map_err(|e| e.to_string())
}

/// A table name as a directory name: letters, digits, `_` and `-` kept, the rest `_`. Two names
/// may share a directory; files are unique and tables list theirs explicitly.
fn directory_name(table: &str) -> String {
    let name: String = table
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() { "_".into() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn table_directories_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = Warehouse::new(&dir.path().display().to_string()).unwrap();
        let runtime = RuntimeEnv::default();
        let location = warehouse.table_location("My Table");
        assert!(location.ends_with("/my_table/"), "{location}");
        std::fs::create_dir_all(format!("{location}p=a%2Fb")).unwrap();
        std::fs::write(format!("{location}p=a%2Fb/part-1.parquet"), b"x").unwrap();
        std::fs::write(format!("{location}part-2.parquet"), b"x").unwrap();
        warehouse
            .delete(
                &runtime,
                &StoreOptions::new(),
                &location,
                &[
                    "p=a%2Fb/part-1.parquet".into(),
                    "part-2.parquet".into(),
                    "gone".into(),
                ],
            )
            .await;
        assert!(!std::path::Path::new(&format!("{location}part-2.parquet")).exists());
        assert!(!std::path::Path::new(&format!("{location}p=a%2Fb")).exists());
        assert!(std::path::Path::new(&location).exists());
        assert!(Warehouse::new("relative/dir").is_err());
    }
}
