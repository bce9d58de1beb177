//! Single-node DataFusion on the same files: the oracle every distributed result is checked
//! against.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

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

/// A single-node session with `config` over `(name, path)` tables, each registered as Quiver's
/// catalog registers `--table NAME=PATH` (`CREATE EXTERNAL TABLE … STORED AS PARQUET LOCATION
/// '<absolute path>'`): what the benchmarks' baselines and the TPC-DS oracle read.
pub async fn catalog_context(
    config: SessionConfig,
    tables: impl IntoIterator<Item = (String, PathBuf)>,
) -> anyhow::Result<SessionContext> {
    use anyhow::Context as _;
    let ctx = SessionContext::new_with_config(config);
    for (table, path) in tables {
        let location = quiver_server::absolute_location(&path.display().to_string())?;
        let ddl = format!("CREATE EXTERNAL TABLE {table} STORED AS PARQUET LOCATION '{location}'");
        ctx.sql(&ddl)
            .await
            .with_context(|| format!("registering {table}"))?
            .collect()
            .await?;
    }
    Ok(ctx)
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
