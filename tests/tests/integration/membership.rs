//! Cluster membership with real processes: an executor killed between queries leaves the live
//! set within the timeout and the next query succeeds on the others; an executor that joins later
//! gets work from the next query on; a query that meets a just-killed executor before its first
//! row is run again on the others; a frozen (SIGSTOP) executor is treated as lost and rejoins when
//! thawed; with no executor, queries over tables are `Unavailable`.

use std::time::{Duration, Instant};

use quiver_tests::compare::compare;
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::{ClusterOptions, TestCluster, tpch_query, within};

use crate::{QUERY_LIMIT, run_statements};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_executor_leaves_and_the_next_query_succeeds() {
    let options = ClusterOptions {
        executor_timeout_ms: 2_000,
        heartbeat_interval_ms: 200,
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let timeout = Duration::from_millis(options.executor_timeout_ms);
    let mut cluster = TestCluster::start(options).await;
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let q5 = tpch_query(5);
    let expected = oracle::run(&ctx, &q5).await;

    let mut client = cluster.client().await;
    let first = run_statements(&mut client, &q5, false)
        .await
        .expect("q5 with two executors");
    compare(&expected, &first, true).expect("q5 with two executors");

    cluster.kill_executor(0);
    let left_after = Instant::now();
    cluster.wait_for_live(1).await;
    let elapsed = left_after.elapsed();
    assert!(
        elapsed <= timeout + Duration::from_secs(2),
        "the killed executor stayed in the live set for {elapsed:?} (timeout {timeout:?})"
    );

    let second = run_statements(&mut client, &q5, false)
        .await
        .expect("q5 after losing an executor");
    compare(&expected, &second, true).expect("q5 after losing an executor");

    // A newcomer is used from the next query on.
    let newcomer = cluster.add_executor();
    cluster.wait_for_live(2).await;
    assert_eq!(cluster.executor_status(newcomer).await.tasks_started, 0);
    let third = run_statements(&mut client, &q5, true)
        .await
        .expect("q5 after a new executor joined");
    compare(&expected, &third, true).expect("q5 after a new executor joined");
    assert!(
        cluster.executor_status(newcomer).await.tasks_started > 0,
        "the new executor got no task"
    );

    // An executor killed right before a query, long before its heartbeat timeout: the query
    // fails on it before any row reaches the client, so the coordinator evicts the executor that
    // no longer answers and runs the query again on the others.
    cluster.kill_executor(newcomer);
    let fourth = run_statements(&mut client, &q5, false)
        .await
        .expect("q5 right after an executor died");
    compare(&expected, &fourth, true).expect("q5 right after an executor died");
    assert_eq!(
        cluster.live_executors().await.len(),
        1,
        "the dead executor is still live"
    );
    assert!(
        cluster
            .coordinator
            .log_text()
            .contains("running the query again"),
        "the query did not meet the dead executor:\n{}",
        cluster.coordinator.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_executors_table_queries_are_unavailable() {
    let options = ClusterOptions {
        executors: 0,
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let cluster = TestCluster::start(options).await;
    let mut client = cluster.client().await;
    let err = within(
        QUERY_LIMIT,
        "query",
        client.query("SELECT count(*) FROM nation"),
    )
    .await
    .expect_err("no executor to run on");
    let status = err.status().expect("a server error");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no live executors"),
        "{}",
        status.message()
    );
    // Constant queries need no executor.
    let one = within(QUERY_LIMIT, "select 1", client.query("SELECT 1 AS one"))
        .await
        .expect("select 1");
    assert_eq!(one.num_rows(), 1);
}

/// A frozen executor (SIGSTOP) keeps its connections open but answers nothing: a query placed on
/// it right after the freeze does not hang: its heartbeats stop, it leaves the live set, and the
/// query, which has sent no row yet, runs again on the others; thawed (SIGCONT), the executor
/// registers again and gets work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_executor_is_treated_as_lost() {
    let options = ClusterOptions {
        executor_timeout_ms: 3_000,
        heartbeat_interval_ms: 200,
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let cluster = TestCluster::start(options).await;
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let q3 = tpch_query(3);
    let expected = oracle::run(&ctx, &q3).await;
    let mut client = cluster.client().await;
    let warm = run_statements(&mut client, &q3, false)
        .await
        .expect("q3 with two executors");
    compare(&expected, &warm, true).expect("q3 with two executors");

    cluster.signal_executor(0, "STOP");
    let frozen_at = Instant::now();
    let during = run_statements(&mut client, &q3, false)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "q3 right after an executor froze: {e}\ncoordinator log:\n{}",
                cluster.coordinator.log_text()
            )
        });
    compare(&expected, &during, true).expect("q3 right after an executor froze");
    let took = frozen_at.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "q3 took {took:?} to get past the frozen executor"
    );
    cluster.wait_for_live(1).await;

    cluster.signal_executor(0, "CONT");
    let rejoined = cluster.wait_for_live(2).await;
    assert!(
        rejoined < Duration::from_secs(10),
        "rejoined after {rejoined:?}"
    );
    let before = cluster.executor_status(0).await.tasks_started;
    let after_thaw = run_statements(&mut client, &q3, false)
        .await
        .expect("q3 after the executor thawed");
    compare(&expected, &after_thaw, true).expect("q3 after the executor thawed");
    assert!(
        cluster.executor_status(0).await.tasks_started > before,
        "the thawed executor got no task"
    );
}

/// An executor SIGKILLed while a query streams rows the client already started reading: the
/// client gets `Unavailable` naming the lost executor within 5 s (no silent rerun: rows were
/// sent), the next query succeeds, and a restarted executor joins and gets work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_mid_stream_is_named_in_unavailable() {
    use futures::StreamExt;

    let mut cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    // Rows from both executors for far longer than the test runs.
    let mut stream = cluster
        .start_statement(
            "SELECT a.l_orderkey, b.l_orderkey FROM lineitem a, lineitem b \
             WHERE a.l_comment < b.l_comment",
        )
        .await
        .stream;
    let first = within(QUERY_LIMIT, "first batch", stream.next())
        .await
        .expect("a batch")
        .expect("rows before the kill");
    assert!(first.num_rows() > 0);
    let killed = format!("http://{}", cluster.executor_addrs[0]);

    cluster.kill_executor(0);
    let killed_at = Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return e,
                None => panic!("the stream ended cleanly after its executor died"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the stream went on 8 s after its executor died\ncoordinator log:\n{}",
            cluster.coordinator.log_text()
        )
    });
    let took = killed_at.elapsed();
    let arrow_flight::error::FlightError::Tonic(status) = &error else {
        panic!("not a gRPC status: {error}");
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&killed),
        "the status does not name {killed}: {status:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} after the kill"
    );

    let mut client = cluster.client().await;
    let ok = within(
        QUERY_LIMIT,
        "next query",
        client.query("SELECT count(*) FROM lineitem JOIN orders ON l_orderkey = o_orderkey"),
    )
    .await
    .expect("the next query");
    assert_eq!(ok.num_rows(), 1);

    let restarted = cluster.add_executor();
    cluster.wait_for_live(2).await;
    let q5 = tpch_query(5);
    run_statements(&mut client, &q5, false)
        .await
        .expect("q5 with the restarted executor");
    assert!(cluster.executor_status(restarted).await.tasks_started > 0);
}
