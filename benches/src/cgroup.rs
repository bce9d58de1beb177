//! CPU budgets: every process of a simulated cluster (coordinator, each executor, the confined
//! DataFusion baseline) in a cgroup of its own with a CPU quota, so that one machine stands in
//! for several smaller ones.
//!
//! Contract:
//! * [`CgroupRoot::create`] makes `<cpu controller>/quiver-bench-<harness pid>/` (cgroup v1:
//!   `/sys/fs/cgroup/cpu/`; v2: `/sys/fs/cgroup/` with the `cpu` controller enabled for its
//!   children), and removes it with everything under it when dropped: on success, errors, panics
//!   and Ctrl-C alike, once the processes in it have been killed (their guards are declared after
//!   the root, so they drop first). Roots left by a harness that was SIGKILLed are removed at the
//!   next start when their harness pid is gone.
//! * A confined process joins its cgroup itself, first thing in `main`, while it still has one
//!   thread and before its runtime is built ([`confine_self`]): one cgroup per process, created
//!   by that process (creating one that exists is an error, so two processes never share a
//!   budget), quota = CPUs × period (`cpu.cfs_quota_us` in v1, `cpu.max` in v2). A node is
//!   confined from its first instruction, and `std::thread::available_parallelism` (which reads
//!   the quota) sizes its runtime for the budget, as in a container with a CPU limit. The
//!   workspace forbids `unsafe`, so a `pre_exec` hook is not an option; for `quiver` nodes the
//!   harness launches itself as a wrapper that joins the cgroup and then `exec`s `quiver` with
//!   the same arguments ([`QUIVER_WRAPPER_ENV`]), so the pid the cluster tracks is the node's.
//! * [`NodeCgroup::throttling`] reads how often the kernel held the group back (`cpu.stat`): the
//!   evidence that a budget bound.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The cgroup v1 `cpu` controller's usual mount point.
const V1_CPU: &str = "/sys/fs/cgroup/cpu";
/// The cgroup v2 unified hierarchy's usual mount point.
const V2_ROOT: &str = "/sys/fs/cgroup";
const ROOT_PREFIX: &str = "quiver-bench-";
/// The scheduler's default period; v2 is given it explicitly, v1 is read from the group.
const DEFAULT_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas below 1 ms.
const MIN_QUOTA_US: u64 = 1_000;

/// Set (JSON of [`WrapperSpec`]) in the environment of `quiver-bench` started as a wrapper of a
/// `quiver` node.
pub(crate) const QUIVER_WRAPPER_ENV: &str = "QUIVER_BENCH_CONFINE_QUIVER";
/// Set (JSON of [`Confinement`]) in the environment of any other confined child (the baseline).
pub(crate) const CONFINE_ENV: &str = "QUIVER_BENCH_CONFINE";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Version {
    V1,
    V2,
}

impl Version {
    /// Which hierarchy holds the `cpu` controller (v1 wins where both are mounted: on a hybrid
    /// system the controller is bound to v1 and the unified tree has none).
    pub(crate) fn detect() -> Option<Self> {
        if Path::new(V1_CPU).join("cpu.cfs_quota_us").exists() {
            return Some(Version::V1);
        }
        let controllers =
            std::fs::read_to_string(Path::new(V2_ROOT).join("cgroup.controllers")).ok()?;
        controllers
            .split_whitespace()
            .any(|c| c == "cpu")
            .then_some(Version::V2)
    }

    fn mount(self) -> &'static Path {
        Path::new(match self {
            Version::V1 => V1_CPU,
            Version::V2 => V2_ROOT,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Version::V1 => "cgroup v1 (cpu.cfs_quota_us)",
            Version::V2 => "cgroup v2 (cpu.max)",
        }
    }
}

/// The CPU budgets of a simulated cluster's processes, in CPUs (0.5: half of one core's time).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Budget {
    pub(crate) coordinator_cpus: f64,
    /// Each executor's, and the confined baseline's.
    pub(crate) executor_cpus: f64,
}

/// This harness's directory of cgroups; removed (with every group in it) on drop.
#[derive(Debug)]
pub(crate) struct CgroupRoot {
    dir: PathBuf,
    version: Version,
}

impl CgroupRoot {
    pub(crate) fn create() -> Result<Self> {
        let version = Version::detect().context(
            "CPU budgets need the cgroup cpu controller (cgroup v1 at /sys/fs/cgroup/cpu, or v2 \
             at /sys/fs/cgroup with `cpu` in cgroup.controllers); pass --node-cpus 0 to run \
             without budgets",
        )?;
        remove_stale_roots(version);
        let dir = version
            .mount()
            .join(format!("{ROOT_PREFIX}{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| {
            format!(
                "creating {} (CPU budgets need root, or a delegated cgroup)",
                dir.display()
            )
        })?;
        let root = Self { dir, version };
        if version == Version::V2 {
            // Children get `cpu.max` only where every ancestor passes the controller down.
            write(&version.mount().join("cgroup.subtree_control"), "+cpu")?;
            write(&root.dir.join("cgroup.subtree_control"), "+cpu")?;
        }
        Ok(root)
    }

    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// The group named `name` (created by the process that joins it).
    pub(crate) fn node(&self, name: &str) -> NodeCgroup {
        NodeCgroup {
            dir: self.dir.join(name),
            version: self.version,
        }
    }

    /// The spec a `quiver` wrapper needs to confine the node it becomes.
    pub(crate) fn wrapper(
        &self,
        quiver_bin: &Path,
        prefix: &str,
        coordinator_cpus: f64,
        executor_cpus: f64,
    ) -> WrapperSpec {
        WrapperSpec {
            quiver_bin: quiver_bin.to_path_buf(),
            root: self.dir.clone(),
            version: self.version,
            prefix: prefix.to_string(),
            coordinator_cpus,
            executor_cpus,
        }
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.dir) {
            eprintln!(
                "[quiver-bench] could not remove {}: {e:#}",
                self.dir.display()
            );
        }
    }
}

/// Removes the groups in `dir`, then `dir`. A group empties a moment after its last process is
/// killed, so each removal is retried for a while.
fn remove_tree(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_group(&entry.path(), deadline)?;
        }
    }
    remove_group(dir, deadline)
}

fn remove_group(dir: &Path, deadline: Instant) -> Result<()> {
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
}

/// Roots of harnesses that are gone (SIGKILLed before they could clean up): best effort.
fn remove_stale_roots(version: Version) {
    let Ok(entries) = std::fs::read_dir(version.mount()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(ROOT_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = remove_tree(&entry.path());
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// One process's group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeCgroup {
    pub(crate) dir: PathBuf,
    pub(crate) version: Version,
}

/// What `cpu.stat` says about a group's quota.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Throttling {
    /// Scheduler periods in which the group ran.
    pub(crate) periods: u64,
    /// Periods in which it used up its quota and was held back.
    pub(crate) throttled_periods: u64,
    /// Time it spent held back, s.
    pub(crate) throttled_s: f64,
}

impl NodeCgroup {
    /// Creates the group with a quota of `cpus` CPUs and moves the calling process into it.
    fn create_and_join(&self, cpus: f64) -> Result<()> {
        if !(cpus.is_finite() && cpus > 0.0) {
            bail!("a CPU budget must be positive, got {cpus}");
        }
        std::fs::create_dir(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        match self.version {
            Version::V1 => {
                let period: u64 = std::fs::read_to_string(self.dir.join("cpu.cfs_period_us"))
                    .context("reading cpu.cfs_period_us")?
                    .trim()
                    .parse()
                    .context("parsing cpu.cfs_period_us")?;
                write(
                    &self.dir.join("cpu.cfs_quota_us"),
                    &quota_us(cpus, period).to_string(),
                )?;
            }
            Version::V2 => write(
                &self.dir.join("cpu.max"),
                &format!("{} {DEFAULT_PERIOD_US}", quota_us(cpus, DEFAULT_PERIOD_US)),
            )?,
        }
        // `cgroup.procs` moves the whole thread group (v1 and v2).
        write(
            &self.dir.join("cgroup.procs"),
            &std::process::id().to_string(),
        )
    }

    /// `None` once the group is gone (or if the kernel does not report it).
    pub(crate) fn throttling(&self) -> Option<Throttling> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        let field = |name: &str| -> Option<u64> {
            stat.lines().find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().parse().ok())?
            })
        };
        let throttled_s = match self.version {
            Version::V1 => field("throttled_time")? as f64 / 1e9,
            Version::V2 => field("throttled_usec")? as f64 / 1e6,
        };
        Some(Throttling {
            periods: field("nr_periods")?,
            throttled_periods: field("nr_throttled")?,
            throttled_s,
        })
    }
}

fn quota_us(cpus: f64, period_us: u64) -> u64 {
    ((cpus * period_us as f64).round() as u64).max(MIN_QUOTA_US)
}

/// A confined child's group and budget ([`CONFINE_ENV`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Confinement {
    pub(crate) cgroup: NodeCgroup,
    pub(crate) cpus: f64,
}

impl Confinement {
    /// The environment entry that makes a child `quiver-bench` confine itself.
    pub(crate) fn env(&self) -> Result<(String, String)> {
        Ok((CONFINE_ENV.to_string(), serde_json::to_string(self)?))
    }
}

/// What a `quiver-bench` wrapper of a `quiver` node needs ([`QUIVER_WRAPPER_ENV`]): the node's
/// group is `<root>/<prefix>-<node>`, the node's name being the stem of its `--address-file`
/// (`coordinator`, `executor-0`, …, as the tests' cluster names them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WrapperSpec {
    pub(crate) quiver_bin: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) version: Version,
    pub(crate) prefix: String,
    pub(crate) coordinator_cpus: f64,
    pub(crate) executor_cpus: f64,
}

impl WrapperSpec {
    pub(crate) fn env(&self) -> Result<(String, String)> {
        Ok((QUIVER_WRAPPER_ENV.to_string(), serde_json::to_string(self)?))
    }

    /// The group of the node started with `args` (`quiver`'s own arguments).
    pub(crate) fn node(&self, args: &[String]) -> (NodeCgroup, f64) {
        let name = args
            .iter()
            .position(|a| a == "--address-file")
            .and_then(|i| args.get(i + 1))
            .and_then(|path| Path::new(path).file_stem())
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("node-{}", std::process::id()));
        let cpus = if args.first().is_some_and(|a| a == "coordinator") {
            self.coordinator_cpus
        } else {
            self.executor_cpus
        };
        (self.group(&name), cpus)
    }

    /// The group of the node called `name` (`coordinator`, `executor-0`, …).
    pub(crate) fn group(&self, name: &str) -> NodeCgroup {
        NodeCgroup {
            dir: self.root.join(format!("{}-{name}", self.prefix)),
            version: self.version,
        }
    }
}

/// Joins this process's group if the environment says so (a confined child). As a wrapper of a
/// `quiver` node, joins the node's group and `exec`s `quiver`: it returns only on failure.
/// `main` calls it before building its runtime, so that the runtime is sized for the budget.
pub(crate) fn confine_self() -> Result<()> {
    if let Some(spec) = std::env::var_os(QUIVER_WRAPPER_ENV) {
        let spec: WrapperSpec = serde_json::from_str(&spec.to_string_lossy())
            .with_context(|| format!("parsing {QUIVER_WRAPPER_ENV}"))?;
        let args: Vec<String> = std::env::args().skip(1).collect();
        let (group, cpus) = spec.node(&args);
        group
            .create_and_join(cpus)
            .with_context(|| format!("confining to {cpus} CPUs"))?;
        use std::os::unix::process::CommandExt as _;
        let err = std::process::Command::new(&spec.quiver_bin)
            .args(&args)
            .env_remove(QUIVER_WRAPPER_ENV)
            .exec();
        return Err(err).with_context(|| format!("exec {}", spec.quiver_bin.display()));
    }
    if let Some(confinement) = std::env::var_os(CONFINE_ENV) {
        let confinement: Confinement = serde_json::from_str(&confinement.to_string_lossy())
            .with_context(|| format!("parsing {CONFINE_ENV}"))?;
        confinement
            .cgroup
            .create_and_join(confinement.cpus)
            .with_context(|| format!("confining to {} CPUs", confinement.cpus))?;
    }
    Ok(())
}
