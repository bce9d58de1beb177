//! `quiver-bench`: Quiver's benchmark harness, one command.
//!
//! ```sh
//! cargo build --release -p quiver-server -p quiver-benches
//! target/release/quiver-bench                 # TPC-H SF1 + micro-benchmarks, tables
//! target/release/quiver-bench --scale-factor 10 --json > sf10.json
//! target/release/quiver-bench --writes --skip-tpch --skip-micro   # the write benchmark only
//! target/release/quiver-bench --scaling --node-cpus 0.5 --executor-counts 1,2,3
//! target/release/quiver-bench --concurrency --clients 16 --duration-secs 60
//! target/release/quiver-bench --suite tpcds --scale-factor 1   # TPC-DS: its comparison alone
//! ```
//!
//! It generates TPC-H at the requested scale factor if missing ([`tpch`]), starts a coordinator
//! and N executor processes on loopback ([`cluster`]), runs the 22 queries interleaved on Quiver
//! (through a Flight SQL client, results fully fetched) and on single-node DataFusion in this
//! process over the same files, then the Flight micro-benchmarks ([`micro`]), with `--writes`
//! the write benchmark ([`writes`]), and prints the report ([`report`]). `--suite tpcds` runs the
//! same comparison on the 99 TPC-DS queries (data from `tpcgen-cli`, [`quiver_tests::tpcds`])
//! and prints it as markdown, with nothing else. `--scaling` and
//! `--concurrency` are a mode of their own (they replace the TPC-H comparison and the
//! micro-benchmarks): one machine as a cluster of small ones, every process on its own CPU
//! budget ([`cgroup`]), Quiver with 1, 2, 3 executors against DataFusion on one budget
//! ([`scaling`]), and many clients at once ([`concurrency`]). Every child process dies with the
//! harness, also on errors and Ctrl-C; so do the cgroups.
//! See `BENCHMARKS.md` for what each figure means and the figures measured so far.

mod baseline;
mod cgroup;
mod cluster;
mod concurrency;
mod flight;
mod micro;
mod plain_flight;
mod report;
mod scaling;
mod tpch;
mod writes;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "quiver-bench",
    about = "TPC-H (or TPC-DS) on Quiver vs single-node DataFusion, plus Flight SQL micro-benchmarks and a write benchmark"
)]
pub(crate) struct Options {
    /// Which query suite the comparison runs: TPC-H (then also the micro-benchmarks and the
    /// other modes), or TPC-DS (its comparison alone).
    #[arg(long, value_enum, default_value_t = Suite::Tpch)]
    suite: Suite,
    /// Scale factor (TPC-H generated with tpchgen, TPC-DS with tpcgen-cli, under --data-dir if
    /// missing).
    #[arg(long, default_value_t = 1.0)]
    scale_factor: f64,
    /// Where datasets are generated and reused (`<dir>/tpch/sf<SF>/<table>/`,
    /// `<dir>/tpcds/sf<SF>/<table>.parquet`).
    #[arg(long, default_value = "target/bench-data")]
    data_dir: PathBuf,
    /// The query files q1.sql..q22.sql (TPC-DS: q1.sql..q99.sql) (default: QUIVER_TPCH_QUERIES
    /// or QUIVER_TPCDS_QUERIES, or ../shared/tpch/queries or ../shared/tpcds/queries next to the
    /// repository).
    #[arg(long, value_name = "DIR")]
    queries_dir: Option<PathBuf>,
    /// Which queries, e.g. 1,3,5 (default: all 22, or all 99).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<usize>,
    /// Timed runs per query and engine, after one warm-up run.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Executor processes in the Quiver cluster.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// DataFusion partitions per node, Quiver nodes and the baseline alike (0 = one per core).
    #[arg(long, default_value_t = 0)]
    target_partitions: usize,
    /// Which single-node DataFusion the ratio is taken against: with Quiver's settings, stock
    /// defaults, or both (ratios reported against each).
    #[arg(long, value_enum, default_value_t = BaselineChoice::Both)]
    baseline: BaselineChoice,
    /// Run the TPC-H queries on an already running Quiver cluster at HOST:PORT (e.g. one spread
    /// over several hosts) instead of starting one; its TPC-H tables must be the files in
    /// --data-dir. Needs --skip-micro (those start their own processes to measure them).
    #[arg(long, value_name = "HOST:PORT")]
    coordinator: Option<String>,
    /// Extra environment for every quiver process, KEY=VALUE (repeatable), e.g. RUST_LOG=info or
    /// LD_PRELOAD=... for experiments.
    #[arg(long = "node-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    node_env: Vec<(String, String)>,
    /// An extra flag for every coordinator the harness starts (repeatable), e.g.
    /// `--coordinator-arg=--scan-bytes-per-partition=1048576` to spread small scans.
    #[arg(
        long = "coordinator-arg",
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    coordinator_args: Vec<String>,
    /// The `quiver` binary (default: QUIVER_BIN, or next to this executable).
    #[arg(long, value_name = "PATH")]
    quiver_bin: Option<PathBuf>,
    /// Skip the TPC-H comparison.
    #[arg(long)]
    skip_tpch: bool,
    /// Skip the micro-benchmarks.
    #[arg(long)]
    skip_micro: bool,
    /// Also run the write benchmark: CREATE TABLE AS SELECT * FROM lineitem, plain and
    /// PARTITIONED BY (l_shipmode), against DataFusion's COPY TO (warm-up + --runs each).
    #[arg(long)]
    writes: bool,
    /// `SELECT 1` round trips measured (after 20 unmeasured ones).
    #[arg(long, default_value_t = 1000)]
    select1_iterations: usize,
    /// Timed DoGet runs per server (median reported).
    #[arg(long, default_value_t = 3)]
    doget_runs: usize,
    /// The slow client of the memory test reads at least this many bytes of Arrow IPC.
    #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
    slow_client_bytes: u64,
    /// The slow client's reading rate, MB/s (it sleeps after each batch to hold it).
    #[arg(long, default_value_t = 100.0)]
    slow_client_mbps: f64,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "PATH")]
    save_json: Option<PathBuf>,
    /// The scaling benchmark (instead of the TPC-H comparison and the micro-benchmarks): TPC-H
    /// (--scale-factor, --queries, --runs) on one Quiver cluster per --executor-counts against
    /// single-node DataFusion (--baseline), every process on a budget of --node-cpus CPUs.
    #[arg(long)]
    scaling: bool,
    /// The executor counts of the scaling benchmark's clusters.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    executor_counts: Vec<usize>,
    /// The CPU budget of every executor and of the confined baseline (a cgroup CPU quota per
    /// process, 0.5 = half a core); 0: no budgets.
    #[arg(long, default_value_t = 0.5)]
    node_cpus: f64,
    /// The coordinator's CPU budget (default: --node-cpus).
    #[arg(long)]
    coordinator_cpus: Option<f64>,
    /// The concurrency benchmark (instead of the TPC-H comparison and the micro-benchmarks):
    /// --clients clients looping over --concurrency-queries for --duration-secs, on a cluster of
    /// --executors without budgets, then on budgets with each of --concurrency-executor-counts.
    #[arg(long)]
    concurrency: bool,
    /// Concurrent Flight SQL clients, each with its own connection.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long the clients send queries, per configuration.
    #[arg(long, default_value_t = 60.0)]
    duration_secs: f64,
    /// The concurrency benchmark's TPC-H scale factor.
    #[arg(long, default_value_t = 0.1)]
    concurrency_scale_factor: f64,
    /// The concurrency benchmark's queries (single statements only).
    #[arg(long, value_delimiter = ',', default_value = "1,3,5,6,10,12,14,19")]
    concurrency_queries: Vec<usize>,
    /// The executor counts of the concurrency benchmark's budgeted clusters.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    concurrency_executor_counts: Vec<usize>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Suite {
    /// TPC-H, 22 queries.
    Tpch,
    /// TPC-DS, 99 queries.
    Tpcds,
}

impl Suite {
    fn queries(self) -> usize {
        match self {
            Suite::Tpch => 22,
            Suite::Tpcds => quiver_tests::tpcds::QUERIES,
        }
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Suite::Tpch => "TPC-H",
            Suite::Tpcds => "TPC-DS",
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BaselineChoice {
    /// `quiver_server::settings`: what every Quiver node runs with.
    Quiver,
    /// DataFusion's defaults (dynamic filters, view types on).
    Stock,
    /// Both, as two baselines.
    Both,
}

impl Options {
    pub(crate) fn queries_dir(&self) -> PathBuf {
        if let Some(dir) = &self.queries_dir {
            return dir.clone();
        }
        if self.suite == Suite::Tpcds {
            return quiver_tests::tpcds::queries_dir();
        }
        if let Some(dir) = std::env::var_os("QUIVER_TPCH_QUERIES") {
            return PathBuf::from(dir);
        }
        // benches/ -> the repository -> the shared directory beside it.
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/tpch/queries")
    }

    fn query_numbers(&self) -> Result<Vec<usize>> {
        let count = self.suite.queries();
        if self.queries.is_empty() {
            return Ok((1..=count).collect());
        }
        if let Some(bad) = self.queries.iter().find(|q| !(1..=count).contains(*q)) {
            bail!("--queries: there is no {} query {bad}", self.suite.title());
        }
        Ok(self.queries.clone())
    }

    /// The `quiver` binary: `--quiver-bin`, `QUIVER_BIN`, or `quiver` in the directory of this
    /// executable (cargo builds both into the same `target/<profile>/`).
    fn quiver_bin(&self) -> Result<PathBuf> {
        if let Some(bin) = &self.quiver_bin {
            return Ok(bin.clone());
        }
        quiver_tests::process::locate_binary("quiver", "QUIVER_BIN").map_err(|missing| {
            anyhow::anyhow!(
                "{} not found: build it with `cargo build --release -p quiver-server -p quiver-benches`, or pass --quiver-bin",
                missing.display()
            )
        })
    }

    /// The budgets of `--node-cpus` / `--coordinator-cpus` (None: none).
    pub(crate) fn budget(&self) -> Option<cgroup::Budget> {
        (self.node_cpus > 0.0).then(|| cgroup::Budget {
            coordinator_cpus: self.coordinator_cpus.unwrap_or(self.node_cpus),
            executor_cpus: self.node_cpus,
        })
    }

    /// The `target_partitions` of every node and of the baseline in the scaling and concurrency
    /// benchmarks, for a node on `cpus` CPUs (None: the whole machine): `--target-partitions`,
    /// or one per CPU of the budget (rounded up) and at least 2, the fewest Quiver plans
    /// distributed queries with. Explicit, so that a confined process does not plan for what
    /// its budget makes `available_parallelism` say (1 for half a CPU).
    pub(crate) fn node_partitions(&self, cpus: Option<f64>) -> usize {
        if self.target_partitions > 0 {
            return self.target_partitions;
        }
        let cpus = cpus.map_or_else(
            || {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            },
            |c| c.ceil() as usize,
        );
        cpus.max(2)
    }
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

async fn run(options: Options) -> Result<report::Report> {
    if options.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if options.executors == 0 {
        bail!("--executors must be at least 1");
    }
    if options.coordinator.is_some() && !options.skip_micro {
        bail!("--coordinator needs --skip-micro: the micro-benchmarks start their own processes");
    }
    if options.coordinator.is_some() && options.writes {
        bail!("--writes starts its own processes (it reads their CPU time): drop --coordinator");
    }
    let mode = options.scaling || options.concurrency;
    if options.suite == Suite::Tpcds && (mode || options.writes || options.skip_tpch) {
        bail!(
            "--suite tpcds runs the TPC-DS comparison alone: drop --scaling, --concurrency, --writes and --skip-tpch"
        );
    }
    if mode && options.coordinator.is_some() {
        bail!("--scaling and --concurrency start their own processes: drop --coordinator");
    }
    if !(options.node_cpus.is_finite() && options.node_cpus >= 0.0) {
        bail!("--node-cpus must be 0 (no budgets) or a positive number of CPUs");
    }
    if let Some(cpus) = options.coordinator_cpus
        && !(cpus.is_finite() && cpus > 0.0 && options.node_cpus > 0.0)
    {
        bail!("--coordinator-cpus must be positive, and needs --node-cpus above 0");
    }
    if options.scaling
        && (options.executor_counts.is_empty() || options.executor_counts.contains(&0))
    {
        bail!("--executor-counts: every count must be at least 1");
    }
    if options.concurrency_executor_counts.contains(&0) {
        bail!("--concurrency-executor-counts: every count must be at least 1");
    }
    let quiver_bin = if options.coordinator.is_some() {
        PathBuf::new()
    } else {
        options.quiver_bin()?
    };
    let queries = options.query_numbers()?;
    let queries_dir = options.queries_dir();
    report::progress(format!(
        "{} SF{} under {}",
        options.suite.title(),
        options.scale_factor,
        options.data_dir.display()
    ));
    let started = std::time::Instant::now();
    let dataset = match options.suite {
        Suite::Tpch => tpch::dataset(&options.data_dir, options.scale_factor).await?,
        Suite::Tpcds => tpch::tpcds_dataset(&options.data_dir, options.scale_factor).await?,
    };
    report::progress(format!(
        "dataset ready in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        dataset.display()
    ));
    let setup = cluster::ClusterSetup {
        quiver_bin,
        executors: options.executors,
        target_partitions: options.target_partitions,
        dataset: dataset.clone(),
        suite: options.suite,
        env: options.node_env.clone(),
        coordinator_args: options.coordinator_args.clone(),
        confine: None,
    };

    let mut report = report::Report::new(&options, &dataset);
    if options.suite == Suite::Tpcds {
        let statements = tpch::load_queries(&queries_dir, &queries)?;
        report.tpcds = Some(tpch::run(&setup, &options, &statements).await?);
        return Ok(report);
    }
    if !mode && !options.skip_tpch {
        let statements = tpch::load_queries(&queries_dir, &queries)?;
        report.tpch = Some(tpch::run(&setup, &options, &statements).await?);
    }
    if !mode && !options.skip_micro {
        report.micro = Some(micro::run(&setup, &options).await?);
    }
    if options.scaling {
        let statements = tpch::load_queries(&queries_dir, &queries)?;
        report.scaling = Some(scaling::run(&setup, &options, &statements).await?);
    }
    if options.concurrency {
        let dataset = tpch::dataset(&options.data_dir, options.concurrency_scale_factor).await?;
        report::progress(format!("concurrency dataset: {}", dataset.display()));
        let setup = cluster::ClusterSetup {
            dataset,
            suite: Suite::Tpch,
            ..setup.clone()
        };
        report.concurrency = Some(concurrency::run(&setup, &options).await?);
    }
    if options.writes {
        report.writes = Some(writes::run(&setup, &options).await?);
    }
    Ok(report)
}

fn main() -> ExitCode {
    // A confined child joins its cgroup before it starts any thread; a wrapper of a `quiver`
    // node does, then becomes the node (and only returns on failure).
    if let Err(e) = cgroup::confine_self() {
        eprintln!("quiver-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    if std::env::args().nth(1).as_deref() == Some(baseline::CHILD_COMMAND) {
        let args = baseline::ChildArgs::parse_from(std::env::args().skip(1));
        return match new_runtime().and_then(|rt| rt.block_on(baseline::serve(args))) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("quiver-bench {}: {e:#}", baseline::CHILD_COMMAND);
                ExitCode::FAILURE
            }
        };
    }
    let options = Options::parse();
    let runtime = match new_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quiver-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let json = options.json;
    let save_json = options.save_json.clone();
    // Ctrl-C drops the benchmark future, and with it every child process (kill_on_drop).
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run(options) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    match outcome {
        Some(Ok(report)) => {
            let text = match serde_json::to_string_pretty(&report) {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("quiver-bench: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(path) = save_json
                && let Err(e) = std::fs::write(&path, format!("{text}\n"))
            {
                eprintln!("quiver-bench: writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            if json {
                println!("{text}");
            } else {
                print!("{}", report.render());
            }
            if report.has_mismatches() {
                eprintln!("quiver-bench: row counts differ between engines (marked with !)");
                return ExitCode::FAILURE;
            }
            if let Some(concurrency) = &report.concurrency
                && concurrency.runs.iter().any(|r| r.errors > 0)
            {
                eprintln!("quiver-bench: queries failed in the concurrency benchmark");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("quiver-bench: {e:#}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("quiver-bench: interrupted");
            ExitCode::FAILURE
        }
    }
}

/// Multi-threaded, one worker per CPU `available_parallelism` reports (a confined child's
/// budget, rounded up).
fn new_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))
}
