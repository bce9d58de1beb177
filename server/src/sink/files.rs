//! One writing task's rows into data files: hive partition directories, a new file past the
//! target size, and a report of every completed file.
//!
//! Contract:
//! * files are written through the object store the destination resolves to (the same
//!   resolution readers use, so names round-trip), as multipart uploads that become visible only
//!   once complete; local files are fsynced once complete;
//! * a file is complete when it is reported; a task that fails or is dropped leaves at most files
//!   it completed, which nothing references until the coordinator commits them (the write's
//!   cleanup and the staging collector remove them);
//! * memory is bounded per writing partition: the Parquet row groups of its open files share
//!   [`ROW_GROUP_BYTES`] (a file's row group is flushed past its share), each upload buffers at
//!   most [`UPLOAD_BUFFER_BYTES`], and at most [`MAX_OPEN_FILES`] partition files are open at
//!   once (the least recently written is closed).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, lexsort_to_indices, partition, take, take_record_batch};
use arrow::csv::WriterBuilder as CsvWriterBuilder;
use arrow::datatypes::SchemaRef;
use arrow::json::LineDelimitedWriter;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::{Stream, StreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::AsyncArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use tokio::io::AsyncWriteExt;

use super::spec::{DataFormat, WriteSpec, WrittenFile, parquet_compression};
use crate::error::{QuiverError, Result};
use crate::storage::hive;
use crate::storage::managed_table::data_file_path;
use crate::storage::object_stores::{self, StoreOptions};
use crate::task;

/// What the open files of one writing partition buffer in Parquet row groups, together.
pub(crate) const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// What one upload buffers before it sends a part (S3's smallest multipart part).
pub(crate) const UPLOAD_BUFFER_BYTES: usize = 5 * 1024 * 1024;

/// Rows per Parquet row group at most (DataFusion's default): a file at the default target size
/// still has several, so a scan of it splits over tasks by byte range.
pub(crate) const ROW_GROUP_ROWS: usize = 1024 * 1024;

/// Rows written to a file at a time: the granularity of the roll-over.
pub(crate) const SLICE_ROWS: usize = 1024;

/// What the data of a file may take of the target size: the rest is left for the Parquet
/// footer (which grows with the columns and row groups) and for estimates that fall short.
fn file_budget(target: u64) -> u64 {
    target - (target / 8).min(64 * 1024)
}

/// Partition files one writing partition keeps open at once.
pub(crate) const MAX_OPEN_FILES: usize = 16;

/// Where a task's files go and what they are named.
#[derive(Debug, Clone)]
pub(crate) struct TaskFiles {
    pub(crate) spec: WriteSpec,
    /// The rows as they arrive (partition columns last).
    pub(crate) input: SchemaRef,
    /// `<task>-<partition>`: with the write and attempt ids, unique across the write.
    pub(crate) name: String,
}

/// Writes `batches` into files; returns every file completed, in completion order.
pub(crate) async fn write_task_files(
    runtime: &RuntimeEnv,
    files: TaskFiles,
    batches: impl Stream<Item = Result<RecordBatch>> + Send,
) -> Result<Vec<WrittenFile>> {
    let mut writer = PartitionedWriter::new(runtime, files)?;
    let mut batches = std::pin::pin!(batches);
    while let Some(batch) = batches.next().await {
        writer.write(&batch?).await?;
    }
    writer.finish().await
}

struct PartitionedWriter {
    store: Arc<dyn ObjectStore>,
    /// The destination's path in the store.
    base: ObjectPath,
    files: TaskFiles,
    file_schema: SchemaRef,
    /// Column indices of the data (files) and of the partition values.
    data_columns: Vec<usize>,
    partition_columns: Vec<usize>,
    open: HashMap<String, OpenFile>,
    done: Vec<WrittenFile>,
    /// Files started so far, to name the next one.
    started: usize,
    /// Batches written so far, to find the least recently written open file.
    clock: u64,
    /// Bytes per row of the last completed file: what later files are sized by (Parquet's
    /// own estimate of a buffered row group is taken before encoding and compression, so it
    /// only sizes the first file, conservatively).
    bytes_per_row: Option<f64>,
}

impl PartitionedWriter {
    fn new(runtime: &RuntimeEnv, files: TaskFiles) -> Result<Self> {
        files.spec.check_input(&files.input)?;
        // Executors read their environment for a store the coordinator did not configure.
        let (store, base) =
            object_stores::resolve(runtime, &files.spec.destination, &StoreOptions::new())?;
        let file_schema = files.spec.file_schema(&files.input)?;
        let n = files.input.fields().len();
        let p = files.spec.partition_by.len();
        if let DataFormat::Parquet { compression } = &files.spec.format {
            parquet_compression(compression)?;
        }
        Ok(Self {
            store,
            base,
            file_schema,
            data_columns: (0..n - p).collect(),
            partition_columns: (n - p..n).collect(),
            files,
            open: HashMap::new(),
            done: Vec::new(),
            started: 0,
            clock: 0,
            bytes_per_row: None,
        })
    }

    async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let data = batch.project(&self.data_columns)?;
        // Casting to the file schema checks NOT NULL columns.
        let data = RecordBatch::try_new(Arc::clone(&self.file_schema), data.columns().to_vec())
            .map_err(|e| QuiverError::InvalidArgument(format!("cannot write the rows: {e}")))?;
        if self.partition_columns.is_empty() {
            return self.write_to(String::new(), data).await;
        }
        let mut parts = self.partition_rows(batch)?;
        if parts.len() == 1
            && let Some((dir, _)) = parts.pop()
        {
            // One partition: the batch as it is.
            return self.write_to(dir, data).await;
        }
        for (dir, rows) in parts {
            let part = take_record_batch(&data, &rows)?;
            self.write_to(dir, part).await?;
        }
        Ok(())
    }

    /// The rows of `batch` by partition directory. Vectorized: the rows are sorted by their
    /// partition values and cut where the values change, so each directory's name is rendered
    /// once per batch, not once per row.
    fn partition_rows(&self, batch: &RecordBatch) -> Result<Vec<(String, UInt32Array)>> {
        let columns: Vec<ArrayRef> = self
            .partition_columns
            .iter()
            .map(|i| Arc::clone(batch.column(*i)))
            .collect();
        let sort: Vec<SortColumn> = columns
            .iter()
            .map(|values| SortColumn {
                values: Arc::clone(values),
                options: None,
            })
            .collect();
        let order = lexsort_to_indices(&sort, None)?;
        let sorted = columns
            .iter()
            .map(|c| take(c.as_ref(), &order, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let options = FormatOptions::default();
        let formatters = sorted
            .iter()
            .map(|array| ArrayFormatter::try_new(array.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut parts = Vec::new();
        for range in partition(&sorted)?.ranges() {
            let values: Vec<Option<String>> = sorted
                .iter()
                .zip(&formatters)
                .map(|(array, formatter)| {
                    array
                        .is_valid(range.start)
                        .then(|| formatter.value(range.start).to_string())
                })
                .collect();
            let named: Vec<(&str, Option<&str>)> = self
                .files
                .spec
                .partition_by
                .iter()
                .zip(&values)
                .map(|(name, value)| (name.as_str(), value.as_deref()))
                .collect();
            parts.push((
                hive::partition_dir(&named),
                order.slice(range.start, range.len()),
            ));
        }
        Ok(parts)
    }

    /// Writes `batch` into the open file of partition directory `dir`, in slices of at most
    /// [`SLICE_ROWS`] rows, each no larger than what the file has room for (at the bytes per row
    /// seen so far): a file is closed once it reaches the target size, so files stay within it
    /// however large the batches.
    async fn write_to(&mut self, dir: String, batch: RecordBatch) -> Result<()> {
        self.clock += 1;
        let target = file_budget(self.files.spec.target_file_bytes);
        // Before any file completed: what a row takes in memory, twice that for text formats
        // (which spell out what Arrow stores in binary).
        let in_memory = batch.get_array_memory_size() as f64 / batch.num_rows().max(1) as f64;
        let guess = match self.files.spec.format {
            DataFormat::Parquet { .. } => in_memory,
            DataFormat::Csv { .. } | DataFormat::Json => 2.0 * in_memory,
        };
        let mut offset = 0;
        while offset < batch.num_rows() {
            if !self.open.contains_key(&dir) {
                if self.open.len() >= MAX_OPEN_FILES {
                    self.close_least_recent().await?;
                }
                let file = self.start_file(&dir)?;
                self.open.insert(dir.clone(), file);
            }
            let row_group_bytes = ROW_GROUP_BYTES / self.open.len().max(1);
            let learned = self.bytes_per_row;
            let clock = self.clock;
            let file = self.open.get_mut(&dir).ok_or_else(|| {
                QuiverError::Internal("an open partition file went missing".into())
            })?;
            let size = file.size(learned);
            let per_row = learned
                .or_else(|| (file.rows > 0).then(|| size as f64 / file.rows as f64))
                .unwrap_or(guess)
                .max(1.0);
            let fit = (target.saturating_sub(size) as f64 / per_row) as usize;
            if fit == 0 && file.rows > 0 {
                self.roll(&dir).await?;
                continue;
            }
            let rows = fit.clamp(1, SLICE_ROWS).min(batch.num_rows() - offset);
            let slice = batch.slice(offset, rows);
            offset += rows;
            file.last_written = clock;
            file.write(&slice, row_group_bytes).await?;
            if file.size(learned) >= target {
                self.roll(&dir).await?;
            }
        }
        Ok(())
    }

    /// Closes the open file of `dir` and records it (and what a row costs in it).
    async fn roll(&mut self, dir: &str) -> Result<()> {
        if let Some(file) = self.open.remove(dir) {
            let written = file.close(self.store.as_ref(), &self.files.spec).await?;
            if written.rows > 0 {
                self.bytes_per_row = Some(written.bytes as f64 / written.rows as f64);
            }
            self.done.push(written);
        }
        Ok(())
    }

    async fn close_least_recent(&mut self) -> Result<()> {
        let oldest = self
            .open
            .iter()
            .min_by_key(|(_, f)| f.last_written)
            .map(|(dir, _)| dir.clone());
        if let Some(dir) = oldest {
            self.roll(&dir).await?;
        }
        Ok(())
    }

    fn start_file(&mut self, dir: &str) -> Result<OpenFile> {
        let spec = &self.files.spec;
        let relative = format!(
            "{dir}part-{}-{}-{}-{}.{}",
            spec.write_id,
            spec.attempt,
            self.files.name,
            self.started,
            spec.format.extension()
        );
        self.started += 1;
        // The name readers resolve too: the relative path verbatim under the destination.
        let location = data_file_path(&self.base, &relative)?;
        let upload = BufWriter::with_capacity(
            Arc::clone(&self.store),
            location.clone(),
            UPLOAD_BUFFER_BYTES,
        );
        let body = match &spec.format {
            DataFormat::Parquet { compression } => {
                let properties = WriterProperties::builder()
                    .set_compression(parquet_compression(compression)?)
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                    .build();
                let writer = AsyncArrowWriter::try_new(
                    upload,
                    Arc::clone(&self.file_schema),
                    Some(properties),
                )
                .map_err(parquet_error)?;
                Body::Parquet(Box::new(writer))
            }
            DataFormat::Csv { .. } | DataFormat::Json => Body::Text {
                format: spec.format.clone(),
                upload: Box::new(upload),
                bytes: 0,
                started: false,
            },
        };
        Ok(OpenFile {
            relative,
            location,
            body,
            rows: 0,
            last_written: 0,
        })
    }

    async fn finish(mut self) -> Result<Vec<WrittenFile>> {
        let mut open: Vec<(String, OpenFile)> = self.open.drain().collect();
        open.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, file) in open {
            let written = file.close(self.store.as_ref(), &self.files.spec).await?;
            self.done.push(written);
        }
        Ok(self.done)
    }
}

struct OpenFile {
    relative: String,
    location: ObjectPath,
    body: Body,
    rows: u64,
    last_written: u64,
}

enum Body {
    Parquet(Box<AsyncArrowWriter<BufWriter>>),
    /// CSV and JSON are encoded batch by batch into the upload.
    Text {
        format: DataFormat,
        upload: Box<BufWriter>,
        bytes: u64,
        /// Whether a batch was written (a CSV header goes before the first only).
        started: bool,
    },
}

impl OpenFile {
    /// Writes `batch`; a Parquet row group is flushed once it buffers `row_group_bytes`.
    async fn write(&mut self, batch: &RecordBatch, row_group_bytes: usize) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        match &mut self.body {
            Body::Parquet(writer) => {
                writer.write(batch).await.map_err(parquet_error)?;
                if writer.in_progress_size() > row_group_bytes {
                    writer.flush().await.map_err(parquet_error)?;
                }
            }
            Body::Text {
                format,
                upload,
                bytes,
                started,
            } => {
                let encoded = encode_text(format, batch, !*started)?;
                *started = true;
                *bytes += encoded.len() as u64;
                upload.write_all(&encoded).await.map_err(upload_error)?;
            }
        }
        Ok(())
    }

    /// Bytes the file will hold for what was written so far: exact for text; for Parquet, with
    /// `bytes_per_row` learned from completed files, its rows at that cost (at least what is
    /// flushed), else what is flushed plus Parquet's estimate of the buffered row group.
    fn size(&self, bytes_per_row: Option<f64>) -> u64 {
        match &self.body {
            Body::Parquet(writer) => {
                let flushed = writer.bytes_written() as u64;
                match bytes_per_row {
                    Some(per_row) => flushed.max((self.rows as f64 * per_row) as u64),
                    None => flushed + writer.in_progress_size() as u64,
                }
            }
            Body::Text { bytes, .. } => *bytes,
        }
    }

    /// Completes the upload, makes a local file durable, and reports it.
    async fn close(self, store: &dyn ObjectStore, spec: &WriteSpec) -> Result<WrittenFile> {
        match self.body {
            Body::Parquet(writer) => {
                writer.close().await.map_err(parquet_error)?;
            }
            Body::Text { mut upload, .. } => {
                upload.shutdown().await.map_err(upload_error)?;
            }
        }
        let bytes = store.head(&self.location).await.map_err(store_error)?.size;
        if object_stores::store_root(&spec.destination)?.is_none() {
            let path = PathBuf::from(format!("{}{}", spec.destination, self.relative));
            task::spawn_blocking("fsync", move || -> std::io::Result<()> {
                std::fs::File::open(&path)?.sync_all()?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            })
            .await?
            .map_err(|e| QuiverError::io("making a data file durable", e))?;
        }
        tracing::info!(destination = %spec.destination, file = %self.relative, rows = self.rows, bytes, "wrote a data file");
        Ok(WrittenFile {
            path: self.relative,
            rows: self.rows,
            bytes,
        })
    }
}

/// One batch of a text format: CSV (with the header line when `header`: a file's first batch,
/// if the format asks for headers) or newline-delimited JSON.
fn encode_text(format: &DataFormat, batch: &RecordBatch, first: bool) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        DataFormat::Csv { header } => {
            let mut writer = CsvWriterBuilder::new()
                .with_header(*header && first)
                .build(&mut out);
            writer.write(batch)?;
        }
        DataFormat::Json => {
            let mut writer = LineDelimitedWriter::new(&mut out);
            writer.write(batch)?;
            writer.finish()?;
        }
        DataFormat::Parquet { .. } => {
            return Err(QuiverError::Internal("Parquet is not a text format".into()));
        }
    }
    Ok(out)
}

/// A failure of the object store: its own code (`Unavailable` for a failing store).
pub(crate) fn store_error(e: object_store::Error) -> QuiverError {
    QuiverError::DataFusion(DataFusionError::ObjectStore(Box::new(e)))
}

/// A failure of an upload: a full disk is `ResourceExhausted`, the store's errors keep their
/// code, anything else on the way to the store is `Unavailable`.
fn upload_error(e: std::io::Error) -> QuiverError {
    if matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) {
        return QuiverError::io("writing a data file", e);
    }
    match e.into_inner() {
        Some(inner) => match inner.downcast::<object_store::Error>() {
            Ok(store) => store_error(*store),
            Err(other) => QuiverError::Unavailable(format!("writing a data file: {other}")),
        },
        None => QuiverError::Unavailable("writing a data file failed".into()),
    }
}

/// A Parquet writer error: failures of the upload underneath keep their meaning.
fn parquet_error(e: ParquetError) -> QuiverError {
    match e {
        ParquetError::External(inner) => match inner.downcast::<object_store::Error>() {
            Ok(store) => store_error(*store),
            Err(inner) => match inner.downcast::<std::io::Error>() {
                Ok(io) => upload_error(*io),
                Err(other) => QuiverError::Unavailable(format!("writing a data file: {other}")),
            },
        },
        other => QuiverError::Internal(format!("writing Parquet: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use futures::stream;

    use super::*;
    use crate::sink::spec::MIN_TARGET_FILE_BYTES;

    fn spec(dir: &std::path::Path, format: DataFormat, partition_by: &[&str]) -> WriteSpec {
        WriteSpec {
            write_id: "w1".into(),
            attempt: "a1".into(),
            destination: format!("{}/", dir.display()),
            format,
            partition_by: partition_by.iter().map(|s| s.to_string()).collect(),
            not_null: vec!["v".into()],
            target_file_bytes: MIN_TARGET_FILE_BYTES,
        }
    }

    fn batches(schema: &SchemaRef, n: usize) -> Vec<Result<RecordBatch>> {
        (0..n)
            .map(|b| {
                let v: Vec<i64> = (0..8192).map(|i| (b * 8192 + i) as i64).collect();
                let p: Vec<Option<&str>> = (0..8192)
                    .map(|i| match i % 3 {
                        0 => Some("a/b"),
                        1 => Some("c"),
                        _ => None,
                    })
                    .collect();
                Ok(RecordBatch::try_new(
                    Arc::clone(schema),
                    vec![
                        Arc::new(Int64Array::from(v)),
                        Arc::new(StringArray::from(p)),
                    ],
                )
                .unwrap())
            })
            .collect()
    }

    #[tokio::test]
    async fn partitioned_files_roll_and_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = RuntimeEnv::default();
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, true),
            Field::new("p", DataType::Utf8, true),
        ]));
        let files = TaskFiles {
            spec: spec(
                dir.path(),
                DataFormat::parquet("uncompressed").unwrap(),
                &["p"],
            ),
            input: Arc::clone(&schema),
            name: "0-0".into(),
        };
        let written = write_task_files(&runtime, files, stream::iter(batches(&schema, 40)))
            .await
            .unwrap();
        assert_eq!(written.iter().map(|f| f.rows).sum::<u64>(), 40 * 8192);
        // Three partitions, each past the target size more than once.
        let dirs: std::collections::BTreeSet<&str> = written
            .iter()
            .map(|f| f.path.split('/').next().unwrap())
            .collect();
        assert_eq!(
            dirs.into_iter().collect::<Vec<_>>(),
            vec!["p=__HIVE_DEFAULT_PARTITION__", "p=a%2Fb", "p=c"]
        );
        assert!(written.len() > 3, "{written:?}");
        for file in &written {
            let on_disk = dir.path().join(&file.path);
            let size = std::fs::metadata(&on_disk).unwrap().len();
            assert_eq!(size, file.bytes, "{}", file.path);
            assert!(
                size <= MIN_TARGET_FILE_BYTES,
                "{} has {size} bytes",
                file.path
            );
            assert!(
                file.path.starts_with("p=") && file.path.contains("/part-w1-a1-0-0-"),
                "{}",
                file.path
            );
        }
        // No file of the write holds the partition column.
        let first = std::fs::File::open(dir.path().join(&written[0].path)).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(first).unwrap();
        assert_eq!(reader.schema().fields().len(), 1);
    }

    #[tokio::test]
    async fn text_formats_and_not_null_columns() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = RuntimeEnv::default();
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, true),
            Field::new("p", DataType::Utf8, true),
        ]));
        for format in [DataFormat::Csv { header: true }, DataFormat::Json] {
            let out = dir.path().join(format.extension());
            let files = TaskFiles {
                spec: spec(&out, format.clone(), &[]),
                input: Arc::clone(&schema),
                name: "0-0".into(),
            };
            let written = write_task_files(&runtime, files, stream::iter(batches(&schema, 4)))
                .await
                .unwrap();
            assert!(written.len() > 1, "text files roll too: {written:?}");
            let mut rows = 0;
            for file in &written {
                assert!(file.bytes <= MIN_TARGET_FILE_BYTES, "{file:?}");
                let text = std::fs::read_to_string(out.join(&file.path)).unwrap();
                let lines = text.lines().count() as u64;
                match format {
                    // Every CSV file starts with its header.
                    DataFormat::Csv { .. } => {
                        assert!(text.starts_with("v,p\n"), "{}", file.path);
                        assert_eq!(lines, file.rows + 1);
                    }
                    _ => assert_eq!(lines, file.rows),
                }
                rows += file.rows;
            }
            assert_eq!(rows, 4 * 8192);
        }
        // A NULL in a NOT NULL column fails the write.
        let nulls = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![None, Some(1)])),
                Arc::new(StringArray::from(vec!["x", "y"])),
            ],
        )
        .unwrap();
        let files = TaskFiles {
            spec: spec(&dir.path().join("nn"), DataFormat::Json, &[]),
            input: Arc::clone(&schema),
            name: "0-0".into(),
        };
        let err = write_task_files(&runtime, files, stream::iter(vec![Ok(nulls)]))
            .await
            .unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
    }
}
