//! What a node may use for query execution: memory, spill space, and (on the coordinator)
//! concurrent queries.
//!
//! Contract:
//! * `--memory-limit` bounds the memory DataFusion's operators reserve on this node, through a
//!   `FairSpillPool` (spillable operators share the limit fairly) inside a `TrackConsumersPool`
//!   (an allocation that does not fit fails with `ResourceExhausted` naming the five largest
//!   consumers). Sorts and aggregations spill to `--spill-dir`, itself capped by `--spill-limit`;
//!   operators that cannot spill fail the query, never the process;
//! * `--query-memory-limit` bounds what one query reserves on this node ([`QueryMemory`]): each
//!   query gets a pool of its own (fair spill, tracked consumers) that also draws from the node's
//!   pool, so one query cannot starve the others and all of them together stay under
//!   `--memory-limit`. On an executor, every task of a query shares the query's pool;
//! * the coordinator admits at most `--max-concurrent-queries` queries at once and queues at most
//!   `--max-queued-queries` more; beyond that a query is refused with `ResourceExhausted` at once.
//!   A query holds its slot until its result stream ends or is dropped;
//! * once the coordinator shuts down ([`Admission::close`]) every new query is refused with
//!   `Unavailable`, and [`Admission::idle`] tells when the admitted ones have all ended.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::error::{QuiverError, Result};

/// Memory and spill limits of one node.
#[derive(Debug, Clone, Default)]
pub struct ResourceLimits {
    /// Bytes of memory for query execution on this node; `None`: unbounded.
    pub memory_limit: Option<usize>,
    /// Bytes of memory one query may use on this node; `None`: only the node's limit applies.
    pub query_memory_limit: Option<usize>,
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
            builder = builder.with_memory_pool(Arc::new(tracked_fair_pool(limit)));
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

fn tracked_fair_pool(limit: usize) -> TrackConsumersPool<FairSpillPool> {
    let top = NonZeroUsize::new(REPORTED_CONSUMERS).unwrap_or(NonZeroUsize::MIN);
    TrackConsumersPool::new(FairSpillPool::new(limit), top)
}

/// Hands out the runtime each query executes with on this node: the node's runtime (disk
/// manager, caches, object stores) with, under `--query-memory-limit`, a memory pool of the
/// query's own.
#[derive(Debug)]
pub(crate) struct QueryMemory {
    node: Arc<RuntimeEnv>,
    query_limit: Option<usize>,
    /// Runtimes of the queries that still hold one, by query id (executors).
    live: Mutex<HashMap<String, Weak<RuntimeEnv>>>,
}

impl QueryMemory {
    pub(crate) fn new(node: Arc<RuntimeEnv>, query_limit: Option<usize>) -> Self {
        Self {
            node,
            query_limit,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// The node's runtime, shared by every query.
    pub(crate) fn node(&self) -> &Arc<RuntimeEnv> {
        &self.node
    }

    /// A runtime for one new query.
    pub(crate) fn for_query(&self) -> Result<Arc<RuntimeEnv>> {
        let Some(limit) = self.query_limit else {
            return Ok(Arc::clone(&self.node));
        };
        let pool = QueryPool {
            query: tracked_fair_pool(limit),
            node: Arc::clone(&self.node.memory_pool),
        };
        Ok(RuntimeEnvBuilder::from_runtime_env(&self.node)
            .with_memory_pool(Arc::new(pool))
            .build_arc()?)
    }

    /// The runtime of attempt `attempt` (an [`crate::ids::AttemptId`] received as text), shared
    /// by all of its tasks on this node while any of them runs.
    pub(crate) fn for_attempt(&self, attempt: &str) -> Result<Arc<RuntimeEnv>> {
        if self.query_limit.is_none() {
            return Ok(Arc::clone(&self.node));
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(runtime) = live.get(attempt).and_then(Weak::upgrade) {
            return Ok(runtime);
        }
        live.retain(|_, runtime| runtime.strong_count() > 0);
        let runtime = self.for_query()?;
        live.insert(attempt.to_string(), Arc::downgrade(&runtime));
        Ok(runtime)
    }
}

/// One query's memory on one node: every reservation must fit the query's own pool and the
/// node's.
#[derive(Debug)]
struct QueryPool {
    query: TrackConsumersPool<FairSpillPool>,
    node: Arc<dyn MemoryPool>,
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}(query: {}, node: {})",
            self.name(),
            self.query,
            self.node
        )
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "quiver_query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.query.register(consumer);
        self.node.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.query.unregister(consumer);
        self.node.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.query.grow(reservation, additional);
        self.node.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.query.shrink(reservation, shrink);
        self.node.shrink(reservation, shrink);
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        self.query
            .try_grow(reservation, additional)
            .map_err(|e| e.context("the query's memory limit (--query-memory-limit)"))?;
        if let Err(e) = self.node.try_grow(reservation, additional) {
            self.query.shrink(reservation, additional);
            return Err(e.context("the node's memory limit (--memory-limit)"));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.query.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.query.memory_limit()
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

/// Bounds how many queries run and wait on the coordinator. Clones share their state (the
/// engine admits, the node closes admission at shutdown).
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    running: Arc<Semaphore>,
    max_running: usize,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    closed: Arc<AtomicBool>,
    /// Slots held now, whatever the limits.
    held: Arc<watch::Sender<usize>>,
    /// Counted while they hold a slot (also with no limit), and refusals since start.
    load: AdmissionLoad,
}

/// How many queries run and wait now, read by the node's metrics while the engine admits them.
#[derive(Debug, Clone, Default)]
pub(crate) struct AdmissionLoad {
    running: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
    refused: Arc<AtomicU64>,
}

impl AdmissionLoad {
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queries refused because the queue was full, since start.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A running query's slot; dropping it admits the next one.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    held: Arc<watch::Sender<usize>>,
    _running: Waiting,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.held.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Counts a waiting query while it waits.
#[derive(Debug)]
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    /// `max_running == 0` admits everything.
    pub(crate) fn new(max_running: usize, max_queued: usize) -> Self {
        let queued = Arc::new(AtomicUsize::new(0));
        Self {
            running: Arc::new(Semaphore::new(max_running.max(1))),
            max_running,
            load: AdmissionLoad {
                queued: Arc::clone(&queued),
                ..AdmissionLoad::default()
            },
            queued,
            max_queued,
            closed: Arc::new(AtomicBool::new(false)),
            held: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Refuses every query from now on (the coordinator is shutting down); queries admitted
    /// already keep their slots.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Queries holding a slot now.
    pub(crate) fn running(&self) -> usize {
        *self.held.borrow()
    }

    /// Resolves once no query holds a slot.
    pub(crate) async fn idle(&self) {
        let mut held = self.held.subscribe();
        // The sender lives in `self`: `wait_for` cannot fail while we borrow it.
        let _ = held.wait_for(|n| *n == 0).await;
    }

    fn slot(&self, permit: Option<OwnedSemaphorePermit>) -> Slot {
        self.held.send_modify(|n| *n += 1);
        Slot {
            _permit: permit,
            held: Arc::clone(&self.held),
            _running: Waiting::new(&self.load.running),
        }
    }

    fn refuse_if_closed(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(QuiverError::Unavailable(
                "the coordinator is shutting down: retry on another coordinator or once it is back"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Waits for a slot, or refuses at once when the queue is full or admission is closed.
    /// A live view of the queries running and waiting.
    pub(crate) fn load(&self) -> AdmissionLoad {
        self.load.clone()
    }

    /// Waits for a slot, or refuses at once when the queue is full or admission is closed.
    pub(crate) async fn admit(&self) -> Result<Slot> {
        self.refuse_if_closed()?;
        if self.max_running == 0 {
            return Ok(self.slot(None));
        }
        if let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() {
            return Ok(self.slot(Some(permit)));
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.load.refused.fetch_add(1, Ordering::Relaxed);
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
        // Closed while it waited: it never started, so it is refused like any new query.
        self.refuse_if_closed()?;
        Ok(self.slot(Some(permit)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::AbortOnDrop;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }

    #[test]
    fn queries_get_pools_of_their_own_inside_the_node_pool() {
        let node = ResourceLimits {
            memory_limit: Some(1000),
            ..Default::default()
        }
        .runtime_env()
        .unwrap();
        let memory = QueryMemory::new(Arc::clone(&node), Some(600));

        // Tasks of one query share its pool while any holds it; other queries get their own.
        let a = memory.for_attempt("a").unwrap();
        assert!(Arc::ptr_eq(&a, &memory.for_attempt("a").unwrap()));
        let b = memory.for_attempt("b").unwrap();
        assert!(!Arc::ptr_eq(&a, &b));

        let in_a = MemoryConsumer::new("sort").register(&a.memory_pool);
        in_a.try_grow(500).unwrap();
        // Over the query's limit, though the node has room.
        let err = in_a.try_grow(200).unwrap_err().to_string();
        assert!(err.contains("--query-memory-limit"), "{err}");
        // Within b's limit but over what the node has left: refused, and b's pool stays empty.
        let in_b = MemoryConsumer::new("join").register(&b.memory_pool);
        let err = in_b.try_grow(550).unwrap_err().to_string();
        assert!(err.contains("--memory-limit"), "{err}");
        assert_eq!(b.memory_pool.reserved(), 0);
        assert_eq!(node.memory_pool.reserved(), 500);
        in_b.try_grow(450).unwrap();
        drop(in_a);
        drop(in_b);
        assert_eq!(node.memory_pool.reserved(), 0);

        // A query's pool goes when its last task does.
        drop(a);
        let again = memory.for_attempt("a").unwrap();
        assert_eq!(again.memory_pool.reserved(), 0);
        assert!(!Arc::ptr_eq(&again, &b));
        // Without a per-query limit every query uses the node's runtime.
        let shared = QueryMemory::new(Arc::clone(&node), None);
        assert!(Arc::ptr_eq(&shared.for_query().unwrap(), &node));
    }

    #[tokio::test]
    async fn admission_queues_then_refuses() {
        let admission = Arc::new(Admission::new(1, 1));
        let load = admission.load();
        let first = admission.admit().await.unwrap();
        assert_eq!((load.running(), load.queued()), (1, 0));
        let queued = {
            let admission = Arc::clone(&admission);
            AbortOnDrop::spawn(async move { admission.admit().await.map(|_| ()) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let refused = admission.admit().await.unwrap_err();
        assert_eq!(refused.to_status().code(), tonic::Code::ResourceExhausted);
        assert_eq!((load.running(), load.queued(), load.refused()), (1, 1, 1));
        drop(first);
        queued.await.unwrap().unwrap();
        assert_eq!((load.running(), load.queued()), (0, 0));
        let unlimited = Admission::new(0, 0);
        let _a = unlimited.admit().await.unwrap();
        let _b = unlimited.admit().await.unwrap();
    }

    #[tokio::test]
    async fn closed_admission_refuses_and_reports_idle() {
        let admission = Admission::new(0, 0);
        let running = admission.admit().await.unwrap();
        let closer = admission.clone();
        closer.close();
        let refused = admission.admit().await.unwrap_err();
        assert_eq!(refused.to_status().code(), tonic::Code::Unavailable);
        assert!(refused.to_string().contains("shutting down"), "{refused}");
        assert_eq!(closer.running(), 1);
        let wait = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(wait, closer.idle()).await.is_err(),
            "idle while a query runs"
        );
        drop(running);
        tokio::time::timeout(std::time::Duration::from_secs(5), closer.idle())
            .await
            .expect("idle once the last query ended");
        assert_eq!(closer.running(), 0);
    }
}
