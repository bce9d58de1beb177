//! Where queries run (issue 12): a query over table data runs on executors even when it plans as
//! one task (the coordinator only plans and forwards), the least-loaded executor gets it, and the
//! retry before the first row covers the executor it was placed on; queries that read no table
//! run on the coordinator (with no executor at all: see `membership`).

use std::time::{Duration, Instant};

use quiver_tests::compare::compare;
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::sql::{query, text, update};
use quiver_tests::{ClusterOptions, TestCluster};

use crate::QUERY_LIMIT;

/// Scan partitions this large keep every query over the test dataset in one task.
fn one_task_options() -> ClusterOptions {
    ClusterOptions {
        scan_bytes_per_partition: 1 << 30,
        ..ClusterOptions::tpch(&tpch_dataset())
    }
}

async fn tasks_started(cluster: &TestCluster) -> Vec<u64> {
    let mut started = Vec::new();
    for i in 0..cluster.executors.len() {
        started.push(cluster.executor_status(i).await.tasks_started);
    }
    started
}

/// The `plan` column of the row whose `plan_type` is `kind` in an EXPLAIN result.
fn explain_row(batches: &[arrow::array::RecordBatch], kind: &str) -> String {
    use arrow::array::{Array, AsArray};
    for batch in batches {
        let kinds = batch.column(0).as_string::<i32>();
        let plans = batch.column(1).as_string::<i32>();
        for i in 0..batch.num_rows() {
            if kinds.value(i) == kind && !plans.is_null(i) {
                return plans.value(i).to_string();
            }
        }
    }
    panic!("no '{kind}' row in {}", text(batches));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_task_queries_run_on_executors_and_constant_ones_on_the_coordinator() {
    let cluster = TestCluster::start(one_task_options()).await;
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let mut client = cluster.client().await;
    let sql = "SELECT n_regionkey, count(*) AS n, sum(n_nationkey) AS k FROM nation \
               GROUP BY n_regionkey ORDER BY n_regionkey";

    // One stage of one task under the coordinator's head.
    let explain = query(&mut client, &format!("EXPLAIN {sql}"))
        .await
        .expect("explain");
    assert_eq!(explain_row(&explain, "stages"), "2", "{}", text(&explain));
    let plan = explain_row(&explain, "distributed_plan");
    assert!(plan.contains("Stage 1 ── tasks=1"), "{plan}");
    assert!(plan.contains("DataSourceExec"), "{plan}");

    // Each run is one task on an executor; consecutive runs alternate (equal load, round-robin).
    let expected = oracle::run(&ctx, &[sql.to_string()]).await;
    let before = tasks_started(&cluster).await;
    for _ in 0..4 {
        let got = query(&mut client, sql).await.expect("query");
        compare(&expected, &got, true).expect("the placed query's result");
    }
    let after = tasks_started(&cluster).await;
    let grown: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        grown,
        vec![2, 2],
        "tasks per executor {before:?} -> {after:?}"
    );

    // EXPLAIN ANALYZE names the executor the stage ran on.
    let analyzed = query(&mut client, &format!("EXPLAIN ANALYZE {sql}"))
        .await
        .expect("explain analyze");
    let placement = explain_row(&analyzed, "task_placement");
    assert!(
        cluster
            .executor_addrs
            .iter()
            .any(|addr| placement.contains(&format!("t0 -> http://{addr}"))),
        "{placement}"
    );

    // Queries that read no table stay on the coordinator.
    let before = tasks_started(&cluster).await;
    for constant in [
        "SELECT 1 AS one",
        "SELECT x * 2 AS y FROM (VALUES (1), (2), (3)) AS t(x)",
        "SELECT count(*) AS n FROM information_schema.tables",
    ] {
        let explain = query(&mut client, &format!("EXPLAIN {constant}"))
            .await
            .expect("explain a constant query");
        assert_eq!(explain_row(&explain, "stages"), "1", "{constant}");
        query(&mut client, constant).await.expect(constant);
    }
    assert_eq!(tasks_started(&cluster).await, before);

    // A small write goes to an executor too: the coordinator only commits.
    update(&mut client, "CREATE TABLE small AS SELECT * FROM region")
        .await
        .expect("small CTAS");
    let coordinator_log = cluster.coordinator.log_text();
    assert!(
        !coordinator_log.contains("wrote a data file"),
        "the coordinator wrote the small table:\n{coordinator_log}"
    );
    assert!(
        cluster
            .executors
            .iter()
            .any(|e| e.log_text().contains("wrote a data file")),
        "no executor wrote the small table"
    );
    let back = query(&mut client, "SELECT count(*) AS n FROM small")
        .await
        .expect("read back");
    assert!(text(&back).contains("| 5 "), "{}", text(&back));
}

/// A one-task query that sends its only row at its end: its executor is SIGKILLed while it runs;
/// the query runs again on the other executor and answers correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_query_whose_executor_dies_before_its_first_row_runs_on_the_other() {
    // Each of lineitem's rows meets the ~1/12 that share its supplier mod 12: seconds of work
    // in one task of this debug build.
    const SLOW: &str = "SELECT count(*) AS n, sum(b.l_quantity) AS q \
         FROM lineitem a JOIN lineitem b ON a.l_suppkey % 12 = b.l_suppkey % 12 \
         WHERE a.l_shipdate < b.l_shipdate";
    let mut cluster = TestCluster::start(one_task_options()).await;
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let expected = oracle::run(&ctx, &[SLOW.to_string()]).await;

    let before = tasks_started(&cluster).await;
    let mut client = cluster.client().await;
    let started = Instant::now();
    let running = tokio::spawn(async move { query(&mut client, SLOW).await });
    // The executor its one task was placed on.
    let placed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let now = tasks_started(&cluster).await;
            if let Some(i) = (0..now.len()).find(|&i| now[i] > before[i]) {
                return i;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the query's task started on an executor");
    assert!(
        !running.is_finished(),
        "the query ended within {:?}: too light for the test",
        started.elapsed()
    );
    let other = 1 - placed;
    let other_before = cluster.executor_status(other).await.tasks_started;
    cluster.kill_executor(placed);

    let got = tokio::time::timeout(QUERY_LIMIT, running)
        .await
        .expect("the query ends")
        .expect("the query task")
        .unwrap_or_else(|e| {
            panic!(
                "the query failed: {e}\ncoordinator log:\n{}",
                cluster.coordinator.log_text()
            )
        });
    compare(&expected, &got, false).expect("the rerun's result");
    assert!(
        cluster.executor_status(other).await.tasks_started > other_before,
        "the query did not run again on executor {other}"
    );
    assert!(
        cluster
            .coordinator
            .log_text()
            .contains("running the query again"),
        "{}",
        cluster.coordinator.log_text()
    );
}
