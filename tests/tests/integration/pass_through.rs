//! Pass-through (issue 12): when the coordinator's head only concatenates the executors'
//! streams, their Arrow IPC messages go to the client without being decoded and encoded again.
//! The forwarded result equals single-node DataFusion's; a head that does work (a merge, a
//! limit) is not forwarded; a client that stops reading holds every node back; hanging up stops
//! the executors within 5 s.

use std::time::{Duration, Instant};

use futures::StreamExt;
use quiver_tests::compare::compare;
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::process::{Launch, rss_bytes};
use quiver_tests::sql::query;
use quiver_tests::{ClusterOptions, TestCluster, within};

use crate::QUERY_LIMIT;

/// What the coordinator logs (at debug) for each forwarded attempt.
const FORWARDED: &str = "forwarding the executors' record batch messages";

fn options() -> ClusterOptions {
    ClusterOptions {
        launch: Launch {
            env: vec![(
                "RUST_LOG".into(),
                "info,h2=warn,tower=warn,hyper=warn,quiver_server::engine::run=debug".into(),
            )],
            ..Launch::default()
        },
        ..ClusterOptions::tpch(&tpch_dataset())
    }
}

fn forwarded(cluster: &TestCluster) -> usize {
    cluster.coordinator.log_text().matches(FORWARDED).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_results_equal_single_node_datafusion() {
    let cluster = TestCluster::start(options()).await;
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let mut client = cluster.client().await;
    let cases = [
        // A scan over both executors: integers, decimals, dates, strings.
        (
            "SELECT l_orderkey, l_linenumber, l_quantity, l_extendedprice, l_shipdate, \
             l_returnflag, l_comment FROM lineitem WHERE l_discount > 0.05",
            true,
        ),
        // A join whose last stage streams its output: several stages, a concatenating head.
        (
            "SELECT o_orderkey, o_totalprice, o_orderdate, c_name FROM orders \
             JOIN customer ON o_custkey = c_custkey WHERE o_orderpriority = '1-URGENT'",
            true,
        ),
        // The coordinator merges sorted streams and limits: decoded and encoded as before.
        (
            "SELECT l_orderkey, l_comment FROM lineitem ORDER BY l_comment DESC, l_orderkey LIMIT 7",
            false,
        ),
    ];
    for (sql, forwards) in cases {
        let before = forwarded(&cluster);
        let expected = oracle::run(&ctx, &[sql.to_string()]).await;
        let got = query(&mut client, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        compare(&expected, &got, sql.contains("ORDER BY")).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(
            forwarded(&cluster) > before,
            forwards,
            "{sql}: forwarded {forwards}?\n{}",
            cluster.coordinator.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_reader_of_a_forwarded_result_holds_every_node_back_and_hanging_up_stops_it() {
    let cluster = TestCluster::start(options()).await;
    let pids: Vec<u32> = cluster
        .processes()
        .map(|p| p.pid().expect("running"))
        .collect();
    // Every lineitem column, 125 times over: far more than any node may buffer.
    let sql = "SELECT l.*, n_name, r_name FROM lineitem l CROSS JOIN nation CROSS JOIN region";
    let before_forwarded = forwarded(&cluster);
    let mut stream = cluster.start_statement(sql).await.stream;
    let first = within(QUERY_LIMIT, "first batch", stream.next())
        .await
        .expect("a batch")
        .expect("rows");
    assert!(first.num_rows() > 0);
    assert!(forwarded(&cluster) > before_forwarded, "not forwarded");
    let before: Vec<u64> = pids.iter().map(|&pid| rss_bytes(pid)).collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (i, (&pid, before)) in pids.iter().zip(&before).enumerate() {
        let grown = rss_bytes(pid).saturating_sub(*before);
        assert!(
            grown < 128 << 20,
            "process {i} grew by {} MiB while the client paused",
            grown >> 20
        );
    }
    let running: Vec<u64> = {
        let mut running = Vec::new();
        for i in 0..cluster.executors.len() {
            running.push(cluster.executor_status(i).await.tasks_running);
        }
        running
    };
    assert!(
        running.iter().any(|&n| n > 0),
        "the paused query runs nowhere"
    );

    // Hanging up stops the query's tasks on every executor.
    drop(stream);
    let hung_up = Instant::now();
    within(Duration::from_secs(30), "executors stop", async {
        loop {
            let mut busy = 0;
            for i in 0..cluster.executors.len() {
                busy += cluster.executor_status(i).await.tasks_running;
            }
            if busy == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        hung_up.elapsed() < Duration::from_secs(5),
        "executors ran on {:?} after the client hung up",
        hung_up.elapsed()
    );
}

/// A sorted result whose batch messages are larger than the client-safe size, forwarded from
/// the one task it runs in: the pieces arrive in order, so the result stays sorted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sorted_result_with_large_batches_is_forwarded_in_order() {
    let cluster = TestCluster::start(ClusterOptions {
        scan_bytes_per_partition: 1 << 30,
        ..options()
    })
    .await;
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let mut client = cluster.client().await;
    // ~600 bytes a row: 8192-row batches of ~5 MiB.
    let sql = "SELECT l_orderkey, l_linenumber, repeat(l_comment, 15) AS wide FROM lineitem \
               ORDER BY l_orderkey, l_linenumber";
    let before = forwarded(&cluster);
    let expected = oracle::run(&ctx, &[sql.to_string()]).await;
    let got = query(&mut client, sql).await.expect("the sorted query");
    assert!(forwarded(&cluster) > before, "not forwarded");
    compare(&expected, &got, true).expect("the forwarded sorted result");
}
