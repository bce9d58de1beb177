//! Long queries: a query running past `--query-timeout-ms` answers `DeadlineExceeded` promptly (a
//! streaming DoGet is not bounded by gRPC timeouts) and the next query runs normally; executors
//! whose cores a query saturates keep heartbeating and stay in the cluster.
//!
//! Not asserted yet: that executors stop the query's tasks within 5 s. They stop only when their
//! CPU-bound operators next yield; a large nested-loop join kept an executor busy (and deaf to its
//! status RPC) for ~20 s after the cancel. Executors need DataFusion on a runtime of its own.

use std::time::{Duration, Instant};

use quiver_tests::oracle::tpch_dataset;
use quiver_tests::{ClusterOptions, TestCluster, within};
use tonic::Code;

use crate::QUERY_LIMIT;

/// Billions of row pairs: runs far longer than any test waits.
const ENDLESS: &str = "SELECT count(*) FROM lineitem a, lineitem b WHERE a.l_comment < b.l_comment";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_past_their_deadline_fail_with_deadline_exceeded() {
    let options = ClusterOptions {
        query_timeout_ms: 2_000,
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let cluster = TestCluster::start(options).await;
    let mut client = cluster.client().await;

    let started = Instant::now();
    let err = within(QUERY_LIMIT, "endless query", client.query(ENDLESS))
        .await
        .expect_err("past its deadline");
    let elapsed = started.elapsed();
    assert_eq!(
        err.status().map(|s| s.code()),
        Some(Code::DeadlineExceeded),
        "{err}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "took {elapsed:?} to give up"
    );

    let ok = within(
        QUERY_LIMIT,
        "quick query",
        client.query("SELECT count(*) FROM nation"),
    )
    .await
    .expect("a quick query after the cancelled one");
    assert_eq!(ok.num_rows(), 1);
}

/// Fails if heartbeats share the executor's DataFusion runtime (they did, and a busy executor was
/// evicted within 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_executors_keep_heartbeating() {
    let options = ClusterOptions {
        query_timeout_ms: 8_000,
        executor_timeout_ms: 2_000,
        heartbeat_interval_ms: 200,
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let timeout = Duration::from_millis(options.executor_timeout_ms);
    let cluster = TestCluster::start(options).await;
    let mut client = cluster.client().await;
    let query = tokio::spawn(async move { client.query(ENDLESS).await });
    // Well past the executor timeout, with both executors' cores saturated by the query.
    tokio::time::sleep(timeout * 2).await;
    assert!(!query.is_finished(), "the endless query ended early");
    assert_eq!(
        cluster.live_executors().await.len(),
        2,
        "a busy executor missed its heartbeats and left the cluster"
    );
    query.abort();
}
