//! The write benchmark: `CREATE TABLE … AS SELECT * FROM lineitem`, plain and `PARTITIONED BY
//! (l_shipmode)`, on Quiver against single-node DataFusion's `COPY (SELECT * FROM lineitem) TO`
//! with the same compression (zstd(1), what Quiver writes managed tables with), in one run.
//!
//! Contract: one cluster for the whole benchmark. Per statement, one warm-up, then `--runs`
//! timed runs; in each run both engines write once, and which goes first alternates from
//! statement to statement and run to run (as in the TPC-H comparison). Quiver writes a fresh
//! table every run through the Flight SQL client (the time is the whole statement's, commit
//! included) and the table is dropped once it was measured; DataFusion (this process, the
//! baseline's settings: [`Flavour::Quiver`]) writes into a fresh directory on the filesystem of
//! the warehouse, removed once it was measured.
//!
//! Around each Quiver write the CPU time (user + system, from /proc) of the coordinator and of
//! every executor is read, around each DataFusion write that of this process. What each engine
//! wrote is read back from the files themselves (Parquet footers): files, bytes, rows. Row
//! counts that differ between the engines are a mismatch and fail the command. Which task wrote
//! a Quiver file is in its name (`part-<write>-<attempt>-<task>-<partition>-<n>.parquet`), which
//! executor in the executors' logs (`wrote a data file`, logged at info for this benchmark).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use datafusion::arrow::array::{Array, UInt64Array};
use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
use datafusion::prelude::SessionContext;
use quiver_tests::TestCluster;
use quiver_tests::process::cpu_time;

use crate::Options;
use crate::baseline::{self, Flavour};
use crate::cluster::{self, ClusterSetup};
use crate::flight::SqlClient;
use crate::report::{self, WriteFigures, WriteOutput, WritesReport, median};

const QUERY: &str = "SELECT * FROM lineitem";

/// The compression of both engines' files: Quiver's for managed tables.
const COMPRESSION: &str = "zstd(1)";

/// Warnings, plus the write path's one line per file written and per commit.
const RUST_LOG: &str = "warn,quiver_server::sink=info,quiver_server::engine::writes=info";

/// What an executor logs for every file it wrote (`server/src/sink/files.rs`).
const WROTE_A_FILE: &str = "wrote a data file";

/// One of the benchmark's statements.
struct WriteStatement {
    label: &'static str,
    /// The `PARTITIONED BY` column, if any.
    partition_by: Option<&'static str>,
}

const STATEMENTS: [WriteStatement; 2] = [
    WriteStatement {
        label: "CTAS",
        partition_by: None,
    },
    WriteStatement {
        label: "CTAS PARTITIONED BY (l_shipmode)",
        partition_by: Some("l_shipmode"),
    },
];

impl WriteStatement {
    fn quiver_sql(&self, table: &str) -> String {
        match self.partition_by {
            None => format!("CREATE TABLE {table} AS {QUERY}"),
            Some(column) => format!("CREATE TABLE {table} PARTITIONED BY ({column}) AS {QUERY}"),
        }
    }

    fn datafusion_sql(&self, dir: &str) -> String {
        let partitioned = self
            .partition_by
            .map(|column| format!(" PARTITIONED BY ({column})"))
            .unwrap_or_default();
        format!(
            "COPY ({QUERY}) TO '{dir}' STORED AS PARQUET{partitioned} \
             OPTIONS ('format.compression' '{COMPRESSION}')"
        )
    }
}

/// One Quiver write, measured.
struct QuiverSample {
    seconds: f64,
    coordinator_cpu_s: f64,
    executor_cpu_s: Vec<f64>,
    output: WriteOutput,
    /// Distinct tasks among the files' names.
    tasks: usize,
    /// Per executor: the files it logged writing.
    executor_files: Vec<u64>,
}

/// One DataFusion write, measured.
struct DataFusionSample {
    seconds: f64,
    cpu_s: f64,
    output: WriteOutput,
    /// The row count `COPY` answered.
    reported_rows: u64,
}

pub(crate) async fn run(setup: &ClusterSetup, options: &Options) -> Result<WritesReport> {
    // Held until the end: dropping it stops the processes.
    let cluster = cluster::start_logging(setup, RUST_LOG).await;
    report::progress(format!(
        "write benchmark: coordinator {} and {} executors",
        cluster.coordinator_addr,
        cluster.executors.len()
    ));
    let mut client = SqlClient::connect(&cluster.coordinator_addr).await?;
    let ctx = baseline::context(Flavour::Quiver, &setup.dataset, setup.target_partitions).await?;
    let scratch = cluster.dir.path().join("datafusion-copy");

    let mut statements = Vec::new();
    for (i, statement) in STATEMENTS.iter().enumerate() {
        let mut quiver: Vec<QuiverSample> = Vec::new();
        let mut datafusion: Vec<DataFusionSample> = Vec::new();
        let mut rows_differ = false;
        // Run 0 is the warm-up: checked, not timed.
        for run in 0..=options.runs {
            let table = format!("bench_write_{i}_{run}");
            let dir = scratch.join(format!("{i}-{run}"));
            let quiver_first = (i + run) % 2 == 0;
            let (q, d) = if quiver_first {
                let q = quiver_write(&cluster, &mut client, statement, &table).await?;
                let d = datafusion_write(&ctx, statement, &dir).await?;
                (q, d)
            } else {
                let d = datafusion_write(&ctx, statement, &dir).await?;
                let q = quiver_write(&cluster, &mut client, statement, &table).await?;
                (q, d)
            };
            if q.output.rows != d.output.rows || d.output.rows != d.reported_rows {
                rows_differ = true;
                report::progress(format!(
                    "{}: rows differ: Quiver's files hold {}, DataFusion's {} (COPY said {})",
                    statement.label, q.output.rows, d.output.rows, d.reported_rows
                ));
            }
            report::progress(format!(
                "{} {}: Quiver {:.2}s ({} files from {} tasks; CPU coordinator {:.2}s, executors {:?}), \
                 DataFusion {:.2}s ({} files; CPU {:.2}s)",
                statement.label,
                if run == 0 {
                    "warm-up".to_string()
                } else {
                    format!("run {run}/{}", options.runs)
                },
                q.seconds,
                q.output.files,
                q.tasks,
                q.coordinator_cpu_s,
                q.executor_cpu_s,
                d.seconds,
                d.output.files,
                d.cpu_s
            ));
            if run > 0 {
                quiver.push(q);
                datafusion.push(d);
            }
        }
        statements.push(figures(statement, quiver, datafusion, rows_differ));
    }
    Ok(WritesReport {
        compression: COMPRESSION.to_string(),
        statements,
    })
}

fn figures(
    statement: &WriteStatement,
    quiver: Vec<QuiverSample>,
    datafusion: Vec<DataFusionSample>,
    rows_differ: bool,
) -> WriteFigures {
    let quiver_s: Vec<f64> = quiver.iter().map(|s| s.seconds).collect();
    let datafusion_s: Vec<f64> = datafusion.iter().map(|s| s.seconds).collect();
    let coordinator_cpu_s: Vec<f64> = quiver.iter().map(|s| s.coordinator_cpu_s).collect();
    let executors_cpu_s: Vec<f64> = quiver
        .iter()
        .map(|s| s.executor_cpu_s.iter().sum())
        .collect();
    let datafusion_cpu_s: Vec<f64> = datafusion.iter().map(|s| s.cpu_s).collect();
    let last_quiver = quiver.last();
    WriteFigures {
        statement: statement.label.to_string(),
        quiver_sql: statement.quiver_sql("<table>"),
        datafusion_sql: statement.datafusion_sql("<dir>/"),
        quiver_median_s: median(&quiver_s),
        datafusion_median_s: median(&datafusion_s),
        ratio: median(&quiver_s) / median(&datafusion_s),
        coordinator_cpu_median_s: median(&coordinator_cpu_s),
        executors_cpu_median_s: median(&executors_cpu_s),
        coordinator_cpu_share: median(&coordinator_cpu_s) / median(&executors_cpu_s),
        datafusion_cpu_median_s: median(&datafusion_cpu_s),
        per_executor_cpu_s: quiver.iter().map(|s| s.executor_cpu_s.clone()).collect(),
        quiver_output: last_quiver.map(|s| s.output.clone()).unwrap_or_default(),
        datafusion_output: datafusion
            .last()
            .map(|s| s.output.clone())
            .unwrap_or_default(),
        quiver_tasks: last_quiver.map(|s| s.tasks).unwrap_or_default(),
        executor_files: last_quiver
            .map(|s| s.executor_files.clone())
            .unwrap_or_default(),
        quiver_s,
        datafusion_s,
        coordinator_cpu_s,
        executors_cpu_s,
        datafusion_cpu_s,
        rows_differ,
    }
}

async fn quiver_write(
    cluster: &TestCluster,
    client: &mut SqlClient,
    statement: &WriteStatement,
    table: &str,
) -> Result<QuiverSample> {
    let sql = statement.quiver_sql(table);
    let pids = cluster
        .processes()
        .map(|p| {
            p.pid()
                .with_context(|| format!("{} is not running", p.name))
        })
        .collect::<Result<Vec<u32>>>()?;
    let logged_before = files_logged(cluster);
    let cpu_before: Vec<Duration> = pids.iter().map(|&pid| cpu_time(pid)).collect();
    let started = Instant::now();
    if let Err(e) = client.query(&sql, None).await {
        // The cluster's directory goes with the cluster: show what the nodes said now.
        return Err(e.context(log_tails(cluster)));
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(&pid, before)| cpu_time(pid).saturating_sub(*before).as_secs_f64())
        .collect();
    let executor_files = files_logged(cluster)
        .iter()
        .zip(&logged_before)
        .map(|(after, before)| after - before)
        .collect();

    let table_dir = cluster.dir.path().join("warehouse").join(table);
    let (output, names) = read_output(table_dir.clone()).await?;
    let tasks: BTreeSet<&str> = names.iter().filter_map(|n| task_of(n)).collect();
    let tasks = tasks.len();
    client.query(&format!("DROP TABLE {table}"), None).await?;
    // DROP deletes the files; whatever it left (directories) must not fill the disk at SF10.
    let _ = std::fs::remove_dir_all(&table_dir);
    Ok(QuiverSample {
        seconds,
        coordinator_cpu_s: cpu[0],
        executor_cpu_s: cpu[1..].to_vec(),
        output,
        tasks,
        executor_files,
    })
}

async fn datafusion_write(
    ctx: &SessionContext,
    statement: &WriteStatement,
    dir: &Path,
) -> Result<DataFusionSample> {
    let sql = statement.datafusion_sql(&format!("{}/", dir.display()));
    let me = std::process::id();
    let cpu_before = cpu_time(me);
    let started = Instant::now();
    let batches = ctx
        .sql(&sql)
        .await
        .context("DataFusion: planning COPY")?
        .collect()
        .await
        .context("DataFusion: COPY")?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_s = cpu_time(me).saturating_sub(cpu_before).as_secs_f64();
    let reported_rows = batches
        .iter()
        .filter_map(|b| b.column(0).as_any().downcast_ref::<UInt64Array>())
        .flat_map(|counts| counts.iter().flatten())
        .sum();
    let (output, _) = read_output(dir.to_path_buf()).await?;
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(DataFusionSample {
        seconds,
        cpu_s,
        output,
        reported_rows,
    })
}

/// Per executor: the `wrote a data file` lines in its log so far.
fn files_logged(cluster: &TestCluster) -> Vec<u64> {
    cluster
        .executors
        .iter()
        .map(|e| e.log_text().matches(WROTE_A_FILE).count() as u64)
        .collect()
}

/// The last lines of every node's log, for an error.
fn log_tails(cluster: &TestCluster) -> String {
    const LINES: usize = 20;
    let mut out = String::from("the write failed; the nodes' last log lines:");
    for process in cluster.processes() {
        let text = process.log_text();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("\n--- {} ---", process.name));
        for line in &lines[lines.len().saturating_sub(LINES)..] {
            out.push_str("\n  ");
            out.push_str(line);
        }
    }
    out
}

/// The task of a Quiver data file, from `part-<write>-<attempt>-<task>-<partition>-<n>.parquet`.
fn task_of(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".parquet")?;
    let mut fields = stem.rsplitn(4, '-');
    let (_n, _partition, task) = (fields.next()?, fields.next()?, fields.next()?);
    fields.next()?;
    Some(task)
}

/// The Parquet files under `dir` (hive directories included; `_`- and `.`-prefixed entries,
/// such as `_SUCCESS` or staging, left out), with their footers' row counts; and their names.
async fn read_output(dir: PathBuf) -> Result<(WriteOutput, Vec<String>)> {
    tokio::task::spawn_blocking(move || {
        let mut output = WriteOutput::default();
        let mut names = Vec::new();
        let mut directories = BTreeSet::new();
        let mut pending = vec![dir.clone()];
        while let Some(current) = pending.pop() {
            let entries = std::fs::read_dir(&current)
                .with_context(|| format!("listing {}", current.display()))?;
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('_') || name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    pending.push(path);
                    continue;
                }
                if !name.ends_with(".parquet") {
                    continue;
                }
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                output.bytes += file.metadata()?.len();
                let reader = SerializedFileReader::new(file)
                    .with_context(|| format!("reading the footer of {}", path.display()))?;
                output.rows += reader.metadata().file_metadata().num_rows() as u64;
                output.files += 1;
                directories.insert(current.clone());
                names.push(name);
            }
        }
        output.directories = directories.len() as u64;
        Ok((output, names))
    })
    .await
    .context("reading the written files panicked")?
}
