//! Resource limits with real processes: the coordinator's admission control refuses queries past
//! its concurrency and queue limits with `ResourceExhausted` and admits again once a slot frees;
//! executors under a memory limit complete a sort correctly; below what the sort needs at all,
//! the query fails with `ResourceExhausted` naming the largest consumers and the executors keep
//! serving. (Whether a sort spills depends on which tasks land on which executor, so spilling
//! itself is not asserted.) `--query-memory-limit` gives each query a pool of its own inside the
//! node's, and the error names whichever limit was hit.

use std::time::{Duration, Instant};

use arrow::array::Int64Array;
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::{ClusterOptions, TestCluster, within};
use tonic::Code;

use crate::QUERY_LIMIT;

const ENDLESS: &str = "SELECT count(*) FROM lineitem a, lineitem b WHERE a.l_comment < b.l_comment";

fn args(pairs: &[&str]) -> Vec<String> {
    pairs.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_refuses_beyond_its_limits() {
    let cluster = TestCluster::start(ClusterOptions {
        coordinator_args: args(&["--max-concurrent-queries", "1", "--max-queued-queries", "0"]),
        ..ClusterOptions::tpch(&tpch_dataset())
    })
    .await;
    let mut busy = cluster.client().await;
    let running = tokio::spawn(async move { busy.query(ENDLESS).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!running.is_finished());

    let mut client = cluster.client().await;
    let err = within(
        QUERY_LIMIT,
        "refused query",
        client.query("SELECT count(*) FROM nation"),
    )
    .await
    .expect_err("the only slot is taken");
    assert_eq!(
        err.status().map(|s| s.code()),
        Some(Code::ResourceExhausted),
        "{err}"
    );

    // Hanging up frees the slot.
    running.abort();
    let started = Instant::now();
    loop {
        match within(
            QUERY_LIMIT,
            "query",
            client.query("SELECT count(*) FROM nation"),
        )
        .await
        {
            Ok(result) => {
                assert_eq!(result.num_rows(), 1);
                break;
            }
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                assert_eq!(
                    e.status().map(|s| s.code()),
                    Some(Code::ResourceExhausted),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the slot was not released: {e}"),
        }
    }
}

async fn lineitem_rows() -> i64 {
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let expected = oracle::run(&ctx, &["SELECT count(*) FROM lineitem".to_string()]).await;
    expected[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("count")
        .value(0)
}

const BIG_SORT: &str = "SELECT l_comment FROM lineitem ORDER BY l_comment";

/// With room for the sort's merge reservations, a sort whose input may exceed what is left runs
/// to a complete, correct result (spilling when one executor gets most of the input).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sorts_complete_under_a_memory_limit() {
    let cluster = TestCluster::start(ClusterOptions {
        executor_args: args(&["--memory-limit", "24MiB"]),
        ..ClusterOptions::tpch(&tpch_dataset())
    })
    .await;
    let mut client = cluster.client().await;
    let sorted = within(QUERY_LIMIT, "big sort", client.query(BIG_SORT))
        .await
        .expect("the sort completes under the limit");
    assert_eq!(sorted.num_rows() as i64, lineitem_rows().await);
    let values: Vec<String> = sorted
        .batches
        .iter()
        .flat_map(|b| {
            let column = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .expect("Utf8");
            column
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "not sorted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_over_the_memory_limit_fail_cleanly() {
    let cluster = TestCluster::start(ClusterOptions {
        executor_args: args(&["--memory-limit", "2MiB"]),
        ..ClusterOptions::tpch(&tpch_dataset())
    })
    .await;
    let mut client = cluster.client().await;
    let err = within(QUERY_LIMIT, "big sort", client.query(BIG_SORT))
        .await
        .expect_err("over the memory limit");
    assert_eq!(
        err.status().map(|s| s.code()),
        Some(Code::ResourceExhausted),
        "{err}"
    );
    assert!(err.to_string().contains("top memory consumers"), "{err}");

    // The executors live on and serve the next query.
    assert_eq!(cluster.live_executors().await.len(), 2);
    let ok = within(
        QUERY_LIMIT,
        "next query",
        client.query("SELECT count(*) FROM nation"),
    )
    .await
    .expect("a query after the failed one");
    assert_eq!(ok.num_rows(), 1);
}

/// `--query-memory-limit` binds one query even where the node has room, and `--memory-limit`
/// still binds all queries together; either way the error names the limit that was hit and the
/// next query runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_query_memory_limits_bind_within_the_node_limit() {
    for (limits, named) in [
        (
            ["--memory-limit", "512MiB", "--query-memory-limit", "2MiB"],
            "--query-memory-limit",
        ),
        (
            ["--memory-limit", "2MiB", "--query-memory-limit", "512MiB"],
            "--memory-limit",
        ),
    ] {
        let cluster = TestCluster::start(ClusterOptions {
            executor_args: args(&limits),
            coordinator_args: args(&limits),
            ..ClusterOptions::tpch(&tpch_dataset())
        })
        .await;
        let mut client = cluster.client().await;
        let err = within(QUERY_LIMIT, "big sort", client.query(BIG_SORT))
            .await
            .expect_err("over a memory limit");
        assert_eq!(
            err.status().map(|s| s.code()),
            Some(Code::ResourceExhausted),
            "{limits:?}: {err}"
        );
        let message = err.to_string();
        assert!(message.contains(named), "{limits:?}: {err}");
        assert!(
            message.contains("top memory consumers"),
            "{limits:?}: {err}"
        );

        let ok = within(
            QUERY_LIMIT,
            "next query",
            client.query("SELECT count(*) FROM lineitem JOIN orders ON l_orderkey = o_orderkey"),
        )
        .await
        .expect("a small query after the failed one");
        assert_eq!(ok.num_rows(), 1);
    }
}

/// A client that stops reading holds the whole cluster back instead of making it buffer: while
/// it pauses, the coordinator's and executors' resident memory grows by far less than the
/// result, and reading on afterwards still yields every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_never_makes_nodes_buffer_its_result() {
    use futures::StreamExt;
    use quiver_tests::process::rss_bytes;

    let cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    let pids: Vec<u32> = std::iter::once(&cluster.coordinator)
        .chain(&cluster.executors)
        .map(|p| p.pid().expect("running"))
        .collect();
    // Every lineitem column, 125 times over: ~7.5 M rows, over 1 GB on the wire.
    let sql = "SELECT l.*, n_name, r_name FROM lineitem l CROSS JOIN nation CROSS JOIN region";
    let expected_rows = lineitem_rows().await * 125;

    let mut stream = cluster.start_statement(sql).await.stream;
    let mut rows = 0usize;
    let first = within(QUERY_LIMIT, "first batch", stream.next())
        .await
        .expect("a batch")
        .expect("rows");
    rows += first.num_rows();
    let before: Vec<u64> = pids.iter().map(|&pid| rss_bytes(pid)).collect();

    // Pause long enough for unbounded producers to have made the whole result.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let grown: Vec<u64> = pids
        .iter()
        .zip(&before)
        .map(|(&pid, before)| rss_bytes(pid).saturating_sub(*before))
        .collect();

    within(QUERY_LIMIT, "read the rest", async {
        while let Some(batch) = stream.next().await {
            let batch = batch.expect("batch");
            rows += batch.num_rows();
        }
    })
    .await;
    assert_eq!(rows as i64, expected_rows);
    // Each node may hold a few batches per partition and stream in flight, not the result.
    let bound = 192 << 20;
    for (node, grown) in ["coordinator", "executor 0", "executor 1"]
        .iter()
        .zip(&grown)
    {
        assert!(
            *grown < bound,
            "{node} grew by {} MiB while the client paused ({rows} rows, bound {} MiB)",
            grown >> 20,
            bound >> 20
        );
    }
}
