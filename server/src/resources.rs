//! What a node may use for query execution: memory, spill space, and (on the coordinator)
//! concurrent queries.
//!
//! Contract:
//! * `--memory-limit` bounds the memory DataFusion's operators reserve on this node, through a
//!   `FairSpillPool` (spillable operators share the limit fairly) inside a `TrackConsumersPool`
//!   (an allocation that does not fit fails with `ResourceExhausted` naming the five largest
//!   consumers). Sorts and aggregations spill to `--spill-dir`, itself capped by `--spill-limit`;
//!   operators that cannot spill fail the query, never the process;
//! * the coordinator admits at most `--max-concurrent-queries` queries at once and queues at most
//!   `--max-queued-queries` more; beyond that a query is refused with `ResourceExhausted` at once.
//!   A query holds its slot until its result stream ends or is dropped.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{QuiverError, Result};

/// Memory and spill limits of one node.
#[derive(Debug, Clone, Default)]
pub struct ResourceLimits {
    /// Bytes of memory for query execution; `None`: unbounded.
    pub memory_limit: Option<usize>,
    /// Where spill files go; `None`: the OS temp directory.
    pub spill_dir: Option<PathBuf>,
    /// Most bytes of spill files at once; `None`: DataFusion's default (100 GiB).
    pub spill_limit: Option<u64>,
}

/// Consumers named in a `ResourceExhausted` error.
const REPORTED_CONSUMERS: usize = 5;

impl ResourceLimits {
    /// The DataFusion runtime of a node with these limits.
    pub fn runtime_env(&self) -> Result<Arc<RuntimeEnv>> {
        let mut builder = RuntimeEnvBuilder::new();
        if let Some(limit) = self.memory_limit {
            let top = NonZeroUsize::new(REPORTED_CONSUMERS).unwrap_or(NonZeroUsize::MIN);
            builder = builder.with_memory_pool(Arc::new(TrackConsumersPool::new(
                FairSpillPool::new(limit),
                top,
            )));
        }
        let mut disk = DiskManagerBuilder::default();
        if let Some(dir) = &self.spill_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| QuiverError::io(format!("creating spill dir {}", dir.display()), e))?;
            disk = disk.with_mode(DiskManagerMode::Directories(vec![dir.clone()]));
        }
        if let Some(limit) = self.spill_limit {
            disk = disk.with_max_temp_directory_size(limit);
        }
        Ok(builder.with_disk_manager_builder(disk).build_arc()?)
    }
}

/// Parses a byte size: `1048576`, `512KiB`, `64MiB`, `2GiB` (also `K`, `M`, `G`, `KB`, ...; all
/// binary).
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 512MiB, 2GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => return Err(format!("unknown size unit '{other}' in '{s}'")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Bounds how many queries run and wait on the coordinator.
#[derive(Debug)]
pub struct Admission {
    running: Arc<Semaphore>,
    max_running: usize,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

/// A running query's slot; dropping it admits the next one.
#[derive(Debug)]
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
}

/// Counts a waiting query while it waits.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    /// `max_running == 0` admits everything.
    pub fn new(max_running: usize, max_queued: usize) -> Self {
        Self {
            running: Arc::new(Semaphore::new(max_running.max(1))),
            max_running,
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued,
        }
    }

    /// Waits for a slot, or refuses at once when the queue is full.
    pub async fn admit(&self) -> Result<Slot> {
        if self.max_running == 0 {
            return Ok(Slot { _permit: None });
        }
        if let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() {
            return Ok(Slot {
                _permit: Some(permit),
            });
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(QuiverError::ResourceExhausted(format!(
                "the coordinator is running {} queries and has {} waiting, its limits (--max-concurrent-queries, --max-queued-queries): retry later",
                self.max_running, self.max_queued
            )));
        }
        let _waiting = Waiting(Arc::clone(&self.queued));
        let permit = Arc::clone(&self.running)
            .acquire_owned()
            .await
            .map_err(|_| QuiverError::Internal("admission semaphore closed".into()))?;
        Ok(Slot {
            _permit: Some(permit),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }

    #[tokio::test]
    async fn admission_queues_then_refuses() {
        let admission = Arc::new(Admission::new(1, 1));
        let first = admission.admit().await.unwrap();
        let queued = {
            let admission = Arc::clone(&admission);
            tokio::spawn(async move { admission.admit().await.map(|_| ()) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let refused = admission.admit().await.unwrap_err();
        assert_eq!(refused.to_status().code(), tonic::Code::ResourceExhausted);
        drop(first);
        queued.await.unwrap().unwrap();
        let unlimited = Admission::new(0, 0);
        let _a = unlimited.admit().await.unwrap();
        let _b = unlimited.admit().await.unwrap();
    }
}
