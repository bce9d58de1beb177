//! The TPC-H comparison (and, with `--suite tpcds`, the TPC-DS one): the same queries, in the
//! same run, interleaved, on Quiver and on single-node DataFusion.
//!
//! Contract: one warm-up run of every query on every engine, then `--runs` timed runs. Within a
//! run the engines take turns per query, and which engine goes first rotates, so neither always
//! finds the page cache (or the CPU frequency) in the state the other left it. A query's time is
//! the wall time of all its statements (q15: create view, select, drop view), with the result
//! fully fetched. Row counts of the statement that returns rows are compared between engines on
//! every run; a mismatch is reported, since a benchmark of wrong answers is worthless. A query
//! that fails on an engine is reported with its error and left out of the totals.
//!
//! [`measure`] is that loop for any set of [`Contender`]s; the scaling benchmark
//! ([`crate::scaling`]) runs it over several clusters and a confined baseline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use datafusion::prelude::SessionContext;

use quiver_tests::process::cpu_time;

use crate::baseline::{self, BaselineChild, Flavour};
use crate::cluster::{self, ClusterSetup};
use crate::flight::{Fetched, SqlClient};
use crate::report::{self, QueryFigures, TpchReport};
use crate::{BaselineChoice, Options, Suite};

/// Generates the dataset if it is missing (tpchgen, blocking, so off the async workers).
pub(crate) async fn dataset(data_dir: &Path, scale_factor: f64) -> Result<PathBuf> {
    let data_dir = data_dir.to_path_buf();
    let dir = tokio::task::spawn_blocking(move || {
        quiver_server::tpch::ensure_dataset(&data_dir, scale_factor)
    })
    .await
    .context("the generator panicked")??;
    std::path::absolute(&dir).context("resolving the dataset directory")
}

/// Generates the TPC-DS dataset if it is missing (tpcgen-cli, blocking, so off the async
/// workers).
pub(crate) async fn tpcds_dataset(data_dir: &Path, scale_factor: f64) -> Result<PathBuf> {
    let data_dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        quiver_tests::tpcds::ensure_dataset(&data_dir, scale_factor)
    })
    .await
    .context("the generator panicked")?
}

/// `(query number, statements)` for each query, split as `quiver sql -f` splits them.
pub(crate) fn load_queries(dir: &Path, queries: &[usize]) -> Result<Vec<(usize, Vec<String>)>> {
    queries
        .iter()
        .map(|&q| {
            let path = dir.join(format!("q{q}.sql"));
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {} (see --queries-dir)", path.display()))?;
            Ok((q, quiver_client::cli::split_statements(&text)))
        })
        .collect()
}

/// How a contender runs a query.
pub(crate) enum Engine {
    /// A Quiver cluster, through Flight SQL.
    Quiver(SqlClient),
    /// DataFusion in this process.
    DataFusion(SessionContext),
    /// DataFusion in a child process (on a CPU budget).
    Child(BaselineChild),
}

impl Engine {
    /// Runs every statement; returns the elapsed time and what the statement with columns
    /// returned.
    async fn run(&mut self, statements: &[String]) -> Result<(Duration, Fetched)> {
        match self {
            Engine::Quiver(client) => {
                let started = Instant::now();
                let mut result = Fetched::default();
                for sql in statements {
                    let fetched = client.query(sql, None).await?;
                    if fetched.has_columns {
                        result = fetched;
                    }
                }
                Ok((started.elapsed(), result))
            }
            Engine::DataFusion(ctx) => baseline::run_statements(ctx, statements).await,
            Engine::Child(child) => child.run(statements).await,
        }
    }
}

/// One engine of a comparison: its name in the report, and the processes doing its work.
pub(crate) struct Contender {
    pub(crate) name: String,
    pub(crate) engine: Engine,
    /// `(name, pid)`: whose CPU time is read around each timed run (none: not read).
    pub(crate) processes: Vec<(String, u32)>,
}

/// What [`measure`] measured.
pub(crate) struct Measured {
    pub(crate) figures: Vec<QueryFigures>,
    /// Per contender: its timed runs' wall time, and the CPU its processes used in them.
    pub(crate) cpu: Vec<ContenderCpu>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ContenderCpu {
    pub(crate) wall_s: f64,
    /// Per process of [`Contender::processes`], s (user + system).
    pub(crate) process_cpu_s: Vec<f64>,
}

pub(crate) async fn run(
    setup: &ClusterSetup,
    options: &Options,
    queries: &[(usize, Vec<String>)],
) -> Result<TpchReport> {
    // Held until the end: dropping it stops the processes.
    let (cluster, addr) = match &options.coordinator {
        Some(addr) => (None, addr.clone()),
        None => {
            let cluster = cluster::start(setup).await;
            report::progress(format!(
                "cluster up: coordinator {} and {} executors",
                cluster.coordinator_addr,
                cluster.executors.len()
            ));
            let addr = cluster.coordinator_addr.clone();
            (Some(cluster), addr)
        }
    };
    let mut contenders = vec![Contender {
        name: "Quiver".to_string(),
        engine: Engine::Quiver(SqlClient::connect(&addr).await?),
        processes: Vec::new(),
    }];
    for &flavour in baseline_flavours(options.baseline) {
        let ctx = match setup.suite {
            Suite::Tpch => {
                baseline::context(flavour, &setup.dataset, setup.target_partitions).await?
            }
            Suite::Tpcds => {
                let config = baseline::config(flavour, setup.target_partitions)?;
                quiver_tests::tpcds::context(&setup.dataset, config).await?
            }
        };
        contenders.push(Contender {
            name: flavour.short().to_string(),
            engine: Engine::DataFusion(ctx),
            processes: Vec::new(),
        });
    }
    let measured = measure(&mut contenders, queries, options.runs).await;
    let names = contenders.into_iter().map(|c| c.name).collect();
    let memory = cluster.as_ref().map(cluster::memory).unwrap_or_default();
    Ok(TpchReport::new(names, measured.figures, memory))
}

pub(crate) fn baseline_flavours(choice: BaselineChoice) -> &'static [Flavour] {
    match choice {
        BaselineChoice::Quiver => &[Flavour::Quiver],
        BaselineChoice::Stock => &[Flavour::Stock],
        BaselineChoice::Both => &[Flavour::Quiver, Flavour::Stock],
    }
}

/// One warm-up run (checked, not timed), then `runs` timed runs of every query on every
/// contender, taking turns per query with a rotating first (see the module's contract). A query
/// that fails on a contender is not run on it again.
pub(crate) async fn measure(
    contenders: &mut [Contender],
    queries: &[(usize, Vec<String>)],
    runs: usize,
) -> Measured {
    let n = contenders.len();
    let mut figures: Vec<QueryFigures> = queries
        .iter()
        .map(|(q, _)| QueryFigures::new(*q, n))
        .collect();
    let mut cpu: Vec<ContenderCpu> = contenders
        .iter()
        .map(|c| ContenderCpu {
            wall_s: 0.0,
            process_cpu_s: vec![0.0; c.processes.len()],
        })
        .collect();
    // Run 0 is the warm-up: checked, not timed.
    for run in 0..=runs {
        let label = if run == 0 {
            "warm-up".to_string()
        } else {
            format!("run {run}/{runs}")
        };
        let run_started = Instant::now();
        for (i, (q, statements)) in queries.iter().enumerate() {
            for turn in 0..n {
                let e = (turn + run + i) % n;
                let contender = &mut contenders[e];
                let figure = &mut figures[i];
                if figure.errors[e].is_some() {
                    continue;
                }
                let before: Vec<Duration> = contender
                    .processes
                    .iter()
                    .map(|&(_, pid)| cpu_time(pid))
                    .collect();
                match contender.engine.run(statements).await {
                    Ok((elapsed, fetched)) => {
                        figure.record_rows(e, fetched.rows);
                        if run > 0 {
                            figure.times_ms[e].push(elapsed.as_secs_f64() * 1e3);
                            let account = &mut cpu[e];
                            account.wall_s += elapsed.as_secs_f64();
                            for (total, (&(_, pid), before)) in account
                                .process_cpu_s
                                .iter_mut()
                                .zip(contender.processes.iter().zip(&before))
                            {
                                *total += cpu_time(pid).saturating_sub(*before).as_secs_f64();
                            }
                        }
                    }
                    Err(err) => {
                        report::progress(format!("q{q} failed on {}: {err:#}", contender.name));
                        figure.errors[e] = Some(format!("{err:#}"));
                    }
                }
            }
        }
        report::progress(format!(
            "{label} done in {:.1}s",
            run_started.elapsed().as_secs_f64()
        ));
    }
    Measured { figures, cpu }
}
