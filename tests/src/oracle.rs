//! Single-node DataFusion on the same files: the oracle every distributed result is checked
//! against.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

/// Scale factor of the test dataset: small enough for CI, large enough that every query returns
/// rows and every table spans several files.
pub const TEST_SCALE_FACTOR: f64 = 0.01;

/// The TPC-H test dataset, generated once per machine (reused across runs) under the temp dir.
pub fn tpch_dataset() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join("quiver-tests-data");
        quiver_server::tpch::ensure_dataset(&root, TEST_SCALE_FACTOR).expect("generate TPC-H")
    })
    .clone()
}

/// A single-node session over the TPC-H tables in `dir`, with Quiver's settings.
pub async fn tpch_context(dir: &Path) -> SessionContext {
    let config = quiver_server::session_config(0).expect("settings");
    let ctx = SessionContext::new_with_config(config);
    for table in quiver_server::tpch::TABLES {
        let path = format!("{}/", dir.join(table).display());
        ctx.register_parquet(table, &path, ParquetReadOptions::default())
            .await
            .expect("register table");
    }
    ctx
}

/// Runs each statement; returns the result of the one that produces rows (at least one batch,
/// empty if need be, so the schema is always there).
pub async fn run(ctx: &SessionContext, statements: &[String]) -> Vec<RecordBatch> {
    let mut result = None;
    for sql in statements {
        let df = ctx
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("oracle: {sql}: {e}"));
        let has_columns = !df.schema().fields().is_empty();
        let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
        let mut batches = df
            .collect()
            .await
            .unwrap_or_else(|e| panic!("oracle: {sql}: {e}"));
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(schema));
        }
        if has_columns {
            result = Some(batches);
        }
    }
    result.expect("a statement that returns rows")
}
