//! Dynamic filters on a coordinator and two executors: a star join whose dimension filter keeps
//! 1 % of the keys reads only a few percent of the fact table on every executor, both when the
//! fact scan runs in the join's stage and when it runs in another stage (below a shuffle, so the
//! filter crosses executors through the relay); answers equal single-node DataFusion, also when
//! the relay's updates are delayed or dropped (the executors' test hook). The small dimension's
//! scan runs in the join's stage (an inlined broadcast), or, with `--inline-broadcast-bytes 0`,
//! in a broadcast stage of its own; the filters prune either way.

use std::path::Path;

use arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use quiver_tests::compare::compare;
use quiver_tests::process::Launch;
use quiver_tests::{ClusterOptions, TestCluster, within};

use crate::{QUERY_LIMIT, run_statements};

const FACT_ROWS: usize = 200_000;
const FACT_FILES: usize = 4;
/// Keys 0..1000, 200 rows each, in key order: row groups of 2000 rows hold 10 keys each.
const ROWS_PER_KEY: usize = FACT_ROWS / 1000;

/// The fact scan and the join in one stage (the dimension is broadcast).
const STAR: &str = "SELECT count(*) AS n, sum(f.v) AS s FROM f JOIN d ON f.k = d.k \
                    WHERE d.tag = 'hot'";
/// The fact table aggregated first: its scan runs in another stage than the join.
const AGGREGATED: &str = "SELECT count(*) AS n, sum(a.c) AS c, sum(a.s) AS s \
                          FROM (SELECT k, count(*) AS c, sum(v) AS s FROM f GROUP BY k) a \
                          JOIN d ON a.k = d.k WHERE d.tag = 'hot'";

/// Writes `f` (4 files, sorted by key, small row groups) and `d` (1000 keys, 10 of them 'hot',
/// contiguous, so bounds prune row groups) with DataFusion.
async fn write_tables(dir: &Path) {
    let ctx = SessionContext::new();
    std::fs::create_dir_all(dir.join("f")).expect("fact dir");
    std::fs::create_dir_all(dir.join("d")).expect("dim dir");
    let per_file = FACT_ROWS / FACT_FILES;
    for file in 0..FACT_FILES {
        let (from, to) = (file * per_file, (file + 1) * per_file);
        let sql = format!(
            "COPY (SELECT CAST(value / {ROWS_PER_KEY} AS BIGINT) AS k, CAST(value % 97 AS BIGINT) AS v \
             FROM range({from}, {to}) ORDER BY value) \
             TO '{}' STORED AS PARQUET OPTIONS ('format.max_row_group_size' '2000')",
            dir.join(format!("f/part-{file}.parquet")).display()
        );
        within(QUERY_LIMIT, "write fact", async {
            ctx.sql(&sql).await?.collect().await
        })
        .await
        .expect("write fact");
    }
    let sql = format!(
        "COPY (SELECT value AS k, CASE WHEN value BETWEEN 500 AND 509 THEN 'hot' ELSE 'cold' END AS tag \
         FROM range(0, 1000)) TO '{}' STORED AS PARQUET",
        dir.join("d/d.parquet").display()
    );
    within(QUERY_LIMIT, "write dim", async {
        ctx.sql(&sql).await?.collect().await
    })
    .await
    .expect("write dim");
}

async fn oracle(dir: &Path, sql: &str) -> Vec<RecordBatch> {
    let ctx = SessionContext::new_with_config(quiver_server::session_config(0).expect("settings"));
    for table in ["f", "d"] {
        let path = format!("{}/", dir.join(table).display());
        ctx.register_parquet(table, &path, ParquetReadOptions::default())
            .await
            .expect("register");
    }
    within(QUERY_LIMIT, sql, async {
        ctx.sql(sql).await?.collect().await
    })
    .await
    .expect("oracle")
}

/// `1.52 M` / `2.00 K` / `1234` as a row count.
fn count(text: &str) -> f64 {
    let text = text.trim();
    let (number, scale) = match text.rsplit_once(' ') {
        Some((n, "K")) => (n, 1e3),
        Some((n, "M")) => (n, 1e6),
        Some((n, "B")) => (n, 1e9),
        _ => (text, 1.0),
    };
    number.parse::<f64>().expect("a row count") * scale
}

/// The rows each task's scan of the fact table returned, from an EXPLAIN ANALYZE.
fn fact_rows_per_task(analyzed: &str) -> Vec<f64> {
    analyzed
        .lines()
        .filter(|l| l.contains("DataSourceExec") && l.contains("part-"))
        .map(|l| {
            let at = l.find("output_rows={").expect("scan metrics") + "output_rows={".len();
            let values = &l[at..at + l[at..].find('}').expect("metric end")];
            values
                .split(", ")
                .map(|v| count(v.split_once(':').map_or(v, |(_, n)| n)))
                .sum()
        })
        .collect()
}

/// The text of `EXPLAIN ANALYZE sql`.
async fn analyzed(cluster: &TestCluster, sql: &str) -> String {
    explained(cluster, &format!("ANALYZE {sql}")).await
}

/// Checks both queries against the oracle; returns the fact rows each scan task read, per query.
async fn run_both(cluster: &TestCluster, dir: &Path) -> Vec<(String, Vec<f64>)> {
    let mut client = cluster.client().await;
    let mut read = Vec::new();
    for sql in [STAR, AGGREGATED] {
        let expected = oracle(dir, sql).await;
        let actual = run_statements(&mut client, &[sql.to_string()], false)
            .await
            .expect(sql);
        if let Err(diff) = compare(&expected, &actual, false) {
            panic!(
                "{sql}: {diff}\ncoordinator log:\n{}",
                cluster.coordinator.log_text()
            );
        }
        let plan = analyzed(cluster, sql).await;
        let rows = fact_rows_per_task(&plan);
        assert!(
            rows.len() >= 2,
            "{sql}: the fact scan should run as a task on each executor:\n{plan}"
        );
        read.push((plan, rows));
    }
    read
}

/// The text of `EXPLAIN sql`.
async fn explained(cluster: &TestCluster, sql: &str) -> String {
    let mut client = cluster.client().await;
    let batches = run_statements(&mut client, &[format!("EXPLAIN {sql}")], false)
        .await
        .expect("explain");
    quiver_tests::sql::text(&batches)
}

fn options(dir: &Path, hook: Option<&str>) -> ClusterOptions {
    ClusterOptions {
        tables: vec![
            ("f".to_string(), dir.join("f")),
            ("d".to_string(), dir.join("d")),
        ],
        launch: Launch {
            env: hook
                .map(|h| vec![("QUIVER_TEST_FILTER_RELAY".to_string(), h.to_string())])
                .unwrap_or_default(),
            ..Launch::default()
        },
        ..ClusterOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_filters_prune_the_fact_table_across_stages_and_never_change_answers() {
    let data = tempfile::tempdir().expect("temp dir");
    write_tables(data.path()).await;
    // A few percent of the fact table: the hot keys' row group and its neighbours.
    let few = FACT_ROWS as f64 * 0.05;

    let cluster = TestCluster::start(options(data.path(), None)).await;
    for (plan, rows) in run_both(&cluster, data.path()).await {
        assert!(
            rows.iter().all(|r| *r <= few),
            "a fact scan task read more than {few} rows: {rows:?}\n{plan}"
        );
    }
    drop(cluster);

    // Late updates: the answers stay; the scans wait for the filter (up to the relay's wait),
    // so they still prune.
    let cluster = TestCluster::start(options(data.path(), Some("delay:300"))).await;
    let read = run_both(&cluster, data.path()).await;
    let (plan, rows) = &read[1];
    assert!(
        rows.iter().all(|r| *r <= few),
        "with late updates a fact scan task read more than {few} rows: {rows:?}\n{plan}"
    );
    drop(cluster);

    // Lost updates: the answers stay, the scan across stages reads everything (after the
    // bounded wait), and the scan in the join's own stage still prunes.
    let cluster = TestCluster::start(options(data.path(), Some("drop"))).await;
    let read = run_both(&cluster, data.path()).await;
    let (plan, rows) = &read[0];
    assert!(
        rows.iter().all(|r| *r <= few),
        "the filter within one stage stopped pruning: {rows:?}\n{plan}"
    );
    let (plan, rows) = &read[1];
    let total: f64 = rows.iter().sum();
    assert!(
        total >= FACT_ROWS as f64 * 0.99,
        "without updates the scan across stages cannot prune, yet read {total} rows:\n{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_broadcasts_run_in_the_stage_that_joins_them() {
    let data = tempfile::tempdir().expect("temp dir");
    write_tables(data.path()).await;
    let few = FACT_ROWS as f64 * 0.05;

    // By default the dimension (a few KB) is read by each task of the join's stage.
    let cluster = TestCluster::start(options(data.path(), None)).await;
    for sql in [STAR, AGGREGATED] {
        let plan = explained(&cluster, sql).await;
        assert!(
            !plan.contains("NetworkBroadcastExec"),
            "{sql}: the small dimension should not be a stage of its own:\n{plan}"
        );
        assert!(
            plan.contains("d.parquet"),
            "{sql}: no dimension scan:\n{plan}"
        );
    }
    let stages_inlined = analyzed(&cluster, STAR)
        .await
        .matches("───── Stage")
        .count();
    drop(cluster);

    // Inlining off: the dimension is broadcast from a stage of its own, and the answers, the
    // pruning and the relay (now fed by a broadcast build side) are the same.
    let mut off = options(data.path(), None);
    off.coordinator_args = vec!["--inline-broadcast-bytes".into(), "0".into()];
    let cluster = TestCluster::start(off).await;
    let plan = explained(&cluster, STAR).await;
    assert!(
        plan.contains("NetworkBroadcastExec"),
        "with inlining off the dimension should be broadcast:\n{plan}"
    );
    let stages_broadcast = analyzed(&cluster, STAR)
        .await
        .matches("───── Stage")
        .count();
    assert!(
        stages_inlined < stages_broadcast,
        "inlining should save a stage: {stages_inlined} vs {stages_broadcast}"
    );
    for (plan, rows) in run_both(&cluster, data.path()).await {
        assert!(
            rows.iter().all(|r| *r <= few),
            "a fact scan task read more than {few} rows: {rows:?}\n{plan}"
        );
    }
}

/// Uncorrelated scalar subqueries used twice (or compared for equality) run before their query,
/// whose plan then has their values as constants: a range on one prunes the fact table as
/// `k > 994 AND k <= 999` would (joined to the query instead, the value prunes nothing). Answers
/// and column names equal single-node DataFusion's, for the subqueries that stay joins too; no row
/// is NULL, two rows are `InvalidArgument`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalar_subqueries_run_first_and_prune_like_constants() {
    const RANGE: &str = "SELECT count(*) AS n, sum(v) AS s FROM f \
                         WHERE k > (SELECT max(k) FROM d) - 5 AND k <= (SELECT max(k) FROM d)";
    let data = tempfile::tempdir().expect("temp dir");
    write_tables(data.path()).await;
    let cluster = TestCluster::start(options(data.path(), None)).await;
    let mut client = cluster.client().await;
    for sql in [
        RANGE,
        // Equality (runs first); projected, named and unnamed, nested, with no row (NULL): joins.
        "SELECT count(*) AS n FROM f WHERE k = (SELECT max(k) FROM d WHERE tag = 'hot')",
        "SELECT (SELECT max(k) FROM d) AS top, (SELECT min(k) FROM d WHERE tag = 'hot'), \
         (SELECT k FROM d WHERE tag = 'none') AS nothing",
        "SELECT count(*) AS n FROM f \
         WHERE k >= (SELECT max(k) - (SELECT count(*) FROM d WHERE tag = 'hot') FROM d)",
        "SELECT d.tag, count(*) AS n FROM f JOIN d ON f.k = d.k \
         WHERE f.v < (SELECT avg(v) FROM f WHERE k < 10) GROUP BY d.tag ORDER BY d.tag",
    ] {
        let expected = oracle(data.path(), sql).await;
        let actual = run_statements(&mut client, &[sql.to_string()], false)
            .await
            .expect(sql);
        if let Err(diff) = compare(&expected, &actual, false) {
            panic!("{sql}: {diff}");
        }
        let names = |b: &[RecordBatch]| -> Vec<String> {
            b[0].schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        };
        assert_eq!(names(&actual), names(&expected), "{sql}: column names");
    }

    let plan = explained(&cluster, RANGE).await;
    assert!(
        plan.contains("k@0 > 994") && plan.contains("k@0 <= 999") && !plan.contains("Join"),
        "the subquery's value should be a constant of the plan:\n{plan}"
    );
    let plan = analyzed(&cluster, RANGE).await;
    let read: f64 = fact_rows_per_task(&plan).iter().sum();
    assert!(
        read <= FACT_ROWS as f64 * 0.05,
        "the fact scan read {read} rows, not just the last keys':\n{plan}"
    );

    let err = quiver_tests::sql::query(
        &mut client,
        "SELECT count(*) FROM f WHERE k = (SELECT k FROM d WHERE tag = 'hot')",
    )
    .await
    .expect_err("ten rows are not a scalar");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("more than one row"), "{err}");
}
