//! The scaling benchmark: one machine as a cluster of small ones. Every node (coordinator, each
//! executor) and the single-node DataFusion baseline run on the same CPU budget, each process in
//! a cgroup of its own ([`crate::cgroup`]); Quiver with 1, 2, 3, … executors against DataFusion
//! on one budget shows how the engine scales (ideal speedup: the executor count).
//!
//! Contract: the baseline(s) run in child processes (`quiver-bench __baseline`, confined like a
//! node, timing themselves) and one cluster per executor count runs for the whole benchmark, so
//! that the TPC-H loop ([`tpch::measure`]) interleaves all of them query by query, with a
//! rotating first: drift (page cache, CPU frequency, neighbours) hits every contender alike. An
//! idle cluster costs only its heartbeats. Every node and the baseline plan with the same
//! `target_partitions` ([`Options::node_partitions`]). Speedup = the baseline's time / the
//! cluster's (above 1 is faster). Around every timed run the CPU time of each process of the
//! running contender is read (`/proc/<pid>/stat`), and at the end each group's throttling
//! (`cpu.stat`): CPU s per wall s of a process never exceeds its budget when the budget binds.

use anyhow::Result;
use quiver_tests::TestCluster;

use crate::Options;
use crate::baseline::BaselineChild;
use crate::cgroup::{CgroupRoot, Confinement, NodeCgroup};
use crate::cluster::{self, ClusterSetup};
use crate::flight::SqlClient;
use crate::report::{self, EngineCpu, ProcessCpu, ScalingReport, ScalingSetup};
use crate::tpch::{self, Contender, Engine};

pub(crate) async fn run(
    setup: &ClusterSetup,
    options: &Options,
    queries: &[(usize, Vec<String>)],
) -> Result<ScalingReport> {
    let budget = options.budget();
    let target_partitions = options.node_partitions(budget.map(|b| b.executor_cpus));
    // Declared before every process, so it is removed after they are killed.
    let root = budget.map(|_| CgroupRoot::create()).transpose()?;

    let mut contenders = Vec::new();
    // Per contender, per process: its group and budget.
    let mut groups: Vec<Vec<(Option<NodeCgroup>, Option<f64>)>> = Vec::new();
    let mut baselines = Vec::new();
    for &flavour in tpch::baseline_flavours(options.baseline) {
        let name = format!("datafusion-{}", flavour.short().trim_start_matches("DF-"));
        let confinement = root.as_ref().zip(budget).map(|(root, budget)| Confinement {
            cgroup: root.node(&name),
            cpus: budget.executor_cpus,
        });
        let child = BaselineChild::start(
            flavour,
            &setup.dataset,
            target_partitions,
            confinement.as_ref(),
        )
        .await?;
        report::progress(format!(
            "{} in a child process (pid {}){}",
            flavour.short(),
            child.pid(),
            budget
                .map(|b| format!(", {} CPUs", b.executor_cpus))
                .unwrap_or_default()
        ));
        groups.push(vec![(
            confinement.as_ref().map(|c| c.cgroup.clone()),
            confinement.as_ref().map(|c| c.cpus),
        )]);
        contenders.push(Contender {
            name: flavour.short().to_string(),
            processes: vec![("datafusion".to_string(), child.pid())],
            engine: Engine::Child(child),
        });
        baselines.push(flavour.short().to_string());
    }
    // Held until the end: dropping them stops the processes (before `root` goes).
    let mut clusters: Vec<TestCluster> = Vec::new();
    for &executors in &options.executor_counts {
        let setup = ClusterSetup {
            executors,
            target_partitions,
            confine: root.as_ref().zip(budget).map(|(root, budget)| {
                root.wrapper(
                    &setup.quiver_bin,
                    &format!("quiver-{executors}"),
                    budget.coordinator_cpus,
                    budget.executor_cpus,
                )
            }),
            ..setup.clone()
        };
        let cluster = cluster::start(&setup).await;
        report::progress(format!(
            "Quiver-{executors}: coordinator {} and {executors} executors",
            cluster.coordinator_addr
        ));
        let processes = cluster::pids(&cluster)?;
        groups.push(
            processes
                .iter()
                .map(|(name, _)| {
                    let cpus = budget.map(|b| {
                        if name == "coordinator" {
                            b.coordinator_cpus
                        } else {
                            b.executor_cpus
                        }
                    });
                    (setup.cgroup(name), cpus)
                })
                .collect(),
        );
        contenders.push(Contender {
            name: format!("Quiver-{executors}"),
            engine: Engine::Quiver(SqlClient::connect(&cluster.coordinator_addr).await?),
            processes,
        });
        clusters.push(cluster);
    }

    let measured = tpch::measure(&mut contenders, queries, options.runs).await;
    let cpu = contenders
        .iter()
        .zip(&measured.cpu)
        .zip(&groups)
        .map(|((contender, account), groups)| EngineCpu {
            engine: contender.name.clone(),
            timed_wall_s: account.wall_s,
            processes: contender
                .processes
                .iter()
                .zip(&account.process_cpu_s)
                .zip(groups)
                .map(|(((node, _), &cpu_s), (group, cpus))| ProcessCpu {
                    node: node.clone(),
                    budget_cpus: *cpus,
                    cpu_s,
                    cpu_per_wall_s: cpu_s / account.wall_s.max(f64::MIN_POSITIVE),
                    throttling: group.as_ref().and_then(NodeCgroup::throttling),
                })
                .collect(),
        })
        .collect();
    let engines = contenders.iter().map(|c| c.name.clone()).collect();
    let header = ScalingSetup {
        scale_factor: options.scale_factor,
        runs: options.runs,
        cgroups: root
            .as_ref()
            .map_or("none", |r| r.version().name())
            .to_string(),
        budget,
        target_partitions,
        baselines,
        executor_counts: options.executor_counts.clone(),
    };
    Ok(ScalingReport::new(header, engines, measured.figures, cpu))
}
