//! Parallel writes (issue 11): the last distributed stage of `CREATE TABLE … AS SELECT`,
//! `INSERT … SELECT` and `COPY (query) TO` writes on every executor (`ParallelWriteExec`, one
//! writer per task, files rolled at `--target-file-bytes`) and the coordinator commits once
//! (`WriteCommitExec`). Checked with real processes: the rows of a multi-million-row CTAS equal
//! its source and were written by both executors and not by the coordinator; partitioned tables
//! have a hive directory per value and a filter reads one; a write cut by a dead executor, a dead
//! coordinator or a client that hung up leaves each row once or nothing, and the staging
//! collector leaves no file the catalog does not list; COPY writes only where the config allows,
//! commits with `_SUCCESS`, and refuses to overwrite unless asked.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use quiver_client::ClientError;
use quiver_tests::catalog::{files_under, managed_tables, pending_writes};
use quiver_tests::compare::compare;
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::process::QuiverProcess;
use quiver_tests::sql::{query, scalar, text, update};
use quiver_tests::{ClusterOptions, TestCluster, within};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::QUERY_LIMIT;

/// Writes roll files at this size in these tests (the smallest the coordinator takes is 64 KiB).
const TARGET_FILE_BYTES: u64 = 1024 * 1024;

/// ~2.05M rows (lineitem's 60,175 rows, 34 times each, `k` telling the copies apart); with 1 MiB
/// files it is tens of files of several row groups, so a scan of it spreads over every task.
const MANY_ROWS: &str = "SELECT l_orderkey, l_linenumber, l_quantity, l_shipmode, l_comment, \
     unnest(range(0, 34)) AS k FROM lineitem";

/// A copy of the table [`MANY_ROWS`] made into `src` that takes a few seconds on two executors
/// of this debug build (an MD5 per row), writing ~50 files of 1 MiB as it goes: long enough to
/// cut it once the first files are written.
const SLOW_COPY: &str = "SELECT *, md5(concat(l_comment, CAST(k AS VARCHAR))) AS h FROM src";

/// Row count and sums of a table shaped like [`MANY_ROWS`]: equal for equal contents; a row lost
/// or written twice changes them (`distinct_rows` counts each (row, copy) once).
fn checksum(from: &str) -> String {
    format!(
        "SELECT count(*) AS n, sum(l_orderkey) AS keys, sum(length(l_comment)) AS chars, \
         count(DISTINCT (l_orderkey * 8 + l_linenumber) * 34 + k) AS distinct_rows FROM {from}"
    )
}

/// A cluster whose coordinator keeps a catalog file (outside the cluster directory, so a
/// restart reads the same one).
struct WriteCluster {
    cluster: TestCluster,
    catalog: PathBuf,
    _state: TempDir,
}

impl WriteCluster {
    /// Two executors, 1 MiB files, and `extra` coordinator flags.
    async fn start(extra: &[&str]) -> Self {
        let state = tempfile::tempdir().expect("tempdir");
        let catalog = state.path().join("catalog.toml");
        let mut coordinator_args = vec![
            "--target-file-bytes".to_string(),
            TARGET_FILE_BYTES.to_string(),
        ];
        coordinator_args.extend(extra.iter().map(|a| a.to_string()));
        let cluster = TestCluster::start(ClusterOptions {
            catalog: Some(catalog.clone()),
            coordinator_args,
            ..ClusterOptions::tpch(&tpch_dataset())
        })
        .await;
        Self {
            cluster,
            catalog,
            _state: state,
        }
    }

    /// The warehouse directory of `table`.
    fn table_dir(&self, table: &str) -> PathBuf {
        self.cluster.dir.path().join("warehouse").join(table)
    }

    /// The files the catalog lists for `table`, sorted (none if it is not there).
    fn listed(&self, table: &str) -> Vec<String> {
        let mut files = managed_tables(&self.catalog)
            .remove(table)
            .map(|t| t.files)
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Waits (bounded) until `check` holds; fails with `what`, the last `state` and the
    /// coordinator's log.
    async fn eventually<S: std::fmt::Debug>(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut() -> (bool, S),
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let (done, state) = check();
            if done {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "after {limit:?}, not {what}: {state:?}\ncoordinator log:\n{}",
                    self.cluster.coordinator.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The files (relative to `dir`) that `process`'s log says it wrote into `dir`.
fn written_by(process: &QuiverProcess, dir: &Path) -> Vec<String> {
    process.written_files(&format!("{}/", dir.display()))
}

/// Every file the executors' logs say they wrote into `dir`.
fn written_by_executors(cluster: &TestCluster, dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = cluster
        .executors
        .iter()
        .flat_map(|e| written_by(e, dir))
        .collect();
    files.sort();
    files
}

/// Whether some writer rolled over to a second file in one directory: two files
/// `[<dir>/]part-<write>-<attempt>-<task>-<partition>-<n>.<ext>` that differ in `n` only (`n`
/// counts a writer's files over all its partition directories).
pub(crate) fn rolled(files: &[String]) -> bool {
    let mut writers = BTreeSet::new();
    files.iter().any(|f| {
        let writer = f.rsplit_once('-').map_or(f.as_str(), |(w, _)| w);
        !writers.insert(writer)
    })
}

/// Runs `sql` as an update from a client of its own, in a task (aborting the task hangs the
/// client up).
async fn spawn_update(cluster: &TestCluster, sql: String) -> JoinHandle<Result<i64, ClientError>> {
    let mut client = cluster.client().await;
    tokio::spawn(async move { client.update(&sql).await })
}

/// Creates the source table, starts `CREATE TABLE {table} AS {SLOW_COPY}` from a client of its
/// own, and returns once an executor completed one of its files: the table's directory and the
/// running write.
async fn start_slow_write(
    writes: &WriteCluster,
    table: &str,
) -> (PathBuf, JoinHandle<Result<i64, ClientError>>) {
    let mut client = writes.cluster.client().await;
    update(&mut client, &format!("CREATE TABLE src AS {MANY_ROWS}"))
        .await
        .expect("create the source");
    let dir = writes.table_dir(table);
    let write = spawn_update(
        &writes.cluster,
        format!("CREATE TABLE {table} AS {SLOW_COPY}"),
    )
    .await;
    wait_for_a_written_file(writes, &dir, &write).await;
    (dir, write)
}

/// Waits until some executor logged a completed file in `dir` while `write` still runs.
async fn wait_for_a_written_file(
    cluster: &WriteCluster,
    dir: &Path,
    write: &JoinHandle<Result<i64, ClientError>>,
) {
    cluster
        .eventually(QUERY_LIMIT, "a file written", || {
            let written = written_by_executors(&cluster.cluster, dir);
            (!written.is_empty() || write.is_finished(), written.len())
        })
        .await;
    assert!(
        !write.is_finished(),
        "the write ended before any file was written: too light for the test"
    );
}

fn int64(batch: &RecordBatch, column: usize) -> &Int64Array {
    batch
        .column(column)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("Int64")
}

/// The data files of a committed COPY result: everything under `target` but its marker.
fn result_files(target: &Path) -> Vec<String> {
    files_under(target)
        .into_iter()
        .filter(|f| f != "_SUCCESS")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_ctas_is_written_by_every_executor_in_rolled_files() {
    let writes = WriteCluster::start(&[]).await;
    let cluster = &writes.cluster;
    let mut client = cluster.client().await;

    let started = Instant::now();
    let source_rows = update(&mut client, &format!("CREATE TABLE src AS {MANY_ROWS}"))
        .await
        .expect("create the source");
    let source_took = started.elapsed();
    let lineitem = oracle::run(
        &oracle::tpch_context(&tpch_dataset()).await,
        &["SELECT count(*) FROM lineitem".to_string()],
    )
    .await;
    assert_eq!(source_rows, 34 * int64(&lineitem[0], 0).value(0));

    let started = Instant::now();
    let copied = update(&mut client, &format!("CREATE TABLE copy AS {SLOW_COPY}"))
        .await
        .expect("CTAS");
    let copy_took = started.elapsed();
    assert_eq!(copied, source_rows);

    // The same rows, each once.
    let stored = query(&mut client, &checksum("copy"))
        .await
        .expect("checksum");
    let source = query(&mut client, &checksum("src"))
        .await
        .expect("checksum");
    assert_eq!(text(&stored), text(&source));
    assert_eq!(int64(&stored[0], 3).value(0), source_rows, "distinct rows");

    // Both executors wrote; the coordinator wrote nothing (the rows never passed through it).
    let dir = writes.table_dir("copy");
    for (i, executor) in cluster.executors.iter().enumerate() {
        assert!(
            !written_by(executor, &dir).is_empty(),
            "executor {i} wrote no file of the CTAS:\n{}",
            executor.log_text()
        );
    }
    let coordinator_log = cluster.coordinator.log_text();
    assert!(
        !coordinator_log.contains("wrote a data file"),
        "the coordinator wrote data files:\n{coordinator_log}"
    );
    assert!(coordinator_log.contains("committed a write table=copy"));

    // The catalog lists exactly the files the executors reported, every one is in the table
    // directory (and nothing else is), and each is within the roll size.
    let listed = writes.listed("copy");
    assert!(listed.len() >= 2, "one file for ~2M rows: {listed:?}");
    assert!(
        rolled(&listed),
        "no writer rolled to a second file: {listed:?}"
    );
    assert_eq!(listed, written_by_executors(cluster, &dir));
    assert_eq!(files_under(&dir), listed);
    for file in &listed {
        let bytes = std::fs::metadata(dir.join(file))
            .expect("listed file")
            .len();
        assert!(
            bytes <= TARGET_FILE_BYTES,
            "{file} has {bytes} bytes, over the roll size {TARGET_FILE_BYTES}"
        );
    }
    eprintln!(
        "source CTAS {source_took:?}, copy CTAS {copy_took:?}: {source_rows} rows in {} files",
        listed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_writers_stage_and_the_one_commit() {
    let writes = WriteCluster::start(&[]).await;
    let mut client = writes.cluster.client().await;
    let pending_before = pending_writes(&writes.catalog);

    let explained = text(
        &query(
            &mut client,
            "EXPLAIN CREATE TABLE t AS SELECT l_orderkey, l_comment FROM lineitem",
        )
        .await
        .expect("EXPLAIN of a CTAS"),
    );
    assert!(explained.contains("WriteCommitExec"), "{explained}");
    // The writers run in a stage of two tasks: the stage header nearest above them says so.
    let lines: Vec<&str> = explained.lines().collect();
    let writer = lines
        .iter()
        .position(|l| l.contains("ParallelWriteExec"))
        .unwrap_or_else(|| panic!("no ParallelWriteExec:\n{explained}"));
    let stage = lines[..writer]
        .iter()
        .rev()
        .find(|l| l.contains("── tasks="))
        .unwrap_or_else(|| panic!("ParallelWriteExec is in no distributed stage:\n{explained}"));
    assert!(stage.contains("── tasks=2"), "{stage}\n{explained}");
    let commit = lines
        .iter()
        .position(|l| l.contains("WriteCommitExec"))
        .expect("WriteCommitExec");
    assert!(
        commit < writer && !lines[..commit].iter().any(|l| l.contains("── tasks=")),
        "WriteCommitExec is not on the coordinator, above the writers:\n{explained}"
    );

    // EXPLAIN writes nothing and journals nothing.
    let missing = query(&mut client, "SELECT count(*) FROM t")
        .await
        .expect_err("EXPLAIN created no table");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(files_under(&writes.table_dir("t")).is_empty());
    assert_eq!(pending_writes(&writes.catalog), pending_before);

    // EXPLAIN ANALYZE would write: refused.
    let analyze = query(
        &mut client,
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT l_orderkey FROM lineitem",
    )
    .await
    .expect_err("EXPLAIN ANALYZE of a write");
    assert_eq!(analyze.code(), Code::Unimplemented, "{analyze:?}");
    assert!(files_under(&writes.table_dir("t")).is_empty());

    // Without `[locations] copy_targets` in the config, COPY is refused and creates nothing.
    let target = writes.cluster.dir.path().join("exports");
    let refused = update(
        &mut client,
        &format!(
            "COPY (SELECT 1 AS x) TO '{}/' STORED AS PARQUET",
            target.display()
        ),
    )
    .await
    .expect_err("COPY without copy_targets");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(!target.exists());
}

/// lineitem's ship modes: one partition directory each.
const SHIP_MODES: [&str; 7] = ["AIR", "FOB", "MAIL", "RAIL", "REG AIR", "SHIP", "TRUCK"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_tables_write_a_directory_per_value_and_filters_read_one() {
    let writes = WriteCluster::start(&[]).await;
    let cluster = &writes.cluster;
    let mut client = cluster.client().await;
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let per_mode = |table: &str, filter: &str| {
        format!(
            "SELECT l_shipmode, count(*) AS n, sum(l_orderkey) AS keys, sum(l_quantity) AS qty \
             FROM {table} {filter} GROUP BY l_shipmode ORDER BY l_shipmode"
        )
    };

    // The partition column comes first in the SELECT and last in the table.
    let first = "WHERE l_orderkey < 30000";
    let explained = text(
        &query(
            &mut client,
            &format!(
                "EXPLAIN CREATE TABLE parts PARTITIONED BY (l_shipmode) AS \
                 SELECT l_shipmode, l_orderkey FROM lineitem {first}"
            ),
        )
        .await
        .expect("EXPLAIN of a partitioned CTAS"),
    );
    assert!(
        explained.contains("partition_by=[l_shipmode]"),
        "{explained}"
    );
    let created = update(
        &mut client,
        &format!(
            "CREATE TABLE parts PARTITIONED BY (l_shipmode) AS \
             SELECT l_shipmode, l_orderkey, l_quantity, l_comment FROM lineitem {first}"
        ),
    )
    .await
    .expect("partitioned CTAS");
    assert!(created > 0);
    let columns = query(&mut client, "SELECT * FROM parts LIMIT 1")
        .await
        .expect("a row");
    let schema = columns[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        ["l_orderkey", "l_quantity", "l_comment", "l_shipmode"]
    );

    // One directory per value, every file in one, none elsewhere.
    let dir = writes.table_dir("parts");
    let directories = |listed: &[String]| -> BTreeSet<String> {
        listed
            .iter()
            .map(|f| {
                let (directory, name) = f
                    .split_once('/')
                    .unwrap_or_else(|| panic!("{f} is not in a partition directory"));
                assert!(!name.contains('/'), "{f} is nested too deep");
                directory.to_string()
            })
            .collect()
    };
    let expected_dirs: BTreeSet<String> = SHIP_MODES
        .iter()
        .map(|m| format!("l_shipmode={m}"))
        .collect();
    let after_create = writes.listed("parts");
    assert_eq!(directories(&after_create), expected_dirs);
    assert_eq!(files_under(&dir), after_create);
    let actual = query(&mut client, &per_mode("parts", ""))
        .await
        .expect("per mode");
    let expected = oracle::run(&ctx, &[per_mode("lineitem", first)]).await;
    compare(&expected, &actual, true).expect("per ship mode after CTAS");

    // A filter on the partition column reads that directory's files only.
    let explained = text(
        &query(
            &mut client,
            "EXPLAIN SELECT count(*), sum(l_quantity) FROM parts WHERE l_shipmode = 'AIR'",
        )
        .await
        .expect("EXPLAIN"),
    );
    assert!(explained.contains("l_shipmode=AIR/"), "{explained}");
    for other in SHIP_MODES.iter().filter(|m| **m != "AIR") {
        assert!(
            !explained.contains(&format!("l_shipmode={other}/")),
            "the scan reads {other}'s directory:\n{explained}"
        );
    }
    let air = "SELECT count(*) AS n, sum(l_quantity) AS qty FROM";
    compare(
        &oracle::run(
            &ctx,
            &[format!("{air} lineitem {first} AND l_shipmode = 'AIR'")],
        )
        .await,
        &query(
            &mut client,
            &format!("{air} parts WHERE l_shipmode = 'AIR'"),
        )
        .await
        .expect("filtered"),
        true,
    )
    .expect("AIR");

    // INSERT appends into the same directories: every file stays, new ones join, and each row
    // sits under its own value (the value is read from the directory, so a row in the wrong
    // one would change the sums per mode).
    let inserted = update(
        &mut client,
        "INSERT INTO parts SELECT l_orderkey, l_quantity, l_comment, l_shipmode \
         FROM lineitem WHERE l_orderkey >= 30000",
    )
    .await
    .expect("INSERT into the partitioned table");
    assert!(inserted > 0);
    let after_insert = writes.listed("parts");
    assert!(
        after_create.iter().all(|f| after_insert.contains(f)),
        "an append dropped files: {after_create:?} -> {after_insert:?}"
    );
    assert!(after_insert.len() > after_create.len());
    assert_eq!(directories(&after_insert), expected_dirs);
    assert_eq!(files_under(&dir), after_insert);
    let actual = query(&mut client, &per_mode("parts", ""))
        .await
        .expect("per mode");
    let expected = oracle::run(&ctx, &[per_mode("lineitem", "")]).await;
    compare(&expected, &actual, true).expect("per ship mode after INSERT");

    // A declared partitioned table: NULL, '' and values that need escaping round-trip (NULL
    // and '' share Hive's default partition and both read back as NULL).
    update(
        &mut client,
        "CREATE TABLE tagged (a BIGINT, s VARCHAR) PARTITIONED BY (s)",
    )
    .await
    .expect("declared partitioned table");
    update(
        &mut client,
        "INSERT INTO tagged VALUES (1, 'x/y'), (2, 'a=b'), (4, NULL), (8, ''), (16, 'x/y'), \
         (32, 'plain'), (64, '100%')",
    )
    .await
    .expect("insert values");
    let round_trip = text(
        &query(
            &mut client,
            "SELECT s, count(*) AS n, sum(a) AS a FROM tagged GROUP BY s ORDER BY s NULLS FIRST",
        )
        .await
        .expect("read back"),
    );
    let expected = "\
+-------+---+----+
| s     | n | a  |
+-------+---+----+
|       | 2 | 12 |
| 100%  | 1 | 64 |
| a=b   | 1 | 2  |
| plain | 1 | 32 |
| x/y   | 2 | 17 |
+-------+---+----+";
    assert_eq!(round_trip, expected);
    let nulls = scalar(&mut client, "SELECT count(*) FROM tagged WHERE s IS NULL").await;
    assert_eq!(nulls, 2);
    for (value, rows) in [("x/y", 2), ("a=b", 1), ("100%", 1)] {
        let n = scalar(
            &mut client,
            &format!("SELECT count(*) FROM tagged WHERE s = '{value}'"),
        )
        .await;
        assert_eq!(n, rows, "s = '{value}'");
    }
    let tagged_dirs = directories(&writes.listed("tagged"));
    let expected_dirs: BTreeSet<String> = [
        "s=100%25",
        "s=__HIVE_DEFAULT_PARTITION__",
        "s=a%3Db",
        "s=plain",
        "s=x%2Fy",
    ]
    .iter()
    .map(|d| d.to_string())
    .collect();
    assert_eq!(tagged_dirs, expected_dirs);

    // Partition columns must exist and have a type with one text form.
    for (sql, what) in [
        (
            "CREATE TABLE bad PARTITIONED BY (nope) AS SELECT l_orderkey FROM lineitem",
            "a missing column",
        ),
        (
            "CREATE TABLE bad PARTITIONED BY (q) AS \
             SELECT l_orderkey, CAST(l_quantity AS DOUBLE) AS q FROM lineitem",
            "a DOUBLE column",
        ),
    ] {
        let err = update(&mut client, sql).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    }
    assert!(files_under(&writes.table_dir("bad")).is_empty());
    assert!(!managed_tables(&writes.catalog).contains_key("bad"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_mid_ctas_leaves_each_row_once_and_no_stray_file() {
    let mut writes = WriteCluster::start(&["--staging-interval-secs", "1"]).await;
    writes.cluster.options.executor_timeout_ms = 2_000;
    let (dir, ctas) = start_slow_write(&writes, "rerun").await;
    let mut client = writes.cluster.client().await;
    writes.cluster.kill_executor(0);
    let killed_at = Instant::now();
    // What the first attempt completed, on either executor: never committed, deleted.
    let first_attempt = written_by_executors(&writes.cluster, &dir);
    let rows = within(QUERY_LIMIT, "the CTAS after its executor died", ctas)
        .await
        .expect("the CTAS task")
        .unwrap_or_else(|e| {
            panic!(
                "the CTAS failed after executor 0 died: {e}\ncoordinator log:\n{}",
                writes.cluster.coordinator.log_text()
            )
        });
    let rerun_took = killed_at.elapsed();
    let log = writes.cluster.coordinator.log_text();
    assert!(
        log.contains("running the write again"),
        "the write did not meet the dead executor:\n{log}"
    );

    // Each row exactly once.
    let stored = query(&mut client, &checksum("rerun"))
        .await
        .expect("checksum");
    let source = query(&mut client, &checksum("src"))
        .await
        .expect("checksum");
    assert_eq!(text(&stored), text(&source));
    assert_eq!(rows, int64(&stored[0], 0).value(0));

    // The dead attempt's files go (at once, or by the collector): the directory holds exactly
    // the files the catalog lists, each of the attempt that committed.
    let listed = writes.listed("rerun");
    writes
        .eventually(
            Duration::from_secs(10),
            "only the catalog's files in the table directory",
            || {
                let present = files_under(&dir);
                (present == listed, (present, listed.clone()))
            },
        )
        .await;
    // `part-<write id>-<attempt id>-<task>-<partition>-<n>.parquet` (ids may hold '-').
    let attempts: BTreeSet<&str> = listed
        .iter()
        .map(|f| f.rsplitn(4, '-').nth(3).expect("part-<write>-<attempt>-…"))
        .collect();
    assert_eq!(attempts.len(), 1, "files of several attempts: {listed:?}");
    assert!(
        first_attempt.iter().all(|f| !listed.contains(f)),
        "the dead attempt's files were committed: {first_attempt:?}"
    );
    eprintln!(
        "rerun committed {rerun_took:?} after the kill, {} files",
        listed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_write_leaves_no_table_and_no_files() {
    // A journal entry lives 5 s past its write's start: files an executor may still finish
    // just after the coordinator died are collected by a pass in that time.
    let mut writes =
        WriteCluster::start(&["--staging-interval-secs", "1", "--staging-grace-secs", "5"]).await;
    let (dir, ctas) = start_slow_write(&writes, "doomed").await;
    let journaled = pending_writes(&writes.catalog);
    assert!(!journaled.is_empty(), "the running write is not journaled");
    writes.cluster.restart_coordinator();
    let outcome = within(QUERY_LIMIT, "the interrupted CTAS", ctas)
        .await
        .expect("the CTAS task");
    assert!(
        outcome.is_err(),
        "a CTAS whose coordinator died answered {outcome:?}"
    );
    writes.cluster.wait_for_live(2).await;
    let mut client = writes.cluster.client().await;

    let missing = query(&mut client, "SELECT count(*) FROM doomed")
        .await
        .expect_err("the CTAS never committed");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(!managed_tables(&writes.catalog).contains_key("doomed"));

    // The collector (on start, then every second) removes the dead write's files, those the
    // executors finish after the kill included, and drops the journal entry past its grace.
    writes
        .eventually(
            Duration::from_secs(20),
            "an empty table directory and journal",
            || {
                let files = files_under(&dir);
                let pending = pending_writes(&writes.catalog);
                (files.is_empty() && pending.is_empty(), (files, pending))
            },
        )
        .await;
    // Nothing comes back later: no executor still writes the dead write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(files_under(&dir), Vec::<String>::new());
    assert!(
        writes
            .cluster
            .coordinator
            .log_text()
            .contains("removed files a failed or interrupted write left"),
        "the restarted coordinator collected nothing"
    );
    // The source is untouched and the name is free again.
    assert_eq!(
        scalar(&mut client, "SELECT count(*) FROM src").await,
        34 * 60_175
    );
    update(
        &mut client,
        "CREATE TABLE doomed AS SELECT * FROM src WHERE k = 0",
    )
    .await
    .expect("the name is free");
    assert_eq!(
        scalar(&mut client, "SELECT count(*) FROM doomed").await,
        60_175
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_write_stops_it_everywhere() {
    let writes = WriteCluster::start(&["--staging-interval-secs", "1"]).await;
    let cluster = &writes.cluster;
    let mut client = cluster.client().await;
    let (dir, ctas) = start_slow_write(&writes, "abandoned").await;
    // The client hangs up: its call, its client and its connection go.
    ctas.abort();
    let _ = ctas.await;
    let hung_up = Instant::now();

    // Every executor's tasks stop within 5 s, and no file is written after that.
    let stop_limit = Duration::from_secs(5);
    loop {
        let mut running = Vec::new();
        for i in 0..cluster.executors.len() {
            running.push(cluster.executor_status(i).await.tasks_running);
        }
        if running.iter().all(|&n| n == 0) {
            break;
        }
        assert!(
            hung_up.elapsed() < stop_limit,
            "tasks still running {stop_limit:?} after the client hung up: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped_after = hung_up.elapsed();
    let written = written_by_executors(cluster, &dir);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        written_by_executors(cluster, &dir),
        written,
        "files written after the tasks stopped"
    );

    // Nothing is visible, and the collector empties the directory.
    let missing = query(&mut client, "SELECT count(*) FROM abandoned")
        .await
        .expect_err("the abandoned CTAS committed nothing");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    writes
        .eventually(Duration::from_secs(10), "an empty table directory", || {
            let files = files_under(&dir);
            (files.is_empty(), files)
        })
        .await;
    assert!(!managed_tables(&writes.catalog).contains_key("abandoned"));
    eprintln!(
        "{} files written before the hang-up; tasks stopped {stopped_after:?} after it",
        written.len()
    );
}

/// Registers the files under `dir` in a single-node session as table `name`.
async fn read_back(ctx: &SessionContext, name: &str, dir: &Path, format: &str) {
    let path = format!("{}/", dir.display());
    match format {
        "parquet" => ctx
            .register_parquet(
                name,
                &path,
                ParquetReadOptions::default().table_partition_cols(vec![(
                    "l_shipmode".to_string(),
                    arrow::datatypes::DataType::Utf8,
                )]),
            )
            .await
            .expect("register Parquet"),
        "csv" => ctx
            .register_csv(name, &path, CsvReadOptions::new())
            .await
            .expect("register CSV"),
        "json" => ctx
            .register_json(name, &path, JsonReadOptions::default())
            .await
            .expect("register JSON"),
        other => panic!("no reader for {other}"),
    }
}

/// The single-node result of `sql`, as text.
async fn single_node(ctx: &SessionContext, sql: &str) -> String {
    text(&oracle::run(ctx, &[sql.to_string()]).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_writes_allowed_targets_once_with_a_success_marker() {
    let exports = tempfile::tempdir().expect("tempdir");
    let allowed = exports.path().join("allowed");
    let config = exports.path().join("quiver.toml");
    std::fs::write(
        &config,
        format!("[locations]\ncopy_targets = [\"{}/\"]\n", allowed.display()),
    )
    .expect("write config");
    let writes = WriteCluster::start(&["--config", &config.display().to_string()]).await;
    let cluster = &writes.cluster;
    let mut client = cluster.client().await;
    let tpch = oracle::tpch_context(&tpch_dataset()).await;

    // Parquet, partitioned, snappy.
    let parquet = allowed.join("parquet");
    let rows = update(
        &mut client,
        &format!(
            "COPY (SELECT l_orderkey, l_quantity, l_shipmode FROM lineitem) TO '{}/' \
             STORED AS PARQUET PARTITIONED BY (l_shipmode) OPTIONS (compression 'snappy')",
            parquet.display()
        ),
    )
    .await
    .expect("COPY to Parquet");
    let per_mode = "SELECT l_shipmode, count(*) AS n, sum(l_orderkey) AS keys, \
                    sum(l_quantity) AS qty FROM {} GROUP BY l_shipmode ORDER BY l_shipmode";
    let expected = single_node(&tpch, &per_mode.replace("{}", "lineitem")).await;
    let ctx = SessionContext::new();
    read_back(&ctx, "pq", &parquet, "parquet").await;
    assert_eq!(
        single_node(&ctx, &per_mode.replace("{}", "pq")).await,
        expected
    );
    assert_committed(&parquet, rows);
    for mode in SHIP_MODES {
        assert!(
            parquet.join(format!("l_shipmode={mode}")).is_dir(),
            "no directory for {mode}"
        );
    }
    let one = result_files(&parquet).remove(0);
    let reader = datafusion::parquet::file::reader::SerializedFileReader::new(
        std::fs::File::open(parquet.join(&one)).expect("open"),
    )
    .expect("a Parquet file");
    let metadata = datafusion::parquet::file::reader::FileReader::metadata(&reader);
    for column in metadata.row_group(0).columns() {
        assert_eq!(
            column.compression(),
            datafusion::parquet::basic::Compression::SNAPPY,
            "{one}"
        );
    }

    // CSV (with a header line) and newline-delimited JSON; small files roll.
    let small = "SELECT l_orderkey, l_linenumber, l_comment FROM lineitem WHERE l_orderkey < 20000";
    let sums =
        "SELECT count(*) AS n, sum(l_orderkey) AS keys, sum(length(l_comment)) AS chars FROM";
    let expected = single_node(&tpch, &format!("{sums} ({small})")).await;
    for (format, options) in [("csv", ""), ("json", "OPTIONS (target_file_bytes '64KiB')")] {
        let target = allowed.join(format);
        let rows = update(
            &mut client,
            &format!(
                "COPY ({small}) TO '{}/' STORED AS {} {options}",
                target.display(),
                format.to_uppercase()
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("COPY to {format}: {e}"));
        assert_committed(&target, rows);
        let ctx = SessionContext::new();
        read_back(&ctx, "back", &target, format).await;
        assert_eq!(
            single_node(&ctx, &format!("{sums} back")).await,
            expected,
            "{format}"
        );
        if format == "json" {
            // Text files roll within the target too.
            let files = result_files(&target);
            assert!(files.len() >= 2, "64 KiB files did not roll: {files:?}");
            for f in &files {
                let size = std::fs::metadata(target.join(f)).expect("stat").len();
                assert!(size <= 64 * 1024, "{f} has {size} bytes");
            }
        } else {
            // Every CSV file starts with its header.
            let mut lines = 0;
            for f in result_files(&target) {
                let content = std::fs::read_to_string(target.join(&f)).expect("read");
                assert!(content.starts_with("l_orderkey,"), "{f}");
                lines += content.lines().count() as i64 - 1;
            }
            assert_eq!(lines, rows);
        }
    }

    // Again without overwrite: AlreadyExists, and the result stays as it was.
    let csv = allowed.join("csv");
    let before = files_under(&csv);
    let again = update(
        &mut client,
        &format!("COPY (SELECT 1 AS x) TO '{}/' STORED AS CSV", csv.display()),
    )
    .await
    .expect_err("a second COPY into a committed result");
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    assert_eq!(files_under(&csv), before);

    // With overwrite: replaced, the old files gone.
    let replaced = update(
        &mut client,
        &format!(
            "COPY (SELECT l_orderkey, l_comment FROM lineitem WHERE l_orderkey < 100) TO '{}/' \
             STORED AS CSV OPTIONS (overwrite true)",
            csv.display()
        ),
    )
    .await
    .expect("COPY with overwrite");
    assert_committed(&csv, replaced);
    let ctx = SessionContext::new();
    read_back(&ctx, "back", &csv, "csv").await;
    assert_eq!(
        single_node(
            &ctx,
            "SELECT count(*) AS n, sum(l_orderkey) AS keys FROM back"
        )
        .await,
        single_node(
            &tpch,
            "SELECT count(*) AS n, sum(l_orderkey) AS keys FROM lineitem WHERE l_orderkey < 100"
        )
        .await
    );

    // Refused: outside the allowed directories (`..` included), bad partition columns, an
    // option Quiver does not know. Each creates nothing.
    let outside = exports.path().join("outside");
    for (target, extra, code, what) in [
        (
            outside.display().to_string(),
            "",
            Code::PermissionDenied,
            "outside",
        ),
        (
            format!("{}/../escaped", allowed.display()),
            "",
            Code::PermissionDenied,
            "..",
        ),
        (
            allowed.join("bad").display().to_string(),
            "PARTITIONED BY (nope)",
            Code::InvalidArgument,
            "a missing partition column",
        ),
        (
            allowed.join("bad").display().to_string(),
            "PARTITIONED BY (q)",
            Code::InvalidArgument,
            "a DOUBLE partition column",
        ),
        (
            allowed.join("bad").display().to_string(),
            "OPTIONS (bogus 'x')",
            Code::InvalidArgument,
            "an unknown option",
        ),
    ] {
        let err = update(
            &mut client,
            &format!(
                "COPY (SELECT l_orderkey, CAST(l_quantity AS DOUBLE) AS q FROM lineitem) \
                 TO '{target}/' STORED AS PARQUET {extra}"
            ),
        )
        .await
        .expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
    }
    assert!(!outside.exists());
    assert!(!exports.path().join("escaped").exists());
    assert!(!allowed.join("bad").exists());
}

/// A committed COPY result in `target`: an empty `_SUCCESS` marker (what Spark writes; readers
/// skip empty files), data files, no staging left, and `rows` rows reported.
fn assert_committed(target: &Path, rows: i64) {
    assert!(
        !target.join("_staging").exists(),
        "{}: staging left behind: {:?}",
        target.display(),
        files_under(&target.join("_staging"))
    );
    let marker = std::fs::metadata(target.join("_SUCCESS"))
        .unwrap_or_else(|e| panic!("{}: no _SUCCESS: {e}", target.display()));
    assert_eq!(marker.len(), 0, "_SUCCESS is an empty marker");
    assert!(!result_files(target).is_empty(), "{}", target.display());
    assert!(rows > 0);
}

/// Known limitation: a partitioned COPY result does not read back as a Quiver external table.
/// DataFusion 55's partition inference for `CREATE EXTERNAL TABLE … LOCATION '<dir>/'` counts
/// the `_SUCCESS` marker at the top (empty, as Spark writes it) as a file without partitions:
/// `InvalidArgument` "Found mixed partition values on disk [[], [\"l_shipmode\"]]", with or
/// without declared partition columns. Unpartitioned results, and readers that skip `_` files
/// (Spark, DuckDB, DataFusion's `register_parquet` with its `.parquet` filter), read it.
/// Un-ignore once Quiver's external tables skip `_`-prefixed files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "DataFusion's partition inference counts a COPY result's _SUCCESS marker"]
async fn a_partitioned_copy_result_reads_back_as_an_external_table() {
    let exports = tempfile::tempdir().expect("tempdir");
    let config = exports.path().join("quiver.toml");
    std::fs::write(
        &config,
        format!(
            "[locations]\ncopy_targets = [\"{}/\"]\n",
            exports.path().display()
        ),
    )
    .expect("write config");
    let writes = WriteCluster::start(&["--config", &config.display().to_string()]).await;
    let mut client = writes.cluster.client().await;
    let target = exports.path().join("lines");
    update(
        &mut client,
        &format!(
            "COPY (SELECT l_orderkey, l_quantity, l_shipmode FROM lineitem) TO '{}/' \
             STORED AS PARQUET PARTITIONED BY (l_shipmode)",
            target.display()
        ),
    )
    .await
    .expect("COPY");
    update(
        &mut client,
        &format!(
            "CREATE EXTERNAL TABLE exported (l_orderkey BIGINT, l_quantity DECIMAL(15, 2), \
             l_shipmode VARCHAR) STORED AS PARQUET PARTITIONED BY (l_shipmode) LOCATION '{}/'",
            target.display()
        ),
    )
    .await
    .expect("an external table over the COPY result");
    let sums = "SELECT count(*) AS n, sum(l_orderkey) AS keys, sum(l_quantity) AS qty FROM";
    let tpch = oracle::tpch_context(&tpch_dataset()).await;
    assert_eq!(
        text(
            &query(&mut client, &format!("{sums} exported"))
                .await
                .expect("read back")
        ),
        single_node(&tpch, &format!("{sums} lineitem")).await
    );
}

/// Runs two updates at once, each from a client of its own; their outcomes.
async fn run_together(
    cluster: &TestCluster,
    first: String,
    second: String,
) -> (Result<i64, ClientError>, Result<i64, ClientError>) {
    let one = spawn_update(cluster, first).await;
    let other = spawn_update(cluster, second).await;
    let one = within(QUERY_LIMIT, "the first update", one).await;
    let other = within(QUERY_LIMIT, "the second update", other).await;
    (one.expect("its task"), other.expect("its task"))
}

/// Concurrent writes into one table: two `INSERT`s both commit (no rows lost), and an `INSERT`
/// racing an `INSERT OVERWRITE` ends in a state equal to one of their serial orders (the
/// overwrite alone, or the overwrite then the insert); an insert that lost the race says so
/// (`FAILED_PRECONDITION`), never half-applies. Files and catalog agree afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_commit_in_some_serial_order() {
    let writes = WriteCluster::start(&[]).await;
    let mut client = writes.cluster.client().await;
    let rows = |filter: &str| {
        format!("SELECT l_orderkey, l_linenumber, l_comment FROM lineitem WHERE {filter}")
    };
    let (a, b) = (rows("l_orderkey < 20000"), rows("l_orderkey >= 40000"));
    let count_a = scalar(&mut client, &format!("SELECT count(*) FROM ({a}) AS s")).await;
    let count_b = scalar(&mut client, &format!("SELECT count(*) FROM ({b}) AS s")).await;
    assert!(count_a > 0 && count_b > 0);

    update(&mut client, &format!("CREATE TABLE t AS {a}"))
        .await
        .expect("create");
    let (first, second) = run_together(
        &writes.cluster,
        format!("INSERT INTO t {a}"),
        format!("INSERT INTO t {b}"),
    )
    .await;
    assert_eq!(first.expect("first insert commits"), count_a);
    assert_eq!(second.expect("second insert commits"), count_b);
    assert_eq!(
        scalar(&mut client, "SELECT count(*) FROM t").await,
        2 * count_a + count_b
    );
    assert_eq!(files_under(&writes.table_dir("t")), writes.listed("t"));

    // An insert racing an overwrite, a few times (either may commit first).
    for round in 0..3 {
        let (insert, overwrite) = run_together(
            &writes.cluster,
            format!("INSERT INTO t {a}"),
            format!("INSERT OVERWRITE t {b}"),
        )
        .await;
        assert_eq!(overwrite.expect("the overwrite commits"), count_b);
        let total = scalar(&mut client, "SELECT count(*) FROM t").await;
        match insert {
            // Committed after the overwrite: overwrite, then insert.
            Ok(n) if total == count_b + count_a => assert_eq!(n, count_a),
            // Committed before the overwrite, which then replaced everything.
            Ok(n) if total == count_b => assert_eq!(n, count_a),
            Ok(n) => panic!("round {round}: insert of {n} rows left {total} rows"),
            Err(e) => {
                let status = e.status().cloned().expect("a server status");
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(total, count_b, "round {round}");
            }
        }
        assert_eq!(
            files_under(&writes.table_dir("t")),
            writes.listed("t"),
            "round {round}"
        );
    }
}
