//! What a distributed write writes: destination, format, partitioning, file size, and what each
//! task reports back.
//!
//! A [`WriteSpec`] travels inside the plan to every executor (serialized by
//! [`super::codec`]); a [`WrittenFile`] is what a task reports for each file it completed, as
//! one row of the report batch ([`report_schema`]). The coordinator commits exactly the
//! reported files.

use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::basic::Compression;
use serde::{Deserialize, Serialize};

use crate::error::{QuiverError, Result};

/// The default size a file rolls over at: 128 MiB (the `--target-file-bytes` default).
#[cfg(test)]
pub(crate) const DEFAULT_TARGET_FILE_BYTES: u64 = 128 * 1024 * 1024;

/// The smallest roll size accepted (smaller makes a file per batch).
pub(crate) const MIN_TARGET_FILE_BYTES: u64 = 64 * 1024;

/// The Parquet compression of managed tables' files.
pub(crate) const TABLE_COMPRESSION: &str = "zstd(1)";

/// A data file format and its options.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DataFormat {
    /// `compression` as Parquet spells it: `zstd(3)`, `snappy`, `uncompressed`, ...
    Parquet {
        compression: String,
    },
    Csv {
        header: bool,
    },
    /// Newline-delimited JSON.
    Json,
}

impl DataFormat {
    /// The Parquet format with `compression`, checked.
    pub(crate) fn parquet(compression: &str) -> Result<Self> {
        parquet_compression(compression)?;
        Ok(Self::Parquet {
            compression: compression.to_ascii_lowercase(),
        })
    }

    pub(crate) fn extension(&self) -> &'static str {
        match self {
            Self::Parquet { .. } => "parquet",
            Self::Csv { .. } => "csv",
            Self::Json => "json",
        }
    }
}

/// Parquet's compression codec named `name`.
pub(crate) fn parquet_compression(name: &str) -> Result<Compression> {
    Compression::from_str(&name.to_ascii_uppercase()).map_err(|e| {
        QuiverError::InvalidArgument(format!(
            "compression '{name}': {e} (use e.g. zstd(3), snappy, lz4_raw, gzip(6) or uncompressed)"
        ))
    })
}

/// What every task of a write's writing stage does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Serialize, Deserialize)]
pub(crate) struct WriteSpec {
    /// The write: every file it produces carries the id in its name.
    pub(crate) write_id: String,
    /// The attempt: a rerun's files never collide with the attempt it replaces.
    pub(crate) attempt: String,
    /// The directory files are written under: an absolute local path or an `s3://` URL, with a
    /// trailing slash.
    pub(crate) destination: String,
    pub(crate) format: DataFormat,
    /// Hive partition columns, which must be the input's last columns, in this order. Their
    /// values become `col=value/` directories and are not stored in the files.
    pub(crate) partition_by: Vec<String>,
    /// Columns declared `NOT NULL`: a NULL in one fails the write.
    pub(crate) not_null: Vec<String>,
    /// A file is closed and a new one started once it reaches this size.
    pub(crate) target_file_bytes: u64,
}

impl WriteSpec {
    /// The schema of the files: the input's columns without the partition columns, NOT NULL
    /// where declared.
    pub(crate) fn file_schema(&self, input: &Schema) -> Result<SchemaRef> {
        let data_columns = input.fields().len() - self.partition_by.len().min(input.fields().len());
        let fields: Vec<Field> = input
            .fields()
            .iter()
            .take(data_columns)
            .map(|f| {
                let not_null = self.not_null.iter().any(|n| n == f.name());
                Field::clone(f).with_nullable(!not_null)
            })
            .collect();
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Checks that the partition columns are the input's last columns.
    pub(crate) fn check_input(&self, input: &Schema) -> Result<()> {
        let n = input.fields().len();
        let p = self.partition_by.len();
        let tail: Vec<&str> = input
            .fields()
            .iter()
            .skip(n.saturating_sub(p))
            .map(|f| f.name().as_str())
            .collect();
        if p >= n.max(1)
            || tail
                != self
                    .partition_by
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
        {
            return Err(QuiverError::InvalidArgument(format!(
                "a write needs at least one column besides its partition columns ({}), and those must come last",
                self.partition_by.join(", ")
            )));
        }
        Ok(())
    }
}

/// One completed file, as its task reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WrittenFile {
    /// Relative to the write's destination; partition directories included.
    pub(crate) path: String,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
}

/// The schema of a writing task's output: one row per file it wrote.
pub(crate) fn report_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("path", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
    ]))
}

/// `files` as a report batch.
pub(crate) fn report_batch(files: &[WrittenFile]) -> Result<RecordBatch> {
    let paths = StringArray::from_iter_values(files.iter().map(|f| f.path.as_str()));
    let rows = UInt64Array::from_iter_values(files.iter().map(|f| f.rows));
    let bytes = UInt64Array::from_iter_values(files.iter().map(|f| f.bytes));
    Ok(RecordBatch::try_new(
        report_schema(),
        vec![Arc::new(paths), Arc::new(rows), Arc::new(bytes)],
    )?)
}

/// The files a report batch lists.
pub(crate) fn read_report(batch: &RecordBatch) -> Result<Vec<WrittenFile>> {
    let column = |i: usize| batch.columns().get(i).map(Arc::clone);
    let malformed = || QuiverError::Internal("a write task sent a malformed report".into());
    let paths = column(0).ok_or_else(malformed)?;
    let rows = column(1).ok_or_else(malformed)?;
    let bytes = column(2).ok_or_else(malformed)?;
    let paths = paths
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(malformed)?;
    let rows = rows
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(malformed)?;
    let bytes = bytes
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or_else(malformed)?;
    if paths.null_count() > 0 {
        return Err(malformed());
    }
    Ok((0..batch.num_rows())
        .map(|i| WrittenFile {
            path: paths.value(i).to_string(),
            rows: rows.value(i),
            bytes: bytes.value(i),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_and_formats_check() {
        let files = vec![
            WrittenFile {
                path: "a=1/part-x.parquet".into(),
                rows: 3,
                bytes: 100,
            },
            WrittenFile {
                path: "part-y.parquet".into(),
                rows: 0,
                bytes: 7,
            },
        ];
        assert_eq!(read_report(&report_batch(&files).unwrap()).unwrap(), files);
        assert!(DataFormat::parquet("zstd(3)").is_ok());
        assert!(DataFormat::parquet("SNAPPY").is_ok());
        let err = DataFormat::parquet("brotli(99)").unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
        assert!(DataFormat::parquet("nope").is_err());
    }

    #[test]
    fn partition_columns_come_last() {
        let input = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("p", DataType::Utf8, true),
        ]);
        let mut spec = WriteSpec {
            write_id: "w".into(),
            attempt: "a".into(),
            destination: "/x/".into(),
            format: DataFormat::Json,
            partition_by: vec!["p".into()],
            not_null: vec!["a".into()],
            target_file_bytes: DEFAULT_TARGET_FILE_BYTES,
        };
        spec.check_input(&input).unwrap();
        let files = spec.file_schema(&input).unwrap();
        assert_eq!(files.fields().len(), 1);
        assert!(!files.field(0).is_nullable());
        spec.partition_by = vec!["a".into()];
        assert!(spec.check_input(&input).is_err());
        spec.partition_by = vec!["a".into(), "p".into()];
        assert!(spec.check_input(&input).is_err());
    }
}
