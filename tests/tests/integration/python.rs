//! The real ADBC Flight SQL driver (Python, from PyPI) against a coordinator and two executor
//! processes: `adbc_get_objects`, and all 22 TPC-H queries through the DB-API, checked against
//! single-node DataFusion results that this test writes as Arrow IPC files for the Python side.

use std::sync::Arc;
use std::time::Duration;

use arrow::ipc::writer::FileWriter;
use quiver_server::arrow_compat::{cast_batch, plain_schema};
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::{
    ClusterOptions, TestCluster, python, tpch_queries_dir, tpch_query, within, workspace_root,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_driver_runs_tpch_and_lists_objects() {
    let python = python();
    let cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;

    let expected = tempfile::tempdir().expect("tempdir");
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    for q in 1..=22 {
        let batches = oracle::run(&ctx, &tpch_query(q)).await;
        let schema = plain_schema(&batches[0].schema());
        let file =
            std::fs::File::create(expected.path().join(format!("q{q}.arrow"))).expect("create");
        let mut writer = FileWriter::try_new(file, &schema).expect("writer");
        for batch in &batches {
            writer
                .write(&cast_batch(batch, &Arc::clone(&schema)).expect("cast"))
                .expect("write");
        }
        writer.finish().expect("finish");
    }

    let output = within(
        Duration::from_secs(600),
        "pytest",
        tokio::process::Command::new(&python)
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
            .arg(workspace_root().join("tests/python"))
            .env("QUIVER_URL", cluster.url())
            .env("QUIVER_EXPECTED", expected.path())
            .env("QUIVER_TPCH_QUERIES", tpch_queries_dir())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run pytest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "ADBC tests failed:\n{stdout}\n{stderr}\ncoordinator log:\n{}",
        cluster.coordinator.log_text()
    );
}
