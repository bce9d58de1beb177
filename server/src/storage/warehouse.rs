//! The warehouse: where managed tables (`CREATE TABLE`, `INSERT`, bulk ingest) keep their files.
//!
//! Contract:
//! * every write produces complete, immutable Parquet files with fresh names; nothing is ever
//!   rewritten in place;
//! * a file becomes visible under its final name only once complete: locally it is written to a
//!   hidden temp file, fsynced, renamed and the directory fsynced; on S3 it is a multipart upload
//!   that exists only once completed. A failed or cancelled write removes its temp file;
//! * files are not part of a table until the catalog lists them ([`crate::storage::catalog`] commits after
//!   the files are durable), so readers never see a partial file or a partial write, and a
//!   write that fails before its commit leaves nothing visible (at worst an unreferenced file).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::{Stream, StreamExt};
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use url::Url;

use crate::error::{QuiverError, Result};
use crate::storage::object_stores::{self, StoreOptions};
use crate::task;

/// A data file that was written and is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataFile {
    /// The file's name inside its table directory.
    pub name: String,
    pub rows: u64,
}

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

    /// Writes `batches` (all in `schema`) as one new Parquet file under `table_location`.
    /// With no rows the file still holds the schema.
    pub(crate) async fn write(
        &self,
        runtime: &RuntimeEnv,
        options: &StoreOptions,
        table_location: &str,
        schema: SchemaRef,
        batches: impl Stream<Item = Result<RecordBatch>> + Send,
    ) -> Result<DataFile> {
        let name = format!("part-{}.parquet", uuid::Uuid::new_v4().simple());
        match &self.location {
            Location::Local(_) => {
                let dir = PathBuf::from(table_location);
                write_local(&dir, &name, schema, batches).await
            }
            Location::Remote { store_root, .. } => {
                object_stores::ensure_registered(runtime, store_root, options)?;
                let store = runtime.object_store(ObjectStoreUrl::parse(store_root.as_str())?)?;
                let url = Url::parse(&format!("{table_location}{name}"))
                    .map_err(|e| QuiverError::Internal(format!("data file URL: {e}")))?;
                let path = ObjectPath::from_url_path(url.path())
                    .map_err(|e| QuiverError::Internal(format!("data file path: {e}")))?;
                let writer = BufWriter::new(Arc::clone(&store), path);
                let rows = write_parquet(writer, schema, batches).await?;
                Ok(DataFile { name, rows })
            }
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
                Location::Local(_) => tokio::fs::remove_file(Path::new(table_location).join(name))
                    .await
                    .map_err(|e| e.to_string()),
                Location::Remote { store_root, .. } => {
                    delete_remote(runtime, options, store_root, table_location, name).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(file = %name, location = %table_location, error = %e, "could not delete an unreferenced data file");
            }
        }
    }
}

async fn delete_remote(
    runtime: &RuntimeEnv,
    options: &StoreOptions,
    store_root: &Url,
    table_location: &str,
    name: &str,
) -> std::result::Result<(), String> {
    object_stores::ensure_registered(runtime, store_root, options).map_err(|e| e.to_string())?;
    let store = runtime
        .object_store(ObjectStoreUrl::parse(store_root.as_str()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let url = Url::parse(&format!("{table_location}{name}")).map_err(|e| e.to_string())?;
    let path = ObjectPath::from_url_path(url.path()).map_err(|e| e.to_string())?;
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

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build()
}

async fn write_parquet<W: AsyncFileWriter>(
    writer: W,
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch>> + Send,
) -> Result<u64> {
    let mut writer = AsyncArrowWriter::try_new(writer, schema, Some(writer_properties()))
        .map_err(|e| QuiverError::Internal(format!("parquet writer: {e}")))?;
    let mut rows = 0u64;
    let mut batches = std::pin::pin!(batches);
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        writer
            .write(&batch)
            .await
            .map_err(|e| QuiverError::Internal(format!("writing parquet: {e}")))?;
    }
    writer
        .close()
        .await
        .map_err(|e| QuiverError::Internal(format!("finishing parquet: {e}")))?;
    Ok(rows)
}

/// Removes a temp file unless disarmed: covers errors and cancelled (dropped) writes alike.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn write_local(
    dir: &Path,
    name: &str,
    schema: SchemaRef,
    batches: impl Stream<Item = Result<RecordBatch>> + Send,
) -> Result<DataFile> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| QuiverError::io(format!("creating {}", dir.display()), e))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let final_path = dir.join(name);
    let mut guard = RemoveOnDrop(Some(tmp.clone()));
    let file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| QuiverError::io(format!("creating {}", tmp.display()), e))?;
    let rows = write_parquet(file, schema, batches).await?;
    let (tmp_for_sync, final_for_sync, dir_for_sync) =
        (tmp.clone(), final_path.clone(), dir.to_path_buf());
    task::spawn_blocking("fsync", move || -> std::io::Result<()> {
        std::fs::File::open(&tmp_for_sync)?.sync_all()?;
        std::fs::rename(&tmp_for_sync, &final_for_sync)?;
        std::fs::File::open(&dir_for_sync)?.sync_all()
    })
    .await?
    .map_err(|e| QuiverError::io(format!("making {} durable", final_path.display()), e))?;
    guard.0 = None;
    Ok(DataFile {
        name: name.to_string(),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use futures::stream;

    use super::*;

    fn batch(schema: &SchemaRef, values: Vec<i64>) -> RecordBatch {
        RecordBatch::try_new(Arc::clone(schema), vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    #[tokio::test]
    async fn local_writes_are_complete_or_absent() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = Warehouse::new(&dir.path().display().to_string()).unwrap();
        let runtime = RuntimeEnv::default();
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let location = warehouse.table_location("My Table");
        assert!(location.ends_with("/my_table/"), "{location}");

        let ok = stream::iter(vec![
            Ok(batch(&schema, vec![1, 2])),
            Ok(batch(&schema, vec![3])),
        ]);
        let file = warehouse
            .write(
                &runtime,
                &StoreOptions::new(),
                &location,
                Arc::clone(&schema),
                ok,
            )
            .await
            .unwrap();
        assert_eq!(file.rows, 3);
        let entries: Vec<String> = std::fs::read_dir(&location)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, vec![file.name.clone()]);

        // A failing input leaves nothing behind.
        let failing = stream::iter(vec![
            Ok(batch(&schema, vec![1])),
            Err(QuiverError::InvalidArgument("boom".into())),
        ]);
        let err = warehouse
            .write(
                &runtime,
                &StoreOptions::new(),
                &location,
                Arc::clone(&schema),
                failing,
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert_eq!(std::fs::read_dir(&location).unwrap().count(), 1);

        warehouse
            .delete(&runtime, &StoreOptions::new(), &location, &[file.name])
            .await;
        assert_eq!(std::fs::read_dir(&location).unwrap().count(), 0);
        assert!(Warehouse::new("relative/dir").is_err());
    }
}
