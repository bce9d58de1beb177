//! Real `quiver` processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `quiver` binary under test: `QUIVER_BIN`, or `quiver` next to the test's target dir.
pub fn quiver_bin() -> PathBuf {
    built_binary(
        "quiver",
        "QUIVER_BIN",
        "build it first with `cargo build -p quiver-server --bin quiver` (scripts/test does)",
    )
}

/// A binary the tests drive: the path in `env_override`, or `name` in `target/<profile>/` of the
/// target directory this test was built in (so `CARGO_TARGET_DIR` is respected). Fails the test
/// with `how_to_build` if it is missing.
pub fn built_binary(name: &str, env_override: &str, how_to_build: &str) -> PathBuf {
    locate_binary(name, env_override).unwrap_or_else(|missing| {
        panic!(
            "{} not found: {how_to_build}, or point {env_override} at it",
            missing.display()
        )
    })
}

/// The path in `env_override`, or `name` in the `target/<profile>/` directory of the running
/// executable: a test (`target/<profile>/deps/<test>-<hash>`) or a binary built beside it (a
/// benchmark in `target/release/`, which so finds the release `quiver`). `Err` holds the path
/// looked at when the binary is not there.
pub fn locate_binary(name: &str, env_override: &str) -> Result<PathBuf, PathBuf> {
    if let Some(bin) = std::env::var_os(env_override) {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("an executable lives in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps/ lives in target/<profile>/");
    }
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if bin.exists() { Ok(bin) } else { Err(bin) }
}

/// How a [`QuiverProcess`] is started, beyond its arguments.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The `quiver` binary; `None`: [`quiver_bin`].
    pub bin: Option<PathBuf>,
    /// Extra environment, set after the harness's own (`RUST_LOG`), so it may override it.
    pub env: Vec<(String, String)>,
}

/// A running `quiver` process, SIGKILLed when dropped.
#[derive(Debug)]
pub struct QuiverProcess {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    pub address_file: PathBuf,
}

impl QuiverProcess {
    /// Starts `quiver <args> --address-file <dir>/<name>.addr`, logging to `<dir>/<name>.log`.
    pub fn spawn(dir: &Path, name: &str, args: &[String]) -> Self {
        Self::spawn_with(&Launch::default(), dir, name, args)
    }

    /// [`QuiverProcess::spawn`] with `launch`'s binary and environment.
    pub fn spawn_with(launch: &Launch, dir: &Path, name: &str, args: &[String]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let address_file = dir.join(format!("{name}.addr"));
        let _ = std::fs::remove_file(&address_file);
        let log_file = std::fs::File::create(&log).expect("create log");
        let bin = launch.bin.clone().unwrap_or_else(quiver_bin);
        let child = Command::new(&bin)
            .args(args)
            .arg("--address-file")
            .arg(&address_file)
            .env("RUST_LOG", "info,h2=warn,tower=warn,hyper=warn")
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Self {
            name: name.to_string(),
            child: Some(child),
            log,
            address_file,
        }
    }

    /// Waits for the address file; panics with the process log if it does not appear.
    pub fn wait_for_address(&mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.address_file) {
                let addr = text.trim().to_string();
                if !addr.is_empty() {
                    return addr;
                }
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "{} exited with {status} before serving:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not write its address within {limit:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The files (relative to `destination`, e.g. `/…/warehouse/t/` or `s3://b/t/`, with its
    /// trailing slash) this process's log says it wrote: the `wrote a data file` lines.
    pub fn written_files(&self, destination: &str) -> Vec<String> {
        let destination = format!("destination={destination} ");
        self.log_text()
            .lines()
            .filter(|line| line.contains("wrote a data file") && line.contains(&destination))
            .map(|line| {
                // `file=<path> rows=…`: the path may hold spaces (a partition value's).
                line.split_once(" file=")
                    .and_then(|(_, rest)| rest.split_once(" rows="))
                    .map(|(file, _)| file.to_string())
                    .unwrap_or_else(|| panic!("a written file without its name: {line}"))
            })
            .collect()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its memory now and at its peak; `None` once it is killed (or off Linux).
    pub fn memory(&self) -> Option<Memory> {
        memory(self.pid()?)
    }

    /// Sends `signal` (`TERM`, `INT`, `STOP`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the process is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Waits up to `limit` for the process to exit; `None` if it still runs then.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for QuiverProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `quiver serve` (two in-process executors, TPC-H at the test scale factor generated
/// under `data`) with `extra` flags; its log and address file go to `dir`.
pub fn spawn_serve(dir: &Path, data: &Path, extra: &[String]) -> QuiverProcess {
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--executors",
        "2",
        "--data-dir",
        &data.display().to_string(),
        "--tpch-sf",
        &crate::oracle::TEST_SCALE_FACTOR.to_string(),
        "--scan-bytes-per-partition",
        "65536",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    QuiverProcess::spawn(dir, "serve", &args)
}

/// CPU time (user + system) process `pid` has used, from `/proc/<pid>/stat` (Linux).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command name.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // Clock ticks are 100 per second on every Linux platform Quiver targets.
    Duration::from_millis(ticks * 10)
}

/// Resident memory of process `pid` in bytes, from `/proc/<pid>/status` (Linux).
pub fn rss_bytes(pid: u32) -> u64 {
    memory(pid)
        .expect("VmRSS in /proc/<pid>/status")
        .current_bytes
}

/// Resident memory of a process: now, and the most it ever held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmHWM`: kept by the kernel, so it needs no sampling.
    pub peak_bytes: u64,
    /// `VmRSS`.
    pub current_bytes: u64,
}

/// Process `pid`'s [`Memory`], from `/proc/<pid>/status` (Linux); `None` if it cannot be read.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let rest = status.lines().find_map(|line| line.strip_prefix(name))?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some(Memory {
        peak_bytes: field("VmHWM:")?,
        current_bytes: field("VmRSS:")?,
    })
}
