//! TPC-DS for the tests and the benchmark: the dataset, its tables, the 99 query texts, and
//! single-node DataFusion over them.
//!
//! Contract: [`ensure_dataset`] runs `tpcgen-cli` (PyPI's wrapper of the `tpcdsgen` crate, in
//! the test venv or at `QUIVER_TPCGEN_CLI`) once per scale factor and reuses the result; it
//! writes into a temporary directory and renames it into place when complete, so a killed run
//! leaves no half dataset behind. Each table is one file, `<dir>/<table>.parquet`, given to a
//! cluster as `--table NAME=FILE` ([`tables`]) and registered on single-node DataFusion the way
//! Quiver's catalog registers it ([`context`]). Queries are `q1.sql..q99.sql` in
//! [`queries_dir`], split as `quiver sql -f` splits them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use datafusion::prelude::{SessionConfig, SessionContext};

/// The 24 TPC-DS tables (`tpcgen-cli` also writes `dbgen_version`, which no query reads).
pub const TABLES: [&str; 24] = [
    "call_center",
    "catalog_page",
    "catalog_returns",
    "catalog_sales",
    "customer",
    "customer_address",
    "customer_demographics",
    "date_dim",
    "household_demographics",
    "income_band",
    "inventory",
    "item",
    "promotion",
    "reason",
    "ship_mode",
    "store",
    "store_returns",
    "store_sales",
    "time_dim",
    "warehouse",
    "web_page",
    "web_returns",
    "web_sales",
    "web_site",
];

/// The number of TPC-DS queries (`q1.sql..q99.sql`).
pub const QUERIES: usize = 99;

/// Scale factor of the test dataset: every table has rows, and it generates in seconds.
pub const TEST_SCALE_FACTOR: f64 = 0.01;

/// The `tpcgen-cli` binary: `QUIVER_TPCGEN_CLI`, or next to the test Python (`scripts/test`
/// installs it into the venv from `tests/python/requirements.txt`).
pub fn tpcgen_cli() -> Result<PathBuf> {
    let cli = match std::env::var_os("QUIVER_TPCGEN_CLI") {
        Some(path) => PathBuf::from(path),
        None => {
            let python = std::env::var_os("QUIVER_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::workspace_root().join(".venv/bin/python"));
            python
                .parent()
                .context("the test Python has no directory")?
                .join("tpcgen-cli")
        }
    };
    if !cli.exists() {
        bail!(
            "{} not found: run `scripts/test` (it installs tpcgen-cli into .venv), or set QUIVER_TPCGEN_CLI",
            cli.display()
        );
    }
    Ok(cli)
}

/// The directory of the dataset for `scale_factor` under `root`.
pub fn dataset_dir(root: &Path, scale_factor: f64) -> PathBuf {
    root.join("tpcds").join(format!("sf{scale_factor}"))
}

fn is_complete(dir: &Path) -> bool {
    TABLES
        .iter()
        .all(|t| dir.join(format!("{t}.parquet")).is_file())
}

/// Generates the dataset for `scale_factor` under `root` unless it is there; returns its
/// directory (absolute).
pub fn ensure_dataset(root: &Path, scale_factor: f64) -> Result<PathBuf> {
    if !(scale_factor > 0.0 && scale_factor <= 1000.0) {
        bail!("TPC-DS scale factor must be in (0, 1000], got {scale_factor}");
    }
    let dir = std::path::absolute(dataset_dir(root, scale_factor))
        .context("resolving the dataset directory")?;
    if is_complete(&dir) {
        return Ok(dir);
    }
    let parent = dir.parent().context("the dataset directory has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // Per process, so that two runs generating at once do not write into each other's files.
    let tmp = parent.join(format!(".sf{scale_factor}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let cli = tpcgen_cli()?;
    let output = Command::new(&cli)
        .args(["tpcds", "parquet", "-s", &scale_factor.to_string()])
        .arg("--output-dir")
        .arg(&tmp)
        .output()
        .with_context(|| format!("running {}", cli.display()))?;
    if !output.status.success() || !is_complete(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!(
            "{} tpcds parquet -s {scale_factor} failed ({}), or wrote no table of {:?}:\n{}",
            cli.display(),
            output.status,
            TABLES,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if is_complete(&dir) {
        // Another run finished first.
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(dir);
    }
    if dir.exists() {
        // Not ours and incomplete (made by hand?): replaced, never served half.
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        if !is_complete(&dir) {
            return Err(e).with_context(|| format!("renaming into {}", dir.display()));
        }
    }
    Ok(dir)
}

/// The test dataset, generated once per machine (reused across runs) under the temp dir.
pub fn test_dataset() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join("quiver-tests-data");
        ensure_dataset(&root, TEST_SCALE_FACTOR)
            .unwrap_or_else(|e| panic!("generating TPC-DS: {e:#}"))
    })
    .clone()
}

/// `(name, file)` of every table of the dataset in `dir`, as a cluster's `--table`s.
pub fn tables(dir: &Path) -> Vec<(String, PathBuf)> {
    TABLES
        .iter()
        .map(|t| (t.to_string(), dir.join(format!("{t}.parquet"))))
        .collect()
}

/// A single-node session with `config` over the tables of the dataset in `dir`, registered as
/// Quiver's catalog registers `--table NAME=FILE`.
pub async fn context(dir: &Path, config: SessionConfig) -> Result<SessionContext> {
    crate::oracle::catalog_context(config, tables(dir)).await
}

/// The 99 query texts (`../shared/tpcds/queries`, or `QUIVER_TPCDS_QUERIES`).
pub fn queries_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUIVER_TPCDS_QUERIES") {
        return PathBuf::from(dir);
    }
    crate::workspace_root().join("../shared/tpcds/queries")
}

/// The statements of query `n` in `dir`.
pub fn load_query(dir: &Path, n: usize) -> Result<Vec<String>> {
    let path = dir.join(format!("q{n}.sql"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let statements = quiver_client::cli::split_statements(&text);
    if statements.is_empty() {
        bail!("{} holds no statement", path.display());
    }
    Ok(statements)
}
