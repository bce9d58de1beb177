//! The Python clients from PyPI (ADBC Flight SQL driver, pyarrow.flight, flightsql-dbapi through
//! SQLAlchemy) against a real server, twice: a coordinator with two executor processes
//! (plaintext, no authentication), and `quiver serve` with authentication and TLS (a certificate
//! made by the test). Results are checked against single-node DataFusion results that this test
//! writes as Arrow IPC files for the Python side. Tests that need auth (or its absence) skip in
//! the other run, so every test runs in at least one of them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::ipc::writer::FileWriter;
use quiver_server::{cast_batch, plain_schema};
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::process::spawn_serve;
use quiver_tests::secure::Security;
use quiver_tests::{
    ClusterOptions, TestCluster, python, tpch_queries_dir, tpch_query, within, workspace_root,
};

/// The oracle's results of the 22 queries, as `qN.arrow` files in `dir`.
async fn write_expected(dir: &Path) {
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    for q in 1..=22 {
        let batches = oracle::run(&ctx, &tpch_query(q)).await;
        let schema = plain_schema(&batches[0].schema());
        let file = std::fs::File::create(dir.join(format!("q{q}.arrow"))).expect("create");
        let mut writer = FileWriter::try_new(file, &schema).expect("writer");
        for batch in &batches {
            writer
                .write(&cast_batch(batch, &Arc::clone(&schema)).expect("cast"))
                .expect("write");
        }
        writer.finish().expect("finish");
    }
}

/// Runs the whole Python suite with `env`; fails with its output and `log` on failure.
async fn pytest(env: &[(&str, String)], log: impl Fn() -> String) {
    let expected = tempfile::tempdir().expect("tempdir");
    write_expected(expected.path()).await;
    let mut command = tokio::process::Command::new(python());
    command
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"])
        .arg(workspace_root().join("tests/python"))
        .env("QUIVER_EXPECTED", expected.path())
        .env("QUIVER_TPCH_QUERIES", tpch_queries_dir())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = within(Duration::from_secs(900), "pytest", command.output())
        .await
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "Python client tests failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_against_a_cluster() {
    let cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    pytest(
        &[
            ("QUIVER_URL", cluster.url()),
            ("QUIVER_MODE", "cluster".to_string()),
            (
                "QUIVER_WAREHOUSE",
                cluster.dir.path().join("warehouse").display().to_string(),
            ),
        ],
        || cluster.coordinator.log_text(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_against_serve_with_auth_and_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let security = Security::create(dir.path());
    let mut server = spawn_serve(dir.path(), &dir.path().join("data"), &security.args(true));
    let addr = server.wait_for_address(Duration::from_secs(120));
    pytest(
        &[
            ("QUIVER_URL", format!("grpc+tls://{addr}")),
            ("QUIVER_USER", security.user.clone()),
            ("QUIVER_PASSWORD", security.password.clone()),
            ("QUIVER_TLS_ROOT", security.cert.display().to_string()),
            ("QUIVER_MODE", "serve".to_string()),
        ],
        || server.log_text(),
    )
    .await;
}

/// `test_metrics.py` alone, against a cluster whose nodes serve their admin HTTP ports: the
/// metrics read with `prometheus_client`'s parser, health and readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_metrics_against_a_cluster() {
    const MEMORY_LIMIT: u64 = 512 << 20;
    let cluster = TestCluster::start(ClusterOptions {
        http: true,
        executor_args: vec!["--memory-limit".into(), MEMORY_LIMIT.to_string()],
        ..ClusterOptions::tpch(&tpch_dataset())
    })
    .await;
    let executors: Vec<String> = cluster
        .executors
        .iter()
        .map(|e| cluster.http_addr(e))
        .collect();
    let mut command = tokio::process::Command::new(python());
    command
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"])
        .arg(workspace_root().join("tests/python/test_metrics.py"))
        .env("QUIVER_URL", cluster.url())
        .env("QUIVER_MODE", "cluster")
        .env(
            "QUIVER_HTTP_COORDINATOR",
            cluster.http_addr(&cluster.coordinator),
        )
        .env("QUIVER_HTTP_EXECUTORS", executors.join(","))
        .env("QUIVER_EXECUTOR_MEMORY_LIMIT", MEMORY_LIMIT.to_string())
        .kill_on_drop(true);
    let output = within(Duration::from_secs(300), "pytest", command.output())
        .await
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success() && !stdout.contains("skipped"),
        "test_metrics.py failed (or skipped):\n{stdout}\n{}\ncoordinator log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.coordinator.log_text()
    );
}
