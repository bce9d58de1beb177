//! The TPC-H comparison: the same queries, in the same run, interleaved, on Quiver and on
//! single-node DataFusion.
//!
//! Contract: one warm-up run of every query on every engine, then `--runs` timed runs. Within a
//! run the engines take turns per query, and which engine goes first rotates, so neither always
//! finds the page cache (or the CPU frequency) in the state the other left it. A query's time is
//! the wall time of all its statements (q15: create view, select, drop view), with the result
//! fully fetched. Row counts of the statement that returns rows are compared between engines on
//! every run; a mismatch is reported, since a benchmark of wrong answers is worthless. A query
//! that fails on an engine is reported with its error and left out of the totals.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use datafusion::prelude::SessionContext;

use crate::baseline::{self, Flavour};
use crate::cluster::{self, ClusterSetup};
use crate::flight::{Fetched, SqlClient};
use crate::report::{self, QueryFigures, TpchReport};
use crate::{BaselineChoice, Options};

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

enum Engine {
    Quiver(SqlClient),
    DataFusion(Flavour, SessionContext),
}

impl Engine {
    fn name(&self) -> &'static str {
        match self {
            Engine::Quiver(_) => "Quiver",
            Engine::DataFusion(flavour, _) => flavour.short(),
        }
    }

    /// Runs every statement; returns the elapsed time and what the statement with columns
    /// returned.
    async fn run(&mut self, statements: &[String]) -> Result<(Duration, Fetched)> {
        let started = Instant::now();
        let mut result = Fetched::default();
        for sql in statements {
            let fetched = match self {
                Engine::Quiver(client) => client.query(sql, None).await?,
                Engine::DataFusion(_, ctx) => baseline::query(ctx, sql).await?,
            };
            if fetched.has_columns {
                result = fetched;
            }
        }
        Ok((started.elapsed(), result))
    }
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
    let mut engines = vec![Engine::Quiver(SqlClient::connect(&addr).await?)];
    let flavours: &[Flavour] = match options.baseline {
        BaselineChoice::Quiver => &[Flavour::Quiver],
        BaselineChoice::Stock => &[Flavour::Stock],
        BaselineChoice::Both => &[Flavour::Quiver, Flavour::Stock],
    };
    for &flavour in flavours {
        let ctx = baseline::context(flavour, &setup.dataset, setup.target_partitions).await?;
        engines.push(Engine::DataFusion(flavour, ctx));
    }

    let mut figures: Vec<QueryFigures> = queries
        .iter()
        .map(|(q, _)| QueryFigures::new(*q, engines.len()))
        .collect();
    // Run 0 is the warm-up: checked, not timed.
    for run in 0..=options.runs {
        let label = if run == 0 {
            "warm-up".to_string()
        } else {
            format!("run {run}/{}", options.runs)
        };
        let run_started = Instant::now();
        for (i, (q, statements)) in queries.iter().enumerate() {
            let n = engines.len();
            for turn in 0..n {
                let e = (turn + run + i) % n;
                let engine = &mut engines[e];
                let figure = &mut figures[i];
                if figure.errors[e].is_some() {
                    continue;
                }
                match engine.run(statements).await {
                    Ok((elapsed, fetched)) => {
                        figure.record_rows(e, fetched.rows);
                        if run > 0 {
                            figure.times_ms[e].push(elapsed.as_secs_f64() * 1e3);
                        }
                    }
                    Err(err) => {
                        report::progress(format!("q{q} failed on {}: {err:#}", engine.name()));
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
    let engine_names = engines.iter().map(|e| e.name().to_string()).collect();
    let memory = cluster.as_ref().map(cluster::memory).unwrap_or_default();
    Ok(TpchReport::new(engine_names, figures, memory))
}
