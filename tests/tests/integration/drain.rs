//! Graceful drain with real processes: SIGTERM on an executor during a query that runs over both
//! executors lets that query finish with the right answer (no rerun), takes the executor out of
//! new placements at once (a query started then runs on the other executor only), and the
//! executor leaves the live set and exits with code 0 within its grace period. SIGTERM on the
//! coordinator during a query lets that query finish, refuses new ones with `UNAVAILABLE`, and
//! the process exits with code 0.

use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use quiver_tests::cluster::RawStatement;
use quiver_tests::compare::compare;
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::{ClusterOptions, TestCluster, within};
use tonic::Code;

use crate::QUERY_LIMIT;

/// A nested-loop join over lineitem: runs for seconds, spread over every executor.
const SLOW: &str = "SELECT count(*) AS n FROM lineitem a, part b WHERE a.l_comment < b.p_comment";
/// What a query started during the drain runs: it scans (a bare `count(*)` is answered from
/// Parquet statistics on the coordinator).
const QUICK: &str = "SELECT count(*) AS n FROM lineitem WHERE l_quantity > 10";

const GRACE: Duration = Duration::from_secs(30);

/// Starts `sql`; its batches are collected on a task of their own.
async fn start(
    cluster: &TestCluster,
    sql: &str,
) -> tokio::task::JoinHandle<Result<Vec<RecordBatch>, String>> {
    let RawStatement { stream, .. } = cluster.start_statement(sql).await;
    tokio::spawn(async move { stream.try_collect().await.map_err(|e| e.to_string()) })
}

/// Waits until each of `executors` runs a task.
async fn wait_for_tasks(cluster: &TestCluster, executors: &[usize]) {
    within(QUERY_LIMIT, "tasks start", async {
        loop {
            let mut busy = 0;
            for &i in executors {
                busy += usize::from(cluster.executor_status(i).await.tasks_running > 0);
            }
            if busy == executors.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_executor_finishes_its_queries_then_leaves() {
    let grace = GRACE.as_secs().to_string();
    let options = ClusterOptions {
        executor_args: vec!["--drain-grace-secs".into(), grace],
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let mut cluster = TestCluster::start(options).await;
    let ctx = oracle::tpch_context(&tpch_dataset()).await;

    let slow = start(&cluster, SLOW).await;
    wait_for_tasks(&cluster, &[0, 1]).await;
    let tasks_before = cluster.executor_status(0).await.tasks_started;
    cluster.executors[0].signal("TERM");
    let signalled = Instant::now();

    // The coordinator hears of it at once: the executor is still listed, as draining.
    let drained_url = format!("http://{}/", cluster.executor_addrs[0]);
    within(
        Duration::from_secs(10),
        "the drain reaches the coordinator",
        async {
            loop {
                let live = cluster.live_executors().await;
                if live
                    .iter()
                    .any(|e| e.worker_url == drained_url && e.draining)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;

    // A query started now runs on the other executor only.
    let other_before = cluster.executor_status(1).await.tasks_started;
    let mut client = cluster.client().await;
    let quick = within(QUERY_LIMIT, QUICK, client.query(QUICK))
        .await
        .expect("a query during the drain");
    compare(
        &oracle::run(&ctx, &[QUICK.to_string()]).await,
        &quick.batches,
        true,
    )
    .expect("the query during the drain");
    assert!(
        !slow.is_finished(),
        "the slow query ended before the drain could be checked: make SLOW slower"
    );
    assert_eq!(
        cluster.executor_status(0).await.tasks_started,
        tasks_before,
        "the draining executor got a task of a new query"
    );
    assert!(
        cluster.executor_status(1).await.tasks_started > other_before,
        "the other executor ran nothing of the new query"
    );

    // The query that was running on it completes, with the right answer and without a rerun.
    let batches = within(QUERY_LIMIT, "the slow query", slow)
        .await
        .expect("join")
        .expect("the slow query through the drain");
    compare(
        &oracle::run(&ctx, &[SLOW.to_string()]).await,
        &batches,
        true,
    )
    .expect("the slow query through the drain");
    let coordinator_log = cluster.coordinator.log_text();
    assert!(
        !coordinator_log.contains("running the query again")
            && !coordinator_log.contains("left the cluster while the query ran"),
        "the drain cost the query its executor:\n{coordinator_log}"
    );

    // Then the executor deregisters and exits 0, within its grace period.
    let status = cluster.executors[0]
        .wait_exit(GRACE)
        .expect("the drained executor is still running");
    let exited_after = signalled.elapsed();
    let log = cluster.executors[0].log_text();
    assert!(
        status.success(),
        "the drained executor exited with {status}:\n{log}"
    );
    assert!(exited_after < GRACE, "it took {exited_after:?} to exit");
    assert!(log.contains("deregistered"), "no deregistration:\n{log}");
    let live = cluster.live_executors().await;
    assert_eq!(live.len(), 1, "still listed: {live:?}");
    assert_ne!(live[0].worker_url, drained_url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_coordinator_finishes_its_queries_and_refuses_new_ones() {
    let options = ClusterOptions {
        coordinator_args: vec!["--drain-grace-secs".into(), GRACE.as_secs().to_string()],
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let mut cluster = TestCluster::start(options).await;
    let ctx = oracle::tpch_context(&tpch_dataset()).await;

    let slow = start(&cluster, SLOW).await;
    wait_for_tasks(&cluster, &[0]).await;
    cluster.coordinator.signal("TERM");
    let signalled = Instant::now();

    // New queries are refused from (about) now on.
    let mut client = cluster.client().await;
    let refused = within(Duration::from_secs(10), "a query is refused", async {
        loop {
            match client.query(QUICK).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return e,
            }
        }
    })
    .await;
    let status = refused.status().expect("a gRPC status");
    assert_eq!(status.code(), Code::Unavailable, "{refused}");
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    assert!(
        !slow.is_finished(),
        "the slow query ended too soon: make SLOW slower"
    );

    let batches = within(QUERY_LIMIT, "the slow query", slow)
        .await
        .expect("join")
        .expect("the slow query through the coordinator's drain");
    compare(
        &oracle::run(&ctx, &[SLOW.to_string()]).await,
        &batches,
        true,
    )
    .expect("the slow query through the coordinator's drain");

    let status = cluster
        .coordinator
        .wait_exit(GRACE)
        .expect("the drained coordinator is still running");
    let log = cluster.coordinator.log_text();
    assert!(
        status.success(),
        "the coordinator exited with {status}:\n{log}"
    );
    assert!(signalled.elapsed() < GRACE + Duration::from_secs(5));
    assert!(log.contains("drained: no query running"), "{log}");
}
