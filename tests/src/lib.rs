//! Test harness for Quiver's integration tests.
//!
//! Tests start real `quiver` processes on 127.0.0.1 with port 0, read their bound addresses from
//! address files, talk to them with real Flight SQL clients, and compare results with
//! single-node DataFusion on the same files ([`oracle`]). Every wait is bounded ([`within`]), and
//! every process is killed when its handle drops, so a failing test never leaves a cluster
//! behind or hangs CI.

pub mod catalog;
pub mod cluster;
pub mod compare;
pub mod oracle;
pub mod process;
pub mod secure;
pub mod sql;
pub mod tpcds;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub use cluster::{ClusterOptions, TestCluster};

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The 22 TPC-H query texts (`../shared/tpch/queries`, or `QUIVER_TPCH_QUERIES`).
pub fn tpch_queries_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUIVER_TPCH_QUERIES") {
        return PathBuf::from(dir);
    }
    workspace_root().join("../shared/tpch/queries")
}

/// The statements of TPC-H query `n` (q15 has three: create view, select, drop view).
pub fn tpch_query(n: usize) -> Vec<String> {
    let path = tpch_queries_dir().join(format!("q{n}.sql"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    quiver_client::cli::split_statements(&text)
}

/// The Python with the test clients: `QUIVER_PYTHON`, or the venv `scripts/test` creates.
pub fn python() -> PathBuf {
    let python = std::env::var_os("QUIVER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} not found: run `scripts/test`, which creates the Python venv with the test clients",
        python.display()
    );
    python
}
