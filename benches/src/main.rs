//! `quiver-bench`: Quiver's benchmark harness, one command.
//!
//! ```sh
//! cargo build --release -p quiver-server -p quiver-benches
//! target/release/quiver-bench                 # TPC-H SF1 + micro-benchmarks, tables
//! target/release/quiver-bench --scale-factor 10 --json > sf10.json
//! target/release/quiver-bench --writes --skip-tpch --skip-micro   # the write benchmark only
//! ```
//!
//! It generates TPC-H at the requested scale factor if missing ([`tpch`]), starts a coordinator
//! and N executor processes on loopback ([`cluster`]), runs the 22 queries interleaved on Quiver
//! (through a Flight SQL client, results fully fetched) and on single-node DataFusion in this
//! process over the same files, then the Flight micro-benchmarks ([`micro`]), with `--writes`
//! the write benchmark ([`writes`]), and prints the report ([`report`]). Every child process dies with the harness, also on errors and Ctrl-C.
//! See `BENCHMARKS.md` for what each figure means and the figures measured so far.

mod baseline;
mod cluster;
mod flight;
mod micro;
mod plain_flight;
mod report;
mod tpch;
mod writes;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "quiver-bench",
    about = "TPC-H on Quiver vs single-node DataFusion, plus Flight SQL micro-benchmarks and a write benchmark"
)]
pub(crate) struct Options {
    /// TPC-H scale factor (generated with tpchgen under --data-dir if missing).
    #[arg(long, default_value_t = 1.0)]
    scale_factor: f64,
    /// Where datasets are generated and reused (`<dir>/tpch/sf<SF>/<table>/`).
    #[arg(long, default_value = "target/bench-data")]
    data_dir: PathBuf,
    /// The TPC-H query files q1.sql..q22.sql (default: QUIVER_TPCH_QUERIES, or
    /// ../shared/tpch/queries next to the repository).
    #[arg(long, value_name = "DIR")]
    queries_dir: Option<PathBuf>,
    /// Which queries, e.g. 1,3,5 (default: all 22).
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
    fn queries_dir(&self) -> PathBuf {
        if let Some(dir) = &self.queries_dir {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("QUIVER_TPCH_QUERIES") {
            return PathBuf::from(dir);
        }
        // benches/ -> the repository -> the shared directory beside it.
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/tpch/queries")
    }

    fn query_numbers(&self) -> Result<Vec<usize>> {
        if self.queries.is_empty() {
            return Ok((1..=22).collect());
        }
        if let Some(bad) = self.queries.iter().find(|q| !(1..=22).contains(*q)) {
            bail!("--queries: there is no TPC-H query {bad}");
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
    let quiver_bin = if options.coordinator.is_some() {
        PathBuf::new()
    } else {
        options.quiver_bin()?
    };
    let queries = options.query_numbers()?;
    let queries_dir = options.queries_dir();
    report::progress(format!(
        "TPC-H SF{} under {}",
        options.scale_factor,
        options.data_dir.display()
    ));
    let started = std::time::Instant::now();
    let dataset = tpch::dataset(&options.data_dir, options.scale_factor).await?;
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
        env: options.node_env.clone(),
    };

    let mut report = report::Report::new(&options, &dataset);
    if !options.skip_tpch {
        let statements = tpch::load_queries(&queries_dir, &queries)?;
        report.tpch = Some(tpch::run(&setup, &options, &statements).await?);
    }
    if !options.skip_micro {
        report.micro = Some(micro::run(&setup, &options).await?);
    }
    if options.writes {
        report.writes = Some(writes::run(&setup, &options).await?);
    }
    Ok(report)
}

fn main() -> ExitCode {
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quiver-bench: cannot start the runtime: {e}");
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
