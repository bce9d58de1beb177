//! A Quiver cluster of real processes on loopback: one `quiver coordinator` and N
//! `quiver executor`s, as an operator would start them.
//!
//! Contract: [`Cluster::start`] returns once the coordinator serves Flight SQL and reports every
//! executor live; every process is SIGKILLed when the [`Cluster`] drops (on success, error,
//! panic or Ctrl-C alike), and its log stays in the cluster's temporary directory until then.
//! Nodes run with their production defaults except the flags a benchmark must fix: the TPC-H
//! tables, `--target-partitions`, and a cluster secret (internal calls are signed, as in a real
//! deployment).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use quiver_proto::cluster::ListExecutorsRequest;
use quiver_proto::cluster::cluster_service_client::ClusterServiceClient;
use quiver_server::{ClusterAuth, Signed};
use tempfile::TempDir;
use tokio::process::{Child, Command};

const START_LIMIT: Duration = Duration::from_secs(60);

/// What every cluster of one benchmark run shares.
#[derive(Debug, Clone)]
pub(crate) struct ClusterSetup {
    pub(crate) quiver_bin: PathBuf,
    pub(crate) executors: usize,
    pub(crate) target_partitions: usize,
    /// `<dir>/<table>/` for each TPC-H table.
    pub(crate) dataset: PathBuf,
    /// Extra environment for every process.
    pub(crate) env: Vec<(String, String)>,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) name: String,
    child: Child,
    log: PathBuf,
}

impl Node {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

#[derive(Debug)]
pub(crate) struct Cluster {
    /// Declared first so the processes die before their directory is removed.
    pub(crate) coordinator: Node,
    pub(crate) executors: Vec<Node>,
    /// `HOST:PORT` of the coordinator's Flight SQL endpoint.
    pub(crate) addr: String,
    _dir: TempDir,
}

impl Cluster {
    pub(crate) async fn start(setup: &ClusterSetup) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("quiver-bench-")
            .tempdir()
            .context("creating the cluster directory")?;
        let secret = dir.path().join("cluster.secret");
        std::fs::write(&secret, random_secret()).context("writing the cluster secret")?;
        let secret_arg = secret.display().to_string();

        let mut args = vec![
            "coordinator".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--target-partitions".into(),
            setup.target_partitions.to_string(),
            "--warehouse".into(),
            dir.path().join("warehouse").display().to_string(),
            "--cluster-secret-file".into(),
            secret_arg.clone(),
        ];
        for table in quiver_server::tpch::TABLES {
            args.push("--table".into());
            args.push(format!("{table}={}", setup.dataset.join(table).display()));
        }
        let (coordinator, addr) = spawn(setup, dir.path(), "coordinator", args).await?;

        let mut executors = Vec::new();
        for i in 0..setup.executors {
            let args = vec![
                "executor".to_string(),
                "--coordinator".into(),
                format!("grpc://{addr}"),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--target-partitions".into(),
                setup.target_partitions.to_string(),
                "--cluster-secret-file".into(),
                secret_arg.clone(),
            ];
            let (node, _) = spawn(setup, dir.path(), &format!("executor-{i}"), args).await?;
            executors.push(node);
        }
        let cluster = Self {
            coordinator,
            executors,
            addr,
            _dir: dir,
        };
        let auth = ClusterAuth::from_file(&secret).context("reading the cluster secret")?;
        cluster.wait_for_live(&auth).await?;
        Ok(cluster)
    }

    /// Waits until the coordinator lists every executor as live (they register asynchronously
    /// after writing their address file).
    async fn wait_for_live(&self, auth: &ClusterAuth) -> Result<()> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await
            .context("connecting to the coordinator")?;
        let mut client = ClusterServiceClient::new(Signed::new(channel, auth.clone()));
        let started = Instant::now();
        loop {
            let live = client
                .list_executors(ListExecutorsRequest {})
                .await
                .context("listing executors")?
                .into_inner()
                .executors
                .len();
            if live == self.executors.len() {
                return Ok(());
            }
            if started.elapsed() > START_LIMIT {
                bail!(
                    "{live} of {} executors live after {START_LIMIT:?}; coordinator log:\n{}",
                    self.executors.len(),
                    self.coordinator.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every node, coordinator first.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.coordinator).chain(&self.executors)
    }
}

/// Starts `quiver <args> --address-file ...` with its output in `<dir>/<name>.log`; returns once
/// it wrote its bound address.
async fn spawn(
    setup: &ClusterSetup,
    dir: &Path,
    name: &str,
    args: Vec<String>,
) -> Result<(Node, String)> {
    let bin = &setup.quiver_bin;
    let log = dir.join(format!("{name}.log"));
    let address_file = dir.join(format!("{name}.addr"));
    let log_file = std::fs::File::create(&log).context("creating a node log")?;
    let child = Command::new(bin)
        .args(&args)
        .arg("--address-file")
        .arg(&address_file)
        // Info-level logs per query would be part of what is measured; warnings only.
        .env("RUST_LOG", "warn")
        .envs(setup.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("cloning a log handle")?)
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut node = Node {
        name: name.to_string(),
        child,
        log,
    };
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&address_file) {
            let addr = text.trim().to_string();
            if !addr.is_empty() {
                return Ok((node, addr));
            }
        }
        if let Some(status) = node.child.try_wait()? {
            bail!("{name} exited with {status}:\n{}", node.log_tail());
        }
        if started.elapsed() > START_LIMIT {
            bail!(
                "{name} did not serve within {START_LIMIT:?}:\n{}",
                node.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 64 hex characters, unpredictable enough for a loopback cluster that lives for one run.
fn random_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..4)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default(),
            );
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// Peak and current resident set size of a process, from `/proc/<pid>/status` (Linux).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Rss {
    pub(crate) peak_bytes: u64,
    pub(crate) current_bytes: u64,
}

pub(crate) fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(Rss {
        peak_bytes: field("VmHWM:")?,
        current_bytes: field("VmRSS:")?,
    })
}
