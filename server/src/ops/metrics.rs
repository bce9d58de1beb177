//! A node's metrics, in the Prometheus text format (`/metrics` on the admin HTTP port).
//!
//! Contract:
//! * every node (the coordinator, each executor) has its own [`NodeMetrics`] with its own
//!   registry (never the process-global one: `quiver serve` runs several nodes in one process,
//!   whose metrics carry a `node` label there);
//! * per node: `quiver_memory_used_bytes` / `quiver_memory_limit_bytes` (the node's memory pool;
//!   the limit is infinite (`inf`) without `--memory-limit`), `quiver_spill_bytes` (spill files on disk
//!   now), `quiver_tasks_running`, `quiver_shuffle_sent_bytes_total` /
//!   `quiver_shuffle_received_bytes_total` (bodies of the worker protocol, see
//!   [`crate::cluster::traffic`]) and `quiver_heartbeats_missed_total` (on an executor: heartbeats
//!   that failed; on the coordinator: executors dropped for missing theirs);
//! * on the coordinator, [`CoordinatorMetrics`] adds `quiver_queries_started_total`,
//!   `quiver_queries_finished_total{code}` (`OK` or the gRPC code name of the failure),
//!   `quiver_query_duration_seconds`, `quiver_client_rows_sent_total` /
//!   `quiver_client_bytes_sent_total`, `quiver_queries_running` / `quiver_queries_queued`
//!   (admission), `quiver_admission_refused_total` and `quiver_executors_live`; it learns about
//!   queries as a [`QueryObserver`] of the query log;
//! * values that live elsewhere (pool sizes, admission, the live set) are read when scraped, so
//!   they are never stale and nothing has to remember to update them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::execution::memory_pool::MemoryLimit;
use datafusion::execution::runtime_env::RuntimeEnv;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, PullingGauge, Registry,
    TextEncoder,
};

use crate::cluster::membership::ExecutorRegistry;
use crate::cluster::traffic::Traffic;
use crate::error::{QuiverError, Result};
use crate::ops::queries::{QueryInfo, QueryObserver};
use crate::resources::AdmissionLoad;

/// Upper bounds of the query duration histogram, in seconds: interactive queries to long reports.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

fn metrics_error(e: prometheus::Error) -> QuiverError {
    QuiverError::Internal(format!("metrics: {e}"))
}

/// Where a node's own counts are read from when scraped.
pub(crate) struct NodeValues {
    /// Tasks the node runs now.
    pub(crate) tasks_running: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Heartbeats missed since start.
    pub(crate) heartbeats_missed: Box<dyn Fn() -> u64 + Send + Sync>,
}

/// The metrics every node has.
pub(crate) struct NodeMetrics {
    registry: Registry,
    traffic: Traffic,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// Metrics of a node executing with `runtime`; `node` labels every series (for several nodes
    /// in one process).
    pub(crate) fn new(
        runtime: &Arc<RuntimeEnv>,
        node: Option<&str>,
        values: NodeValues,
    ) -> Result<Arc<Self>> {
        let labels = node.map(|n| HashMap::from([("node".to_string(), n.to_string())]));
        let registry = Registry::new_custom(None, labels).map_err(metrics_error)?;
        let traffic = Traffic {
            sent: IntCounter::new(
                "quiver_shuffle_sent_bytes_total",
                "Bytes this node sent to other nodes over the worker protocol (plans, shuffles, results).",
            )
            .map_err(metrics_error)?,
            received: IntCounter::new(
                "quiver_shuffle_received_bytes_total",
                "Bytes this node received from other nodes over the worker protocol.",
            )
            .map_err(metrics_error)?,
        };
        let NodeValues {
            tasks_running,
            heartbeats_missed,
        } = values;
        let tasks_running = PullingGauge::new(
            "quiver_tasks_running",
            "Tasks (plan fragments) this node runs now; on the coordinator, the head stages of running queries.",
            Box::new(move || tasks_running() as f64),
        )
        .map_err(metrics_error)?;
        let heartbeats_missed = PulledCounter::new(
            "quiver_heartbeats_missed_total",
            "Executor heartbeats that failed (on an executor), or executors dropped for missing theirs (on the coordinator).",
            heartbeats_missed,
        )?;
        let pool = Arc::clone(&runtime.memory_pool);
        let memory_used = PullingGauge::new(
            "quiver_memory_used_bytes",
            "Bytes reserved in this node's query memory pool.",
            Box::new(move || pool.reserved() as f64),
        )
        .map_err(metrics_error)?;
        let pool = Arc::clone(&runtime.memory_pool);
        let memory_limit = PullingGauge::new(
            "quiver_memory_limit_bytes",
            "Size of this node's query memory pool (--memory-limit; infinite without one).",
            Box::new(move || match pool.memory_limit() {
                MemoryLimit::Finite(bytes) => bytes as f64,
                MemoryLimit::Infinite | MemoryLimit::Unknown => f64::INFINITY,
            }),
        )
        .map_err(metrics_error)?;
        let disk = Arc::clone(&runtime.disk_manager);
        let spill = PullingGauge::new(
            "quiver_spill_bytes",
            "Bytes of spill files this node holds on disk now.",
            Box::new(move || disk.used_disk_space() as f64),
        )
        .map_err(metrics_error)?;
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(traffic.sent.clone()),
            Box::new(traffic.received.clone()),
            Box::new(tasks_running),
            Box::new(heartbeats_missed),
            Box::new(memory_used),
            Box::new(memory_limit),
            Box::new(spill),
        ];
        for collector in collectors {
            registry.register(collector).map_err(metrics_error)?;
        }
        Ok(Arc::new(Self { registry, traffic }))
    }

    /// The counters the node's worker traffic goes into.
    pub(crate) fn traffic(&self) -> Traffic {
        self.traffic.clone()
    }

    pub(crate) fn register(&self, collector: Box<dyn Collector>) -> Result<()> {
        self.registry.register(collector).map_err(metrics_error)
    }

    fn gather(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }
}

/// The Prometheus text exposition of `nodes` (one family per name, the series of every node in
/// it), and its content type.
pub(crate) fn encode(nodes: &[&NodeMetrics]) -> Result<(String, String)> {
    let mut families: BTreeMap<String, MetricFamily> = BTreeMap::new();
    for node in nodes {
        for mut family in node.gather() {
            match families.get_mut(family.name()) {
                Some(existing) => {
                    let mut metrics = existing.take_metric();
                    metrics.extend(family.take_metric());
                    existing.set_metric(metrics);
                }
                None => {
                    families.insert(family.name().to_string(), family);
                }
            }
        }
    }
    let families: Vec<MetricFamily> = families.into_values().collect();
    let encoder = TextEncoder::new();
    let mut out = Vec::new();
    encoder.encode(&families, &mut out).map_err(metrics_error)?;
    let text = String::from_utf8(out)
        .map_err(|_| QuiverError::Internal("metrics: the text encoder wrote non-UTF-8".into()))?;
    Ok((text, encoder.format_type().to_string()))
}

/// The coordinator's query metrics; registered with its [`NodeMetrics`], fed by the query log.
#[derive(Debug)]
pub(crate) struct CoordinatorMetrics {
    started: IntCounter,
    finished: IntCounterVec,
    duration: Histogram,
    rows_sent: IntCounter,
    bytes_sent: IntCounter,
}

impl CoordinatorMetrics {
    pub(crate) fn register(
        node: &NodeMetrics,
        admission: AdmissionLoad,
        registry: Arc<ExecutorRegistry>,
    ) -> Result<Arc<Self>> {
        let started = IntCounter::new(
            "quiver_queries_started_total",
            "Statements the coordinator started.",
        )
        .map_err(metrics_error)?;
        let finished = IntCounterVec::new(
            Opts::new(
                "quiver_queries_finished_total",
                "Statements that ended, by gRPC status code (OK, or the code they failed with).",
            ),
            &["code"],
        )
        .map_err(metrics_error)?;
        // The family is there from the start, so a scraper sees it before the first query ends.
        finished.with_label_values(&["OK"]);
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "quiver_query_duration_seconds",
                "Wall-clock time of statements, from start to end of their result stream.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )
        .map_err(metrics_error)?;
        let rows_sent = IntCounter::new(
            "quiver_client_rows_sent_total",
            "Result rows sent to clients.",
        )
        .map_err(metrics_error)?;
        let bytes_sent = IntCounter::new(
            "quiver_client_bytes_sent_total",
            "Result bytes (Arrow IPC) sent to clients.",
        )
        .map_err(metrics_error)?;
        let running = admission.clone();
        let queued = admission.clone();
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(started.clone()),
            Box::new(finished.clone()),
            Box::new(duration.clone()),
            Box::new(rows_sent.clone()),
            Box::new(bytes_sent.clone()),
            Box::new(
                PullingGauge::new(
                    "quiver_queries_running",
                    "Statements holding an admission slot now.",
                    Box::new(move || running.running() as f64),
                )
                .map_err(metrics_error)?,
            ),
            Box::new(
                PullingGauge::new(
                    "quiver_queries_queued",
                    "Statements waiting for an admission slot now (--max-concurrent-queries).",
                    Box::new(move || queued.queued() as f64),
                )
                .map_err(metrics_error)?,
            ),
            Box::new(PulledCounter::new(
                "quiver_admission_refused_total",
                "Statements refused with RESOURCE_EXHAUSTED because the admission queue was full.",
                Box::new(move || admission.refused()),
            )?),
            Box::new(
                PullingGauge::new(
                    "quiver_executors_live",
                    "Executors in the live set now.",
                    Box::new(move || registry.live_worker_urls().len() as f64),
                )
                .map_err(metrics_error)?,
            ),
        ];
        for collector in collectors {
            node.register(collector)?;
        }
        Ok(Arc::new(Self {
            started,
            finished,
            duration,
            rows_sent,
            bytes_sent,
        }))
    }
}

impl QueryObserver for CoordinatorMetrics {
    fn query_started(&self, _info: &QueryInfo) {
        self.started.inc();
    }

    fn query_ended(&self, info: &QueryInfo) {
        let code = info.error_code.as_deref().unwrap_or("OK");
        self.finished.with_label_values(&[code]).inc();
        self.duration.observe(info.duration_ms as f64 / 1000.0);
        self.rows_sent.inc_by(info.rows);
        self.bytes_sent.inc_by(info.bytes);
    }
}

/// A counter whose value is read from elsewhere when scraped (`PullingGauge`'s counterpart).
struct PulledCounter {
    desc: Desc,
    value: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl PulledCounter {
    fn new(name: &str, help: &str, value: Box<dyn Fn() -> u64 + Send + Sync>) -> Result<Self> {
        let desc = Desc::new(name.into(), help.into(), Vec::new(), HashMap::new())
            .map_err(metrics_error)?;
        Ok(Self { desc, value })
    }
}

impl Collector for PulledCounter {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut counter = Counter::default();
        counter.set_value((self.value)() as f64);
        let mut metric = Metric::default();
        metric.set_counter(counter);
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::COUNTER);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use datafusion::execution::memory_pool::MemoryConsumer;

    use std::time::Duration;

    use super::*;
    use crate::ops::queries::QueryLog;
    use crate::resources::{Admission, ResourceLimits};
    use crate::security::cluster_auth::ClusterAuth;

    fn values(tasks: &Arc<AtomicU64>, missed: u64) -> NodeValues {
        let tasks = Arc::clone(tasks);
        NodeValues {
            tasks_running: Box::new(move || tasks.load(Ordering::Relaxed)),
            heartbeats_missed: Box::new(move || missed),
        }
    }

    #[test]
    fn nodes_of_one_process_share_families_and_values_are_read_when_scraped() {
        let bounded = ResourceLimits {
            memory_limit: Some(1000),
            ..Default::default()
        }
        .runtime_env()
        .unwrap();
        let unbounded = ResourceLimits::default().runtime_env().unwrap();
        let tasks = Arc::new(AtomicU64::new(0));
        let a = NodeMetrics::new(&bounded, Some("executor-0"), values(&tasks, 2)).unwrap();
        let b = NodeMetrics::new(&unbounded, Some("executor-1"), values(&tasks, 0)).unwrap();
        a.traffic().sent.inc_by(5);
        tasks.store(3, Ordering::Relaxed);
        let reservation = MemoryConsumer::new("sort").register(&bounded.memory_pool);
        reservation.try_grow(100).unwrap();

        let (text, content_type) = encode(&[&a, &b]).unwrap();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        for line in [
            "quiver_memory_used_bytes{node=\"executor-0\"} 100",
            "quiver_memory_limit_bytes{node=\"executor-0\"} 1000",
            "quiver_memory_limit_bytes{node=\"executor-1\"} inf",
            "quiver_tasks_running{node=\"executor-0\"} 3",
            "quiver_tasks_running{node=\"executor-1\"} 3",
            "quiver_heartbeats_missed_total{node=\"executor-0\"} 2",
            "quiver_shuffle_sent_bytes_total{node=\"executor-0\"} 5",
            "quiver_shuffle_sent_bytes_total{node=\"executor-1\"} 0",
            "quiver_spill_bytes{node=\"executor-1\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        // One family per name, whatever the number of nodes.
        assert_eq!(text.matches("# TYPE quiver_tasks_running gauge").count(), 1);
        assert_eq!(
            text.matches("# TYPE quiver_heartbeats_missed_total counter")
                .count(),
            1
        );
        drop(reservation);
        let (text, _) = encode(&[&a]).unwrap();
        assert!(text.contains("quiver_memory_used_bytes{node=\"executor-0\"} 0"));
    }

    #[test]
    fn the_query_log_moves_the_coordinator_counters() {
        let runtime = ResourceLimits::default().runtime_env().unwrap();
        let node = NodeMetrics::new(&runtime, None, values(&Arc::default(), 0)).unwrap();
        let admission = Admission::new(1, 0);
        let registry = ExecutorRegistry::new(Duration::from_secs(5), ClusterAuth::open());
        let metrics = CoordinatorMetrics::register(&node, admission.load(), registry).unwrap();
        let log = Arc::new(QueryLog::default());
        log.add_observer(metrics);

        let ok = log.start("a", None, "SELECT 1");
        ok.sent(3, 100);
        ok.end(Ok(()));
        let failed = log.start("b", None, "SELECT * FROM nope");
        failed.end(Err(&tonic::Status::not_found("table 'nope' not found")));
        let cancelled = log.start("c", None, "SELECT 2");
        drop(cancelled);

        let (text, _) = encode(&[&node]).unwrap();
        for line in [
            "quiver_queries_started_total 3",
            "quiver_queries_finished_total{code=\"OK\"} 1",
            "quiver_queries_finished_total{code=\"NOT_FOUND\"} 1",
            "quiver_queries_finished_total{code=\"CANCELLED\"} 1",
            "quiver_query_duration_seconds_count 3",
            "quiver_client_rows_sent_total 3",
            "quiver_client_bytes_sent_total 100",
            "quiver_queries_running 0",
            "quiver_queries_queued 0",
            "quiver_admission_refused_total 0",
            "quiver_executors_live 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
