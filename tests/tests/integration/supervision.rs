//! Supervised runs with real processes (issue 10): a write's input runs under the same
//! supervision as a query. An executor SIGKILLed in the middle of `CREATE TABLE … AS SELECT` makes
//! the write run again on the others and commit exactly once; with no executor left it fails
//! `Unavailable` and creates nothing. `--query-timeout-ms` bounds `CREATE TABLE AS`,
//! `INSERT … SELECT` and `EXPLAIN ANALYZE`. A client that hangs up while its write commits
//! leaves the table wholly written (the commit runs to its end), every referenced file present
//! and no unreferenced one, before and after a restart. An executor that runs none of a query's
//! tasks may leave while the query runs: the query is neither failed nor run again.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quiver_client::ClientError;
use quiver_tests::compare::compare;
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::sql::{query, scalar, status, text, update};
use quiver_tests::{ClusterOptions, TestCluster};
use tokio::task::JoinHandle;
use tonic::Code;

use crate::QUERY_LIMIT;

/// Awaits `fut` for at most `limit`; on a timeout fails with the coordinator's log.
async fn bounded<T>(
    cluster: &TestCluster,
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!(
            "timed out after {limit:?}: {what}\ncoordinator log:\n{}",
            cluster.coordinator.log_text()
        ),
    }
}

/// Runs `sql` as an update from a client of its own, in a task (dropping the task's future hangs
/// the client up).
async fn spawn_update(cluster: &TestCluster, sql: String) -> JoinHandle<Result<i64, ClientError>> {
    let mut client = cluster.client().await;
    tokio::spawn(async move { client.update(&sql).await })
}

/// Every executor's `tasks_started`.
async fn tasks_started(cluster: &TestCluster) -> Vec<u64> {
    let mut started = Vec::new();
    for i in 0..cluster.executors.len() {
        started.push(cluster.executor_status(i).await.tasks_started);
    }
    started
}

/// How many times `needle` occurs in the coordinator's log.
fn log_count(cluster: &TestCluster, needle: &str) -> usize {
    cluster.coordinator.log_text().matches(needle).count()
}

/// Waits until the coordinator's log holds `needle` at least `times` times.
async fn wait_for_log(cluster: &TestCluster, needle: &str, times: usize, limit: Duration) {
    bounded(cluster, limit, &format!("'{needle}' in the log"), async {
        while log_count(cluster, needle) < times {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// An input that runs ~3.5 s on two executors of this debug build, in stages of two tasks each
/// (~4 s with one live executor, where its plan runs on the coordinator alone): each of lineitem's ~60k rows meets the ~5k whose supplier is the same mod 12.
const HEAVY_INPUT: &str = "SELECT a.l_orderkey AS k, count(*) AS n, \
     sum(b.l_quantity) AS q, sum(b.l_extendedprice * (1 - a.l_discount)) AS p \
     FROM lineitem a JOIN lineitem b ON a.l_suppkey % 12 = b.l_suppkey % 12 \
     WHERE a.l_shipdate < b.l_shipdate GROUP BY a.l_orderkey";

/// Row count and column sums of the rows of `from`: equal for equal contents, and a write
/// committed twice doubles them.
fn checksum(from: &str) -> String {
    format!(
        "SELECT count(*) AS rows, sum(k) AS k, sum(n) AS n, sum(q) AS q, sum(p) AS p FROM {from}"
    )
}

/// SIGKILLs executors `which` at the same moment (one `kill` call), and reaps them.
fn kill_together(cluster: &mut TestCluster, which: &[usize]) {
    let pids: Vec<String> = which
        .iter()
        .map(|&i| cluster.executors[i].pid().expect("running").to_string())
        .collect();
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .args(&pids)
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pids:?} failed");
    for &i in which {
        cluster.kill_executor(i);
    }
}

/// Starts `CREATE TABLE {table} AS {HEAVY_INPUT}` and lets it run for a second, checking that
/// each of the executors `on` runs some of its tasks by then.
async fn start_heavy_ctas(
    cluster: &TestCluster,
    table: &str,
    on: &[usize],
) -> JoinHandle<Result<i64, ClientError>> {
    let mut before = Vec::new();
    for &i in on {
        before.push(cluster.executor_status(i).await.tasks_started);
    }
    let started = Instant::now();
    let ctas = spawn_update(cluster, format!("CREATE TABLE {table} AS {HEAVY_INPUT}")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (&i, before) in on.iter().zip(before) {
        let during = cluster.executor_status(i).await.tasks_started;
        assert!(
            during > before,
            "executor {i} runs none of the write's tasks ({before} -> {during})"
        );
    }
    assert!(
        !ctas.is_finished(),
        "the CTAS ended within {:?}: its input is too light for the test",
        started.elapsed()
    );
    ctas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_executor_dies_runs_again_and_commits_once() {
    let options = ClusterOptions {
        executor_timeout_ms: 2_000,
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let mut cluster = TestCluster::start(options).await;
    let mut client = cluster.client().await;

    let ctas = start_heavy_ctas(&cluster, "rerun", &[0, 1]).await;
    cluster.kill_executor(0);
    let killed_at = Instant::now();
    let written = bounded(
        &cluster,
        // A hang guard: the rerun runs the whole join again on the coordinator alone (one live
        // executor), which on a loaded 2-core machine takes several seconds.
        Duration::from_secs(30),
        "the CTAS after its executor died",
        ctas,
    )
    .await
    .expect("the CTAS task")
    .unwrap_or_else(|e| {
        panic!(
            "the CTAS failed after executor 0 died: {e}\ncoordinator log:\n{}",
            cluster.coordinator.log_text()
        )
    });
    let rerun_took = killed_at.elapsed();
    assert!(
        cluster
            .coordinator
            .log_text()
            .contains("running the write again"),
        "the write did not meet the dead executor:\n{}",
        cluster.coordinator.log_text()
    );

    // Exactly once: the table holds what the same SELECT gives now.
    let stored = query(&mut client, &checksum("rerun"))
        .await
        .expect("checksum of the table");
    let direct = query(
        &mut client,
        &checksum(&format!("({HEAVY_INPUT}) AS direct")),
    )
    .await
    .expect("checksum of the SELECT");
    assert_eq!(text(&stored), text(&direct));
    assert_eq!(
        written,
        scalar(&mut client, "SELECT count(*) FROM rerun").await
    );
    eprintln!("CTAS rerun committed {rerun_took:?} after the kill ({written} rows)");

    // With no executor left, the write fails Unavailable and creates nothing. (With one live
    // executor a plan has one task per stage and runs on the coordinator alone, so the write
    // starts on two, and both die.)
    let newcomer = cluster.add_executor();
    cluster.wait_for_live(2).await;
    let ctas = start_heavy_ctas(&cluster, "orphan", &[1, newcomer]).await;
    // Both in one `kill`: one after the other, the coordinator may meet the first death while
    // the second still answers, and run the write again on it (one live executor: on the
    // coordinator alone), which then succeeds.
    kill_together(&mut cluster, &[1, newcomer]);
    let err = bounded(
        &cluster,
        Duration::from_secs(10),
        "the CTAS after the last executor died",
        ctas,
    )
    .await
    .expect("the CTAS task")
    .map(|rows| {
        panic!(
            "the CTAS wrote {rows} rows with no executor left\ncoordinator log:\n{}",
            cluster.coordinator.log_text()
        )
    })
    .unwrap_err();
    let err = status(err);
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    eprintln!("with no executor left: {err:?}");
    let missing = query(&mut client, "SELECT count(*) FROM orphan")
        .await
        .expect_err("the failed CTAS created no table");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
}

/// Billions of row pairs: runs far longer than any test waits.
const ENDLESS: &str =
    "SELECT count(*) AS n FROM lineitem a, lineitem b WHERE a.l_comment < b.l_comment";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_deadline_bounds_writes_and_explain_analyze() {
    let limit = Duration::from_millis(1_500);
    let options = ClusterOptions {
        query_timeout_ms: limit.as_millis() as u64,
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let cluster = TestCluster::start(options).await;
    let mut client = cluster.client().await;
    // A few seconds past the deadline to answer; a deadline that does not bind runs the whole
    // endless statement.
    let answer_within = limit + Duration::from_secs(4);

    update(&mut client, "CREATE TABLE target (n BIGINT)")
        .await
        .expect("a quick CREATE TABLE fits the deadline");
    update(&mut client, "INSERT INTO target VALUES (1), (2)")
        .await
        .expect("a quick INSERT fits the deadline");

    let statements = [
        (format!("CREATE TABLE doomed AS {ENDLESS}"), true),
        (format!("INSERT INTO target {ENDLESS}"), true),
        (format!("EXPLAIN ANALYZE {ENDLESS}"), false),
    ];
    for (sql, is_update) in statements {
        let started = Instant::now();
        let outcome = bounded(
            &cluster,
            answer_within + Duration::from_secs(10),
            &sql,
            async {
                if is_update {
                    client.update(&sql).await.map(|_| ())
                } else {
                    client.query(&sql).await.map(|_| ())
                }
            },
        )
        .await;
        let took = started.elapsed();
        let err = status(outcome.expect_err("past its deadline"));
        assert_eq!(err.code(), Code::DeadlineExceeded, "{sql}: {err:?}");
        assert!(
            took < answer_within,
            "{sql}: answered {took:?} after it started (deadline {limit:?})"
        );
        eprintln!("{sql}: DeadlineExceeded after {took:?}");
    }

    // Nothing of the writes is visible.
    let missing = query(&mut client, "SELECT count(*) FROM doomed")
        .await
        .expect_err("the CTAS past its deadline created no table");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert_eq!(scalar(&mut client, "SELECT count(*) FROM target").await, 2);
    assert_eq!(
        scalar(&mut client, "SELECT count(*) FROM nation").await,
        25,
        "a query after the cancelled ones"
    );
}

/// The managed tables of a catalog file: name -> (directory, files).
fn managed_tables(catalog: &Path) -> BTreeMap<String, (PathBuf, Vec<String>)> {
    quiver_tests::catalog::managed_tables(catalog)
        .into_iter()
        .map(|(name, table)| (name, (table.dir, table.files)))
        .collect()
}

/// The Parquet files (temporary ones included) under `dir`, relative to it.
fn parquet_files(dir: &Path) -> Vec<String> {
    quiver_tests::catalog::files_under(dir)
        .into_iter()
        .filter(|name| name.contains(".parquet"))
        .collect()
}

/// `table` is wholly the rows of `expected_source`, every file the catalog lists for it exists,
/// and its directory holds no Parquet file the catalog does not list.
async fn assert_committed(cluster: &TestCluster, table: &str, expected_source: &str) {
    let catalog = cluster.options.catalog.as_ref().expect("a catalog file");
    let tables = managed_tables(catalog);
    let (dir, files) = tables
        .get(table)
        .unwrap_or_else(|| panic!("{table} is not in the catalog:\n{tables:?}"));
    assert!(!files.is_empty(), "{table} lists no file");
    for file in files {
        assert!(
            dir.join(file).exists(),
            "{table} lists {file}, which is not in {}",
            dir.display()
        );
    }
    let mut listed = files.clone();
    listed.sort();
    assert_eq!(
        parquet_files(dir),
        listed,
        "the Parquet files in {} are not the ones the catalog lists",
        dir.display()
    );
    let mut client = cluster.client().await;
    let sums = "SELECT count(*) AS rows, sum(l_orderkey) AS keys, \
                sum(length(l_comment)) AS chars FROM";
    let stored = query(&mut client, &format!("{sums} {table}"))
        .await
        .expect("the table");
    let expected = query(&mut client, &format!("{sums} ({expected_source}) AS s"))
        .await
        .expect("the source");
    assert_eq!(text(&stored), text(&expected), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_during_the_commit_leaves_it_whole() {
    let pause = Duration::from_millis(2_000);
    let state = tempfile::tempdir().expect("tempdir");
    let options = ClusterOptions {
        catalog: Some(state.path().join("catalog.toml")),
        coordinator_args: vec![
            "--test-commit-pause-ms".to_string(),
            pause.as_millis().to_string(),
        ],
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let mut cluster = TestCluster::start(options).await;
    const PAUSED: &str = "commit paused for a test";
    let old = "SELECT l_orderkey, l_comment FROM lineitem WHERE l_orderkey < 1000";
    let new = "SELECT l_orderkey, l_comment FROM lineitem \
               WHERE l_orderkey >= 1000 AND l_orderkey < 3000";

    let mut client = cluster.client().await;
    update(&mut client, &format!("CREATE TABLE kept AS {old}"))
        .await
        .expect("create the table");
    assert_committed(&cluster, "kept", old).await;
    let catalog = cluster.options.catalog.clone().expect("catalog");
    let (dir, old_files) = managed_tables(&catalog)["kept"].clone();

    let paused_before = log_count(&cluster, PAUSED);
    let overwrite = spawn_update(&cluster, format!("INSERT OVERWRITE kept {new}")).await;
    wait_for_log(&cluster, PAUSED, paused_before + 1, QUERY_LIMIT).await;
    let paused_at = Instant::now();
    assert!(
        !overwrite.is_finished(),
        "the write answered while its commit was paused"
    );
    // The client hangs up: its call, its client and its connection go.
    overwrite.abort();
    let _ = overwrite.await;

    // The commit runs to its end after the pause: the replaced files go.
    bounded(
        &cluster,
        pause + Duration::from_secs(10),
        "the replaced files are deleted",
        async {
            while old_files.iter().any(|f| dir.join(f).exists()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    // And a little more, for anything else the commit does after deleting.
    tokio::time::sleep((pause + Duration::from_millis(1_000)).saturating_sub(paused_at.elapsed()))
        .await;
    assert_committed(&cluster, "kept", new).await;

    // A restart reads the same state.
    cluster.restart_coordinator();
    cluster.wait_for_live(cluster.options.executors).await;
    assert_committed(&cluster, "kept", new).await;
}

/// One distributed stage (the scan, an expensive expression and a partial aggregate) of two
/// tasks, ~6 s on this debug build, then the final aggregate on the coordinator. Each batch's
/// expression takes seconds without yielding, so a busy executor answers RPCs late.
const TWO_TASKS: &str = "SELECT count(*) AS n, \
     sum(length(regexp_replace(repeat(l_comment, 400), '[aeiou]', 'xy', 'g'))) AS s \
     FROM lineitem";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_without_tasks_may_leave_while_a_query_runs() {
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let expected = oracle::run(&ctx, &[TWO_TASKS.to_string()]).await;
    let options = ClusterOptions {
        executors: 3,
        // The ~390 KB the scan reads of lineitem (its `l_comment`) in two tasks of two
        // partitions: fewer tasks than executors.
        scan_bytes_per_partition: 110_000,
        executor_timeout_ms: 1_000,
        heartbeat_interval_ms: 100,
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let mut cluster = TestCluster::start(options).await;
    let mut client = cluster.client().await;

    // The plan: one stage of two tasks under the coordinator's head stage, so once two
    // executors run a task each, the third runs none.
    let explained = text(
        &query(&mut client, &format!("EXPLAIN {TWO_TASKS}"))
            .await
            .expect("EXPLAIN"),
    );
    assert!(
        explained.matches("── tasks=").count() == 1 && explained.contains("── tasks=2,"),
        "not one stage of two tasks:\n{explained}"
    );

    // Which executors run the tasks: an executor busy with a batch answers status RPCs only
    // between batches (seconds), so a task shows either in `tasks_started` or in the CPU its
    // executor burns.
    let before = tasks_started(&cluster).await;
    let cpu_before: Vec<Duration> = (0..3).map(|i| cluster.executor_cpu_time(i)).collect();
    let started = Instant::now();
    let running = tokio::spawn(async move { client.query(TWO_TASKS).await });
    let (idle, placed_after, burnt) =
        bounded(&cluster, Duration::from_secs(10), "tasks start", async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let burnt: Vec<Duration> = (0..3)
                    .map(|i| cluster.executor_cpu_time(i) - cpu_before[i])
                    .collect();
                let asks = (0..3).map(|i| {
                    tokio::time::timeout(Duration::from_millis(500), cluster.executor_status(i))
                });
                let started_now: Vec<Option<u64>> = futures::future::join_all(asks)
                    .await
                    .into_iter()
                    .map(|s| s.ok().map(|s| s.tasks_started))
                    .collect();
                let used: Vec<bool> = (0..3)
                    .map(|i| {
                        started_now[i].is_some_and(|n| n > before[i])
                            || burnt[i] > Duration::from_millis(300)
                    })
                    .collect();
                // The third must answer, to tell it has no task (under load it may answer late).
                let idle: Vec<usize> = (0..3)
                    .filter(|&i| !used[i] && started_now[i] == Some(before[i]))
                    .collect();
                let used = used.iter().filter(|u| **u).count();
                if (used == 2 && idle.len() == 1) || used == 3 {
                    return (idle, started.elapsed(), burnt);
                }
            }
        })
        .await;
    assert_eq!(
        idle.len(),
        1,
        "the query's two tasks did not land on two executors (CPU used in {placed_after:?}: {burnt:?})"
    );
    assert!(
        !running.is_finished(),
        "the query ended within {placed_after:?}: too light for the test"
    );
    cluster.kill_executor(idle[0]);
    let killed_at = Instant::now();
    // The coordinator notices the departure while the query still runs.
    bounded(
        &cluster,
        Duration::from_secs(5),
        "the killed executor leaves",
        cluster.wait_for_live(2),
    )
    .await;
    let left_after = killed_at.elapsed();
    assert!(
        !running.is_finished(),
        "the query ended before the idle executor left the live set ({:?} after it started)",
        started.elapsed()
    );

    let result = bounded(&cluster, QUERY_LIMIT, "the query", running)
        .await
        .expect("the query task")
        .unwrap_or_else(|e| {
            panic!(
                "the query failed when an executor it did not use left: {e}\ncoordinator log:\n{}",
                cluster.coordinator.log_text()
            )
        });
    compare(&expected, &result.batches, false).expect("the query's result");
    let log = cluster.coordinator.log_text();
    assert!(
        !log.contains("running the query again"),
        "the query ran again after an executor it did not use left:\n{log}"
    );
    // The two executors left ran both tasks of the query.
    let mut ran = 0;
    for i in (0..cluster.executors.len()).filter(|&i| i != idle[0]) {
        ran += cluster.executor_status(i).await.tasks_started - before[i];
    }
    assert_eq!(
        ran, 2,
        "tasks started on the executors left, from {before:?}"
    );
    eprintln!(
        "CPU in {placed_after:?}: {burnt:?}; executor {} left {left_after:?} after its kill; \
         the query took {:?}",
        idle[0],
        started.elapsed()
    );
}
