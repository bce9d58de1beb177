//! Tables on an S3-compatible object store: the coordinator's catalog file names the endpoint,
//! region and credentials, executors get them when they register, and a distributed join over
//! S3 tables matches single-node DataFusion on the same files read from local disk. The store is
//! moto's S3 server on loopback (`tests/python/s3_server.py`), spoken to by object_store's real
//! S3 client.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quiver_tests::compare::compare;
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::{ClusterOptions, TestCluster, python, within, workspace_root};

use crate::{QUERY_LIMIT, run_statements};

/// Kills the S3 server when the test ends, however it ends.
struct S3Server(Child);

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_s3(dir: &std::path::Path, bucket: &str) -> (S3Server, String) {
    let address_file = dir.join("s3.addr");
    let log = std::fs::File::create(dir.join("s3.log")).expect("log");
    let child = Command::new(python())
        .arg(workspace_root().join("tests/python/s3_server.py"))
        .arg(&address_file)
        .arg(bucket)
        .arg(tpch_dataset())
        .stdin(Stdio::piped())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the S3 server");
    let mut server = S3Server(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(addr) = std::fs::read_to_string(&address_file) {
            return (server, addr.trim().to_string());
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!(
                "S3 server exited with {status}: {}",
                std::fs::read_to_string(dir.join("s3.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "S3 server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_tables_configured_in_the_catalog_are_read_by_executors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_s3, addr) = start_s3(dir.path(), "tpch");
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(
        &catalog,
        format!(
            r#"
[[tables]]
name = "lineitem"
url = "s3://tpch/lineitem/"

[[tables]]
name = "orders"
url = "s3://tpch/orders/"

[object_stores."s3://tpch"]
endpoint = "http://{addr}"
region = "us-east-1"
access_key_id = "quiver-test"
secret_access_key = "quiver-test-secret"
allow_http = "true"
"#
        ),
    )
    .expect("write catalog");
    let cluster = TestCluster::start(ClusterOptions {
        catalog: Some(catalog),
        ..ClusterOptions::default()
    })
    .await;

    let query = vec![
        "SELECT o_orderpriority, count(*) AS n, sum(l_quantity) AS qty \
         FROM orders JOIN lineitem ON o_orderkey = l_orderkey \
         GROUP BY o_orderpriority ORDER BY o_orderpriority"
            .to_string(),
    ];
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let expected = oracle::run(&ctx, &query).await;
    let before = [
        cluster.executor_status(0).await,
        cluster.executor_status(1).await,
    ];
    let mut client = cluster.client().await;
    let actual = run_statements(&mut client, &query, false)
        .await
        .expect("join over S3 tables");
    compare(&expected, &actual, true).expect("join over S3 tables");
    for (i, before) in before.iter().enumerate() {
        let after = cluster.executor_status(i).await;
        assert!(
            after.tasks_started > before.tasks_started,
            "executor {i} read nothing from S3"
        );
    }

    // SQL DDL on the same bucket uses the same store settings.
    let ddl =
        "CREATE EXTERNAL TABLE nation STORED AS PARQUET LOCATION 's3://tpch/nation/'".to_string();
    within(QUERY_LIMIT, "create", client.query(&ddl))
        .await
        .expect("create S3 table");
    let count = run_statements(
        &mut client,
        &["SELECT count(*) FROM nation".to_string()],
        false,
    )
    .await
    .expect("count");
    compare(
        &oracle::run(&ctx, &["SELECT count(*) FROM nation".to_string()]).await,
        &count,
        true,
    )
    .expect("nation count");
}
