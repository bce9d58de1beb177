//! The benchmark's Quiver cluster: the tests' [`TestCluster`] of real processes on loopback,
//! one `quiver coordinator` and N `quiver executor`s, as an operator would start them.
//!
//! Contract: [`start`] returns once the coordinator serves Flight SQL and reports every executor
//! live (it panics, with the node's log, if one does not start); every process is SIGKILLed when
//! the cluster drops (on success, error, panic or Ctrl-C alike). Nodes run with their production
//! defaults ([`ClusterOptions::binary_defaults`]) except the flags a benchmark must fix: the
//! TPC-H (or TPC-DS) tables, `--target-partitions`, and a cluster secret (internal calls are signed, as in a
//! real deployment), plus what `--coordinator-arg` adds; they log warnings only, since info-level logs per query would be part of
//! what is measured (the write benchmark adds the one info line per written file and commit,
//! [`start_logging`]).
//!
//! With [`ClusterSetup::confine`] every node runs on a CPU budget in a cgroup of its own
//! ([`crate::cgroup`]): `quiver-bench` itself is launched as each node, joins the node's group,
//! and `exec`s `quiver` with the node's arguments.

use std::path::PathBuf;

use anyhow::{Context, Result};

use quiver_tests::process::Launch;
use quiver_tests::{ClusterOptions, TestCluster};

use crate::Suite;
use crate::cgroup::{NodeCgroup, WrapperSpec};
use crate::report::NodeMemory;

/// What every cluster of one benchmark run shares.
#[derive(Debug, Clone)]
pub(crate) struct ClusterSetup {
    pub(crate) quiver_bin: PathBuf,
    pub(crate) executors: usize,
    pub(crate) target_partitions: usize,
    /// `<dir>/<table>/` for each TPC-H table, or `<dir>/<table>.parquet` for TPC-DS.
    pub(crate) dataset: PathBuf,
    /// Which benchmark's tables `dataset` holds.
    pub(crate) suite: Suite,
    /// Extra environment for every process (after `RUST_LOG=warn`, so it may override it).
    pub(crate) env: Vec<(String, String)>,
    /// Extra coordinator flags (`--coordinator-arg`).
    pub(crate) coordinator_args: Vec<String>,
    /// CPU budgets: every node in a cgroup of its own.
    pub(crate) confine: Option<WrapperSpec>,
}

impl ClusterSetup {
    /// The cgroup of the node called `name` (`coordinator`, `executor-0`, …), if confined.
    pub(crate) fn cgroup(&self, name: &str) -> Option<NodeCgroup> {
        self.confine.as_ref().map(|spec| spec.group(name))
    }
}

pub(crate) async fn start(setup: &ClusterSetup) -> TestCluster {
    start_logging(setup, "warn").await
}

/// [`start`] with `rust_log` as every process's `RUST_LOG` (`--node-env` may still override it).
pub(crate) async fn start_logging(setup: &ClusterSetup, rust_log: &str) -> TestCluster {
    let mut env = vec![("RUST_LOG".to_string(), rust_log.to_string())];
    env.extend(setup.env.iter().cloned());
    let mut bin = setup.quiver_bin.clone();
    if let Some(spec) = &setup.confine {
        // The wrapper: this executable, which confines itself and becomes `quiver`.
        match std::env::current_exe() {
            Ok(exe) => bin = exe,
            Err(e) => panic!("locating quiver-bench to launch confined nodes: {e}"),
        }
        match spec.env() {
            Ok(entry) => env.push(entry),
            Err(e) => panic!("encoding the nodes' CPU budgets: {e}"),
        }
    }
    TestCluster::start(ClusterOptions {
        executors: setup.executors,
        target_partitions: setup.target_partitions,
        executor_args: vec![
            "--target-partitions".to_string(),
            setup.target_partitions.to_string(),
        ],
        coordinator_args: setup.coordinator_args.clone(),
        binary_defaults: true,
        launch: Launch {
            bin: Some(bin),
            env,
        },
        ..suite_tables(setup)
    })
    .await
}

/// The cluster's `--table`s: the suite's tables of the dataset.
fn suite_tables(setup: &ClusterSetup) -> ClusterOptions {
    match setup.suite {
        Suite::Tpch => ClusterOptions::tpch(&setup.dataset),
        Suite::Tpcds => ClusterOptions::tpcds(&setup.dataset),
    }
}

/// The memory of every process of `cluster`, coordinator first.
pub(crate) fn memory(cluster: &TestCluster) -> Vec<NodeMemory> {
    cluster
        .processes()
        .filter_map(|p| {
            let memory = p.memory()?;
            Some(NodeMemory {
                node: p.name.clone(),
                peak_rss_bytes: memory.peak_bytes,
                current_rss_bytes: memory.current_bytes,
            })
        })
        .collect()
}

/// `(name, pid)` of every process of `cluster`, coordinator first.
pub(crate) fn pids(cluster: &TestCluster) -> Result<Vec<(String, u32)>> {
    cluster
        .processes()
        .map(|p| {
            let pid = p
                .pid()
                .with_context(|| format!("{} is not running", p.name))?;
            Ok((p.name.clone(), pid))
        })
        .collect()
}
