//! Long queries: a query running past `--query-timeout-ms`, or with a stage running past
//! `--stage-timeout-ms`, answers `DeadlineExceeded` promptly (a streaming DoGet is not bounded by
//! gRPC timeouts) and the next query runs normally; executors
//! whose cores a query saturates keep heartbeating and stay in the cluster; `CancelFlightInfo`
//! ends a running query's stream with `Cancelled` and refuses its ticket afterwards; whether the
//! client drops its stream or cancels, every executor stops the query's tasks (status RPC: no
//! running task; process: no CPU burnt) within 5 s, also for a nested-loop join that emits
//! thousands of batches per input batch (it kept executors busy ~20 s before joins yielded).

use std::time::{Duration, Instant};

use arrow_flight::{CancelFlightInfoRequest, CancelStatus};
use futures::StreamExt;

use quiver_tests::cluster::RawStatement;
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

/// A stage running past `--stage-timeout-ms` fails the query with `DeadlineExceeded` (no query
/// timeout is set), names the stage deadline, and frees the executors for the next query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_past_their_deadline_fail_with_deadline_exceeded() {
    let options = ClusterOptions {
        coordinator_args: vec!["--stage-timeout-ms".to_string(), "1500".to_string()],
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let cluster = TestCluster::start(options).await;
    let mut client = cluster.client().await;

    let started = Instant::now();
    let err = within(QUERY_LIMIT, "endless query", client.query(ENDLESS))
        .await
        .expect_err("past its stage deadline");
    let elapsed = started.elapsed();
    let status = err.status().expect("a gRPC status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{err}");
    assert!(status.message().contains("stage"), "{err}");
    assert!(
        elapsed < Duration::from_secs(10),
        "took {elapsed:?} to give up"
    );

    // A query with short stages runs; so does everything after the failed one.
    let ok = within(
        QUERY_LIMIT,
        "quick query",
        client.query("SELECT count(*) FROM lineitem JOIN orders ON l_orderkey = o_orderkey"),
    )
    .await
    .expect("a quick query after the failed one");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_flight_info_stops_a_running_query() {
    let cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    let RawStatement {
        mut flight,
        info,
        ticket,
        mut stream,
    } = cluster.start_statement(ENDLESS).await;
    let reader = tokio::spawn(async move {
        let mut last = None;
        while let Some(item) = stream.next().await {
            last = Some(item);
        }
        last
    });
    // Let the query reach the executors.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let result = within(
        QUERY_LIMIT,
        "cancel_flight_info",
        flight.cancel_flight_info(CancelFlightInfoRequest::new(info)),
    )
    .await
    .expect("cancel");
    assert_eq!(result.status, CancelStatus::Cancelled as i32);
    let last = within(Duration::from_secs(10), "cancelled stream ends", reader)
        .await
        .expect("reader task");
    let error = last.expect("an item").expect_err("ends with an error");
    assert!(
        error.to_string().contains("cancelled"),
        "unexpected end of a cancelled stream: {error}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // The cancelled ticket cannot run again; other queries run.
    let replay = within(QUERY_LIMIT, "replayed ticket", async {
        match flight.do_get(ticket).await {
            Err(e) => Some(e),
            Ok(mut s) => s.next().await.and_then(|r| r.err()),
        }
    })
    .await;
    assert!(replay.is_some(), "a cancelled ticket must not run again");
    let mut client = cluster.client().await;
    let ok = within(
        QUERY_LIMIT,
        "next query",
        client.query("SELECT count(*) FROM nation"),
    )
    .await
    .expect("a query after the cancel");
    assert_eq!(ok.num_rows(), 1);
}

/// How the client gives up on a running query.
#[derive(Debug, Clone, Copy)]
enum GiveUp {
    DropStream,
    CancelFlightInfo,
}

/// Both ways of giving up stop the query's tasks on every executor within 5 s: the executors'
/// status RPC reports no running tasks and their processes stop burning CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_stop_a_cancelled_query_within_5_seconds() {
    let cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    for how in [GiveUp::DropStream, GiveUp::CancelFlightInfo] {
        let RawStatement {
            mut flight,
            info,
            mut stream,
            ..
        } = cluster.start_statement(ENDLESS).await;
        let reader = tokio::spawn(async move { while stream.next().await.is_some() {} });

        // Wait until the query runs on both executors.
        within(QUERY_LIMIT, "tasks start", async {
            loop {
                let mut busy = 0;
                for i in 0..2 {
                    busy += usize::from(cluster.executor_status(i).await.tasks_running > 0);
                }
                if busy == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;

        let started = Instant::now();
        match how {
            GiveUp::DropStream => reader.abort(),
            GiveUp::CancelFlightInfo => {
                within(
                    QUERY_LIMIT,
                    "cancel_flight_info",
                    flight.cancel_flight_info(CancelFlightInfoRequest::new(info)),
                )
                .await
                .expect("cancel");
            }
        }
        let stopped = within(Duration::from_secs(30), "executors go idle", async {
            loop {
                if executors_idle(&cluster).await {
                    return started.elapsed();
                }
            }
        })
        .await;
        assert!(
            stopped < Duration::from_secs(5),
            "{how:?}: executors still ran the query {stopped:?} after the client gave up"
        );
    }
}

/// Whether every executor reports no running task and used under a quarter of a core over
/// the last 500 ms.
async fn executors_idle(cluster: &TestCluster) -> bool {
    let before: Vec<_> = (0..2).map(|i| cluster.executor_cpu_time(i)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut idle = true;
    for (i, before) in before.into_iter().enumerate() {
        let used = cluster.executor_cpu_time(i) - before;
        idle &= used < Duration::from_millis(125);
        idle &= cluster.executor_status(i).await.tasks_running == 0;
    }
    idle
}
