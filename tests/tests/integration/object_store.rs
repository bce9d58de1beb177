//! Tables on an S3-compatible object store: the coordinator's catalog file names the endpoint,
//! region and credentials, executors get them when they register, and a distributed join over
//! S3 tables matches single-node DataFusion on the same files read from local disk. The store is
//! moto's S3 server on loopback (`tests/python/s3_server.py`), spoken to by object_store's real
//! S3 client. Parallel writes go to the bucket too: a partitioned managed table in an `s3://`
//! warehouse (CTAS, then INSERT) and a `COPY` into an allowed `s3://` target.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::object_store::ObjectStore;
use datafusion::object_store::aws::AmazonS3Builder;
use datafusion::object_store::path::Path as ObjectPath;
use futures::TryStreamExt;

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
    // Managed tables live in the bucket too, and COPY may write under exports/.
    let config = dir.path().join("quiver.toml");
    std::fs::write(
        &config,
        "[locations]\ncopy_targets = [\"s3://tpch/exports/\"]\n",
    )
    .expect("write config");
    let cluster = TestCluster::start(ClusterOptions {
        catalog: Some(catalog.clone()),
        warehouse: Some("s3://tpch/warehouse/".to_string()),
        coordinator_args: vec![
            "--config".to_string(),
            config.display().to_string(),
            "--target-file-bytes".to_string(),
            "64KiB".to_string(),
        ],
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

    // Parallel writes into the bucket: a partitioned CTAS and an INSERT into the S3 warehouse,
    // written by the executors, read back equal to the source.
    let store = bucket(&addr);
    let per_mode = |table: &str, filter: &str| {
        vec![format!(
            "SELECT l_shipmode, count(*) AS n, sum(l_orderkey) AS keys, sum(l_quantity) AS qty \
             FROM {table} {filter} GROUP BY l_shipmode ORDER BY l_shipmode"
        )]
    };
    for sql in [
        "CREATE TABLE shipped PARTITIONED BY (l_shipmode) AS \
         SELECT l_orderkey, l_quantity, l_shipmode FROM lineitem WHERE l_orderkey < 30000",
        "INSERT INTO shipped SELECT l_orderkey, l_quantity, l_shipmode \
         FROM lineitem WHERE l_orderkey >= 30000",
    ] {
        within(QUERY_LIMIT, sql, client.update(sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let actual = run_statements(&mut client, &per_mode("shipped", ""), false)
        .await
        .expect("read the S3 managed table");
    compare(
        &oracle::run(&ctx, &per_mode("lineitem", "")).await,
        &actual,
        true,
    )
    .expect("the S3 managed table equals its source");
    let mut listed: Vec<String> = quiver_tests::catalog::managed_tables(&catalog)["shipped"]
        .files
        .iter()
        .map(|f| format!("warehouse/shipped/{f}"))
        .collect();
    listed.sort();
    let objects = keys(&store, "warehouse/shipped/").await;
    assert_eq!(
        objects, listed,
        "the bucket holds exactly the catalog's files"
    );
    for key in &objects {
        assert!(
            key.strip_prefix("warehouse/shipped/l_shipmode=")
                .is_some_and(|rest| rest.split('/').count() == 2),
            "{key} is not in a partition directory"
        );
    }
    // The executors wrote every file; the coordinator none.
    let destination = "s3://tpch/warehouse/shipped/";
    let mut written: Vec<String> = cluster
        .executors
        .iter()
        .flat_map(|e| e.written_files(destination))
        .map(|f| format!("warehouse/shipped/{f}"))
        .collect();
    written.sort();
    assert_eq!(written, listed);
    assert!(cluster.coordinator.written_files(destination).is_empty());

    // COPY into the bucket: committed with _SUCCESS, no staging left, read back equal.
    let copy = "COPY (SELECT l_orderkey, l_linenumber, l_comment FROM lineitem) \
                TO 's3://tpch/exports/lines/' STORED AS PARQUET";
    let copied = within(QUERY_LIMIT, copy, client.update(copy))
        .await
        .expect("COPY to S3");
    let exported = keys(&store, "exports/lines/").await;
    assert!(
        exported.contains(&"exports/lines/_SUCCESS".to_string()),
        "{exported:?}"
    );
    assert!(
        exported
            .iter()
            .all(|k| !k.starts_with("exports/lines/_staging/")),
        "staging left in the bucket: {exported:?}"
    );
    assert!(
        crate::parallel_writes::rolled(&exported),
        "64 KiB files did not roll: {exported:?}"
    );
    let sums =
        "SELECT count(*) AS n, sum(l_orderkey) AS keys, sum(length(l_comment)) AS chars FROM";
    // Read back by single-node DataFusion over the same bucket (its `.parquet` files).
    let reader = datafusion::prelude::SessionContext::new();
    reader.register_object_store(
        datafusion::execution::object_store::ObjectStoreUrl::parse("s3://tpch")
            .expect("url")
            .as_ref(),
        Arc::clone(&store),
    );
    reader
        .register_parquet(
            "lines",
            "s3://tpch/exports/lines/",
            datafusion::prelude::ParquetReadOptions::default(),
        )
        .await
        .expect("register the COPY result");
    let actual = oracle::run(&reader, &[format!("{sums} lines")]).await;
    let expected = oracle::run(&ctx, &[format!("{sums} lineitem")]).await;
    compare(&expected, &actual, true).expect("the COPY result equals its source");
    assert_eq!(
        arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(actual[0].column(0))
            .value(0),
        copied
    );
}

/// The test bucket through object_store's S3 client (what Quiver itself uses).
fn bucket(addr: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name("tpch")
            .with_endpoint(format!("http://{addr}"))
            .with_region("us-east-1")
            .with_access_key_id("quiver-test")
            .with_secret_access_key("quiver-test-secret")
            .with_allow_http(true)
            .build()
            .expect("S3 client"),
    )
}

/// Every key under `prefix` in `store`, sorted.
async fn keys(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    let prefix = ObjectPath::from(prefix);
    let mut keys: Vec<String> = within(
        QUERY_LIMIT,
        "list the bucket",
        store.list(Some(&prefix)).try_collect::<Vec<_>>(),
    )
    .await
    .expect("list the bucket")
    .into_iter()
    .map(|o| o.location.to_string())
    .collect();
    keys.sort();
    keys
}
