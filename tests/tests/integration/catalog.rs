//! The catalog with real processes: tables and views created with SQL survive a coordinator
//! restart (SIGKILL), dropped ones stay dropped, and executors rejoin the restarted coordinator
//! by themselves.

use quiver_client::QueryResult;
use quiver_tests::oracle::tpch_dataset;
use quiver_tests::{ClusterOptions, TestCluster, within};

use crate::QUERY_LIMIT;

/// Runs `sql`; a server error comes back as its status.
async fn query(cluster: &TestCluster, sql: &str) -> Result<QueryResult, tonic::Status> {
    let mut client = cluster.client().await;
    within(QUERY_LIMIT, sql, client.query(sql))
        .await
        .map_err(|e| {
            e.status()
                .cloned()
                .unwrap_or_else(|| tonic::Status::unknown(e.to_string()))
        })
}

async fn execute(cluster: &TestCluster, sql: &str) -> Result<(), tonic::Status> {
    query(cluster, sql).await.map(|_| ())
}

async fn count(cluster: &TestCluster, sql: &str) -> Result<i64, tonic::Status> {
    let result = query(cluster, sql).await?;
    let column = result.batches[0].column(0);
    Ok(arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(column).value(0))
}

/// The table and the view the test creates hold what they should.
async fn assert_created_tables_answer(cluster: &TestCluster) {
    assert_eq!(
        count(cluster, "SELECT count(*) FROM nation_ext")
            .await
            .unwrap(),
        25
    );
    assert_eq!(
        count(cluster, "SELECT count(*) FROM asia").await.unwrap(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_tables_survive_a_coordinator_restart() {
    let state = tempfile::tempdir().expect("tempdir");
    let catalog = state.path().join("catalog.toml");
    let options = ClusterOptions {
        catalog: Some(catalog.clone()),
        ..ClusterOptions::default()
    };
    let mut cluster = TestCluster::start(options).await;
    let nation = tpch_dataset().join("nation");
    let region = tpch_dataset().join("region");

    execute(
        &cluster,
        &format!(
            "CREATE EXTERNAL TABLE nation_ext STORED AS PARQUET LOCATION '{}/'",
            nation.display()
        ),
    )
    .await
    .expect("create table");
    execute(
        &cluster,
        "CREATE VIEW asia AS SELECT n_name FROM nation_ext WHERE n_regionkey = 2",
    )
    .await
    .expect("create view");
    execute(
        &cluster,
        &format!(
            "CREATE EXTERNAL TABLE doomed STORED AS PARQUET LOCATION '{}/'",
            region.display()
        ),
    )
    .await
    .expect("create second table");
    assert_eq!(
        count(&cluster, "SELECT count(*) FROM doomed")
            .await
            .unwrap(),
        5
    );
    execute(&cluster, "DROP TABLE doomed")
        .await
        .expect("drop table");
    assert_created_tables_answer(&cluster).await;

    // Relative locations are refused: every executor must resolve the path the same way.
    let err = execute(
        &cluster,
        "CREATE EXTERNAL TABLE rel STORED AS PARQUET LOCATION 'x/y/'",
    )
    .await
    .expect_err("relative location");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let text = std::fs::read_to_string(&catalog).expect("catalog file");
    assert!(
        text.contains("nation_ext") && text.contains("asia") && !text.contains("doomed"),
        "{text}"
    );

    cluster.restart_coordinator();
    // Executors notice the restart and register again by themselves.
    cluster.wait_for_live(2).await;
    assert_created_tables_answer(&cluster).await;
    let err = count(&cluster, "SELECT count(*) FROM doomed")
        .await
        .expect_err("dropped table");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}

/// With `[locations] external_tables` in the config, SQL can point tables only under those
/// prefixes; other locations (and `..` escapes) are PERMISSION_DENIED, and files cannot be read
/// as URL tables at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_tables_only_where_the_config_allows() {
    let dataset = tpch_dataset();
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("quiver.toml");
    std::fs::write(
        &config,
        format!(
            "[locations]\nexternal_tables = [\"{}/\"]\n",
            dataset.display()
        ),
    )
    .expect("write config");
    let cluster = TestCluster::start(ClusterOptions {
        coordinator_args: vec!["--config".to_string(), config.display().to_string()],
        ..ClusterOptions::tpch(&dataset)
    })
    .await;

    let inside = format!(
        "CREATE EXTERNAL TABLE nation_copy STORED AS PARQUET LOCATION '{}/'",
        dataset.join("nation").display()
    );
    execute(&cluster, &inside)
        .await
        .expect("inside the allowed prefix");
    let rows = query(&cluster, "SELECT count(*) FROM nation_copy")
        .await
        .expect("read it");
    assert_eq!(rows.num_rows(), 1);

    let secret_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(secret_dir.path().join("secret.csv"), "a\n1\n").expect("write");
    for location in [
        format!("{}/secret.csv", secret_dir.path().display()),
        format!("{}/../../etc/", dataset.display()),
    ] {
        let sql = format!("CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '{location}'");
        let err = execute(&cluster, &sql).await.expect_err(&location);
        assert_eq!(
            err.code(),
            tonic::Code::PermissionDenied,
            "{location}: {err}"
        );
    }
    let url_table = format!("SELECT * FROM '{}/secret.csv'", secret_dir.path().display());
    let err = query(&cluster, &url_table)
        .await
        .expect_err("no URL tables");
    assert_ne!(err.code(), tonic::Code::Internal, "{err}");

    // COPY would write files anywhere the server can; SET would change every client's settings.
    let target = secret_dir.path().join("copied.csv");
    let copy = format!("COPY (SELECT 1 AS a) TO '{}'", target.display());
    for sql in [
        copy.as_str(),
        "SET datafusion.execution.batch_size = 1",
        "RESET datafusion.execution.batch_size",
    ] {
        let err = execute(&cluster, sql).await.expect_err(sql);
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{sql}: {err}");
    }
    assert!(!target.exists(), "COPY wrote a file");
}
