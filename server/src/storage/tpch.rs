//! The embedded demo dataset: TPC-H generated with `tpchgen`, written as Parquet.
//!
//! [`ensure_dataset`] writes `<data_dir>/tpch/sf<SF>/<table>/part-<i>.parquet` on first use and
//! reuses it afterwards. Each table is written into a temporary directory and renamed into place
//! only when complete, and a `_SUCCESS` marker is written last, so an interrupted generation is
//! redone instead of served half-written. Large tables are split into several files so even a
//! small scale factor gives the distributed planner more than one file to spread over executors.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

use crate::arrow_compat::{cast_batch, plain_schema};
use crate::error::{QuiverError, Result};

/// The eight TPC-H tables.
pub const TABLES: [&str; 8] = [
    "nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem",
];

const BATCH_SIZE: usize = 8192;
const SUCCESS_MARKER: &str = "_SUCCESS";

/// The directory holding the dataset for `scale_factor` under `data_dir`.
pub fn dataset_dir(data_dir: &Path, scale_factor: f64) -> PathBuf {
    data_dir.join("tpch").join(format!("sf{scale_factor}"))
}

/// Generates the dataset if it is not complete yet; returns its directory. Each table is a
/// directory of Parquet files at `<dir>/<table>`.
pub fn ensure_dataset(data_dir: &Path, scale_factor: f64) -> Result<PathBuf> {
    if !(scale_factor > 0.0 && scale_factor <= 1000.0) {
        return Err(QuiverError::InvalidArgument(format!(
            "TPC-H scale factor must be in (0, 1000], got {scale_factor}"
        )));
    }
    let dir = dataset_dir(data_dir, scale_factor);
    if dir.join(SUCCESS_MARKER).exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| QuiverError::io(format!("creating {}", dir.display()), e))?;
    for table in TABLES {
        let target = dir.join(table);
        if target.exists() {
            // Left over from an interrupted run: rename happens only for complete tables, but
            // the marker was not written, so regenerate everything to be safe.
            std::fs::remove_dir_all(&target)
                .map_err(|e| QuiverError::io(format!("removing {}", target.display()), e))?;
        }
        let tmp = dir.join(format!(".{table}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .map_err(|e| QuiverError::io(format!("removing {}", tmp.display()), e))?;
        }
        std::fs::create_dir_all(&tmp)
            .map_err(|e| QuiverError::io(format!("creating {}", tmp.display()), e))?;
        let parts = parts_for(table, scale_factor);
        for part in 1..=parts {
            let path = tmp.join(format!("part-{part}.parquet"));
            write_parquet(&path, batches(table, scale_factor, part, parts))?;
        }
        std::fs::rename(&tmp, &target)
            .map_err(|e| QuiverError::io(format!("renaming {}", tmp.display()), e))?;
    }
    std::fs::write(dir.join(SUCCESS_MARKER), b"")
        .map_err(|e| QuiverError::io("writing dataset marker", e))?;
    Ok(dir)
}

/// How many files a table is split into.
fn parts_for(table: &str, scale_factor: f64) -> i32 {
    match table {
        "nation" | "region" | "supplier" => 1,
        // ~1 file per 60k lineitem-equivalents at small SF, capped so SF100 stays manageable.
        _ => ((scale_factor * 4.0).ceil() as i32).clamp(2, 64),
    }
}

fn batches(
    table: &str,
    sf: f64,
    part: i32,
    parts: i32,
) -> Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>>> {
    match table {
        "nation" => Box::new(
            NationArrow::new(NationGenerator::new(sf, part, parts)).with_batch_size(BATCH_SIZE),
        ),
        "region" => Box::new(
            RegionArrow::new(RegionGenerator::new(sf, part, parts)).with_batch_size(BATCH_SIZE),
        ),
        "part" => Box::new(
            PartArrow::new(PartGenerator::new(sf, part, parts)).with_batch_size(BATCH_SIZE),
        ),
        "supplier" => Box::new(
            SupplierArrow::new(SupplierGenerator::new(sf, part, parts)).with_batch_size(BATCH_SIZE),
        ),
        "partsupp" => Box::new(
            PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts)).with_batch_size(BATCH_SIZE),
        ),
        "customer" => Box::new(
            CustomerArrow::new(CustomerGenerator::new(sf, part, parts)).with_batch_size(BATCH_SIZE),
        ),
        "orders" => Box::new(
            OrderArrow::new(OrderGenerator::new(sf, part, parts)).with_batch_size(BATCH_SIZE),
        ),
        "lineitem" => Box::new(
            LineItemArrow::new(LineItemGenerator::new(sf, part, parts)).with_batch_size(BATCH_SIZE),
        ),
        other => unreachable!("not a TPC-H table: {other}"),
    }
}

fn write_parquet(
    path: &Path,
    mut batches: Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>>>,
) -> Result<()> {
    let Some(first) = batches.next().transpose()? else {
        return Err(QuiverError::Internal(format!(
            "no rows generated for {}",
            path.display()
        )));
    };
    // Plain Utf8 on disk: readers that honour the embedded Arrow schema would get views otherwise.
    let schema = plain_schema(&first.schema());
    let file = File::create(path)
        .map_err(|e| QuiverError::io(format!("creating {}", path.display()), e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let mut writer = ArrowWriter::try_new(file, std::sync::Arc::clone(&schema), Some(props))
        .map_err(|e| QuiverError::Internal(format!("parquet writer: {e}")))?;
    for batch in std::iter::once(Ok(first)).chain(batches) {
        let batch = cast_batch(&batch?, &schema)?;
        writer
            .write(&batch)
            .map_err(|e| QuiverError::Internal(format!("writing {}: {e}", path.display())))?;
    }
    let file = writer
        .into_inner()
        .map_err(|e| QuiverError::Internal(format!("closing {}: {e}", path.display())))?;
    file.sync_all()
        .map_err(|e| QuiverError::io(format!("syncing {}", path.display()), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_every_table_once() {
        let dir = tempfile::tempdir().unwrap();
        let out = ensure_dataset(dir.path(), 0.001).unwrap();
        for table in TABLES {
            let files: Vec<_> = std::fs::read_dir(out.join(table)).unwrap().collect();
            assert_eq!(files.len() as i32, parts_for(table, 0.001), "{table}");
        }
        let marker = std::fs::metadata(out.join(SUCCESS_MARKER))
            .unwrap()
            .modified()
            .unwrap();
        // A second call reuses the data instead of regenerating it.
        ensure_dataset(dir.path(), 0.001).unwrap();
        let again = std::fs::metadata(out.join(SUCCESS_MARKER))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(marker, again);
        assert!(ensure_dataset(dir.path(), 0.0).is_err());
    }
}
