//! The concurrency benchmark: N Flight SQL clients sending short TPC-H queries (SF 0.1 by
//! default) in a loop for a fixed time, on a cluster without budgets and on clusters whose every
//! node runs on a CPU budget ([`crate::cgroup`]) with 1 and with 3 executors.
//!
//! Contract: one cluster per configuration, started fresh, one after the other. Each client has
//! its own connection (its own HTTP/2 connection, as separate applications would), opened before
//! the clock starts, and runs the queries in order from its own starting point, so that every
//! query is in flight at once. One warm-up pass of every query (one client) comes first and
//! fixes each query's row count; a later answer with another count is an error. A client starts
//! no query after the duration; the run ends when the last client is done, and queries/s =
//! successful queries / that wall time. Latency is per successful query (GetFlightInfo to the
//! last batch). CPU seconds (user + system, `/proc/<pid>/stat`) of every node and of this
//! harness (the clients) are read before the first query and after the last; the coordinator's
//! share is its CPU over the whole cluster's (coordinator + executors).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use quiver_tests::process::cpu_time;
use tokio::task::JoinSet;

use crate::Options;
use crate::cgroup::{Budget, CgroupRoot, NodeCgroup};
use crate::cluster::{self, ClusterSetup};
use crate::flight::SqlClient;
use crate::report::{self, ConcurrencyReport, ConcurrencyRun, Latency, ProcessCpu, QueryLatency};

/// After a failed query a client pauses this long, so that a broken cluster is not hammered.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// One configuration: how many executors, and on which budgets (none: the whole machine).
#[derive(Debug, Clone, Copy)]
struct Configuration {
    executors: usize,
    budget: Option<Budget>,
}

/// What one client did.
#[derive(Debug, Default)]
struct ClientOutcome {
    /// `(query index, latency ms)` of every successful query.
    samples: Vec<(usize, f64)>,
    errors: u64,
    first_error: Option<String>,
}

pub(crate) async fn run(setup: &ClusterSetup, options: &Options) -> Result<ConcurrencyReport> {
    if options.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let queries = crate::tpch::load_queries(&options.queries_dir(), &options.concurrency_queries)?;
    if let Some((q, _)) = queries.iter().find(|(_, statements)| statements.len() != 1) {
        bail!("q{q} has more than one statement (a view): concurrent clients would share it");
    }
    let queries: Vec<(usize, String)> = queries
        .into_iter()
        .map(|(q, mut statements)| (q, statements.remove(0)))
        .collect();
    let budget = options.budget();
    let mut configurations = vec![Configuration {
        executors: options.executors,
        budget: None,
    }];
    if let Some(budget) = budget {
        configurations.extend(
            options
                .concurrency_executor_counts
                .iter()
                .map(|&executors| Configuration {
                    executors,
                    budget: Some(budget),
                }),
        );
    }
    // Declared before every cluster, so it is removed after their processes are killed.
    let root = budget.map(|_| CgroupRoot::create()).transpose()?;

    let mut runs = Vec::new();
    for (i, configuration) in configurations.iter().enumerate() {
        let target_partitions =
            options.node_partitions(configuration.budget.map(|b| b.executor_cpus));
        let setup = ClusterSetup {
            executors: configuration.executors,
            target_partitions,
            confine: root
                .as_ref()
                .zip(configuration.budget)
                .map(|(root, budget)| {
                    root.wrapper(
                        &setup.quiver_bin,
                        &format!("concurrency-{i}"),
                        budget.coordinator_cpus,
                        budget.executor_cpus,
                    )
                }),
            ..setup.clone()
        };
        runs.push(run_one(&setup, options, *configuration, &queries).await?);
    }
    Ok(ConcurrencyReport::new(
        options,
        queries.iter().map(|(q, _)| *q).collect(),
        root.as_ref().map(|r| r.version().name()),
        runs,
    ))
}

async fn run_one(
    setup: &ClusterSetup,
    options: &Options,
    configuration: Configuration,
    queries: &[(usize, String)],
) -> Result<ConcurrencyRun> {
    let executors = match configuration.executors {
        1 => "1 executor".to_string(),
        n => format!("{n} executors"),
    };
    let label = match configuration.budget {
        None => format!("{executors}, no budgets"),
        Some(b) => format!(
            "{executors}, budgets: coordinator {}, executors {} CPUs",
            b.coordinator_cpus, b.executor_cpus
        ),
    };
    // Held until the end: dropping it stops the processes.
    let cluster = cluster::start(setup).await;
    report::progress(format!(
        "concurrency, {label}: coordinator {}",
        cluster.coordinator_addr
    ));
    let processes = cluster::pids(&cluster)?;

    // The warm-up: every query once, and the row count every later answer must have.
    let mut client = SqlClient::connect(&cluster.coordinator_addr).await?;
    let mut expected_rows = Vec::new();
    for (q, sql) in queries {
        let fetched = client
            .query(sql, None)
            .await
            .with_context(|| format!("warm-up of q{q}"))?;
        expected_rows.push(fetched.rows);
    }
    let mut clients = Vec::with_capacity(options.clients);
    for _ in 0..options.clients {
        clients.push(SqlClient::connect(&cluster.coordinator_addr).await?);
    }

    let harness_pid = std::process::id();
    let cpu_before: Vec<Duration> = processes.iter().map(|&(_, pid)| cpu_time(pid)).collect();
    let harness_before = cpu_time(harness_pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(options.duration_secs);
    // Owned tasks: dropping the set (an error, Ctrl-C) aborts every client.
    let mut tasks = JoinSet::new();
    for (c, client) in clients.into_iter().enumerate() {
        let queries = queries.to_vec();
        let expected_rows = expected_rows.clone();
        tasks.spawn(run_client(client, c, queries, expected_rows, deadline));
    }
    let mut outcomes = Vec::new();
    while let Some(outcome) = tasks.join_next().await {
        outcomes.push(outcome.context("a client task failed")?);
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let harness_cpu_s = cpu_time(harness_pid)
        .saturating_sub(harness_before)
        .as_secs_f64();
    let nodes: Vec<ProcessCpu> = processes
        .iter()
        .zip(&cpu_before)
        .map(|((name, pid), before)| {
            let cpu_s = cpu_time(*pid).saturating_sub(*before).as_secs_f64();
            let budget_cpus = configuration.budget.map(|b| {
                if name == "coordinator" {
                    b.coordinator_cpus
                } else {
                    b.executor_cpus
                }
            });
            ProcessCpu {
                node: name.clone(),
                budget_cpus,
                cpu_s,
                cpu_per_wall_s: cpu_s / elapsed_s,
                throttling: setup.cgroup(name).as_ref().and_then(NodeCgroup::throttling),
            }
        })
        .collect();

    let samples: Vec<f64> = outcomes
        .iter()
        .flat_map(|o| o.samples.iter().map(|&(_, ms)| ms))
        .collect();
    let per_query = queries
        .iter()
        .enumerate()
        .map(|(i, (q, _))| {
            let mine: Vec<f64> = outcomes
                .iter()
                .flat_map(|o| {
                    o.samples
                        .iter()
                        .filter(|(qi, _)| *qi == i)
                        .map(|&(_, ms)| ms)
                })
                .collect();
            QueryLatency {
                query: *q,
                count: mine.len(),
                p50_ms: report::median(&mine),
                p99_ms: report::percentile(&mine, 0.99),
            }
        })
        .collect();
    let queries_done = samples.len() as u64;
    let cluster_cpu_s: f64 = nodes.iter().map(|n| n.cpu_s).sum();
    let run = ConcurrencyRun {
        label,
        executors: configuration.executors,
        budget: configuration.budget,
        target_partitions: setup.target_partitions,
        elapsed_s,
        queries: queries_done,
        queries_per_s: queries_done as f64 / elapsed_s,
        latency: Latency::from_samples(samples),
        per_query,
        errors: outcomes.iter().map(|o| o.errors).sum(),
        first_error: outcomes.iter().find_map(|o| o.first_error.clone()),
        coordinator_cpu_share: nodes.first().map_or(0.0, |c| c.cpu_s)
            / cluster_cpu_s.max(f64::MIN_POSITIVE),
        cluster_cpu_s,
        nodes,
        harness_cpu_s,
    };
    report::progress(format!(
        "  {:.1} queries/s, p50 {:.1} ms, p99 {:.1} ms, {} errors; coordinator {:.1} % of the cluster's CPU",
        run.queries_per_s,
        run.latency.p50_ms,
        run.latency.p99_ms,
        run.errors,
        run.coordinator_cpu_share * 100.0
    ));
    Ok(run)
}

async fn run_client(
    mut client: SqlClient,
    index: usize,
    queries: Vec<(usize, String)>,
    expected_rows: Vec<u64>,
    deadline: Instant,
) -> ClientOutcome {
    let mut outcome = ClientOutcome::default();
    let mut next = index;
    while Instant::now() < deadline {
        let i = next % queries.len();
        next += 1;
        let started = Instant::now();
        let (q, sql) = &queries[i];
        let error = match client.query(sql, None).await {
            Ok(fetched) if fetched.rows == expected_rows[i] => {
                outcome
                    .samples
                    .push((i, started.elapsed().as_secs_f64() * 1e3));
                None
            }
            Ok(fetched) => Some(format!(
                "q{q}: {} rows, {} in the warm-up",
                fetched.rows, expected_rows[i]
            )),
            Err(e) => Some(format!("{e:#}")),
        };
        if let Some(error) = error {
            outcome.errors += 1;
            outcome.first_error.get_or_insert(error);
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
    outcome
}
